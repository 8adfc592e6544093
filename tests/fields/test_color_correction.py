"""Colour-corrected held-out metrics separate a per-photo colour change from field errors."""

from __future__ import annotations

import pytest
import torch
from fields_analytic import turntable_config

from sceneforge.core.metrics import psnr
from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.evaluation import apply_color_affine, color_correct, fit_color_affine
from sceneforge.fields.trainer import Trainer

# a white-balance / exposure change: per-channel gains, a cross-talk term and an offset
AFFINE = torch.tensor(
    [[0.70, 0.05, 0.00], [0.00, 0.85, 0.05], [0.00, 0.00, 0.60], [0.08, 0.04, 0.10]],
    dtype=torch.float64,
)


def test_color_affine_recovers_a_known_transform():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(24, 32, 3, generator=g)
    target = apply_color_affine(pred, AFFINE)
    assert psnr(pred, target) < 20.0
    m = fit_color_affine(pred, target)
    torch.testing.assert_close(m, AFFINE, atol=1e-6, rtol=0)
    assert psnr(color_correct(pred, target), target) > 60.0
    # fitted on a mask only, applied to the whole image
    mask = torch.zeros(24, 32, dtype=torch.bool)
    mask[:8] = True
    assert psnr(color_correct(pred, target, mask), target) > 60.0
    # degenerate render (constant): no failure, best constant colour = the target's mean
    flat = torch.full_like(pred, 0.5)
    out = color_correct(flat, target)
    torch.testing.assert_close(out[0, 0], target.reshape(-1, 3).mean(0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="mask selects no pixel"):
        fit_color_affine(pred, target, torch.zeros(24, 32, dtype=torch.bool))


@pytest.mark.slow
def test_heldout_colour_gain_is_removed_by_color_corrected_metrics():
    torch.set_num_threads(1)
    scene = turntable_scene(num_views=24, size=48)
    tr = Trainer(scene, turntable_config(300))
    tr.train()
    clean = tr.evaluate()
    assert clean["psnr_cc"] >= clean["psnr"] - 0.1  # the fit never makes a render worse
    # the held-out photos were taken with another exposure / white balance
    for i in tr.eval_indices:
        img = scene.images[i].double() / 255.0
        scene.images[i] = (apply_color_affine(img, AFFINE) * 255.0).round().to(torch.uint8)
    shifted = tr.evaluate()
    raw = tr.evaluate(color_correct=False)
    assert "psnr_cc" not in raw and raw["psnr"] == pytest.approx(shifted["psnr"])
    assert shifted["psnr"] < clean["psnr"] - 3.0, (clean, shifted)  # raw: the colour counts
    assert shifted["psnr_cc"] > clean["psnr"] - 1.0, (clean, shifted)  # corrected: it does not
    assert shifted["psnr_cc"] > 24.0, shifted
    # (the gains < 1 also shrink the field's own errors, hence >= rather than ==)
    assert shifted["psnr_masked_cc"] > clean["psnr_masked_cc"] - 0.5, (clean, shifted)
    assert shifted["psnr_masked_cc"] > shifted["psnr_masked"] + 1.5, shifted


@pytest.mark.slow
def test_per_image_colour_transforms_absorb_exposure_and_nerfw_fit_recovers_heldout_colour():
    """Training photos with different channel gains: the per-image colour transforms take the
    gains (the field keeps one colour), and NeRF-W's protocol (appearance fitted on the left
    half of a held-out photo) renders its right half in the photo's colours."""
    torch.set_num_threads(1)
    scene = turntable_scene(num_views=24, size=48)
    g = torch.Generator().manual_seed(1)
    gains = 0.55 + 0.45 * torch.rand(len(scene), 3, generator=g, dtype=torch.float64)
    gains[::8] = torch.tensor([1.0, 0.45, 0.45], dtype=torch.float64)  # held out: reddish
    for i in range(len(scene)):
        img = scene.images[i].double() * gains[i]
        scene.images[i] = img.round().clamp(0, 255).to(torch.uint8)
    cfg = turntable_config(400, eval_appearance_fit_steps=40)
    cfg.nerf.field.color_affine = True
    tr = Trainer(scene, cfg)
    tr.train()
    # the learned transforms follow the gains of the training photos: the transformed mean
    # object colour per photo correlates with its gains
    a = tr.model.field.color_affine.detach().double()
    grey = torch.full((3,), 0.5, dtype=torch.float64)
    out = grey + (a[:, :9].view(-1, 3, 3) @ grey) + a[:, 9:]
    x, y = out.log().flatten(), gains[tr.train_indices].log().flatten()
    corr = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert corr > 0.8, corr
    ev = tr.evaluate()
    print(ev)
    assert ev["psnr_right_fit"] > ev["psnr_right_mean"] + 2.0, ev
    assert ev["psnr_right_fit"] > 24.0, ev
    assert tr.model.field.unseen_color_affine is None  # evaluation leaves the field as it was
    # fitting did not touch training state: the field parameters are all trainable again
    assert all(p.requires_grad for p in tr.model.field.parameters())
