"""P3P, pose refinement, incremental registration and the global-vs-incremental choice."""

import math

import numpy as np
import pytest
import torch
from test_sfm import FAST, _synthetic, fern_images
from test_sfm_global import observe

import sceneforge.recon.sfm as sfm
from sceneforge.core.cameras import make_rigid
from sceneforge.core.metrics import pose_metrics
from sceneforge.core.rotations import angle_axis_to_matrix, rotation_angle_deg
from sceneforge.recon.global_sfm import p3p, pnp_dlt, pnp_ransac, refine_pose
from sceneforge.recon.intrinsics import CameraConfig
from sceneforge.recon.sfm import SfMConfig, reconstruct_from_tracks
from sceneforge.recon.sfm_error import SfMError


def _random_poses(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    R = angle_axis_to_matrix(torch.randn(n, 3, generator=g, dtype=torch.float64))
    t = torch.randn(n, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 6.0]).double()
    return R, t


def test_p3p_recovers_random_poses():
    g = torch.Generator().manual_seed(0)
    R, t = _random_poses(500, g)
    X = torch.randn(500, 3, 3, generator=g, dtype=torch.float64)
    bear = X @ R.transpose(-1, -2) + t[:, None]
    Rs, ts, ok = p3p(X, bear)
    err = (Rs - R[:, None]).flatten(2).norm(dim=-1) + (ts - t[:, None]).norm(dim=-1)
    err = torch.where(ok, err, torch.full_like(err, math.inf)).min(1).values
    # A few random triples are near-degenerate (points almost on a line through the centre).
    assert float((err < 1e-6).double().mean()) > 0.99
    assert bool((ok.sum(1) <= 4).all())


def test_p3p_rejects_points_behind_and_keeps_the_batch_finite():
    X = torch.tensor([[[0.0, 0, 5], [1, 0, 5], [0, 1, 5]], [[0.0, 0, 5], [0, 0, 5], [0, 0, 5]]])
    bear = X.clone()
    R, t, ok = p3p(X.double(), bear.double())
    assert bool(ok[0].any()) and not bool(ok[1].any())  # three equal points: no pose
    assert bool(torch.isfinite(R[ok]).all())


def test_pnp_ransac_on_a_plane_with_outliers():
    """A floor seen at an angle: the linear 6-point solution is degenerate on coplanar points
    (what made incremental registration fail on blowtorch's carpet); P3P is not."""
    g = torch.Generator().manual_seed(3)
    R = angle_axis_to_matrix(torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64))
    t = torch.tensor([0.2, -0.3, 4.0], dtype=torch.float64)
    X = torch.rand(300, 3, generator=g, dtype=torch.float64) * 4 - 2
    X[:, 2] = 0.0
    x, out = observe(X, R, t, g, noise_px=0.3, focal=800.0, outlier_frac=0.4)
    T, inl = pnp_ransac(X, x, 800.0)
    assert float(rotation_angle_deg(T[:, :3].T @ R)) < 0.2
    assert float((T[:, 3] - t).norm()) < 0.02
    assert int((inl & out).sum()) <= 3 and float((inl & ~out).sum() / (~out).sum()) > 0.95
    # The linear solution on the clean coplanar points is far off.
    x_clean, _ = observe(X, R, t, g, noise_px=0.0, focal=800.0, outlier_frac=0.0)
    T_lin = pnp_dlt(X, x_clean)
    assert float(rotation_angle_deg(T_lin[:, :3].T @ R)) > 1.0


def test_refine_pose_converges_from_a_perturbed_pose():
    g = torch.Generator().manual_seed(1)
    R, t = _random_poses(1, g)
    X = torch.randn(50, 3, generator=g, dtype=torch.float64)
    Xc = X @ R[0].T + t[0]
    x = Xc[:, :2] / Xc[:, 2:]
    dR = angle_axis_to_matrix(torch.tensor([0.03, -0.02, 0.04], dtype=torch.float64))
    T0 = make_rigid(dR @ R[0], t[0] + torch.tensor([0.1, -0.05, 0.2], dtype=torch.float64))
    T = refine_pose(T0, X, x)
    assert torch.allclose(T, make_rigid(R[0], t[0]), atol=1e-9)


@pytest.mark.parametrize("rig", ["orbit", "forward"])
def test_incremental_init_matches_ground_truth(rig):
    cams, tracks = _synthetic(rig, num_views=8)
    params = tuple(cams.params[0].tolist())
    cfg = SfMConfig(
        camera=CameraConfig(model="PINHOLE", params=params, fix_intrinsics=True),
        refinement=FAST,
        init="incremental",
    )
    rec = reconstruct_from_tracks(tracks, cfg)
    assert bool(rec.registered.all())
    assert all(b == "incremental" for b in rec.registered_by)
    assert rec.stats["init"] == "incremental"
    m = pose_metrics(rec.cameras.cam_from_world, cams.cam_from_world)
    assert m["mean_rot_err_deg"] < 0.5 and m["auc5"] > 0.95, m


def test_auto_keeps_trusted_global_poses_without_incremental_work():
    cams, tracks = _synthetic("orbit", num_views=8)
    rec = reconstruct_from_tracks(tracks, SfMConfig(refinement=FAST))
    assert rec.stats["init"] == "global" and "incremental_s" not in rec.timings
    assert all(b == "global" for b in rec.registered_by)


def test_auto_replaces_inconsistent_global_poses(monkeypatch):
    """When rotation averaging finds most relative rotations inconsistent, the global poses
    are checked against an incremental model; they disagree here (the averaged rotations are
    corrupted), so the incremental model is used and the result is right."""
    cams, tracks = _synthetic("orbit", num_views=8)
    real = sfm.rotation_averaging

    def corrupted(n, edges, R_rel, w, cfg):
        R_abs, solved, inl = real(n, edges, R_rel, w, cfg)
        g = torch.Generator().manual_seed(0)
        wrong = angle_axis_to_matrix(torch.randn(n, 3, generator=g, dtype=R_abs.dtype) * 2.0)
        inl = torch.zeros_like(inl)
        inl[: max(1, inl.numel() // 4)] = True
        return wrong @ R_abs, solved, inl

    monkeypatch.setattr(sfm, "rotation_averaging", corrupted)
    logs: list[str] = []
    rec = reconstruct_from_tracks(tracks, SfMConfig(refinement=FAST), logs.append)
    assert rec.stats["init"] == "incremental"
    assert rec.stats["global_incremental_agreement"] < 0.8
    assert any("disagree with it" in m for m in logs)
    assert int(rec.registered.sum()) == 8
    m = pose_metrics(rec.cameras.cam_from_world, cams.cam_from_world)
    assert m["auc5"] > 0.9, m
    # The same corrupted global poses without the check: wrong.
    bad = reconstruct_from_tracks(tracks, SfMConfig(refinement=FAST, init="global"))
    assert pose_metrics(bad.cameras.cam_from_world, cams.cam_from_world)["auc5"] < 0.5


@pytest.mark.slow
def test_blowtorch_wrong_global_poses_are_replaced(shared_data):
    """Real photos where the global step goes wrong: a textureless brass object on a carpet,
    strong radial distortion; many pairs' relative poses fit a wrong motion. The global poses
    alone come out mostly wrong with a small reprojection error (silent garbage); the auto
    check replaces them by an incremental model that agrees with the reference poses."""
    from sceneforge.core.conventions import llff_to_opencv
    from sceneforge.core.image_io import read_image
    from sceneforge.core.metrics import relative_pose_errors
    from sceneforge.recon.features import FeaturesConfig
    from sceneforge.recon.matching import MatchingConfig
    from sceneforge.recon.tracking import TracksConfig, build_tracks

    scene = shared_data / "scenes" / "blowtorch"
    if not (scene / "poses_bounds.npy").is_file():
        pytest.skip("blowtorch not available")
    files = sorted((scene / "images").iterdir())
    pb = torch.from_numpy(np.load(scene / "poses_bounds.npy"))
    ref, _ = llff_to_opencv(pb[:, :15].reshape(-1, 3, 5).double())
    idx = list(range(38, 64))
    tracks = build_tracks(
        [read_image(files[i]) for i in idx],
        TracksConfig(
            features=FeaturesConfig(method="sift", max_image_size=800),
            matching=MatchingConfig(method="auto"),
            num_query_frames=0,
        ),
    )
    ref = ref[idx]

    def right_pairs(rec) -> float:
        reg = rec.registered
        r, t = relative_pose_errors(rec.cameras.cam_from_world[reg], ref[reg])
        return float((torch.maximum(r, t) < 5.0).double().mean())

    logs: list[str] = []
    rec = reconstruct_from_tracks(tracks, SfMConfig(), logs.append)
    assert rec.stats["init"] == "incremental", logs
    assert int(rec.registered.sum()) >= 12
    # At most one image off: over two-view seeds 0-5 (2026-12-06) the incremental model
    # registered 15 images all right (seeds 1, 4, 5) or 14 with image 44 turned ~25 deg
    # (seeds 0, 2, 3: 13 of 91 pairs wrong, 0.857); which one a run gets hangs on
    # floating-point detail (the same tracks gave 1.0 in pytest and 0.857 in a script).
    assert right_pairs(rec) > 0.85
    k = float(rec.cameras.params[0, 3])
    assert 0.15 < k < 0.35  # the lens' radial distortion (reference calibration ~0.24)
    glob = reconstruct_from_tracks(tracks, SfMConfig(init="global"))
    # global alone is wrong: 23-47% of pairs right on the machine this was written on, 76% on
    # a 2-core AVX-512 machine (its floating point takes other RANSAC branches; issue 24)
    assert right_pairs(glob) < 0.9


def test_reconstruct_retracks_all_pairs_when_in_doubt(shared_data, tmp_path, monkeypatch):
    """Global poses in doubt: ``reconstruct`` tracks again with every image as a query frame
    (reusing the extracted features) and keeps the second reconstruction."""
    import sceneforge.recon.reconstruct as folder
    import sceneforge.recon.tracking as tracking
    from sceneforge.recon.reconstruct import ReconstructConfig, reconstruct

    imgs = fern_images(shared_data, tmp_path / "images", 6, 4)
    calls: list[list[int]] = []
    real = sfm.reconstruct_from_tracks

    def doubting(tracks, cfg, log=None):
        calls.append(list(tracks.info["query_frames"]))
        rec = real(tracks, cfg, log)
        if len(calls) == 1:
            rec.stats["global_doubts"] = ["a doubt for the test"]
        return rec

    extracted = []
    real_extract = tracking.extract_features

    def counting(*a, **k):
        extracted.append(1)
        return real_extract(*a, **k)

    monkeypatch.setattr(folder, "reconstruct_from_tracks", doubting)
    monkeypatch.setattr(tracking, "extract_features", counting)
    cfg = ReconstructConfig(features="sift", progress=False, num_query_frames=2)
    summary = reconstruct(imgs, tmp_path / "out", cfg)
    assert calls == [[0, 5], list(range(6))]
    assert len(extracted) == 1
    assert summary["stats"]["retracked"] is True
    assert summary["stats"]["first_pass"]["global_doubts"] == ["a doubt for the test"]
    assert summary["timings_s"]["retrack_s"] > 0 and "first_two_view_s" in summary["timings_s"]
    assert summary["num_registered"] == 6
    # A first reconstruction that fails also gets a second chance with all pairs.
    calls.clear()

    def failing_first(tracks, cfg, log=None):
        calls.append(list(tracks.info["query_frames"]))
        if len(calls) == 1:
            raise SfMError("no image pair shares 30 tracks (for the test)")
        return real(tracks, cfg, log)

    monkeypatch.setattr(folder, "reconstruct_from_tracks", failing_first)
    summary = reconstruct(imgs, tmp_path / "out3", cfg)
    assert calls == [[0, 5], list(range(6))] and summary["num_registered"] == 6
    assert summary["stats"]["retracked"] is True and "first_pass" not in summary["stats"]
    monkeypatch.setattr(folder, "reconstruct_from_tracks", doubting)
    # Off: one tracking, one reconstruction.
    calls.clear()
    cfg = ReconstructConfig(
        features="sift", progress=False, num_query_frames=2, retrack_on_doubt=False
    )
    reconstruct(imgs, tmp_path / "out2", cfg)
    assert calls == [[0, 5]]
