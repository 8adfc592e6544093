"""The single input image of Free3D: its foreground, centred and rescaled on white.

Where the object's alpha comes from (:func:`load_foreground`):

- an RGBA image whose alpha is not fully opaque: its alpha channel;
- an RGB image and a mask file: the mask (nonzero = object; any size mismatch or unreadable
  file is an error naming the file);
- an RGB image alone: simple matting (:func:`matte_from_border`): the background colour is
  the median of the image border, pixels farther than ``threshold`` from it are the object,
  cleaned by a morphological opening / closing and kept as the largest connected component;
  ``method="grabcut"`` refines that with OpenCV's GrabCut. A foreground that comes out empty
  or covers (nearly) everything is an error naming the file.

Then (:func:`center_object`, Zero-1-to-3's preprocessing) the object's bounding box is
centred in a square whose side is ``1 / fill`` times the box's longer side, resized to the
model's input size and composited onto white. :func:`prepare_input` does it all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from sceneforge.core.image_io import ImageReadError, read_mask


class ForegroundError(ValueError):
    """The input image's foreground cannot be found or used; the message names the file."""


@dataclass
class ForegroundConfig:
    """How to find the object in the input image and frame it for the model."""

    size: int = 256
    """Side of the square model input (pixels)."""
    fill: float = 0.8
    """Fraction of the square the object's longer bounding-box side spans."""
    method: str = "border"
    """Matting without alpha or mask: ``border`` (border colour + threshold) or ``grabcut``."""
    threshold: float = 0.12
    """Border matting: RGB distance (0..sqrt(3)) from the background colour that is object."""
    border: float = 0.02
    """Border matting: width of the border the background colour is taken from (fraction)."""
    min_fraction: float = 0.002
    """Smallest foreground (fraction of the image) accepted."""
    max_fraction: float = 0.95
    """Largest foreground (fraction of the image) accepted."""
    alpha_cutoff: float = 0.5
    """Alpha above which a pixel belongs to the object's bounding box."""


@dataclass
class Foreground:
    """An input image and its object's alpha."""

    rgb: Float[Tensor, "3 H W"]
    """The image, RGB in [0, 1] (not premultiplied)."""
    alpha: Float[Tensor, "1 H W"]
    """Object opacity in [0, 1]."""
    source: str
    """Where the alpha came from: ``alpha``, ``mask`` or ``matting``."""
    path: Path | None = None
    """The image file (for messages)."""


@dataclass
class PreparedInput:
    """The model's input view: the object centred on white at the model's size."""

    image: Float[Tensor, "3 S S"]
    """RGB in [0, 1], composited onto white."""
    alpha: Float[Tensor, "1 S S"]
    """Object opacity at the model's size."""
    crop_box: tuple[float, float, float, float]
    """``(x0, y0, x1, y1)``: the square of the original image that became the input (may
    reach outside the image, where it is white)."""
    source: str
    """Where the alpha came from: ``alpha``, ``mask`` or ``matting``."""


# ----------------------------------------------------------------------------- reading


def read_rgba(
    path: str | os.PathLike,
) -> tuple[Float[Tensor, "3 H W"], Float[Tensor, "1 H W"] | None]:
    """RGB in [0, 1] and the alpha channel (None without one) of an image file, EXIF
    orientation applied; an :class:`ImageReadError` naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e
    t = torch.from_numpy(np.array(arr, copy=True)).float().div(255.0).permute(2, 0, 1)
    return (t[:3].contiguous(), t[3:].contiguous()) if has_alpha else (t, None)


# ----------------------------------------------------------------------------- matting


def border_color(rgb: Float[Tensor, "3 H W"], border: float = 0.02) -> Float[Tensor, "3"]:
    """Median colour of the image border (``border`` of the shorter side, at least 1 px)."""
    _, h, w = rgb.shape
    b = max(1, round(border * min(h, w)))
    ring = torch.cat(
        [
            rgb[:, :b].reshape(3, -1),
            rgb[:, -b:].reshape(3, -1),
            rgb[:, b:-b, :b].reshape(3, -1),
            rgb[:, b:-b, -b:].reshape(3, -1),
        ],
        dim=1,
    )
    return ring.median(dim=1).values


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def _clean(mask: np.ndarray) -> np.ndarray:
    """Opening then closing with a small disc, largest component, holes filled."""
    import cv2

    k = max(3, (min(mask.shape) // 64) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    m = _largest_component(m)
    # fill holes: background = what the border reaches through non-object pixels
    bg = np.pad(~m, 1, constant_values=True).astype(np.uint8)
    ff = bg.copy()
    cv2.floodFill(ff, np.zeros((ff.shape[0] + 2, ff.shape[1] + 2), np.uint8), (0, 0), 2)
    return ff[1:-1, 1:-1] != 2


def matte_from_border(
    rgb: Float[Tensor, "3 H W"], cfg: ForegroundConfig | None = None
) -> Float[Tensor, "1 H W"]:
    """Binary object alpha of an image on a roughly uniform background (see module doc)."""
    cfg = cfg or ForegroundConfig()
    if cfg.method not in ("border", "grabcut"):
        raise ValueError(f"unknown matting method {cfg.method!r}; use border or grabcut")
    bg = border_color(rgb, cfg.border)
    dist = (rgb - bg[:, None, None]).norm(dim=0)
    mask = (dist > cfg.threshold).numpy()
    if mask.any():
        mask = _clean(mask)
    if cfg.method == "grabcut" and mask.any() and not mask.all():
        mask = _grabcut(rgb, mask, cfg.border)
    return torch.from_numpy(mask).float()[None]


def _grabcut(rgb: Float[Tensor, "3 H W"], init: np.ndarray, border: float) -> np.ndarray:
    import cv2

    img = (rgb.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)[..., ::-1]
    gc = np.where(init, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    h, w = init.shape
    b = max(1, round(border * min(h, w)))
    gc[:b], gc[-b:], gc[:, :b], gc[:, -b:] = (cv2.GC_BGD,) * 4
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(img), gc, None, bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
    out = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    return _clean(out) if out.any() else out


# ----------------------------------------------------------------------------- loading


def load_foreground(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike | None = None,
    cfg: ForegroundConfig | None = None,
) -> Foreground:
    """The image and its object's alpha: RGBA alpha, a mask file, or matting (module doc)."""
    cfg = cfg or ForegroundConfig()
    image_path = Path(image_path)
    rgb, alpha = read_rgba(image_path)
    h, w = rgb.shape[1:]
    if mask_path is not None:
        mask_path = Path(mask_path)
        mask = read_mask(mask_path)  # ImageReadError naming the mask file
        if tuple(mask.shape) != (h, w):
            raise ForegroundError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                f"{image_path} is {w}x{h}"
            )
        alpha, source = mask.float()[None], "mask"
    elif alpha is not None and float(alpha.min()) < 0.99:
        source = "alpha"
    else:
        alpha, source = matte_from_border(rgb, cfg), "matting"
    frac = float((alpha > cfg.alpha_cutoff).float().mean())
    where = f"{mask_path}" if source == "mask" else f"{image_path}"
    if frac < cfg.min_fraction:
        raise ForegroundError(
            f"{where}: the foreground ({source}) is empty ({frac:.2%} of the image); "
            "give an RGBA image or a mask"
        )
    if frac > cfg.max_fraction:
        raise ForegroundError(
            f"{where}: the foreground ({source}) covers {frac:.1%} of the image: no background "
            "found; give an RGBA image or a mask"
        )
    return Foreground(rgb=rgb, alpha=alpha, source=source, path=image_path)


def center_object(
    rgb: Float[Tensor, "3 H W"],
    alpha: Float[Tensor, "1 H W"],
    size: int = 256,
    fill: float = 0.8,
    alpha_cutoff: float = 0.5,
) -> tuple[Float[Tensor, "3 S S"], Float[Tensor, "1 S S"], tuple[float, float, float, float]]:
    """Centre the object's bounding box in a square ``longer side / fill`` wide, resize it to
    ``size`` and composite onto white; returns image, alpha and the square ``(x0, y0, x1, y1)``."""
    if not 0.0 < fill <= 1.0:
        raise ValueError(f"fill must lie in (0, 1], got {fill}")
    ys, xs = torch.nonzero(alpha[0] > alpha_cutoff, as_tuple=True)
    if ys.numel() == 0:
        raise ForegroundError("the object's alpha is empty: nothing to centre")
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    side = max(y1 - y0, x1 - x0) / fill
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    # sample the square with an antialiased resize of the padded crop (premultiplied colour)
    pad = int(np.ceil(side)) + 1
    premult = torch.cat([rgb * alpha, alpha], dim=0)
    canvas = F.pad(premult, (pad, pad, pad, pad))
    ix0, iy0 = int(round(box[0])) + pad, int(round(box[1])) + pad
    n = max(1, int(round(side)))
    crop = canvas[:, iy0 : iy0 + n, ix0 : ix0 + n]
    out = F.interpolate(
        crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0].clamp(0, 1)
    a = out[3:]
    image = (out[:3] + (1.0 - a)).clamp(0, 1)
    return image, a, box


def prepare_input(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike | None = None,
    cfg: ForegroundConfig | None = None,
) -> PreparedInput:
    """Load the single input image, find its object and frame it for the model."""
    cfg = cfg or ForegroundConfig()
    fg = load_foreground(image_path, mask_path, cfg)
    image, alpha, box = center_object(fg.rgb, fg.alpha, cfg.size, cfg.fill, cfg.alpha_cutoff)
    return PreparedInput(image=image, alpha=alpha, crop_box=box, source=fg.source)


__all__ = [
    "Foreground",
    "ForegroundConfig",
    "ForegroundError",
    "PreparedInput",
    "border_color",
    "center_object",
    "load_foreground",
    "matte_from_border",
    "prepare_input",
    "read_rgba",
]
