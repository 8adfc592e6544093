"""Batched two-view geometry on synthetic correspondences with noise and outliers."""

import math

import pytest
import torch

from sceneforge.core.rotations import angle_axis_to_matrix, rotation_angle_deg, skew
from sceneforge.recon.self_calibration import estimate_shared_focal, shared_focal_contrast
from sceneforge.recon.two_view import (
    TwoViewConfig,
    decompose_essential,
    essential_8pt,
    estimate_two_view,
    fundamental_8pt,
    sampson_error,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(P=12, M=300, noise_px=0.0, outliers=0.0, f=500.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, M, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [2.0, 2.0, 1.0], dtype=torch.float64
    )
    X = X + torch.tensor([0.0, 0.0, 6.0], dtype=torch.float64)
    R = angle_axis_to_matrix(torch.randn(P, 3, generator=g, dtype=torch.float64) * 0.15)
    t = torch.nn.functional.normalize(torch.randn(P, 3, generator=g, dtype=torch.float64), dim=-1)
    X2 = X @ R.transpose(-1, -2) + t[:, None]
    x1, x2 = X[..., :2] / X[..., 2:], X2[..., :2] / X2[..., 2:]
    x1 = x1 + torch.randn(x1.shape, generator=g, dtype=torch.float64) * noise_px / f
    x2 = x2 + torch.randn(x2.shape, generator=g, dtype=torch.float64) * noise_px / f
    out = torch.rand(P, M, generator=g) < outliers
    x2[out] = (torch.rand(int(out.sum()), 2, generator=g, dtype=torch.float64) - 0.5) * 0.8
    valid = torch.rand(P, M, generator=g) < 0.9  # ragged pairs through padding
    return x1, x2, valid, out, R, t, f


def test_8pt_exact_and_decomposition():
    x1, x2, valid, _, R, t, _ = _pairs(P=3, M=50)
    E = essential_8pt(x1, x2)
    Egt = skew(t) @ R
    Egt = Egt / Egt.flatten(1).norm(dim=1)[:, None, None]
    En = E / E.flatten(1).norm(dim=1)[:, None, None]
    sign = (En * Egt).sum((-1, -2)).sign()[:, None, None]
    assert torch.allclose(En * sign, Egt, atol=1e-8)
    Rs, ts = decompose_essential(E)
    err = rotation_angle_deg(Rs.transpose(-1, -2) @ R[:, None]).min(1).values
    assert float(err.max()) < 1e-6
    # Fundamental: pixel coordinates of the same geometry, rank 2, zero Sampson error.
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=torch.float64)
    p1 = x1 * 500 + torch.tensor([320.0, 240.0], dtype=torch.float64)
    p2 = x2 * 500 + torch.tensor([320.0, 240.0], dtype=torch.float64)
    F = fundamental_8pt(p1, p2)
    assert float(torch.linalg.svdvals(F)[:, 2].abs().max()) < 1e-10
    assert float(sampson_error(F, p1, p2).max()) < 1e-12
    Fgt = torch.linalg.inv(K).T @ Egt @ torch.linalg.inv(K)
    f = estimate_shared_focal(Fgt, torch.tensor([320.0, 240.0]), f_range=(100, 3000))
    assert abs(f - 500.0) / 500.0 < 0.01


def test_ransac_essential_noise_and_outliers():
    x1, x2, valid, out, R, t, f = _pairs(P=16, M=400, noise_px=0.5, outliers=0.15)
    geo = estimate_two_view(x1, x2, valid, focal=f, config=TwoViewConfig(num_hypotheses=256))
    rot = rotation_angle_deg(geo.R.transpose(-1, -2) @ R)
    terr = torch.rad2deg(torch.acos((geo.t * t).sum(-1).clamp(-1, 1)))
    assert bool(geo.success.all())
    assert float(rot.median()) < 0.3 and float(rot.max()) < 1.5
    assert float(terr.median()) < 3.0
    inl = geo.inliers
    assert not bool((inl & ~valid).any())  # padding never an inlier
    precision = float((inl & ~out).sum() / inl.sum())
    recall = float((inl & ~out).sum() / (valid & ~out).sum())
    assert precision > 0.97 and recall > 0.85


def test_ransac_fundamental_pixels():
    x1, x2, valid, out, R, t, f = _pairs(P=8, M=300, noise_px=0.3, outliers=0.1)
    pp = torch.tensor([320.0, 240.0], dtype=torch.float64)
    geo = estimate_two_view(x1 * f + pp, x2 * f + pp, valid, focal=None)
    assert bool(geo.success.all())
    precision = float((geo.inliers & ~out).sum() / geo.inliers.sum())
    assert precision > 0.95
    K = torch.tensor([[f, 0, 320], [0, f, 240], [0, 0, 1]], dtype=torch.float64)
    E = K.T @ geo.matrix @ K
    s = torch.linalg.svdvals(E)
    assert float(((s[:, 0] - s[:, 1]) / s[:, 0]).median()) < 0.05


def _fundamental(R, t, f, pp):
    K = torch.tensor([[f, 0, pp[0]], [0, f, pp[1]], [0, 0, 1]], dtype=torch.float64)
    Ki = torch.linalg.inv(K)
    return Ki.T @ skew(t) @ R @ Ki


def test_shared_focal_is_unobservable_for_fixating_cameras():
    """Cameras whose optical axes meet in one point (an orbit around an object) are the known
    degeneracy of focal length from fundamental matrices: every focal fits, the contrast is 0
    and the minimum is noise. Cameras that do not fixate one point determine it."""
    f, pp = 400.0, (320.0, 240.0)
    ppt = torch.tensor(pp, dtype=torch.float64)

    def look_at(eye):
        z = -eye / eye.norm()
        x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), z)
        x = x / x.norm()
        return torch.stack([x, torch.linalg.cross(z, x), z])  # rows: cam axes in world

    def relative(Ra, ca, Rb, cb):
        R = Rb @ Ra.T
        return R, Rb @ (ca - cb)  # x_b = R x_a + t

    angles = torch.linspace(0, 1.2, 5, dtype=torch.float64)
    eyes = [torch.stack([4 * a.sin(), a.new_zeros(()), -4 * a.cos()]) for a in angles]  # one plane
    Rs = [look_at(e) for e in eyes]
    Fs = torch.stack(
        [
            _fundamental(*relative(Rs[i], eyes[i], Rs[j], eyes[j]), f, pp)
            for i in range(5)
            for j in range(i + 1, 5)
        ]
    )
    assert abs(shared_focal_contrast(Fs, ppt, f)) < 1e-6
    assert abs(shared_focal_contrast(Fs, ppt, 0.6 * f)) < 1e-6  # any focal fits as well
    # the same motion with axes that miss the common point by tilting each camera
    g = torch.Generator().manual_seed(1)
    tilt = [
        angle_axis_to_matrix(torch.randn(3, generator=g, dtype=torch.float64) * 0.2) for _ in Rs
    ]
    Rt = [t_ @ R for t_, R in zip(tilt, Rs)]
    Fs = torch.stack(
        [
            _fundamental(*relative(Rt[i], eyes[i], Rt[j], eyes[j]), f, pp)
            for i in range(5)
            for j in range(i + 1, 5)
        ]
    )
    assert shared_focal_contrast(Fs, ppt, f) > 1e-2
    assert abs(estimate_shared_focal(Fs, ppt, f_range=(100.0, 2000.0)) - f) < 0.02 * f


def test_degenerate_pair_fails_cleanly():
    x1, x2, valid, _, _, _, f = _pairs(P=2, M=100)
    x2 = torch.rand_like(x2)  # no geometry at all
    geo = estimate_two_view(x1, x2, valid, focal=f)
    assert not bool(geo.success.any())
    assert torch.isfinite(geo.R).all() and not math.isnan(float(geo.median_angle_deg.sum()))


@pytest.mark.parametrize("P", [0])
def test_empty_batch(P):
    z = torch.zeros(P, 10, 2, dtype=torch.float64)
    geo = estimate_two_view(z, z, torch.zeros(P, 10, dtype=torch.bool), focal=500.0)
    assert geo.R.shape == (0, 3, 3)


def test_per_image_focals_mixed_cameras():
    """Different focal lengths and image sizes (internet photos): each image's focal length is
    recovered from exact fundamental matrices, where one shared value cannot fit them all."""
    from sceneforge.recon.self_calibration import estimate_per_image_focals

    g = torch.Generator().manual_seed(3)
    n = 6
    sizes_wh = torch.tensor(
        [[1024, 768], [768, 1024], [1000, 667], [800, 800], [1200, 900], [640, 960]],
        dtype=torch.float64,
    )
    side = sizes_wh.max(1).values
    ratio = torch.tensor([0.8, 1.3, 2.2, 1.0, 0.9, 1.7], dtype=torch.float64)
    f = ratio * side
    pp = sizes_wh / 2
    # Cameras around a scene, looking at different points (no common fixation point).
    R = angle_axis_to_matrix(torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3)
    C = torch.randn(n, 3, generator=g, dtype=torch.float64) * 1.5
    t = -(R @ C[:, :, None])[:, :, 0]
    K = torch.zeros(n, 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1], K[:, 2, 2] = f, f, 1.0
    K[:, :2, 2] = pp
    pairs = torch.combinations(torch.arange(n), 2)
    i, j = pairs[:, 0], pairs[:, 1]
    R12 = R[j] @ R[i].transpose(-1, -2)
    t12 = t[j] - (R12 @ t[i][:, :, None])[:, :, 0]
    E = skew(t12) @ R12
    F = torch.linalg.inv(K[j]).transpose(-1, -2) @ E @ torch.linalg.inv(K[i])
    est, rho = estimate_per_image_focals(F, pairs, pp, side, num_candidates=120, sweeps=8)
    assert 0.4 < rho < 4.0
    rel = (est - f).abs() / f
    assert float(rel.max()) < 0.05, (est, f)
