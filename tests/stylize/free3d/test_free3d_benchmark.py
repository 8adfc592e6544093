"""The consistency metrics of the Free3D benchmark on ground truth with exact geometry:
depth-warped PSNR and TSED are high for true views and true poses and drop for a wrong pose."""

from __future__ import annotations

import pytest
import torch

from sceneforge.core.cameras import compose_rigid, invert_rigid, pixel_centers
from sceneforge.recon.epipolar import fundamental_from_poses, symmetric_epipolar_distance
from sceneforge.stylize.free3d.data import procedural_object
from sceneforge.stylize.free3d.metrics import (
    render_with_depth,
    tsed,
    tsed_pair,
    warp_to_view,
    warped_psnr,
)
from sceneforge.stylize.free3d.poses import ZERO123_FOV_DEG, spherical_cam_from_world

pytest.importorskip("cv2")


def _arc(azimuths, elevation=20.0, radius=2.0):
    az = torch.tensor(azimuths, dtype=torch.float64)
    return spherical_cam_from_world(az, torch.full_like(az, elevation), torch.full_like(az, radius))


@pytest.fixture(scope="module")
def views():
    mesh = procedural_object(3)
    return {s: render_with_depth(mesh, _arc([30.0, 45.0, 60.0]), s, ZERO123_FOV_DEG)
            for s in (64, 128)}  # fmt: skip


def _pair(r, i, j, cfw=None):
    C = r["cam_from_world"] if cfw is None else cfw
    return (r["images"][i], r["images"][j], r["depth"][i], r["depth"][j], r["K"][i], r["K"][j],
            C[i], C[j])  # fmt: skip


def test_render_depth_is_camera_z(views):
    r = views[64]
    assert torch.equal(r["depth"] > 0, r["alpha"][:, 0] > 0)
    d = r["depth"][r["depth"] > 0]
    assert 1.0 < float(d.min()) and float(d.max()) < 3.0  # cameras at distance 2, unit object


def test_warp_to_itself_is_exact(views):
    r = views[64]
    warped, valid = warp_to_view(r["images"][0], r["K"][0], r["cam_from_world"][0],
                                 r["depth"][0], r["K"][0], r["cam_from_world"][0], r["depth"][0])  # fmt: skip
    assert int(valid.sum()) > 0.8 * int((r["depth"][0] > 0).sum())
    err = (warped - r["images"][0]).abs().permute(1, 2, 0)[valid]
    assert float(err.max()) < 1e-4


def test_warped_psnr_ground_truth_high_and_wrong_pose_low(views):
    r = views[128]
    p, n = warped_psnr(*_pair(r, 0, 1))
    assert p > 30.0 and n > 1000
    p2, _ = warped_psnr(*_pair(r, 1, 2))
    assert p2 > 30.0
    bad = _arc([30.0, 65.0, 80.0])  # view 1 claimed 20 degrees further than it is
    pb, _ = warped_psnr(*_pair(r, 0, 1, bad))
    assert pb < p - 8.0


def test_fundamental_matrix_true_correspondences():
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]], dtype=torch.float64)
    C = _arc([30.0, 45.0])
    depth = torch.full((64, 64), 2.0, dtype=torch.float64)
    uv = pixel_centers(64, 64, dtype=torch.float64).reshape(-1, 2)
    pts = (torch.linalg.solve(K, torch.cat([uv, torch.ones_like(uv[:, :1])], -1).T) * 2.0).T
    T = compose_rigid(C[0], invert_rigid(C[1]))
    pi = (pts @ T[:, :3].T + T[:, 3]) @ K.T
    pi = pi[:, :2] / pi[:, 2:]
    F = fundamental_from_poses(K, C[0], K, C[1])
    sed = symmetric_epipolar_distance(F, pi, uv)
    assert float(sed.abs().max()) < 1e-9
    assert depth.shape == (64, 64)
    off = symmetric_epipolar_distance(F, pi + torch.tensor([0.0, 3.0], dtype=pi.dtype), uv)
    assert float(off.median()) > 0.5


def test_tsed_ground_truth_consistent_and_wrong_pose_not(views):
    r = views[64]
    score, pairs = tsed(r["images"], r["K"], r["cam_from_world"])
    assert score == 1.0
    assert all(p["inliers"] >= 10 for p in pairs)
    bad = _arc([30.0, 65.0, 80.0])
    wrong = tsed_pair(r["images"][0], r["images"][1], r["K"][0], r["K"][1], bad[0], bad[1])
    assert not wrong["consistent"]
    assert wrong["inliers"] < pairs[0]["inliers"]
    assert wrong["median_sed"] > pairs[0]["median_sed"]
