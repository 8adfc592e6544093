"""Camera refinement's warm-up and units (``fields.camera_opt``): the warm-up factor follows
the schedule fraction (corrections frozen, then ramped), the trainer applies it to the camera
group only and resumes exactly through it, and corrections in pixel units render the same
rays as the equivalent radians / scene units with the regulariser in squared pixels."""

from __future__ import annotations

import pytest
import torch
from fields_analytic import sphere_scene, tiny_nerf_config

from sceneforge.fields import camera_opt as camopt
from sceneforge.fields.camera_opt import CameraOptimizer, pixel_scale, warmup_factor
from sceneforge.fields.trainer import Trainer

_tiny = tiny_nerf_config


@pytest.fixture(scope="module")
def scene():
    return sphere_scene(n_views=9, size=16)


def test_warmup_factor_freezes_then_ramps():
    assert [warmup_factor(f, 0.0) for f in (0.0, 0.5, 1.0)] == [1.0, 1.0, 1.0]
    got = [warmup_factor(f, 0.2) for f in (0.0, 0.1, 0.2, 0.3, 0.4, 0.9, 1.0)]
    assert got == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0])
    assert camopt.group_lr_factor({"lr": 1.0}, 0.0) == 1.0  # field groups: untouched
    assert camopt.group_lr_factor({"warmup": 0.2}, 0.1) == 0.0


def test_trainer_freezes_cameras_during_warmup_and_resumes_exactly(scene, tmp_path):
    cfg = _tiny(real_capture=True, camera_opt="SO3xR3", camera_opt_warmup=0.25)
    a = Trainer(scene, cfg)
    a.train(max_steps=10)  # fraction 0.25: still frozen (the ramp starts here)
    assert float(a.camera_opt.pose.detach().abs().max()) == 0.0
    field = next(g for g in a.optimizer.param_groups if g.get("name") != "camera_opt")
    assert field["lr"] > 0
    a.train(max_steps=30)
    assert float(a.camera_opt.pose.detach().abs().max()) > 0  # moving after the warm-up
    cam = next(g for g in a.optimizer.param_groups if g.get("name") == "camera_opt")
    frac = a.schedule_fraction(29)
    want = cfg.camera_opt_lr * a.lr_factor(29, cam["final_factor"]) * warmup_factor(frac, 0.25)
    assert cam["lr"] == pytest.approx(want)
    b = Trainer(scene, cfg)
    b.train(max_steps=15)  # a checkpoint inside the ramp
    b.save_checkpoint(tmp_path / "ckpt.pt")
    c = Trainer.from_checkpoint(tmp_path / "ckpt.pt", scene)
    c.train(max_steps=30)
    assert torch.equal(a.camera_opt.pose, c.camera_opt.pose)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, c.model.state_dict()[k]), k


def test_pixel_units_render_the_same_rays_and_regularise_in_pixels(scene):
    idx = [1, 2, 3]
    cams = scene.cameras[idx].to(dtype=torch.float32)
    units = pixel_scale(cams, depth=3.0, downscale=2)
    f = 0.5 * (cams.K[0, 0, 0] + cams.K[0, 1, 1]) / 2
    torch.testing.assert_close(units[0], torch.tensor([f / 3.0] * 3 + [f] * 3).float())
    xi = 0.01 * torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    plain = CameraOptimizer("SO3xR3", cams, weight=1.0)
    px = CameraOptimizer("SO3xR3", cams, weight=1.0, units=units)
    with torch.no_grad():
        plain.pose.copy_(xi)
        px.pose.copy_(xi * units)
    torch.testing.assert_close(px.xi(), xi)
    o, d, z = cams.rays(1)
    j = torch.full((o.shape[0],), 2)
    for a, b in zip(plain.apply(o, d, z, j), px.apply(o, d, z, j), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(
        px.refined_cameras().cam_from_world, plain.refined_cameras().cam_from_world
    )
    assert float(px.regularizer().detach()) == pytest.approx(
        float((xi * units).pow(2).sum(-1).mean())
    )
    # the trainer's option: units from the scene's focal length and depth
    tr = Trainer(scene, _tiny(camera_opt="SO3xR3", camera_opt_units="pixels"))
    want = pixel_scale(scene.cameras[tr.train_indices], camopt.scene_depth(scene, tr.train_indices))
    torch.testing.assert_close(tr.camera_opt.units, want)
