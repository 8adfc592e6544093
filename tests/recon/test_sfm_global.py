"""Rotation / translation averaging and PnP against ground truth."""

import pytest
import torch

from sceneforge.core.cameras import make_rigid
from sceneforge.core.metrics import pose_metrics
from sceneforge.core.rotations import angle_axis_to_matrix, rotation_angle_deg
from sceneforge.recon.global_sfm import (
    largest_component,
    pnp_dlt,
    pnp_ransac,
    rotation_averaging,
    translation_averaging,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _rig(n=12, seed=0, collinear=False):
    g = torch.Generator().manual_seed(seed)
    R = angle_axis_to_matrix(torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3)
    if collinear:
        c = torch.zeros(n, 3, dtype=torch.float64)
        c[:, 0] = torch.linspace(-2, 2, n, dtype=torch.float64)
    else:
        c = torch.randn(n, 3, generator=g, dtype=torch.float64) * 1.5
    edges = torch.triu_indices(n, n, 1).T
    i, j = edges[:, 0], edges[:, 1]
    R_rel = R[j] @ R[i].transpose(-1, -2)
    t_rel = torch.nn.functional.normalize((R[j] @ (c[i] - c[j])[..., None])[..., 0], dim=-1)
    return R, c, edges, R_rel, t_rel, g


def test_rotation_averaging_exact_and_robust():
    R, _, edges, R_rel, _, g = _rig()
    Rest, solved, inl = rotation_averaging(len(R), edges, R_rel)
    assert bool(solved.all()) and bool(inl.all())
    # gauge: compare relative rotations
    e = rotation_angle_deg((Rest[1:] @ Rest[0].T).transpose(-1, -2) @ (R[1:] @ R[0].T))
    assert float(e.max()) < 1e-6
    # noise + 10% gross outliers
    noisy = (
        angle_axis_to_matrix(torch.randn(len(edges), 3, generator=g, dtype=torch.float64) * 0.005)
        @ R_rel
    )
    bad = torch.rand(len(edges), generator=g) < 0.1
    noisy[bad] = angle_axis_to_matrix(
        torch.randn(int(bad.sum()), 3, generator=g, dtype=torch.float64)
    )
    Rest, _, inl = rotation_averaging(len(R), edges, noisy)
    e = rotation_angle_deg((Rest[1:] @ Rest[0].T).transpose(-1, -2) @ (R[1:] @ R[0].T))
    assert float(e.max()) < 1.0
    assert bool((~inl[bad]).float().mean() > 0.8)


def test_rotation_averaging_disconnected():
    R, _, edges, R_rel, _, _ = _rig(n=6)
    keep = (edges < 4).all(1) | (edges >= 4).all(1)  # two components: {0..3}, {4, 5}
    _, solved, _ = rotation_averaging(6, edges[keep], R_rel[keep])
    assert solved.tolist() == [True] * 4 + [False] * 2
    assert largest_component(3, torch.zeros(0, 2, dtype=torch.long)).sum() == 0


@pytest.mark.parametrize("collinear", [False, True])
def test_translation_averaging_with_points(collinear):
    R, c, edges, _, t_rel, g = _rig(n=10, collinear=collinear)
    X = torch.randn(300, 3, generator=g, dtype=torch.float64) * 2 + torch.tensor(
        [0, 0, 8.0], dtype=torch.float64
    )
    im = torch.arange(10).repeat_interleave(300)
    pt = torch.arange(300).repeat(10)
    rays = (R[im] @ (X[pt] - c[im])[..., None])[..., 0]
    rays = rays / rays[:, 2:]
    solved = torch.ones(10, dtype=torch.bool)
    centers, pts = translation_averaging(R, solved, edges, t_rel, None, (im, pt, rays))
    T_est = make_rigid(R, -(R @ centers[..., None])[..., 0])
    T_gt = make_rigid(R, -(R @ c[..., None])[..., 0])
    m = pose_metrics(T_est, T_gt)
    assert m["auc3"] > 0.99, m
    assert pts.shape == (300, 3)


def test_translation_averaging_pairs_only():
    R, c, edges, _, t_rel, _ = _rig(n=10)
    centers, pts = translation_averaging(R, torch.ones(10, dtype=torch.bool), edges, t_rel)
    T_est = make_rigid(R, -(R @ centers[..., None])[..., 0])
    T_gt = make_rigid(R, -(R @ c[..., None])[..., 0])
    assert pose_metrics(T_est, T_gt)["auc3"] > 0.99
    assert pts is None


def observe(
    X: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    g: torch.Generator,
    noise_px: float,
    focal: float,
    outlier_frac: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated coordinates of ``X`` seen from ``(R, t)`` with pixel noise and a random
    fraction replaced by uniform outliers; returns them and the outlier mask."""
    Xc = X @ R.T + t
    x = Xc[:, :2] / Xc[:, 2:]
    x = x + torch.randn(x.shape, generator=g, dtype=torch.float64) * noise_px / focal
    out = torch.rand(X.shape[0], generator=g) < outlier_frac
    x[out] = torch.rand(int(out.sum()), 2, generator=g, dtype=torch.float64) - 0.5
    return x, out


def test_pnp():
    g = torch.Generator().manual_seed(3)
    R = angle_axis_to_matrix(torch.randn(3, generator=g, dtype=torch.float64) * 0.4)
    t = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    X = torch.randn(200, 3, generator=g, dtype=torch.float64) + torch.tensor(
        [0, 0, 5.0], dtype=torch.float64
    )
    x, _ = observe(X, R, t, g, noise_px=0.0, focal=500.0, outlier_frac=0.0)
    T = pnp_dlt(X, x)
    assert torch.allclose(T, make_rigid(R, t), atol=1e-8)
    x_noisy, out = observe(X, R, t, g, noise_px=0.5, focal=500.0, outlier_frac=0.3)
    T, inl = pnp_ransac(X, x_noisy, 500.0)
    assert float(rotation_angle_deg(T[:, :3].T @ R)) < 0.5
    assert float((T[:, 3] - t).norm()) < 0.05
    assert float((inl & out).sum()) <= 2 and float((inl & ~out).sum() / (~out).sum()) > 0.9


def test_scale_linked_edge_groups_detects_two_view_only_chains():
    """A chain of images whose tracks are each seen in two images only leaves the relative
    scale of every pair free (the indoor-walk failure); tracks through three images, or a
    verified triangle, tie the pairs together."""
    from sceneforge.recon.view_graph import scale_linked_edge_groups

    n = 5
    edges = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]])
    vis = torch.zeros(4 * 10, n, dtype=torch.bool)
    for k, (i, j) in enumerate(edges.tolist()):  # 10 two-view tracks per consecutive pair
        vis[10 * k : 10 * k + 10, i] = True
        vis[10 * k : 10 * k + 10, j] = True
    assert scale_linked_edge_groups(vis, edges) == 4
    triple = torch.zeros(6, n, dtype=torch.bool)
    triple[:, 1:4] = True  # seen in images 1, 2, 3: links pairs (1, 2) and (2, 3)
    assert scale_linked_edge_groups(torch.cat([vis, triple]), edges) == 3
    tri = torch.cat([edges, torch.tensor([[2, 4]])])  # triangle 2-3-4 links (2, 3), (3, 4)
    assert scale_linked_edge_groups(torch.cat([vis, triple]), tri) == 2
