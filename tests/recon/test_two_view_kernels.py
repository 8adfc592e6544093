"""The fast kernels of two-view geometry against plain reference formulations: Sampson errors,
cheirality depths, the closed-form DLT normal matrix, the chunked and compacted pose
refinement, the inlier masks LO-RANSAC carries instead of recomputing, and the torch thread
setting of the stage (restored, results independent of the caller's threads)."""

import pytest
import torch

from sceneforge.core.rotations import angle_axis_to_matrix, rotation_angle_deg, skew
from sceneforge.recon.epipolar import refine_relative_pose, two_view_depths
from sceneforge.recon.homography import dlt_rows, homography_dlt, homography_sampson_error
from sceneforge.recon.two_view import (
    TwoViewConfig,
    estimate_two_view,
    ransac_two_view,
    sampson_error,
)

pytestmark = pytest.mark.usefixtures("one_thread")
D64 = dict(dtype=torch.float64)


def _homog(x):
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


def _pairs(P, M, noise=1e-3, outliers=0.2, seed=0):
    """Calibrated correspondences of ``P`` random relative poses, some outliers, with their
    poses."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, M, 3, generator=g, **D64) + torch.tensor([0.0, 0.0, 6.0], **D64)
    R = angle_axis_to_matrix(torch.randn(P, 3, generator=g, **D64) * 0.2)
    t = torch.nn.functional.normalize(torch.randn(P, 3, generator=g, **D64), dim=-1)
    X2 = X @ R.transpose(-1, -2) + t[:, None]
    x1 = X[..., :2] / X[..., 2:] + noise * torch.randn(P, M, 2, generator=g, **D64)
    x2 = X2[..., :2] / X2[..., 2:] + noise * torch.randn(P, M, 2, generator=g, **D64)
    out = torch.rand(P, M, generator=g) < outliers
    x2[out] = torch.rand(int(out.sum()), 2, generator=g, **D64) - 0.5
    return x1, x2, R, t


def test_sampson_errors_match_plain_formulas():
    x1, x2, R, t = _pairs(6, 50)
    E = (skew(t) @ R)[:, None] + 0.01 * torch.randn(6, 4, 3, 3, **D64)  # (P, 4, 3, 3)
    a1, a2 = _homog(x1)[:, None], _homog(x2)[:, None]  # (P, 1, M, 3)
    Ex1 = a1 @ E.transpose(-1, -2)
    Etx2 = a2 @ E
    num = (a2 * Ex1).sum(-1)
    ref = num**2 / (Ex1[..., :2].square().sum(-1) + Etx2[..., :2].square().sum(-1))
    torch.testing.assert_close(sampson_error(E, x1[:, None], x2[:, None]), ref)
    # Homography: r = x2 - H x1 in homogeneous form, J its Jacobian w.r.t. (x1, x2).
    H = torch.eye(3, **D64) + 0.1 * torch.randn(6, 4, 3, 3, **D64)
    h = a1 @ H.transpose(-1, -2)  # (P, 4, M, 3)
    u2, v2 = x2[:, None, :, 0], x2[:, None, :, 1]
    r = torch.stack([u2 * h[..., 2] - h[..., 0], v2 * h[..., 2] - h[..., 1]], -1)
    Hr = H[:, :, None]  # (P, 4, 1, 3, 3)
    J1 = torch.stack(
        [
            u2[..., None] * Hr[..., 2, :2] - Hr[..., 0, :2],
            v2[..., None] * Hr[..., 2, :2] - Hr[..., 1, :2],
        ],
        -2,
    )  # d r / d x1: (P, 4, M, 2, 2)
    J = torch.cat([J1, torch.diag_embed(h[..., 2, None].expand(*h.shape[:-1], 2))], -1)
    JJt = J @ J.transpose(-1, -2)
    ref_h = (r[..., None, :] @ torch.linalg.solve(JJt, r[..., None]))[..., 0, 0]
    torch.testing.assert_close(homography_sampson_error(H, x1[:, None], x2[:, None]), ref_h)


def test_depths_match_least_squares():
    x1, x2, R, t = _pairs(5, 40, outliers=0.0)
    l1, l2 = two_view_depths(R, t, x1, x2)
    # l1 R d1 - l2 d2 = -t in least squares
    A = torch.stack([_homog(x1) @ R.transpose(-1, -2), -_homog(x2)], -1)  # (P, M, 3, 2)
    sol = torch.linalg.lstsq(A, -t[:, None, :, None].expand(-1, 40, -1, -1)).solution[..., 0]
    torch.testing.assert_close(l1, sol[..., 0])
    torch.testing.assert_close(l2, sol[..., 1])
    assert bool((l1 > 0).all() and (l2 > 0).all())  # exact-ish points lie in front


def test_dlt_normal_matrix_closed_form():
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(4, 60, 2, generator=g, **D64)
    H = torch.eye(3, **D64) + 0.2 * torch.randn(4, 3, 3, generator=g, **D64)
    y = _homog(x1) @ H.transpose(-1, -2)
    x2 = y[..., :2] / y[..., 2:] + 1e-3 * torch.randn(4, 60, 2, generator=g, **D64)
    w = torch.rand(4, 60, generator=g, **D64)
    Hd = homography_dlt(x1, x2, w)
    # Reference: weighted DLT rows without normalisation differ; compare the solutions of the
    # same (normalised) problem by their weighted algebraic residual instead: both minimal.
    A = dlt_rows(x1, x2) * w.repeat_interleave(2, -1)[..., None].sqrt()
    _, _, Vh = torch.linalg.svd(A)
    Hsvd = Vh[..., -1, :].reshape(4, 3, 3)
    for Hx in (Hd, Hsvd):
        Hx = Hx / Hx[..., 2:, 2:]
        Href = H / H[..., 2:, 2:]
        assert float((Hx - Href).abs().max()) < 0.02
    # and exactly through noise-free points
    x2e = y[..., :2] / y[..., 2:]
    He = homography_dlt(x1, x2e, w)
    He, Hn = He / He[..., 2:, 2:], H / H[..., 2:, 2:]
    torch.testing.assert_close(He, Hn, atol=1e-9, rtol=0)


def test_refine_independent_of_batch_and_padding():
    """Problems refined together (ragged, padded anywhere, many chunks) = one by one."""
    P, M = 40, 120
    x1, x2, R, t = _pairs(P, M, outliers=0.1, seed=3)
    g = torch.Generator().manual_seed(4)
    valid = torch.rand(P, M, generator=g) < torch.linspace(0.1, 1.0, P)[:, None]
    valid[0] = False  # a problem without correspondences keeps its pose
    R0 = angle_axis_to_matrix(torch.randn(P, 3, generator=g, **D64) * 0.02) @ R
    t0 = torch.nn.functional.normalize(t + 0.05 * torch.randn(P, 3, generator=g, **D64), dim=-1)
    thr2 = torch.full((P,), 3e-3**2, **D64)
    Rb, tb = refine_relative_pose(R0, t0, x1, x2, valid, thr2, 6)
    for i in range(P):
        m = valid[i]
        Ri, ti = refine_relative_pose(
            R0[i : i + 1],
            t0[i : i + 1],
            x1[i : i + 1, m],
            x2[i : i + 1, m],
            m[m][None],
            thr2[:1],
            6,
        )
        torch.testing.assert_close(Rb[i : i + 1], Ri, atol=1e-9, rtol=0)
        torch.testing.assert_close(tb[i : i + 1], ti, atol=1e-9, rtol=0)
    torch.testing.assert_close(Rb[0], R0[0], atol=0, rtol=0)
    # the refinement did its job
    before = rotation_angle_deg(R0[1:].transpose(-1, -2) @ R[1:]).median()
    after = rotation_angle_deg(Rb[1:].transpose(-1, -2) @ R[1:]).median()
    assert float(after) < 0.5 * float(before)


def test_ransac_inliers_consistent_with_returned_model():
    x1, x2, _, _ = _pairs(12, 200, outliers=0.3, seed=5)
    g = torch.Generator().manual_seed(6)
    valid = torch.rand(12, 200, generator=g) < 0.9
    thr = 2e-3
    E, inl = ransac_two_view(x1, x2, valid, thr, "essential")
    assert torch.equal(inl, valid & (sampson_error(E, x1, x2) < thr**2))
    Hm, h_inl = ransac_two_view(x1, x2, valid, thr, "homography")
    assert torch.equal(h_inl, valid & (homography_sampson_error(Hm, x1, x2) < thr**2))


def test_thread_setting_restored_and_results_independent():
    x1, x2, R, _ = _pairs(4, 100, outliers=0.25, seed=7)
    valid = torch.ones(4, 100, dtype=torch.bool)
    geos = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        geos.append(estimate_two_view(x1, x2, valid, 500.0, TwoViewConfig(num_threads=None)))
        assert torch.get_num_threads() == threads
    torch.set_num_threads(2)
    geos.append(estimate_two_view(x1, x2, valid, 500.0))  # the default: one thread inside
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    for geo in geos[1:]:
        assert torch.equal(geo.inliers, geos[0].inliers)
        assert torch.equal(geo.config, geos[0].config)
        torch.testing.assert_close(geo.R, geos[0].R, atol=1e-9, rtol=0)
    assert float(rotation_angle_deg(geos[0].R.transpose(-1, -2) @ R).median()) < 0.3
