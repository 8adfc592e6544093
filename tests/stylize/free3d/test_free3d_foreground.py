"""Free3D's input image: alpha / mask / matting, the errors naming files, and the centring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sceneforge.core.image_io import ImageReadError
from sceneforge.stylize.free3d.foreground import (
    ForegroundConfig,
    ForegroundError,
    center_object,
    load_foreground,
    prepare_input,
)


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r * r


def _textured_object(h: int, w: int, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """A saturated, textured object on a noisy grey background (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    bg = np.clip(0.55 + 0.02 * rng.standard_normal((h, w, 3)), 0, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    tex = np.stack([0.8 + 0.15 * np.sin(xx / 3.0), 0.2 + 0.1 * np.cos(yy / 4.0), 0.1 + 0 * xx], -1)
    img = np.where(mask[..., None], tex, bg)
    return (img * 255 + 0.5).astype(np.uint8)


def _iou(a: torch.Tensor, b: np.ndarray) -> float:
    a = a.numpy() > 0.5
    return float((a & b).sum() / (a | b).sum())


def _bbox(alpha: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(alpha[0] > 0.5, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_rgba_alpha_is_used_and_object_centred_on_white(tmp_path: Path):
    h, w = 60, 90
    inside = _disc(h, w, 70, 20, 12)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = _textured_object(h, w, inside)
    rgba[..., 3] = inside * 255
    path = tmp_path / "obj.png"
    Image.fromarray(rgba, "RGBA").save(path)
    prep = prepare_input(path, cfg=ForegroundConfig(size=64, fill=0.8))
    assert prep.source == "alpha" and prep.image.shape == (3, 64, 64)
    x0, y0, x1, y1 = _bbox(prep.alpha)
    assert abs((x0 + x1) / 2 - 32) <= 1 and abs((y0 + y1) / 2 - 32) <= 1
    assert abs(max(x1 - x0, y1 - y0) - 0.8 * 64) <= 2
    outside = prep.alpha[0] == 0
    assert torch.allclose(prep.image[:, outside], torch.ones(3, 1), atol=1e-3)  # white
    centre = prep.image[:, 30:34, 30:34].mean((1, 2))
    assert float(centre[0]) > 0.6 and float(centre[2]) < 0.3  # the object's colour
    # the crop square is the object's box widened by 1 / fill around its centre
    bx0, by0, bx1, by1 = prep.crop_box
    assert (bx0 + bx1) / 2 == pytest.approx(70, abs=1) and (bx1 - bx0) == pytest.approx(30, abs=1)


def test_mask_file_is_used_and_bad_masks_name_the_file(tmp_path: Path):
    h, w = 48, 48
    inside = _disc(h, w, 24, 24, 10)
    img_path = tmp_path / "photo.png"
    Image.fromarray(_textured_object(h, w, np.zeros((h, w), bool))).save(img_path)  # no object
    mask_path = tmp_path / "photo_mask.png"
    Image.fromarray((inside * 255).astype(np.uint8)).save(mask_path)
    fg = load_foreground(img_path, mask_path)
    assert fg.source == "mask" and _iou(fg.alpha[0], inside) == 1.0
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(small)
    with pytest.raises(ForegroundError, match=r"small_mask.png: mask is 30x20 but the image"):
        load_foreground(img_path, small)
    broken = tmp_path / "broken_mask.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken_mask.png: not a readable image"):
        load_foreground(img_path, broken)
    with pytest.raises(ImageReadError, match="nope.png: no such image file"):
        load_foreground(tmp_path / "nope.png", mask_path)
    full = tmp_path / "full_mask.png"
    Image.fromarray(np.full((h, w), 255, np.uint8)).save(full)
    with pytest.raises(ForegroundError, match=r"full_mask.png: the foreground \(mask\) covers"):
        load_foreground(img_path, full)


@pytest.mark.parametrize("method", ["border", "grabcut"])
def test_matting_without_alpha_finds_the_object(tmp_path: Path, method: str):
    h, w = 64, 80
    inside = _disc(h, w, 30, 36, 14)
    path = tmp_path / "photo.jpg"
    Image.fromarray(_textured_object(h, w, inside, seed=1)).save(path, quality=95)
    fg = load_foreground(path, cfg=ForegroundConfig(method=method))
    assert fg.source == "matting"
    assert _iou(fg.alpha[0], inside) > 0.9


def test_matting_errors_name_the_file(tmp_path: Path):
    plain = tmp_path / "plain.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(plain)
    with pytest.raises(ForegroundError, match=r"plain.png: the foreground \(matting\) is empty"):
        load_foreground(plain)
    # an alpha channel that is nowhere opaque enough, and one that covers everything
    clear = np.zeros((40, 40, 4), np.uint8)
    Image.fromarray(clear, "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(ForegroundError, match=r"clear.png: the foreground \(alpha\) is empty"):
        load_foreground(tmp_path / "clear.png")
    clear[..., 3] = 230
    Image.fromarray(clear, "RGBA").save(tmp_path / "fog.png")
    with pytest.raises(ForegroundError, match=r"fog.png: the foreground \(alpha\) covers"):
        load_foreground(tmp_path / "fog.png")


def test_opaque_rgba_falls_back_to_matting(tmp_path: Path):
    h, w = 48, 48
    inside = _disc(h, w, 20, 26, 9)
    rgba = np.concatenate([_textured_object(h, w, inside), np.full((h, w, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    fg = load_foreground(tmp_path / "opaque.png")
    assert fg.source == "matting" and _iou(fg.alpha[0], inside) > 0.9


def test_center_object_scales_a_tall_object_and_pads_with_white():
    rgb = torch.zeros(3, 50, 40)
    rgb[1] = 1.0  # green object
    alpha = torch.zeros(1, 50, 40)
    alpha[:, 2:42, 30:38] = 1.0  # tall 8 x 40 box near the right edge
    image, a, box = center_object(rgb, alpha, size=100, fill=0.5)
    x0, y0, x1, y1 = _bbox(a)
    assert (y1 - y0) == pytest.approx(50, abs=2) and (x1 - x0) == pytest.approx(10, abs=2)
    assert abs((x0 + x1) / 2 - 50) <= 1 and abs((y0 + y1) / 2 - 50) <= 1
    assert box == pytest.approx((-6.0, -18.0, 74.0, 62.0))  # reaches outside the image
    assert torch.allclose(image[:, 0, 0], torch.ones(3)) and torch.allclose(
        image[:, 50, 50], torch.tensor([0.0, 1.0, 0.0]), atol=1e-4
    )
    with pytest.raises(ForegroundError, match="alpha is empty"):
        center_object(rgb, torch.zeros(1, 50, 40), size=32)
