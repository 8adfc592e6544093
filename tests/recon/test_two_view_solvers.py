"""Minimal solvers of two-view geometry on many random noise-free problems at once: the 5-point
essential, the 7-point fundamental and the 4-point homography, plus degenerate samples."""

import pytest
import torch

from sceneforge.core.rotations import angle_axis_to_matrix, rotation_angle_deg, skew
from sceneforge.recon.five_point import cheiral_sample, essential_poses, five_point, seven_point
from sceneforge.recon.homography import (
    decompose_homography,
    homography_4pt,
    homography_dlt,
    homography_sampson_error,
    rotation_from_bearings,
)
from sceneforge.recon.two_view import sampson_error

pytestmark = pytest.mark.usefixtures("one_thread")


def _problems(N, k, seed=0, f=None):
    """``N`` random scenes of ``k`` points in front of two cameras (calibrated, or pixels with
    focal ``f``)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, k, 3, generator=g, dtype=torch.float64) + torch.tensor(
        [0.0, 0.0, 6.0], dtype=torch.float64
    )
    R = angle_axis_to_matrix(torch.randn(N, 3, generator=g, dtype=torch.float64) * 0.3)
    t = torch.nn.functional.normalize(torch.randn(N, 3, generator=g, dtype=torch.float64), dim=-1)
    X2 = X @ R.transpose(-1, -2) + t[:, None]
    x1, x2 = X[..., :2] / X[..., 2:], X2[..., :2] / X2[..., 2:]
    ok = (X[..., 2] > 0.1).all(1) & (X2[..., 2] > 0.1).all(1)
    E = skew(t) @ R
    if f is not None:
        pp = torch.tensor([320.0, 240.0], dtype=torch.float64)
        K = torch.tensor([[f, 0, 320.0], [0, f, 240.0], [0, 0, 1]], dtype=torch.float64)
        Ki = torch.linalg.inv(K)
        return x1 * f + pp, x2 * f + pp, Ki.T @ E @ Ki, ok
    return x1, x2, E, ok


def _dist_up_to_scale(Ms, M):
    """Distance of unit-norm candidates ``(N, S, 3, 3)`` to ``M (N, 3, 3)`` up to scale/sign."""
    M = M / M.flatten(1).norm(dim=1)[:, None, None]
    d1 = (Ms - M[:, None]).flatten(2).norm(dim=-1)
    d2 = (Ms + M[:, None]).flatten(2).norm(dim=-1)
    return torch.minimum(d1, d2)


def test_five_point_recovers_essential():
    N = 3000
    x1, x2, E, ok = _problems(N, 5)
    Es, real = five_point(x1, x2)
    assert Es.shape == (N, 10, 3, 3) and real.shape == (N, 10)
    d = torch.where(real, _dist_up_to_scale(Es, E), torch.full_like(real, 9.0, dtype=E.dtype))
    found = d.min(1).values < 1e-6
    assert float(found.double().mean()) > 0.99
    # every real solution satisfies the epipolar constraints and is an essential matrix
    err = sampson_error(Es, x1[:, None], x2[:, None]).amax(-1)
    assert float(err[real].max()) < 1e-12
    s = torch.linalg.svdvals(Es[real])
    assert float(((s[:, 0] - s[:, 1]) / s[:, 0]).abs().max()) < 1e-6
    assert float(s[:, 2].abs().max()) < 1e-6
    # the chirality test of the sample keeps the true solution
    keep = cheiral_sample(Es, x1, x2) & real
    kept = ((d < 1e-6) & keep).any(1)
    assert float(kept[ok].double().mean()) > 0.99
    assert float(keep.sum(1).double().mean()) < float(real.sum(1).double().mean())


def test_essential_poses_closed_form():
    g = torch.Generator().manual_seed(3)
    R = angle_axis_to_matrix(torch.randn(200, 3, generator=g, dtype=torch.float64) * 0.3)
    t = torch.nn.functional.normalize(torch.randn(200, 3, generator=g, dtype=torch.float64), dim=-1)
    Rs, tt = essential_poses(-2.5 * skew(t) @ R)
    err = rotation_angle_deg(Rs.transpose(-1, -2) @ R[:, None]).min(1).values
    assert float(err.max()) < 1e-6
    assert float(((tt * t).sum(-1).abs() - 1).abs().max()) < 1e-9


def test_five_point_degenerate_samples_do_not_crash():
    x1, x2, _, _ = _problems(64, 5, seed=1)
    cases = {
        "repeated": (x1[:, [0, 0, 1, 2, 3]], x2[:, [0, 0, 1, 2, 3]]),
        "collinear": (
            torch.stack([torch.linspace(-1, 1, 5, dtype=torch.float64)] * 2, -1).expand(64, 5, 2),
            x2,
        ),
        "zeros": (torch.zeros_like(x1), torch.zeros_like(x2)),
        "nan": (torch.full_like(x1, float("nan")), x2),
        # pure rotation: the translation is undefined, E is not determined
        "rotation": (x1, x1 @ torch.eye(2, dtype=torch.float64)),
    }
    for name, (a, b) in cases.items():
        Es, real = five_point(a, b)
        assert Es.shape == (64, 10, 3, 3), name
        assert bool(torch.isfinite(Es).all()), name
        assert bool(torch.isfinite(Es[real]).all()), name
        cheiral_sample(Es, a, b)  # no exception


def test_seven_point_recovers_fundamental():
    N = 3000
    p1, p2, F, _ = _problems(N, 7, seed=2, f=500.0)
    # Hartley-style normalisation (the solver expects well-scaled coordinates)
    c = torch.tensor([320.0, 240.0], dtype=torch.float64)
    s = 1.0 / 250.0
    T = torch.tensor([[s, 0, -s * 320], [0, s, -s * 240], [0, 0, 1]], dtype=torch.float64)
    Fs, real = seven_point((p1 - c) * s, (p2 - c) * s)
    assert Fs.shape == (N, 3, 3, 3)
    Fn = torch.linalg.inv(T).T @ F @ torch.linalg.inv(T)
    d = torch.where(real, _dist_up_to_scale(Fs, Fn), torch.full_like(real, 9.0, dtype=F.dtype))
    assert float((d.min(1).values < 1e-6).double().mean()) > 0.99
    det = torch.linalg.det(Fs[real])
    assert float(det.abs().max()) < 1e-9
    # degenerate: repeated points, NaNs
    for a, b in (
        (p1[:, [0, 0, 0, 1, 1, 2, 2]], p2[:, [0, 0, 0, 1, 1, 2, 2]]),
        (p1 * float("nan"), p2),
    ):
        Fs, real = seven_point(a, b)
        assert bool(torch.isfinite(Fs).all())


def test_homography_minimal_and_dlt_exact():
    g = torch.Generator().manual_seed(4)
    N = 500
    R = angle_axis_to_matrix(torch.randn(N, 3, generator=g, dtype=torch.float64) * 0.3)
    t = torch.randn(N, 3, generator=g, dtype=torch.float64) * 0.3
    n = torch.nn.functional.normalize(
        torch.randn(N, 3, generator=g, dtype=torch.float64) * 0.3
        + torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64),
        dim=-1,
    )
    H = R + t[:, :, None] * n[:, None, :]
    x1 = torch.randn(N, 30, 2, generator=g, dtype=torch.float64) * 0.4
    h = torch.cat([x1, torch.ones_like(x1[..., :1])], -1) @ H.transpose(-1, -2)
    x2 = h[..., :2] / h[..., 2:]
    H4, ok = homography_4pt(x1[:, :4], x2[:, :4])
    assert bool(ok.all())
    assert float(_dist_up_to_scale(H4, H).max()) < 1e-9
    Hd = homography_dlt(x1, x2, torch.ones(N, 30, dtype=torch.float64))
    assert float(_dist_up_to_scale(Hd[:, None], H).max()) < 1e-8
    assert float(homography_sampson_error(Hd, x1, x2).max()) < 1e-20
    # decomposition: the true (R, t, n) is among the four candidates
    Rs, ts, ns = decompose_homography(H)
    good = (rotation_angle_deg(Rs.transpose(-1, -2) @ R[:, None]) < 1e-6) & (
        (ts - t[:, None]).norm(dim=-1) < 1e-6
    )
    assert bool(good.any(1).all())
    # a pure rotation: the rotation fit is exact
    h = torch.cat([x1, torch.ones_like(x1[..., :1])], -1) @ R.transpose(-1, -2)
    Rr = rotation_from_bearings(x1, h[..., :2] / h[..., 2:], torch.ones(N, 30, dtype=torch.float64))
    assert float(rotation_angle_deg(Rr.transpose(-1, -2) @ R).max()) < 1e-6
    # collinear sample: flagged, finite
    line = torch.stack([torch.linspace(-1, 1, 4, dtype=torch.float64)] * 2, -1).expand(N, 4, 2)
    H4, ok = homography_4pt(line, x2[:, :4])
    assert bool(torch.isfinite(H4).all()) and not bool(ok.any())
