"""Hand-held indoor walk-through scenes: seeded rig inside a cluttered room, exact tile
repeats, motion blur that leaves the ground truth alone, default scenes unchanged."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from sceneforge.core.raster import render_view
from sceneforge.core.synthetic import (
    SyntheticSceneConfig,
    build_scene_mesh,
    look_at,
    make_cameras,
    make_scene,
    pixel_correspondences,
    scene_cameras,
)
from sceneforge.core.synthetic_handheld import (
    ROOM_HALF,
    ROOM_HEIGHT,
    blur_schedule,
    dress_room,
    handheld_rig,
    motion_blur,
    motion_blur_kernel,
)


def _cfg(**kw) -> SyntheticSceneConfig:
    base = dict(
        scene="room",
        rig="handheld",
        num_views=6,
        width=48,
        height=36,
        fov_deg=70.0,
        num_objects=16,
        tiled_surfaces=("floor", "wall_y+"),
        motion_blur_px=(0.5, 2.0),
        num_points=100,
    )
    base.update(kw)
    return SyntheticSceneConfig(**base)


def _object_boxes(mesh) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for o in range(int(mesh.face_object.max()) + 1):
        v = mesh.vertices[mesh.faces[mesh.face_object == o].reshape(-1)]
        out.append((v.min(0).values, v.max(0).values))
    return out


def test_deterministic_from_seed():
    a, b = make_scene(_cfg()), make_scene(_cfg())
    assert torch.equal(a.cameras.cam_from_world, b.cameras.cam_from_world)
    for i in range(len(a)):
        assert torch.equal(a.images[i], b.images[i])
        assert torch.equal(a.depths[i], b.depths[i])
    assert torch.equal(a.observations.xy, b.observations.xy)
    c = make_scene(_cfg(seed=1))
    assert not torch.allclose(a.cameras.cam_from_world, c.cameras.cam_from_world)
    assert not torch.equal(a.images[0], c.images[0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cameras_walk_a_shaky_lap_inside_the_room_clear_of_objects(seed):
    cfg = _cfg(seed=seed, num_views=40, num_objects=20)
    mesh, rig = build_scene_mesh(cfg)
    assert rig == "handheld"
    cams = scene_cameras(cfg, mesh, rig)
    c = cams.centers
    hx, hy = ROOM_HALF
    assert (c[:, 0].abs() < hx - 0.5).all() and (c[:, 1].abs() < hy - 0.5).all()
    assert ((c[:, 2] > 1.2) & (c[:, 2] < ROOM_HEIGHT - 0.8)).all()
    boxes = _object_boxes(mesh)
    assert len(boxes) >= 15  # clutter: most of the 20 objects found a spot
    for lo, hi in boxes:
        inside_xy = ((c[:, :2] > lo[:2] - 0.2) & (c[:, :2] < hi[:2] + 0.2)).all(-1)
        assert not (inside_xy & (c[:, 2] < hi[2] + 0.2)).any()
    sizes = torch.stack([(hi - lo).max() for lo, hi in boxes])
    assert sizes.max() / sizes.min() > 4  # small items to furniture
    assert any(float(lo[2]) > 0.2 for lo, _ in boxes)  # something stacked on something
    # not a circle: the distance to the centroid varies, the steps are uneven
    r = (c[:, :2] - c[:, :2].mean(0)).norm(dim=-1)
    assert r.std() / r.mean() > 0.05
    step = (c[1:] - c[:-1]).norm(dim=-1)
    assert step.std() / step.mean() > 0.1
    # looking roughly along the walk (within 90 deg), with roll from the hand shake
    fwd = cams.cam_from_world[:, 2, :3]
    walk = c[1:] - c[:-1]
    cos = (fwd[:-1, :2] * walk[:, :2]).sum(-1) / (
        fwd[:-1, :2].norm(dim=-1) * walk[:, :2].norm(dim=-1)
    )
    assert (cos > 0).float().mean() > 0.9
    roll = torch.rad2deg(torch.asin(cams.cam_from_world[:, 0, 2].clamp(-1, 1)))  # right . z
    assert roll.abs().max() > 0.5


def test_consecutive_views_overlap():
    sd = make_scene(_cfg(num_views=25, width=64, height=48, num_objects=20, motion_blur_px=(0, 0)))
    v, u = torch.meshgrid(
        torch.arange(2, 48, 4.0) + 0.5, torch.arange(2, 64, 4.0) + 0.5, indexing="ij"
    )
    pix = torch.stack([u, v], -1).reshape(-1, 2).double()
    for i in range(len(sd) - 1):
        corr = pixel_correspondences(sd, i, i + 1, pix)
        assert corr.valid.all()  # closed room
        assert corr.visible.float().mean() > 0.25, i


def test_tiles_repeat_exactly():
    """A camera looking straight down at the tiled floor, 32 px per tile along image x: the
    image repeats every 32 columns; the untiled (noise) floor does not."""
    w, h, tile_px, height = 96, 64, 32, 1.0
    f = tile_px * height / 0.4  # floor 6 units = 15 tiles of 0.4
    fov = math.degrees(2 * math.atan(w / 2 / f))
    eye = torch.tensor([[0.13, 0.07, height]], dtype=torch.float64)
    T = look_at(eye, eye - torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), up=(0.0, 1.0, 0.0))
    cams = make_cameras(T, w, h, fov)
    diffs = {}
    for tiled in (("floor",), ()):
        mesh, _ = build_scene_mesh(_cfg(num_objects=0, tiled_surfaces=tiled))
        img = render_view(mesh, cams, 0).color
        assert img.std() > 0.05
        diffs[tiled] = float((img[:, tile_px:] - img[:, :-tile_px]).abs().max())
    assert diffs[("floor",)] < 1e-4
    assert diffs[()] > 0.1


def test_blur_changes_pixels_not_ground_truth():
    sharp = make_scene(_cfg(motion_blur_px=(0.0, 0.0)))
    blurred = make_scene(_cfg(motion_blur_px=(2.0, 3.0)))
    assert torch.equal(sharp.cameras.cam_from_world, blurred.cameras.cam_from_world)
    assert torch.equal(sharp.observations.xy, blurred.observations.xy)
    for i in range(len(sharp)):
        assert torch.equal(sharp.depths[i], blurred.depths[i])
        assert torch.equal(sharp.masks[i], blurred.masks[i])
        d = sharp.images[i].float() - blurred.images[i].float()
        assert d.abs().mean() > 1.0  # visibly different
        assert d.mean().abs() < 1.0  # but no brightness change
    # the kernel is normalised and centred: it blurs without shifting
    for length, angle in [(0.0, 0.0), (2.5, 0.3), (4.0, 2.0)]:
        k = motion_blur_kernel(length, angle).double()
        r = k.shape[0] // 2
        yy, xx = torch.meshgrid(
            torch.arange(k.shape[0]) - r, torch.arange(k.shape[1]) - r, indexing="ij"
        )
        assert abs(float(k.sum()) - 1) < 1e-6
        assert abs(float((k * xx).sum())) < 1e-6 and abs(float((k * yy).sum())) < 1e-6
    img = torch.rand(20, 30, 3)
    assert torch.equal(motion_blur(img, 0.0, 1.0), img)
    assert motion_blur(img, 3.0, 1.0).shape == img.shape


def test_defaults_keep_existing_scenes():
    """The new options are off by default: no blur draws, the furniture ring, no tiles; and
    a default room walk renders identically with the options spelled out."""
    cfg = SyntheticSceneConfig(scene="room", num_views=3, width=32, height=24, num_points=50)
    assert blur_schedule(3, 0, cfg.motion_blur_px) == []
    _, ring = dress_room(cfg, "walk", build_scene_mesh(cfg)[0])
    assert ring
    explicit = SyntheticSceneConfig(
        **{**asdict(cfg), "room_layout": "ring", "tiled_surfaces": (), "motion_blur_px": (0, 0)}
    )
    a, b = make_scene(cfg), make_scene(explicit)
    for i in range(3):
        assert torch.equal(a.images[i], b.images[i])
    # the same room walked by the handheld rig reuses nothing of the walk's ring layout
    assert not torch.equal(
        a.images[0], make_scene(_cfg(num_views=3, width=32, height=24)).images[0]
    )


def test_rig_is_seeded_and_sized():
    a = handheld_rig(7, seed=5)
    assert a.shape == (7, 3, 4) and torch.equal(a, handheld_rig(7, seed=5))
    R = a[:, :, :3]
    torch.testing.assert_close(
        R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(7, 3, 3)
    )
    calm = handheld_rig(7, seed=5, shake_deg=0.0, jitter=0.0, bob=0.0, step_jitter=0.0)
    c = -(calm[:, :, :3].transpose(1, 2) @ calm[:, :, 3:])[..., 0]
    assert torch.allclose(c[:, 2], torch.full((7,), c[0, 2].item(), dtype=torch.float64))


def test_bad_options():
    with pytest.raises(ValueError, match="unknown room surfaces"):
        make_scene(_cfg(tiled_surfaces=("roof",)))
    with pytest.raises(ValueError, match="tiled_surfaces needs"):
        make_scene(SyntheticSceneConfig(tiled_surfaces=("floor",)))
    with pytest.raises(ValueError, match="handheld rig needs"):
        make_scene(SyntheticSceneConfig(rig="handheld", num_views=2, width=16, height=16))
    with pytest.raises(ValueError, match="room_layout"):
        make_scene(_cfg(room_layout="grid"))
    with pytest.raises(ValueError, match="motion_blur_px"):
        make_scene(_cfg(motion_blur_px=(3.0, 1.0)))
