"""SD inpainting with the joint grid prior, against diffusers, on a tiny random pipeline."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from sceneforge.core.diffusion import (  # noqa: E402
    DiffusionModelError,
    GridConfig,
    annealed_strength,
    load_local_pipeline,
    random_groups,
    tile_latents,
    untile_latents,
)
from sceneforge.inpaint.diffusion import SDInpaintConfig, SDInpainter  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tiny_sd_path):
    return load_local_pipeline(tiny_sd_path, device="cpu")


def _inputs(n: int, size: int = 32):
    g = torch.Generator().manual_seed(3)
    imgs = torch.rand(n, 3, size, size, generator=g)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        masks[i, :, 4 + i : 20 + i, 6:22] = 1
    return imgs, masks


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_one_view_per_group_matches_diffusers(pipe, tiny_sd_path, strength):
    n = 3
    imgs, masks = _inputs(n)
    cfg = SDInpaintConfig(
        model=str(tiny_sd_path),
        prompt="a photo",
        num_steps=4,
        guidance_scale=5.0,
        grid=GridConfig(rows=1, cols=1, shuffle=False, grids_per_batch=16),
    )
    ours = SDInpainter(cfg, pipe).joint_inpaint(
        imgs, masks, strength=strength, generator=torch.Generator().manual_seed(42)
    )
    ref = pipe(
        prompt=["a photo"] * n,
        image=imgs,
        mask_image=masks,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=5.0,
        strength=strength,
        generator=torch.Generator().manual_seed(42),
        output_type="pt",
    ).images
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-5


def test_shuffled_grids_denoise_each_view_once_per_step(pipe, tiny_sd_path):
    n = 6
    imgs, masks = _inputs(n)
    cfg = SDInpaintConfig(
        model=str(tiny_sd_path),
        num_steps=5,
        guidance_scale=3.0,
        grid=GridConfig(rows=2, cols=2, shuffle=True, grids_per_batch=1),
    )
    inp = SDInpainter(cfg, pipe)
    seen: list[list[list[int]]] = []
    inp.denoiser.on_step = lambda i, groups: seen.append([list(g) for g in groups])
    shapes = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    try:
        out = inp.joint_inpaint(imgs, masks)
    finally:
        handle.remove()
    assert torch.isfinite(out).all()
    assert len(seen) == 5
    for groups in seen:
        written = sorted(v for g in groups for v in g if v >= 0)
        assert written == list(range(n))  # each view written back exactly once
        assert all(len(g) == 4 for g in groups)
    assert len({str(g) for g in seen}) > 1  # regrouped between steps
    # 2 grids per step, one per UNet call, CFG doubles the batch; latents 16x16 -> grid 32x32
    assert shapes == [(2, 9, 32, 32)] * 10


def test_grid_tiling_roundtrip_and_groups():
    x = torch.arange(8 * 2 * 3 * 5, dtype=torch.float32).reshape(8, 2, 3, 5)
    g = tile_latents(x, 2, 2)
    assert g.shape == (2, 2, 6, 10)
    assert torch.equal(g[0, :, :3, 5:], x[1]) and torch.equal(g[1, :, 3:, :5], x[6])
    assert torch.equal(untile_latents(g, 2, 2), x)
    groups = random_groups(7, 4, torch.Generator().manual_seed(0))
    flat = [v for grp in groups for v in grp]
    assert sorted(v for v in flat if v >= 0) == list(range(7)) and len(flat) == 8
    assert random_groups(4, 4, shuffle=False) == [[0, 1, 2, 3]]
    assert annealed_strength(0, 5) == 1.0 and abs(annealed_strength(4, 5) - 0.4) < 1e-12


def test_unmasked_pixels_bit_exact(pipe, tiny_sd_path):
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(5, 30, 40, 3, generator=g)
    fill = torch.zeros(5, 30, 40, dtype=torch.bool)
    fill[:, 10:20, 5:25] = True
    cfg = SDInpaintConfig(model=str(tiny_sd_path), num_steps=2, resolution=48)
    res = SDInpainter(cfg, pipe).inpaint(imgs, fill, strength=0.8)
    assert res.images.shape == imgs.shape
    assert torch.equal(res.images[~fill], imgs[~fill])
    assert not torch.equal(res.images[fill], imgs[fill])


def test_missing_and_wrong_models(tmp_path, tiny_sd_txt2img_path):
    missing = tmp_path / "nope"
    with pytest.raises(DiffusionModelError, match="not found"):
        load_local_pipeline(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffusionModelError, match="model_index.json"):
        load_local_pipeline(tmp_path / "empty")
    with pytest.raises(DiffusionModelError, match="4 input channels.*inpainting"):
        load_local_pipeline(tiny_sd_txt2img_path)
    with pytest.raises(DiffusionModelError, match="not found"):
        SDInpainter(SDInpaintConfig(model=str(missing)))
    with pytest.raises(ValueError, match="--model"):
        SDInpainter(SDInpaintConfig(model=""))
