"""Triangulation: exact on noise-free tracks, checks, refinement and RANSAC."""

from __future__ import annotations

import pytest
import torch

from sceneforge.core.cameras import Cameras
from sceneforge.recon.ba import make_synthetic_problem
from sceneforge.recon.triangulation import (
    TriangulationOptions,
    triangulate,
    triangulate_dlt,
    triangulate_ransac,
)


def _scene(model="OPENCV", n_cams=6, n_pts=50, seed=0):
    prob = make_synthetic_problem(model, n_cams, n_pts, seed=seed)
    cams = Cameras(
        model,
        prob.intrinsics,
        torch.full((n_cams,), 640),
        torch.full((n_cams,), 480),
        prob.cam_from_world(),
    )
    pix, depth = cams.project(prob.points)
    return cams, prob.points, pix.transpose(0, 1).contiguous(), depth.transpose(0, 1)


@pytest.mark.parametrize("model", ["OPENCV", "BAL", "PINHOLE"])
def test_noise_free_tracks_are_exact(model):
    cams, pts, pix, depth = _scene(model)
    assert bool((depth > 0).all())
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(pts.shape[0], len(cams), generator=g) < 0.6
    mask[:, :2] = True
    pix = torch.where(
        mask[..., None], pix, torch.full_like(pix, float("nan"))
    )  # hidden views unused
    out = triangulate(cams, pix, mask, TriangulationOptions(refine_iterations=0))
    torch.testing.assert_close(out.points, pts, rtol=0, atol=1e-8)
    assert bool(out.valid.all())
    assert float(out.reproj_error.max()) < 1e-6


def test_refinement_reduces_reprojection_error_with_noise():
    cams, pts, pix, _ = _scene()
    mask = torch.ones(pts.shape[0], len(cams), dtype=torch.bool)
    noisy = pix + 0.5 * torch.randn(pix.shape, dtype=pix.dtype)
    lin = triangulate(cams, noisy, mask, TriangulationOptions(refine_iterations=0))
    ref = triangulate(cams, noisy, mask, TriangulationOptions(refine_iterations=10))

    def sq_err(x):
        p, _ = cams.project(x)
        return ((p.transpose(0, 1) - noisy) ** 2).sum((1, 2))

    assert bool((sq_err(ref.points) <= sq_err(lin.points) + 1e-9).all())
    assert float(sq_err(ref.points).sum()) < float(sq_err(lin.points).sum())
    # The refined point is a stationary point of the reprojection error.
    x = ref.points.clone().requires_grad_(True)
    p, _ = cams.project(x)
    ((p.transpose(0, 1) - noisy) ** 2).sum().backward()
    assert float(x.grad.abs().max()) < 1e-3  # gradient scale ~ f * residual ~ 250


def test_cheirality_and_angle_checks():
    cams, pts, pix, _ = _scene(n_cams=3)
    mask = torch.ones(pts.shape[0], 3, dtype=torch.bool)
    ok = triangulate(cams, pix, mask)
    assert bool(ok.valid.all())
    # Mirror one camera's observations through its principal point: the ray pair meets behind.
    strict = triangulate(cams, pix, mask, TriangulationOptions(min_angle_deg=179.9))
    assert not bool(strict.valid.any())
    # Points reflected through camera 1's centre project to the same pixels there but lie
    # behind it; two-view DLT recovers them exactly, and the cheirality check rejects them.
    cams, pts, _, _ = _scene("PINHOLE", n_cams=3)
    behind = 2 * cams.centers[1] - pts
    pix_b, depth_b = cams.project(behind)
    assert bool((depth_b[1] < 0).all()) and bool((depth_b[0] > 0).all())
    two = torch.zeros(pts.shape[0], 3, dtype=torch.bool)
    two[:, :2] = True
    opts = TriangulationOptions(refine_iterations=0, max_reproj_error=1e9, min_angle_deg=0.0)
    bad = triangulate(cams, pix_b.transpose(0, 1), two, opts)
    torch.testing.assert_close(bad.points, behind, rtol=0, atol=1e-6)
    assert not bool(bad.valid.any())


def test_ransac_rejects_outliers():
    cams, pts, pix, _ = _scene(n_cams=8, n_pts=60)
    mask = torch.ones(pts.shape[0], 8, dtype=torch.bool)
    g = torch.Generator().manual_seed(3)
    outlier = torch.zeros_like(mask)
    for i in range(pts.shape[0]):
        outlier[i, torch.randperm(8, generator=g)[:2]] = True
    corrupted = torch.where(
        outlier[..., None],
        pix + 80.0 + 40.0 * torch.rand(pix.shape, generator=g, dtype=pix.dtype),
        pix,
    )
    plain = triangulate(cams, corrupted, mask)
    robust = triangulate_ransac(cams, corrupted, mask)
    assert bool(robust.valid.all())
    assert torch.equal(robust.inliers, mask & ~outlier)
    torch.testing.assert_close(robust.points, pts, rtol=0, atol=1e-7)
    assert float((plain.points - pts).norm(dim=1).median()) > 1e-3


def test_dlt_batched_poses_and_errors():
    cams, pts, pix, _ = _scene()
    with pytest.raises(ValueError, match="pixels must be"):
        triangulate(cams, pix[:, :3], torch.ones(pts.shape[0], 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="cameras"):
        triangulate(cams[[0, 1]], pix, torch.ones(pts.shape[0], 6, dtype=torch.bool))
    rays = torch.cat([pix, torch.ones_like(pix[..., :1])], -1)  # pixel-space rays with K folded in
    K = cams.K
    T = K @ cams.cam_from_world
    X = triangulate_dlt(T, rays, torch.ones(pts.shape[0], 6, dtype=torch.bool))
    # OPENCV distortion makes pixel-space DLT approximate, but it still lands close.
    assert float((X - pts).norm(dim=1).max()) < 0.2


def test_angles_and_refinement_use_only_visible_views():
    from sceneforge.recon.triangulation import triangulation_angles

    cams, pts, pix, _ = _scene(n_cams=8, n_pts=80, seed=2)
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(pts.shape[0], len(cams), generator=g) < 0.4
    mask[:, 3] = True
    mask[:5] = False  # points seen once or never: angle 0, invalid
    mask[:5, 0] = True
    # Dense reference: every pair of masked rays.
    d = pts[:, None] - cams.centers[None]
    d = d / d.norm(dim=-1, keepdim=True)
    cos = (d[:, :, None] * d[:, None]).sum(-1).clamp(-1, 1)
    both = mask[:, :, None] & mask[:, None, :]
    ref = torch.where(both, torch.rad2deg(torch.acos(cos)), torch.zeros_like(cos)).flatten(1)
    torch.testing.assert_close(triangulation_angles(cams, pts, mask), ref.max(1).values)
    # Hidden pixels (NaN or garbage) change nothing.
    noisy = pix + 0.3 * torch.randn(pix.shape, generator=g, dtype=pix.dtype)
    a = triangulate(cams, torch.where(mask[..., None], noisy, float("nan")), mask)
    b = triangulate(cams, torch.where(mask[..., None], noisy, 1e6), mask)
    torch.testing.assert_close(a.points[5:], b.points[5:])
    assert torch.equal(a.valid, b.valid) and not bool(a.valid[:5].any())
    assert float(a.valid[5:].float().mean()) > 0.8
