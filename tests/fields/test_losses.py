"""The photometric losses (fields/losses.py): MSE over valid pixels, 3DGS's L1 + D-SSIM on
patch batches (value, gradient, masks), the trainer's automatic choice and clear errors."""

from __future__ import annotations

import pytest
import torch

from sceneforge.core.metrics import ssim_map
from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.datasets import PatchLayout
from sceneforge.fields.losses import photometric_loss
from sceneforge.fields.trainer import Trainer, TrainerConfig


def _layout(p: int, h: int, w: int) -> PatchLayout:
    z = torch.zeros(p, dtype=torch.float64)
    return PatchLayout(torch.arange(p), z, z, h, w)


def test_l1_ssim_is_3dgs_loss_and_masks_count():
    gen = torch.Generator().manual_seed(0)
    p, h, w = 2, 12, 10
    pred = torch.rand(p * h * w, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(p * h * w, 3, generator=gen, dtype=torch.float64)
    loss, mse = photometric_loss("l1-ssim", pred, target, None, _layout(p, h, w), 0.2)
    pr, ta = pred.reshape(p, h, w, 3), target.reshape(p, h, w, 3)
    maps = [ssim_map(pr[k], ta[k], dtype=torch.float32) for k in range(p)]
    expected = 0.8 * (pred - target).abs().mean() + 0.2 * (1 - torch.stack(maps).mean())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(mse, (pred - target).pow(2).mean())
    loss.backward()
    assert float(pred.grad.abs().max()) > 0
    # invalid pixels neither count nor get gradient
    valid = torch.ones(p * h * w, dtype=torch.bool)
    valid[: h * w // 2] = False
    far = target.clone()
    far[~valid] = 1 - far[~valid]
    a, _ = photometric_loss("l1-ssim", target, target, valid, _layout(p, h, w), 0.0)
    b, _ = photometric_loss("l1-ssim", far, target, valid, _layout(p, h, w), 0.0)
    assert float(a) == 0 and float(b) == 0
    same, _ = photometric_loss("mse", far, target, valid, None, 0.2)
    assert float(same) == 0


def test_l1_ssim_needs_image_batches():
    x = torch.rand(16, 3)
    with pytest.raises(ValueError, match="patches or whole views"):
        photometric_loss("l1-ssim", x, x, None, None, 0.2)
    with pytest.raises(ValueError, match="at least 6x6"):
        photometric_loss("l1-ssim", x, x, None, _layout(1, 4, 4), 0.2)


def test_trainer_picks_l1_ssim_for_gaussians_and_mse_for_nerf():
    scene = turntable_scene(num_views=6, size=24)
    base = dict(max_steps=2, progress=False, tensorboard=False, device="cpu")
    gs = Trainer(scene, TrainerConfig(model="gaussians", scene_box="bounded", **base))
    nerf = Trainer(scene, TrainerConfig(model="nerf", **base))
    assert (gs.photometric, nerf.photometric) == ("l1-ssim", "mse")
    st = gs.train_step()
    assert st["loss"] > 0 and st["psnr"] > 0
    forced = Trainer(scene, TrainerConfig(model="gaussians", photometric="mse", **base))
    assert forced.photometric == "mse"
