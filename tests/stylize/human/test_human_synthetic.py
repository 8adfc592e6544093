"""Synthetic human videos (issue 20): motions on SMPL's and anny's joints, exact masks and
images against the project's renderer, keypoints, non-rigid offsets, held-out splits and the
folder round trip. Runs on the tiny SMPL-format model always and on anny when installed."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from sceneforge.core.meshes import merge_meshes
from sceneforge.core.raster import render_view
from sceneforge.core.rotations import rotation_angle_deg
from sceneforge.stylize.human import SMPLModel
from sceneforge.stylize.human.motions import body_rig, make_motion
from sceneforge.stylize.human.synthetic import (
    HumanVideoConfig,
    make_human_video,
    person_mesh,
    read_human_video,
    room_scene,
    write_human_video,
)

SMALL = HumanVideoConfig(
    size=48, num_frames=4, fps=8.0, heldout_frames=2, heldout_views=2, heldout_stride=2
)


@pytest.fixture(scope="module", params=["smpl", "anny"])
def body(request):
    if request.param == "anny":
        return request.getfixturevalue("anny_model")
    return SMPLModel.from_path(request.getfixturevalue("tiny_smpl_dir"), dtype=torch.float64)


@pytest.fixture(scope="module")
def video(body):
    return make_human_video(body, SMALL)


def _joint(model, out, role, side=None):
    return out.joints[:, model.joint_names.index(body_rig(model).joint(role, side))]


def test_motions_on_named_joints(body):
    rig = body_rig(body)
    up, fwd = torch.tensor(rig.up).double(), torch.tensor(rig.forward).double()
    walk = make_motion(body, "walk", 12, fps=12.0)
    assert walk.rotations.shape == (12, body.num_joints, 3, 3)
    eye = torch.eye(3, dtype=walk.rotations.dtype)
    torch.testing.assert_close(walk.rotations @ walk.rotations.mT, eye.expand_as(walk.rotations))
    out = body(walk.pose().to(body.dtype), transl=walk.root_offset.to(body.dtype))
    assert float(walk.root_offset[-1] @ fwd) > 0.5  # walks forward (0.9 m/s for 1 s)
    lead = (_joint(body, out, "foot", 0) - _joint(body, out, "foot", 1)) @ fwd
    assert float(lead.max()) > 0.15 and float(lead.min()) < -0.15  # the feet alternate
    wave = body(make_motion(body, "wave", 6).pose().to(body.dtype))
    wrist_r, shoulder_r = (
        _joint(body, wave, "hand", 1) @ up,
        _joint(body, wave, "upper_arm", 1) @ up,
    )
    wrist_l, shoulder_l = (
        _joint(body, wave, "hand", 0) @ up,
        _joint(body, wave, "upper_arm", 0) @ up,
    )
    assert bool((wrist_r > shoulder_r + 0.2).all()) and bool((wrist_l < shoulder_l - 0.2).all())
    turn = make_motion(body, "turn", 10, turn_degrees=120.0)
    assert float(rotation_angle_deg(turn.rotations[-1, 0])) == pytest.approx(120.0, abs=1e-6)
    assert float(rotation_angle_deg(turn.rotations[0, 0])) == pytest.approx(0.0, abs=1e-6)
    both = make_motion(body, "walk+turn", 10)  # the turn starts where the walk stopped
    torch.testing.assert_close(both.root_offset[5], both.root_offset[4])
    with pytest.raises(ValueError, match="unknown motion"):
        make_motion(body, "dance", 4)


def test_masks_images_and_mesh_match_the_renderer(body, video):
    """Mask = person-only render = person faces of the full-scene render, image = the full
    render, all from the stored parameters + offsets (so the ground truth is exact)."""
    cfg, f = video.config, video.train
    verts = video.posed_vertices(body, "train")
    room = room_scene(cfg)
    for i in (0, len(f) - 1):
        person = person_mesh(verts[i], video.faces, video.vertex_colors)
        alone = render_view(person, f.cameras, i, ssaa=cfg.ssaa)
        assert torch.equal(alone.face >= 0, f.masks[i])
        full = render_view(merge_meshes([person, room]), f.cameras, i, ssaa=cfg.ssaa)
        scene = merge_meshes([person, room])
        hit = full.face >= 0
        on_person = torch.zeros_like(hit)
        on_person[hit] = scene.face_object[full.face[hit]] >= 0
        assert torch.equal(on_person, f.masks[i])
        torch.testing.assert_close(full.color.permute(2, 0, 1), f.images[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(full.depth.float(), f.depth[i], atol=1e-5, rtol=1e-5)
    assert bool((f.alpha[f.masks] > 0).all()) and bool(f.masks[f.alpha == 1].all())
    assert 0.005 < float(f.masks.float().mean()) < 0.5  # the person is in view, not filling it


def test_supersampling_gives_fractional_edges(body, video):
    """ssaa x ssaa supersamples: coverage in steps of 1/ssaa^2 with many fractional edge
    pixels (their colours blend person and room); ssaa = 1 gives a binary coverage."""
    f, n = video.train, video.config.ssaa**2
    partial = (f.alpha > 0) & (f.alpha < 1)
    assert int(partial.sum()) > 10
    steps = f.alpha[partial] * n
    torch.testing.assert_close(steps, steps.round(), atol=1e-5, rtol=0)
    assert len(steps.round().unique()) >= 4
    one = make_human_video(body, replace(SMALL, ssaa=1, heldout_views=0, heldout_frames=0))
    assert set(one.train.alpha.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(one.train.masks, f.masks)  # same pixel-centre rays
    assert not torch.allclose(one.train.images, f.images, atol=1e-3)


def test_keypoints_fall_inside_the_person(body, video):
    # all within `slack` px of the person's coverage, most on its pixel-centre mask (the tiny
    # SMPL body is 3 cm octahedra, ~1 px here, moved by random pose blend shapes: more slack)
    slack, hit_rate = (2, 0.5) if body.name == "smpl" else (1, 0.8)
    for s in ("train", "heldout_views", "heldout_poses"):
        f = video.split(s)
        grown = F.max_pool2d((f.alpha > 0)[:, None].float(), 2 * slack + 1, 1, slack)[:, 0] > 0
        uv = f.keypoints_2d.floor().long()
        size = video.config.size
        assert bool(((uv >= 0) & (uv < size)).all()), s
        n = torch.arange(len(f))[:, None].expand(-1, uv.shape[1])
        inside = grown[n, uv[..., 1], uv[..., 0]]
        assert bool(inside.all()), (s, inside.float().mean())
        exact = f.masks[n, uv[..., 1], uv[..., 0]]
        assert float(exact.float().mean()) > hit_rate, (s, exact.float().mean())


def _procrustes_residual(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS residual of the best rigid map of points ``a`` onto ``b``."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    u, _, vt = torch.linalg.svd(ca.T @ cb)
    d = torch.sign(torch.det(vt.T @ u.T))
    r = vt.T @ torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=a.dtype)) @ u.T
    return float(((ca @ r.T - cb).square().sum(-1).mean()).sqrt())


def test_nonrigid_offsets_bounded_and_not_lbs(body, video):
    amp = video.config.offset_amplitude
    f = video.train
    norms = f.offsets.norm(dim=-1)
    assert float(norms.max()) <= amp * (1 + 1e-9) and float(norms.max()) > 0.5 * amp
    assert not torch.allclose(f.offsets[0], f.offsets[-1])  # time-varying
    lbs = body(f.pose.to(body.dtype), video.shape, f.transl).vertices
    gt = video.posed_vertices(body, "train")
    assert float((gt - lbs).norm(dim=-1).max()) > 0.5 * amp
    # within one bone's vertices pure LBS is rigid; the offsets are not
    weights = body.canonical(video.shape)[2]
    owner = weights.argmax(-1)
    moved = norms[0] > 0.2 * amp
    counts = torch.bincount(owner[moved], minlength=body.num_joints)
    j = int(counts.argmax())
    sel = (owner == j) & (weights.amax(-1) > 0.5)
    assert int(sel.sum()) >= 6
    assert _procrustes_residual(lbs[0, sel], gt[0, sel]) > 0.15 * amp


def test_heldout_views_and_poses_are_disjoint(video):
    train, hv, hp = video.train, video.heldout_views, video.heldout_poses
    assert len(hv) == 2 * 2 and len(hp) == 2
    assert set(hv.frame.tolist()) <= set(train.frame.tolist())
    assert not set(hp.frame.tolist()) & set(train.frame.tolist())
    dist = torch.cdist(hv.cameras.centers, train.cameras.centers)
    assert float(dist.min()) > 0.5
    d_pose = (hp.pose[:, None] - train.pose[None]).abs().flatten(2).amax(-1)
    assert float(d_pose.min()) > 0.3  # a wave never seen while walking


def test_deterministic_given_seed(tiny_smpl_dir):
    model = SMPLModel.from_path(tiny_smpl_dir, dtype=torch.float64)
    cfg = replace(SMALL, size=24, num_frames=2, heldout_frames=1, heldout_views=1)
    a, b = make_human_video(model, cfg), make_human_video(model, cfg)
    for s in ("train", "heldout_views", "heldout_poses"):
        assert torch.equal(a.split(s).images, b.split(s).images)
        assert torch.equal(a.split(s).offsets, b.split(s).offsets)
    c = make_human_video(model, replace(cfg, seed=1))
    assert not torch.equal(a.train.images, c.train.images)


def test_orbit_camera_keeps_the_person_centred(tiny_smpl_dir):
    model = SMPLModel.from_path(tiny_smpl_dir, dtype=torch.float64)
    cfg = replace(SMALL, camera="orbit", num_frames=6, heldout_frames=0, heldout_views=0)
    f = make_human_video(model, cfg).train
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    m = f.alpha
    cx = (m * xs).sum((1, 2)) / m.sum((1, 2))
    cy = (m * ys).sum((1, 2)) / m.sum((1, 2))
    assert float((cx - 24).abs().max()) < 0.12 * 48 and float((cy - 24).abs().max()) < 0.12 * 48
    c = f.cameras.centers
    az = torch.atan2(c[:, 1] - c[:, 1].mean(), c[:, 0] - c[:, 0].mean())
    steps = torch.remainder(az.diff(), 2 * math.pi)
    assert torch.allclose(steps, torch.full_like(steps, 2 * math.pi / 6), atol=0.1)  # circling
    static = make_human_video(model, replace(cfg, camera="static")).train.cameras
    assert torch.equal(static.cam_from_world, static.cam_from_world[:1].expand(6, 3, 4))


def test_folder_round_trip(tmp_path, tiny_smpl_dir):
    model = SMPLModel.from_path(tiny_smpl_dir, dtype=torch.float64)
    v = make_human_video(model, replace(SMALL, size=24, num_frames=3))
    (tmp_path / "empty").mkdir()
    write_human_video(v, tmp_path / "empty")  # an empty folder is fine
    with pytest.raises(FileExistsError):
        write_human_video(v, tmp_path / "empty")
    back = read_human_video(tmp_path / "empty")
    assert back.config == v.config and back.keypoint_ids == v.keypoint_ids
    assert torch.equal(back.faces, v.faces) and torch.equal(back.shape, v.shape)
    for s in ("train", "heldout_views", "heldout_poses"):
        a, b = v.split(s), back.split(s)
        assert torch.equal(a.frame, b.frame) and torch.equal(a.masks, b.masks)
        assert float((a.images - b.images).abs().max()) <= 0.5 / 255 + 1e-6  # 8-bit PNG
        for name in ("pose", "transl", "offsets", "alpha", "depth", "keypoints_2d"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (s, name)
        assert torch.equal(a.cameras.cam_from_world, b.cameras.cam_from_world)
        assert torch.equal(a.cameras.K, b.cameras.K)
    torch.testing.assert_close(back.posed_vertices(model), v.posed_vertices(model))
