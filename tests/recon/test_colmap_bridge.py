"""BAProblem <-> pycolmap.Reconstruction round trip and agreement with Ceres."""

from __future__ import annotations

import pytest
import torch

from sceneforge.recon.ba import (
    BAOptions,
    bundle_adjust,
    evaluate_cost,
    make_synthetic_problem,
    perturb_problem,
)
from sceneforge.recon.bal import bal_cost, read_bal

pycolmap = pytest.importorskip("pycolmap")
from sceneforge.recon.colmap_bridge import (  # noqa: E402
    colmap_bundle_adjust,
    problem_to_reconstruction,
    reconstruction_to_problem,
)


def test_bal_round_trip_preserves_problem():
    p = make_synthetic_problem("BAL", 4, 15, noise_px=0.3, visibility=0.7)
    rec = problem_to_reconstruction(p)
    assert rec.num_reg_images() == 4 and rec.num_points3D() == 15
    q = reconstruction_to_problem(rec)
    assert q.model == "BAL"
    torch.testing.assert_close(q.rotation, p.rotation, rtol=0, atol=1e-12)
    torch.testing.assert_close(q.translation, p.translation, rtol=0, atol=1e-12)
    torch.testing.assert_close(q.intrinsics, p.intrinsics, rtol=0, atol=0)
    torch.testing.assert_close(q.points, p.points, rtol=0, atol=0)
    assert abs(bal_cost(q) - bal_cost(p)) < 1e-9
    # COLMAP's own reprojection agrees with ours (RADIAL camera, flipped y).
    img = rec.images[1]
    cam = rec.cameras[img.camera_id]
    pid = img.points2D[0].point3D_id
    uv = cam.img_from_cam(img.cam_from_world() * rec.points3D[pid].xyz)
    sel = (p.cam_idx == 0).nonzero()[0, 0]
    c, k = p.cam_idx[sel], p.point_idx[sel]
    from sceneforge.recon.ba import project_observations

    ref, _ = project_observations(
        "BAL", p.rotation[c][None], p.translation[c][None], p.intrinsics[c][None], p.points[k][None]
    )
    assert abs(uv[0] - float(ref[0, 0])) < 1e-8 and abs(uv[1] + float(ref[0, 1])) < 1e-8


def test_opencv_model_round_trip():
    p = make_synthetic_problem("OPENCV", 3, 10)
    q = reconstruction_to_problem(problem_to_reconstruction(p, 640, 480))
    assert q.model == "OPENCV"
    torch.testing.assert_close(q.intrinsics, p.intrinsics)
    assert float(evaluate_cost(q)) < 1e-16


def test_ours_matches_ceres_on_synthetic_problem():
    truth = make_synthetic_problem("BAL", 5, 40, noise_px=1.0, seed=2)
    start = perturb_problem(truth, 1e-2)
    tol = dict(function_tolerance=1e-12, gradient_tolerance=1e-12, parameter_tolerance=1e-12)
    ceres, summary, _ = colmap_bundle_adjust(start, max_iterations=200, **tol)
    ours, _ = bundle_adjust(start, BAOptions(max_iterations=200, num_threads=1, **tol))
    assert bal_cost(ours) <= bal_cost(ceres) * (1 + 1e-6)
    assert abs(bal_cost(ours) - bal_cost(ceres)) <= 1e-5 * bal_cost(ceres)


def test_real_problem_round_trip(shared_data):
    p = read_bal(shared_data / "bal" / "gtsam_dubrovnik-3-7-pre.txt")
    q = reconstruction_to_problem(problem_to_reconstruction(p))
    assert abs(bal_cost(q) - bal_cost(p)) < 1e-9 * bal_cost(p)


def _with_point_behind_camera(p, cam: int = 0):
    """``p`` plus one point behind camera ``cam`` (seen from the others) with a bogus
    observation in ``cam``: COLMAP zeroes that residual, the BAL objective keeps it."""
    from dataclasses import replace

    from sceneforge.core.rotations import angle_axis_to_matrix

    R = angle_axis_to_matrix(p.rotation)
    centers = -(R.transpose(1, 2) @ p.translation[:, :, None])[:, :, 0]
    # BAL cameras look down -z: the camera's +z axis points backwards.
    back = R[cam, 2]
    x = centers[cam] + 1.5 * back
    others = [c for c in range(p.num_cameras) if c != cam]
    from sceneforge.recon.ba import project_observations

    pix, depth = project_observations(
        "BAL",
        p.rotation[others],
        p.translation[others],
        p.intrinsics[others],
        x.expand(len(others), 3),
    )
    seen = [c for c, d in zip(others, depth.tolist(), strict=True) if d > 0]
    assert len(seen) >= 2
    pix = pix[[others.index(c) for c in seen]]
    j = p.num_points
    cams = torch.tensor(seen + [cam])
    obs = torch.cat([pix, torch.tensor([[5.0, -7.0]], dtype=pix.dtype)])
    q = replace(
        p,
        points=torch.cat([p.points, x[None]]),
        cam_idx=torch.cat([p.cam_idx, cams]),
        point_idx=torch.cat([p.point_idx, torch.full_like(cams, j)]),
        observations=torch.cat([p.observations, obs]),
    )
    _, d = project_observations(
        "BAL", q.rotation[cam][None], q.translation[cam][None], q.intrinsics[cam][None], x[None]
    )
    assert float(d) < 0
    return q


def test_behind_camera_zero_is_colmaps_objective():
    truth = make_synthetic_problem("BAL", 6, 40, noise_px=1.0, seed=3)
    start = _with_point_behind_camera(perturb_problem(truth, 1e-2))
    tol = dict(function_tolerance=1e-12, gradient_tolerance=1e-12, parameter_tolerance=1e-12)
    ceres, _, _ = colmap_bundle_adjust(start, max_iterations=200, **tol)
    zero, _ = bundle_adjust(
        start, BAOptions(max_iterations=200, num_threads=1, behind_camera="zero", **tol)
    )
    keep, _ = bundle_adjust(start, BAOptions(max_iterations=200, num_threads=1, **tol))
    colmap_cost = float(evaluate_cost(ceres, behind_camera="zero"))
    # On COLMAP's objective ours reaches Ceres' optimum ...
    assert abs(float(evaluate_cost(zero, behind_camera="zero")) - colmap_cost) <= 1e-6 * colmap_cost
    # ... and the bogus observation costs something only under the BAL objective.
    assert float(evaluate_cost(zero)) > float(evaluate_cost(zero, behind_camera="zero")) + 1.0
    assert float(evaluate_cost(keep)) < float(evaluate_cost(zero))
