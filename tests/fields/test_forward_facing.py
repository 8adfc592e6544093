"""Forward-facing captures: detection, the disparity-spaced frustum, sampling, checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_trainer import tiny_config

from sceneforge.core.cameras import invert_rigid, transform_points
from sceneforge.core.synthetic import SyntheticSceneConfig, make_scene
from sceneforge.fields.field import SceneBox
from sceneforge.fields.forward_facing import fit_forward_frustum
from sceneforge.fields.sampling import SamplerConfig, ray_intervals
from sceneforge.fields.scene_box import auto_scene_box
from sceneforge.fields.trainer import Trainer


def _scene(rig: str):
    cfg = SyntheticSceneConfig(rig=rig, num_views=8, width=40, height=30, num_points=400, seed=1)
    return make_scene(cfg)


@pytest.fixture(scope="module")
def forward_scene():
    return _scene("forward")


def test_detects_forward_facing_captures_only(forward_scene):
    box = auto_scene_box(forward_scene, "forward")
    assert box.forward is not None and not box.contract
    assert auto_scene_box(forward_scene, "auto").forward is not None  # auto picks it
    orbit = _scene("orbit")
    assert fit_forward_frustum(orbit.cameras, orbit.points) is None
    assert auto_scene_box(orbit, "auto").contract  # not forward-facing: the contracted box
    with pytest.raises(ValueError, match="not forward-facing"):
        auto_scene_box(orbit, "forward")
    no_points = dataclasses.replace(forward_scene, points=None)
    assert fit_forward_frustum(no_points.cameras, None) is None
    with pytest.raises(ValueError, match="no sparse points"):
        auto_scene_box(no_points, "forward")
    assert auto_scene_box(no_points, "auto").contract  # auto falls back to the contracted box


def test_frustum_holds_the_points_and_is_spaced_in_disparity(forward_scene):
    f = auto_scene_box(forward_scene, "forward").forward
    cams, pts = forward_scene.cameras, forward_scene.points.double()
    uv, depth = cams.to(dtype=torch.float64).project(pts)
    size = torch.stack([cams.width, cams.height], -1)[:, None].double()
    seen = ((depth > 0) & ((uv >= 0) & (uv <= size)).all(-1)).any(0)  # in some image
    u = f.normalize(pts[seen].float())
    inside = ((u >= 0) & (u <= 1)).all(-1).float().mean()
    assert seen.sum() > 100 and inside > 0.97
    # along the reference axis u_z is affine in disparity (1 / depth)
    z = torch.linspace(f.z_near, f.z_far, 7, dtype=torch.float64)
    ref = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], -1)
    world = transform_points(invert_rigid(f.ref_from_world.double()), ref)
    uz = f.normalize(world.float())[:, 2].double()
    expect = (1 / f.z_near - 1 / z) / (1 / f.z_near - 1 / f.z_far)
    assert torch.allclose(uz, expect, atol=1e-4)
    assert abs(float(uz[0])) < 1e-4 and abs(float(uz[-1]) - 1) < 1e-4
    # a camera centre lies in front of the near depth: outside the box
    assert float(f.normalize(forward_scene.cameras.centers.float())[:, 2].max()) < 0


def test_samples_of_training_rays_cover_the_frustum_evenly(forward_scene):
    box = auto_scene_box(forward_scene, "forward")
    cams = forward_scene.cameras.to(dtype=torch.float32)
    o, d, _ = cams.rays(3)
    t, deltas, valid = ray_intervals(o, d, box, SamplerConfig(num_samples=32))
    assert bool(valid.all()) and bool((deltas > 0).all())
    u = box.normalize((o[:, None] + t[..., None] * d[:, None]).reshape(-1, 3)).view(*t.shape, 3)
    assert bool(((u >= -1e-3) & (u <= 1 + 1e-3)).all())  # what a camera sees is inside
    edges = torch.cat([t - deltas / 2, t[:, -1:] + deltas[:, -1:] / 2], dim=1)
    pe = (o[:, None] + edges[..., None] * d[:, None]).reshape(-1, 3)
    steps = box.normalize(pe).view(*edges.shape, 3)[..., 2].diff(dim=1)
    # intervals evenly spaced in disparity (u_z) along every ray
    assert torch.allclose(steps, torch.full_like(steps, 1 / 32), atol=2e-3)
    # stratified jitter keeps the intervals tiling the same range
    g = torch.Generator().manual_seed(0)
    t2, d2, _ = ray_intervals(o, d, box, SamplerConfig(num_samples=32), g)
    assert torch.allclose(d2.sum(1), deltas.sum(1), rtol=1e-4)


def test_box_state_round_trip(forward_scene):
    box = auto_scene_box(forward_scene, "forward")
    back = SceneBox.from_state(box.state_dict())
    x = forward_scene.points.float()
    assert torch.equal(back.normalize(x), box.normalize(x))
    plain = SceneBox(box.aabb.clone())
    plain.load_state(box.state_dict())
    assert torch.equal(plain.normalize(x), box.normalize(x))


def test_trains_and_resumes_exactly_in_the_frustum(forward_scene, tmp_path):
    cfg = tiny_config(scene_box="forward", max_steps=24)
    a = Trainer(forward_scene, cfg)
    assert a.scene_box.forward is not None
    a.train(max_steps=24)
    b = Trainer(forward_scene, cfg)
    b.train(max_steps=12)
    b.save_checkpoint(tmp_path / "ckpt.pt")
    c = Trainer.from_checkpoint(tmp_path / "ckpt.pt", forward_scene)
    assert c.scene_box.forward is not None
    c.train(max_steps=24)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, c.model.state_dict()[k]), k
