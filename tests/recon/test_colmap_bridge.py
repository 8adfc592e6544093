"""BAProblem <-> pycolmap.Reconstruction round trip and agreement with Ceres."""

from __future__ import annotations

import pytest
import torch

from sceneforge.recon.bal import bal_cost, read_bal
from sceneforge.recon.ba import (
    BAOptions,
    bundle_adjust,
    evaluate_cost,
    make_synthetic_problem,
    perturb_problem,
)

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
