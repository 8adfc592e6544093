"""Batched multi-view triangulation: DLT, checks, Gauss-Newton refinement, RANSAC.

Tracks are indexed like dense ``pixels (N, V, 2)`` with a visibility ``mask (N, V)`` over the V
cameras of a :class:`sceneforge.core.cameras.Cameras` batch. Pixels are first lifted to
normalised rays with the core :func:`~sceneforge.core.cameras.unproject` (so distortion
and the BAL -z convention are handled), then every point is solved at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from sceneforge.core.cameras import Cameras, project, unproject
from sceneforge.core.rotations import matrix_to_angle_axis
from sceneforge.recon.ba import project_with_jacobians


@dataclass
class TriangulationOptions:
    """Checks and refinement settings."""

    min_angle_deg: float = 1.0
    """Minimum largest triangulation angle between two visible rays."""
    max_reproj_error: float = 4.0
    """Inlier threshold (pixels) for RANSAC and for the final validity check."""
    refine_iterations: int = 10
    """Batched Gauss-Newton iterations per point (0: DLT only)."""
    max_pairs: int | None = None
    """RANSAC view pairs per track (None: all visible pairs)."""
    min_inliers: int = 2
    """Minimum number of inlier views for a RANSAC point to be valid."""
    seed: int = 0
    """Seed for pair subsampling when ``max_pairs`` is set."""


@dataclass
class Triangulation:
    """Triangulated points and their diagnostics."""

    points: Tensor
    """``(N, 3)`` world points."""
    valid: Tensor
    """``(N,)`` passed cheirality, angle and reprojection checks."""
    inliers: Tensor
    """``(N, V)`` views used (the input mask, or the RANSAC consensus)."""
    reproj_error: Tensor
    """``(N,)`` mean reprojection error (pixels) over the used views."""
    angle_deg: Tensor
    """``(N,)`` largest angle between two used rays."""


def _normalised(cameras: Cameras, pixels: Tensor) -> Tensor:
    """Rays ``(N, V, 3)`` in each camera frame (z = +-1) for every pixel."""
    n, v = pixels.shape[:2]
    return unproject(pixels, cameras.model, cameras.params[None].expand(n, v, -1))


def triangulate_dlt(cam_from_world: Tensor, rays: Tensor, mask: Tensor) -> Tensor:
    """Linear triangulation of ``N`` points from ``V`` views.

    Args:
        cam_from_world: ``(V, 3, 4)`` or ``(N, V, 3, 4)`` extrinsics.
        rays: ``(N, V, 3)`` camera-frame ray directions (``z != 0``).
        mask: ``(N, V)`` views to use (at least two per point).
    Returns ``(N, 3)`` points minimising the algebraic error of ``d x (T X) = 0``.

    Only the masked views are evaluated: each point's ``4 x 4`` normal matrix ``A^T A`` of
    its (unit) DLT rows is accumulated from its observations and the solution is its
    eigenvector of the smallest eigenvalue (the smallest right singular vector of ``A``). A
    dense SVD over all ``V`` views did ``V / track length`` times the work (300 views,
    tracks of 16: 37 of the 54 CPU seconds of a triangulation).
    """
    pi, vi = mask.nonzero(as_tuple=True)
    T = cam_from_world[vi] if cam_from_world.ndim == 3 else cam_from_world[pi, vi]  # (M, 3, 4)
    return _dlt_observations(T, rays[pi, vi], pi, mask.shape[0])


def _dlt_observations(T: Tensor, r: Tensor, pi: Tensor, n: int) -> Tensor:
    """:func:`triangulate_dlt` from its observations: extrinsics ``T (M, 3, 4)``, rays
    ``r (M, 3)`` and the point ``pi (M,)`` of each; ``(n, 3)`` points."""
    xy = r[:, :2] / r[:, 2:3]
    rows = torch.stack(
        [xy[:, 0:1] * T[:, 2, :] - T[:, 0, :], xy[:, 1:2] * T[:, 2, :] - T[:, 1, :]], dim=1
    )  # (M, 2, 4)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    ata = rows[:, 0, :, None] * rows[:, 0, None, :] + rows[:, 1, :, None] * rows[:, 1, None, :]
    A = torch.zeros(n, 4, 4, dtype=r.dtype, device=r.device).index_add_(0, pi, ata)
    _, vecs = torch.linalg.eigh(A)
    h = vecs[:, :, 0]
    w = h[:, 3:]
    w = torch.where(w.abs() < 1e-300, torch.full_like(w, 1e-300), w)
    return h[:, :3] / w


def _project_all(cameras: Cameras, points: Tensor) -> tuple[Tensor, Tensor]:
    """Pixels ``(N, V, 2)`` and depths ``(N, V)`` of ``points`` in every camera."""
    pix, depth = cameras.project(points)
    return pix.transpose(0, 1), depth.transpose(0, 1)


def triangulation_angles(cameras: Cameras, points: Tensor, mask: Tensor) -> Tensor:
    """Largest angle (degrees) between any two masked viewing rays of each point.

    Computed over each point's own views only, not over all ``V x V`` view pairs: the points
    are taken in order of track length, in blocks padded to their own longest track (a few
    long loop-closure tracks would otherwise pad every point to their length)."""
    n = mask.shape[0]
    out = torch.zeros(n, dtype=points.dtype, device=points.device)
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    block = 4096
    for s in range(0, n, block):
        idx = order[s : s + block]
        longest = int(lengths[idx].max())
        if longest < 2:
            continue
        m = mask[idx]
        views = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, :longest]
        used = torch.gather(m, 1, views)
        d = points[idx, None, :] - cameras.centers[views]  # (B, L, 3)
        d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-30)
        cos = d @ d.transpose(1, 2)
        both = used[:, :, None] & used[:, None, :]
        min_cos = torch.where(both, cos, torch.ones_like(cos)).flatten(1).min(1).values
        out[idx] = torch.rad2deg(torch.acos(min_cos.clamp(-1.0, 1.0)))
    return out


def refine_points(
    cameras: Cameras, points: Tensor, pixels: Tensor, mask: Tensor, iterations: int = 10
) -> Tensor:
    """Batched Levenberg-Marquardt on each point's reprojection error over its masked views.

    Only the masked observations are evaluated (tracks are short compared with the number of
    views: a dense ``N x V`` evaluation did several times the work); each point's 3x3 normal
    equations are accumulated from its observations."""
    n, _ = mask.shape
    pi, vi = mask.nonzero(as_tuple=True)
    rot = matrix_to_angle_axis(cameras.cam_from_world[:, :, :3])
    trans = cameras.cam_from_world[:, :, 3]
    obs = pixels[pi, vi]
    lam = torch.full((n,), 1e-4, dtype=points.dtype, device=points.device)
    eye = torch.eye(3, dtype=points.dtype, device=points.device)

    def evaluate(X, jac):
        pix, _, _, _, jp = project_with_jacobians(
            cameras.model, rot, trans, cameras.params, X[pi], jac, vi, point_jacobian_only=True
        )
        r = pix - obs
        cost = torch.zeros(n, dtype=X.dtype, device=X.device).index_add_(0, pi, (r * r).sum(-1))
        return r, cost, jp

    X = points.clone()
    for _ in range(iterations):
        r, cost, jp = evaluate(X, True)
        # Per observation J^T J and J^T r (elementwise: far faster than bmm of 3x2 @ 2x3).
        jtj = jp[:, 0, :, None] * jp[:, 0, None, :] + jp[:, 1, :, None] * jp[:, 1, None, :]
        H = torch.zeros(n, 3, 3, dtype=X.dtype, device=X.device).index_add_(0, pi, jtj)
        g = torch.zeros(n, 3, dtype=X.dtype, device=X.device)
        g.index_add_(0, pi, (jp * r[:, :, None]).sum(1))
        Hd = H + lam[:, None, None] * (H.diagonal(dim1=1, dim2=2)[:, :, None] * eye + 1e-12 * eye)
        step = -torch.linalg.solve(Hd, g[:, :, None])[:, :, 0]
        step = torch.nan_to_num(step)
        cand = X + step
        _, new_cost, _ = evaluate(cand, False)
        better = (new_cost < cost) & torch.isfinite(new_cost)
        X = torch.where(better[:, None], cand, X)
        lam = torch.where(better, lam / 10.0, lam * 10.0).clamp(1e-12, 1e12)
    return X


def _checks(cameras, points, pixels, use, options) -> tuple[Tensor, Tensor, Tensor]:
    pi, vi = use.nonzero(as_tuple=True)
    T = cameras.cam_from_world[vi]
    pc = (T[:, :, :3] @ points[pi][:, :, None])[:, :, 0] + T[:, :, 3]
    pix, depth = project(pc, cameras.model, cameras.params[vi])
    n = use.shape[0]
    err = torch.zeros(n, dtype=points.dtype, device=points.device)
    err.index_add_(0, pi, (pix - pixels[pi, vi]).norm(dim=-1))
    cnt = use.sum(1).clamp(min=1)
    mean_err = err / cnt
    behind = torch.zeros(n, dtype=torch.long, device=points.device)
    behind.index_add_(0, pi, (depth <= 0).long())
    cheiral = behind == 0
    angle = triangulation_angles(cameras, points, use)
    valid = (
        cheiral
        & (angle >= options.min_angle_deg)
        & (mean_err <= options.max_reproj_error)
        & (use.sum(1) >= 2)
        & torch.isfinite(points).all(1)
    )
    return valid, mean_err, angle


def triangulate(
    cameras: Cameras,
    pixels: Tensor,
    mask: Tensor,
    options: TriangulationOptions | None = None,
) -> Triangulation:
    """DLT on every visible view, batched nonlinear refinement, then validity checks.

    Args:
        cameras: V cameras (any core model).
        pixels: ``(N, V, 2)`` observations (ignored where ``mask`` is False): a tensor or
            anything indexed like one, read only at ``pixels[pi, vi]`` of the mask's nonzeros
            (e.g. :meth:`sceneforge.recon.tracks.TrackPixels.block`).
        mask: ``(N, V)`` visibility.
    """
    options = options or TriangulationOptions()
    mask = mask.bool()
    _check_inputs(cameras, pixels, mask)
    # Per observation only: no dense (N, V, 3) rays (issue 25).
    pi, vi = mask.nonzero(as_tuple=True)
    rays = unproject(pixels[pi, vi], cameras.model, cameras.params[vi])
    X = _dlt_observations(cameras.cam_from_world[vi], rays, pi, mask.shape[0])
    if options.refine_iterations:
        X = refine_points(cameras, X, pixels, mask, options.refine_iterations)
    valid, err, angle = _checks(cameras, X, pixels, mask, options)
    return Triangulation(X, valid, mask, err, angle)


def triangulate_ransac(
    cameras: Cameras,
    pixels: Tensor,
    mask: Tensor,
    options: TriangulationOptions | None = None,
) -> Triangulation:
    """Robust triangulation: hypotheses from every visible view pair, consensus by
    reprojection error and cheirality, then DLT + refinement on the inliers."""
    options = options or TriangulationOptions()
    mask = mask.bool()
    if not isinstance(pixels, Tensor):
        pixels = pixels.dense()  # a lazy window (TrackPixels.block): RANSAC reads every cell
    _check_inputs(cameras, pixels, mask)
    n, v = mask.shape
    pairs = list(itertools.combinations(range(v), 2))
    if options.max_pairs is not None and len(pairs) > options.max_pairs:
        g = torch.Generator().manual_seed(options.seed)
        keep = torch.randperm(len(pairs), generator=g)[: options.max_pairs].tolist()
        pairs = [pairs[k] for k in sorted(keep)]
    pi = torch.tensor(pairs, device=pixels.device)  # (K, 2)
    k = pi.shape[0]
    rays = _normalised(cameras, pixels)
    pair_ok = mask[:, pi[:, 0]] & mask[:, pi[:, 1]]  # (N, K)
    T2 = cameras.cam_from_world[pi]  # (K, 2, 3, 4)
    rays2 = rays[:, pi]  # (N, K, 2, 3)
    hyp = triangulate_dlt(
        T2[None].expand(n, -1, -1, -1, -1).reshape(n * k, 2, 3, 4),
        rays2.reshape(n * k, 2, 3),
        torch.ones(n * k, 2, dtype=torch.bool, device=mask.device),
    ).reshape(n, k, 3)
    pix, depth = cameras.project(hyp.reshape(-1, 3))  # (V, N*K, ...)
    pix = pix.transpose(0, 1).reshape(n, k, v, 2)
    depth = depth.transpose(0, 1).reshape(n, k, v)
    err = (pix - pixels[:, None]).norm(dim=-1)
    inl = mask[:, None] & (depth > 0) & (err < options.max_reproj_error) & torch.isfinite(err)
    score = inl.sum(-1).to(pixels.dtype) - torch.where(
        inl, err / options.max_reproj_error, torch.zeros_like(err)
    ).sum(-1) / (v + 1)
    score = torch.where(pair_ok, score, torch.full_like(score, -1.0))
    best = score.argmax(1)
    use = inl[torch.arange(n, device=mask.device), best]
    enough = use.sum(1) >= max(2, options.min_inliers)
    use = torch.where(enough[:, None], use, mask)
    X = triangulate_dlt(cameras.cam_from_world, rays, use)
    if options.refine_iterations:
        X = refine_points(cameras, X, pixels, use, options.refine_iterations)
    # One re-scoring pass on the refined points recovers inliers the pair missed.
    p2, d2 = _project_all(cameras, X)
    e2 = (p2 - pixels).norm(dim=-1)
    use2 = mask & (d2 > 0) & (e2 < options.max_reproj_error)
    grow = enough & (use2.sum(1) > use.sum(1))
    if bool(grow.any()):
        use = torch.where(grow[:, None], use2, use)
        Xg = triangulate_dlt(cameras.cam_from_world, rays, use)
        if options.refine_iterations:
            Xg = refine_points(cameras, Xg, pixels, use, options.refine_iterations)
        X = torch.where(grow[:, None], Xg, X)
    valid, err_m, angle = _checks(cameras, X, pixels, use, options)
    valid = valid & enough
    return Triangulation(X, valid, use, err_m, angle)


def _check_inputs(cameras: Cameras, pixels: Tensor, mask: Tensor) -> None:
    n, v = mask.shape
    if pixels.shape != (n, v, 2):
        raise ValueError(f"pixels must be (N, V, 2) = ({n}, {v}, 2), got {tuple(pixels.shape)}")
    if len(cameras) != v:
        raise ValueError(f"mask has {v} views but {len(cameras)} cameras were given")
