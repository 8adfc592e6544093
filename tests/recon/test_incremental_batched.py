"""Batched registration rounds and local bundle adjustment of the incremental model."""

import torch
from test_sfm import FAST, _synthetic

from sceneforge.core.cameras import make_rigid
from sceneforge.core.metrics import pose_metrics
from sceneforge.core.rotations import angle_axis_to_matrix, rotation_angle_deg
from sceneforge.recon.incremental import IncrementalConfig, registration_candidates
from sceneforge.recon.incremental_local import local_bundle_adjustment, local_window
from sceneforge.recon.intrinsics import CameraConfig
from sceneforge.recon.mapping import RefinementConfig, _ba
from sceneforge.recon.sfm import SfMConfig, reconstruct_from_tracks
from sceneforge.recon.triangulation import triangulate


def _config(cams, **incremental) -> SfMConfig:
    params = tuple(cams.params[0].tolist())
    return SfMConfig(
        camera=CameraConfig(model="PINHOLE", params=params, fix_intrinsics=True),
        refinement=FAST,
        init="incremental",
        incremental=IncrementalConfig(**incremental),
    )


def test_registration_candidates_most_correspondences_first_then_index():
    counts = torch.tensor([5, 40, 31, 40, 0, 90])
    assert registration_candidates(counts, 30, 3).tolist() == [5, 1, 3]
    assert registration_candidates(counts, 30, 10).tolist() == [5, 1, 3, 2]
    assert registration_candidates(counts, 100, 10).numel() == 0


def test_batched_registration_registers_the_same_images_as_one_at_a_time():
    cams, tracks = _synthetic("orbit", num_views=10)
    one = reconstruct_from_tracks(tracks, _config(cams, batch_images=1, local_ba_images=0))
    # Two images per round, and no global adjustment before the final one: local ones only.
    cfg = _config(cams, batch_images=2, local_ba_images=4, ba_growth=10.0)
    batched = reconstruct_from_tracks(tracks, cfg)
    assert bool(one.registered.all()) and torch.equal(one.registered, batched.registered)
    assert one.stats["incremental_rounds"] == 8  # one image per round after the initial pair
    assert batched.stats["incremental_rounds"] == 4
    assert batched.stats["incremental_bundle_adjustments"]["local"] >= 3
    assert one.stats["incremental_bundle_adjustments"]["local"] == 0
    for rec in (one, batched):
        m = pose_metrics(rec.cameras.cam_from_world, cams.cam_from_world)
        assert m["mean_rot_err_deg"] < 0.5 and m["auc5"] > 0.95, m
    # Same poses up to the gauge: relative rotations agree within a hundredth of a degree.
    Ta, Tb = one.cameras.cam_from_world, batched.cameras.cam_from_world
    rel_a = Ta[1:, :, :3] @ Ta[0, :, :3].T
    rel_b = Tb[1:, :, :3] @ Tb[0, :, :3].T
    assert float(rotation_angle_deg(rel_a.transpose(1, 2) @ rel_b).max()) < 0.01


def test_batched_incremental_registration_is_deterministic():
    cams, tracks = _synthetic("forward", num_views=8)
    cfg = _config(cams, batch_images=4, local_ba_images=3, ba_growth=2.0)
    a = reconstruct_from_tracks(tracks, cfg)
    b = reconstruct_from_tracks(tracks, cfg)
    assert a.stats["incremental_rounds"] == b.stats["incremental_rounds"]
    assert torch.equal(a.registered, b.registered)
    assert torch.equal(a.cameras.cam_from_world, b.cameras.cam_from_world)
    assert torch.equal(a.points, b.points) and torch.equal(a.track_ids, b.track_ids)


def test_local_bundle_adjustment_moves_the_window_and_holds_the_rest():
    cams, tracks = _synthetic("orbit", num_views=8)
    n = len(cams)
    xy, vis = tracks.xy.double(), tracks.visible.clone()
    tri = triangulate(cams, xy, vis)
    X = tri.points.clone()
    obs = vis & tri.valid[:, None]
    T = cams.cam_from_world.clone()
    new = torch.tensor([4])
    wrong = angle_axis_to_matrix(torch.tensor([0.01, -0.008, 0.006], dtype=torch.float64))
    T[4] = make_rigid(wrong @ T[4, :, :3], T[4, :, 3] + 0.02)
    T[[0, 1, 2, 7]] = T[[0, 1, 2, 7]] + 1e-4  # cameras outside the window: wrong as well
    before = T.clone()
    calls: list[tuple[int, ...]] = []

    def adjust(T_, K, P, cam, pt, obs_xy, fix_points, fix_intr, fixed_cameras=()):
        calls.append(tuple(fixed_cameras))
        T_, K, P, _ = _ba(
            "PINHOLE", T_, K, P, cam, pt, obs_xy, "fixed", RefinementConfig(),
            fix_points=fix_points, fixed_cameras=fixed_cameras,
        )  # fmt: skip
        return T_, K, P

    reg = torch.ones(n, dtype=torch.bool)
    reg[6] = False  # not registered: neither in the window nor adjusted
    win = local_window(obs, reg, new, 3)
    assert win.numel() == 3 and 4 in win.tolist() and 6 not in win.tolist()
    out = local_bundle_adjustment(
        "PINHOLE", T, cams.params.clone(), X, obs, tracks.pixels(), reg, new, adjust, 3, 4.0
    )
    assert torch.equal(out, win)
    inside = torch.zeros(n, dtype=torch.bool)
    inside[win] = True
    assert len(calls) == 1 and len(calls[0]) > 0  # other cameras seeing the points: fixed
    for c in range(n):
        if inside[c]:
            assert not torch.equal(T[c], before[c]), c
        else:
            assert torch.equal(T[c], before[c]), c  # exactly unchanged
    err_before = rotation_angle_deg(before[4, :, :3].T @ cams.cam_from_world[4, :, :3])
    err_after = rotation_angle_deg(T[4, :, :3].T @ cams.cam_from_world[4, :, :3])
    assert float(err_after) < 0.1 * float(err_before)
