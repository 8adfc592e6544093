"""Batched robust two-view geometry: essential / fundamental matrices by RANSAC.

Every pair of images is a row of a padded batch: ``x1, x2`` are ``(P, M, 2)`` with a
``valid`` mask ``(P, M)``. RANSAC draws ``H`` minimal samples per pair at once, fits them
with the (normalised) 8-point algorithm as one batched eigen-decomposition, scores all
hypotheses of all pairs against all correspondences by the Sampson error (MSAC), keeps the
best per pair and refines it on its inliers (iteratively reweighted 8-point). The essential
matrix is decomposed into ``(R, t)`` by cheirality (points in front of both cameras).

Conventions: the relative pose is ``cam2_from_cam1`` (``X2 = R X1 + t``); the epipolar
constraint is ``x2^T E x1 = 0`` with calibrated (``K^-1``-normalised) coordinates and
``p2^T F p1 = 0`` with pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.rotations import skew


@dataclass
class TwoViewConfig:
    """Robust two-view estimation settings."""

    num_hypotheses: int = 256
    """RANSAC hypotheses drawn per pair (all evaluated at once)."""
    threshold_px: float = 1.5
    """Inlier threshold on the Sampson distance, in pixels."""
    refine_iterations: int = 6
    """Re-fits of the best hypotheses on their inliers (local optimisation)."""
    min_inliers: int = 20
    """Pairs with fewer inliers are reported as failed."""
    min_inlier_ratio: float = 0.2
    """Pairs whose inlier ratio is below this are reported as failed."""
    preemptive_subset: int = 256
    """Correspondences per pair on which all hypotheses are first scored."""
    num_verified: int = 4
    """Best hypotheses per pair (on the subset) that are then scored on all correspondences."""
    refine_subset: int = 128
    """Correspondences per pair on which the candidate poses are refined (essential only)."""
    max_elements: int = 65_536
    """Upper bound on pairs x hypotheses x correspondences scored at once. Small enough that
    the float64 temporaries of the scoring stay in cache: 6x faster than 4M elements per
    chunk (measured, one thread)."""
    seed: int = 0
    """Seed of the sampler (deterministic results)."""


@dataclass
class TwoViewGeometry:
    """Result for ``P`` pairs.

    Attributes:
        matrix: ``P 3 3`` essential (calibrated) or fundamental matrix.
        inliers: ``P M`` inlier mask (False on padding).
        num_inliers: ``P`` inlier counts.
        success: ``P`` whether the pair passed the inlier thresholds.
        R: ``P 3 3`` relative rotation ``cam2_from_cam1`` (essential only, else identity).
        t: ``P 3`` unit relative translation (essential only, else zeros).
        median_angle_deg: ``P`` median triangulation angle of the inliers (essential only).
    """

    matrix: Float[Tensor, "P 3 3"]
    inliers: Bool[Tensor, "P M"]
    num_inliers: Int[Tensor, " P"]
    success: Bool[Tensor, " P"]
    R: Float[Tensor, "P 3 3"]
    t: Float[Tensor, "P 3"]
    median_angle_deg: Float[Tensor, " P"]


# ----------------------------------------------------------------------------- linear solvers


def hartley_normalization(
    x: Float[Tensor, "*B M 2"], weights: Float[Tensor, "*B M"]
) -> Float[Tensor, "*B 3 3"]:
    """Similarity ``T`` moving the weighted centroid to 0 and the mean distance to sqrt(2)."""
    w = weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)
    mu = (w[..., None] * x).sum(-2)
    d = ((x - mu[..., None, :]).norm(dim=-1) * w).sum(-1).clamp(min=1e-12)
    s = math.sqrt(2.0) / d
    T = torch.zeros(*x.shape[:-2], 3, 3, dtype=x.dtype, device=x.device)
    T[..., 0, 0] = s
    T[..., 1, 1] = s
    T[..., 0, 2] = -s * mu[..., 0]
    T[..., 1, 2] = -s * mu[..., 1]
    T[..., 2, 2] = 1.0
    return T


def _apply_h(T: Tensor, x: Tensor) -> Tensor:
    """Apply an affine 3x3 ``T`` (last row 0 0 1) to 2D points."""
    return (x @ T[..., :2, :2].transpose(-1, -2)) + T[..., None, :2, 2]


def eight_point(
    x1: Float[Tensor, "*B M 2"],
    x2: Float[Tensor, "*B M 2"],
    weights: Float[Tensor, "*B M"] | None = None,
) -> Float[Tensor, "*B 3 3"]:
    """Weighted linear solve of ``x2^T F x1 = 0`` (smallest eigenvector of ``A^T W A``).

    No normalisation and no rank constraint: see :func:`fundamental_8pt` and
    :func:`essential_8pt`.
    """
    a1 = torch.cat([x1, torch.ones_like(x1[..., :1])], dim=-1)
    a2 = torch.cat([x2, torch.ones_like(x2[..., :1])], dim=-1)
    A = (a2[..., :, None] * a1[..., None, :]).flatten(-2)  # (..., M, 9), row-major F
    Aw = A if weights is None else A * weights[..., None]
    AtA = Aw.transpose(-1, -2) @ A
    _, vecs = torch.linalg.eigh(AtA)
    return vecs[..., 0].reshape(*A.shape[:-2], 3, 3)


def fundamental_8pt(
    p1: Float[Tensor, "*B M 2"],
    p2: Float[Tensor, "*B M 2"],
    weights: Float[Tensor, "*B M"] | None = None,
) -> Float[Tensor, "*B 3 3"]:
    """Hartley-normalised 8-point fundamental matrix from pixels, rank 2 enforced."""
    w = torch.ones_like(p1[..., 0]) if weights is None else weights
    T1, T2 = hartley_normalization(p1, w), hartley_normalization(p2, w)
    Fn = eight_point(_apply_h(T1, p1), _apply_h(T2, p2), w)
    U, S, Vh = torch.linalg.svd(Fn)
    S = torch.stack([S[..., 0], S[..., 1], torch.zeros_like(S[..., 2])], dim=-1)
    Fn = U @ torch.diag_embed(S) @ Vh
    Fm = T2.transpose(-1, -2) @ Fn @ T1
    return Fm / Fm.flatten(-2).norm(dim=-1)[..., None, None].clamp(min=1e-300)


def essential_8pt(
    x1: Float[Tensor, "*B M 2"],
    x2: Float[Tensor, "*B M 2"],
    weights: Float[Tensor, "*B M"] | None = None,
) -> Float[Tensor, "*B 3 3"]:
    """8-point essential matrix from calibrated coordinates, projected onto the essential
    manifold (singular values ``(1, 1, 0)``)."""
    w = torch.ones_like(x1[..., 0]) if weights is None else weights
    T1, T2 = hartley_normalization(x1, w), hartley_normalization(x2, w)
    En = eight_point(_apply_h(T1, x1), _apply_h(T2, x2), w)
    E = T2.transpose(-1, -2) @ En @ T1
    U, _, Vh = torch.linalg.svd(E)
    S = torch.tensor([1.0, 1.0, 0.0], dtype=E.dtype, device=E.device)
    return U @ torch.diag_embed(S.expand(*E.shape[:-2], 3)) @ Vh


def sampson_error(
    M: Float[Tensor, "*B 3 3"], x1: Float[Tensor, "*B N 2"], x2: Float[Tensor, "*B N 2"]
) -> Float[Tensor, "*B N"]:
    """Squared Sampson distance of each correspondence to ``x2^T M x1 = 0``."""
    m = [[M[..., i, j, None] for j in range(3)] for i in range(3)]  # broadcast over N
    u1, v1, u2, v2 = x1[..., 0], x1[..., 1], x2[..., 0], x2[..., 1]
    a0 = m[0][0] * u1 + m[0][1] * v1 + m[0][2]  # (M x1)_0
    a1 = m[1][0] * u1 + m[1][1] * v1 + m[1][2]
    a2 = m[2][0] * u1 + m[2][1] * v1 + m[2][2]
    b0 = m[0][0] * u2 + m[1][0] * v2 + m[2][0]  # (M^T x2)_0
    b1 = m[0][1] * u2 + m[1][1] * v2 + m[2][1]
    num = u2 * a0 + v2 * a1 + a2
    den = a0 * a0 + a1 * a1 + b0 * b0 + b1 * b1
    return num * num / den.clamp(min=1e-300)


# ----------------------------------------------------------------------------- decomposition


def decompose_essential(
    E: Float[Tensor, "*B 3 3"],
) -> tuple[Float[Tensor, "*B 4 3 3"], Float[Tensor, "*B 4 3"]]:
    """The four ``(R, t)`` candidates of an essential matrix (``t`` unit)."""
    U, _, Vh = torch.linalg.svd(E)
    U = U * torch.linalg.det(U)[..., None, None].sign()
    Vh = Vh * torch.linalg.det(Vh)[..., None, None].sign()
    W = torch.tensor(
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=E.dtype, device=E.device
    )
    R1 = U @ W @ Vh
    R2 = U @ W.T @ Vh
    t = U[..., :, 2]
    Rs = torch.stack([R1, R1, R2, R2], dim=-3)
    ts = torch.stack([t, -t, t, -t], dim=-2)
    return Rs, ts


def two_view_depths(
    R: Float[Tensor, "*B 3 3"],
    t: Float[Tensor, "*B 3"],
    x1: Float[Tensor, "*B N 2"],
    x2: Float[Tensor, "*B N 2"],
) -> tuple[Float[Tensor, "*B N"], Float[Tensor, "*B N"]]:
    """Depths of the midpoint triangulation in both cameras (``X2 = R X1 + t``).

    Solves ``l1 R d1 - l2 d2 = -t`` in least squares with ``d = (x, y, 1)``, so ``l`` are
    z-depths; used for cheirality.
    """
    d1 = torch.cat([x1, torch.ones_like(x1[..., :1])], dim=-1)
    d2 = torch.cat([x2, torch.ones_like(x2[..., :1])], dim=-1)
    a = d1 @ R.transpose(-1, -2)  # R d1
    b = -d2
    c = -t[..., None, :].expand_as(a)
    aa, ab, bb = (a * a).sum(-1), (a * b).sum(-1), (b * b).sum(-1)
    ac, bc = (a * c).sum(-1), (b * c).sum(-1)
    det = aa * bb - ab * ab
    det = torch.where(det.abs() < 1e-15, torch.full_like(det, 1e-15), det)
    l1 = (bb * ac - ab * bc) / det
    l2 = (aa * bc - ab * ac) / det
    return l1, l2


def pose_from_essential(
    E: Float[Tensor, "*B 3 3"],
    x1: Float[Tensor, "*B N 2"],
    x2: Float[Tensor, "*B N 2"],
    mask: Bool[Tensor, "*B N"] | None = None,
) -> tuple[Float[Tensor, "*B 3 3"], Float[Tensor, "*B 3"], Int[Tensor, "*B"]]:
    """Pick the ``(R, t)`` of ``E`` that puts most (masked) points in front of both cameras.

    Returns ``R``, unit ``t`` and the number of points in front.
    """
    Rs, ts = decompose_essential(E)
    l1, l2 = two_view_depths(Rs, ts, x1[..., None, :, :], x2[..., None, :, :])
    front = (l1 > 0) & (l2 > 0)
    if mask is not None:
        front = front & mask[..., None, :]
    count = front.sum(-1)  # (..., 4)
    best = count.argmax(-1)
    R = torch.gather(Rs, -3, best[..., None, None, None].expand(*best.shape, 1, 3, 3)).squeeze(-3)
    t = torch.gather(ts, -2, best[..., None, None].expand(*best.shape, 1, 3)).squeeze(-2)
    return R, t, count.max(-1).values


def triangulation_angles_deg(
    R: Float[Tensor, "*B 3 3"],
    t: Float[Tensor, "*B 3"],
    x1: Float[Tensor, "*B N 2"],
    x2: Float[Tensor, "*B N 2"],
) -> Float[Tensor, "*B N"]:
    """Angle at the triangulated point between the two viewing rays (degrees)."""
    l1, _ = two_view_depths(R, t, x1, x2)
    X1 = torch.cat([x1, torch.ones_like(x1[..., :1])], dim=-1) * l1[..., None]
    c2 = -(R.transpose(-1, -2) @ t[..., None])[..., 0]  # centre of camera 2 in frame 1
    r1 = X1
    r2 = X1 - c2[..., None, :]
    cos = (r1 * r2).sum(-1) / (r1.norm(dim=-1) * r2.norm(dim=-1)).clamp(min=1e-300)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def essential_from_pose(
    R: Float[Tensor, "*B 3 3"], t: Float[Tensor, "*B 3"]
) -> Float[Tensor, "*B 3 3"]:
    """``E = [t]_x R`` for ``X2 = R X1 + t``."""
    return skew(t) @ R


def _tangent_basis(t: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors orthogonal to unit ``t`` (and to each other)."""
    a = torch.zeros_like(t)
    idx = t.abs().argmin(-1, keepdim=True)
    a.scatter_(-1, idx, 1.0)
    b1 = torch.nn.functional.normalize(torch.linalg.cross(t, a, dim=-1), dim=-1)
    b2 = torch.linalg.cross(t, b1, dim=-1)
    return b1, b2


def _signed_sampson(E: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    m = [[E[..., i, j, None] for j in range(3)] for i in range(3)]
    u1, v1, u2, v2 = x1[..., 0], x1[..., 1], x2[..., 0], x2[..., 1]
    a0 = m[0][0] * u1 + m[0][1] * v1 + m[0][2]
    a1 = m[1][0] * u1 + m[1][1] * v1 + m[1][2]
    a2 = m[2][0] * u1 + m[2][1] * v1 + m[2][2]
    b0 = m[0][0] * u2 + m[1][0] * v2 + m[2][0]
    b1 = m[0][1] * u2 + m[1][1] * v2 + m[2][1]
    num = u2 * a0 + v2 * a1 + a2
    den = a0 * a0 + a1 * a1 + b0 * b0 + b1 * b1
    return num / den.clamp(min=1e-300).sqrt()


def refine_relative_pose(
    R: Float[Tensor, "B 3 3"],
    t: Float[Tensor, "B 3"],
    x1: Float[Tensor, "B M 2"],
    x2: Float[Tensor, "B M 2"],
    valid: Bool[Tensor, "B M"],
    threshold2: Float[Tensor, " B"],
    iterations: int = 10,
) -> tuple[Float[Tensor, "B 3 3"], Float[Tensor, "B 3"]]:
    """Levenberg-Marquardt on the Cauchy-robustified Sampson error over ``(R, t)`` (5 DoF:
    ``R <- exp(w) R``, ``t`` on the unit sphere), all ``B`` problems at once.

    ``threshold2`` is the squared Cauchy scale (the inlier threshold). Jacobians by central
    differences (5 directions shared by all problems).
    """
    from sceneforge.core.rotations import angle_axis_to_matrix

    lam = torch.full((R.shape[0],), 1e-3, dtype=R.dtype)

    def residual(d: Tensor, R0: Tensor, t0: Tensor) -> Tensor:
        b1, b2 = _tangent_basis(t0)
        Rn = angle_axis_to_matrix(d[..., :3]) @ R0
        tn = torch.nn.functional.normalize(t0 + d[..., 3:4] * b1 + d[..., 4:5] * b2, dim=-1)
        return _signed_sampson(essential_from_pose(Rn, tn), x1, x2)

    def cost(r: Tensor) -> Tensor:
        return torch.where(valid, c2 * torch.log1p(r * r / c2), torch.zeros_like(r)).sum(-1)

    zero = torch.zeros(R.shape[0], 5, dtype=R.dtype)
    for it in range(iterations):
        # Graduated non-convexity: a wide Cauchy scale first widens the basin of convergence.
        c2 = threshold2[:, None] * (9.0 if it < iterations // 2 else 1.0)
        r = residual(zero, R, t)
        cur = cost(r)
        # Central differences over the 5 shared directions (B, M, 5): as accurate as forward
        # mode here in float64, and torch.func would pull in torch._dynamo (seconds of import).
        eps = 1e-6
        J = torch.stack(
            [
                (residual(zero + eps * e, R, t) - residual(zero - eps * e, R, t)) / (2 * eps)
                for e in torch.eye(5, dtype=R.dtype)
            ],
            -1,
        )
        w = torch.where(valid, 1.0 / (1.0 + r * r / c2), torch.zeros_like(r))
        Jw = J * w[..., None]
        A = Jw.transpose(-1, -2) @ J
        g = (Jw * r[..., None]).sum(-2)
        improved = torch.zeros_like(cur, dtype=torch.bool)
        for _try in range(4):
            diag = torch.diagonal(A, dim1=-2, dim2=-1).clamp(min=1e-12)
            Ad = A + torch.diag_embed(lam[:, None] * diag)
            d = -torch.linalg.solve(Ad + 1e-30 * torch.eye(5, dtype=R.dtype), g[..., None])[..., 0]
            d = torch.nan_to_num(d)
            b1, b2 = _tangent_basis(t)
            Rn = angle_axis_to_matrix(d[:, :3]) @ R
            tn = torch.nn.functional.normalize(t + d[:, 3:4] * b1 + d[:, 4:5] * b2, dim=-1)
            new = cost(_signed_sampson(essential_from_pose(Rn, tn), x1, x2))
            ok = (new < cur) & ~improved
            R = torch.where(ok[:, None, None], Rn, R)
            t = torch.where(ok[:, None], tn, t)
            cur = torch.where(ok, new, cur)
            improved = improved | ok
            lam = torch.where(ok, lam * 0.3, lam * 10.0)
            if bool(improved.all()):
                break
        lam = lam.clamp(1e-9, 1e9)
    return R, t


# ----------------------------------------------------------------------------- RANSAC


def _sample_indices(
    counts: Int[Tensor, " P"], num_hyp: int, k: int, gen: torch.Generator
) -> Int[Tensor, "P H k"]:
    """``k`` distinct-in-expectation indices below ``counts[p]`` per hypothesis (uniform).

    Drawn as ``floor(u * count)``; the rare repeated index only yields a degenerate
    hypothesis that scores poorly.
    """
    u = torch.rand(counts.shape[0], num_hyp, k, generator=gen, dtype=torch.float64)
    u = u.to(counts.device)  # a CPU generator may drive CUDA data
    idx = (u * counts[:, None, None].double()).floor().long()
    return torch.minimum(idx, (counts[:, None, None] - 1).clamp(min=0))


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x (P, M, 2)`` at ``idx (P, H, k)`` -> ``(P, H, k, 2)``."""
    P, H, k = idx.shape
    return torch.gather(x, 1, idx.reshape(P, H * k, 1).expand(-1, -1, 2)).reshape(P, H, k, 2)


def _compact(x1: Tensor, x2: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Move valid correspondences to the front of each row; returns the permutation too."""
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    g = order[..., None].expand(-1, -1, 2)
    return torch.gather(x1, 1, g), torch.gather(x2, 1, g), torch.gather(valid, 1, order), order


def _msac(M: Tensor, x1: Tensor, x2: Tensor, valid: Tensor, thr2: Tensor) -> Tensor:
    """MSAC score (sum of truncated squared Sampson errors; lower is better)."""
    err = torch.nan_to_num(sampson_error(M, x1, x2), nan=math.inf)
    return torch.where(valid, torch.minimum(err, thr2), torch.zeros_like(err)).sum(-1)


def ransac_two_view(
    x1: Float[Tensor, "P M 2"],
    x2: Float[Tensor, "P M 2"],
    valid: Bool[Tensor, "P M"],
    threshold: float | Float[Tensor, " P"],
    kind: str = "essential",
    config: TwoViewConfig | None = None,
) -> tuple[Float[Tensor, "P 3 3"], Bool[Tensor, "P M"]]:
    """Batched MSAC over ``P`` pairs; ``threshold`` is on the Sampson distance in the units of
    ``x1, x2`` (pixels for ``fundamental``, normalised coordinates for ``essential``).

    Returns the refined matrix and the inlier mask of every pair.
    """
    if kind not in ("essential", "fundamental"):
        raise ValueError(f"kind must be 'essential' or 'fundamental', got {kind!r}")
    cfg = config or TwoViewConfig()
    fit = essential_8pt if kind == "essential" else fundamental_8pt
    x1, x2 = x1.double(), x2.double()
    P, M = valid.shape
    if P == 0:
        return torch.zeros(0, 3, 3, dtype=x1.dtype), valid.clone()
    x1c, x2c, vc, order = _compact(x1, x2, valid)
    counts = vc.sum(1)
    gen = torch.Generator().manual_seed(cfg.seed)
    H = cfg.num_hypotheses
    idx = _sample_indices(counts, H, 8, gen)
    thr2 = torch.as_tensor(threshold, dtype=x1.dtype).expand(P).clone().pow(2)

    # Preemptive scoring: every hypothesis on a random subset of each pair's correspondences,
    # then the best few on all of them (keeps memory and time at P x H x S, not P x H x M).
    S = min(M, cfg.preemptive_subset)
    sub = _sample_indices(counts, 1, S, gen)[:, 0]  # (P, S)
    sub_valid = torch.gather(vc, 1, sub)
    x1s = torch.gather(x1c, 1, sub[..., None].expand(-1, -1, 2))
    x2s = torch.gather(x2c, 1, sub[..., None].expand(-1, -1, 2))
    k_top = min(H, cfg.num_verified)
    top_M = torch.zeros(P, k_top, 3, 3, dtype=x1.dtype)
    chunk = max(1, cfg.max_elements // max(1, H * S))
    hyp_all = torch.nan_to_num(fit(_gather(x1c, idx), _gather(x2c, idx)))  # (P, H, 3, 3)
    for s in range(0, P, chunk):
        sl = slice(s, min(P, s + chunk))
        hyp = hyp_all[sl]
        score = _msac(hyp, x1s[sl, None], x2s[sl, None], sub_valid[sl, None], thr2[sl, None, None])
        top = score.topk(k_top, dim=1, largest=False).indices
        top_M[sl] = torch.gather(hyp, 1, top[..., None, None].expand(-1, -1, 3, 3))
    if kind == "essential":
        # Local optimisation on the manifold: decompose each candidate, refine (R, t) by robust
        # Gauss-Newton on the Sampson error (the linear 8-point refit is too noise-sensitive
        # for narrow fields of view), keep the best by MSAC.
        # Candidates are refined on the preemptive subset, the winner then on all points.
        S2 = min(S, cfg.refine_subset)
        x1s, x2s, sub_valid = x1s[:, :S2], x2s[:, :S2], sub_valid[:, :S2]
        shape = (P, k_top, S2, 2)
        Rk, tk, _ = pose_from_essential(
            top_M, x1s[:, None].expand(shape), x2s[:, None].expand(shape), sub_valid[:, None]
        )
        Rk, tk = refine_relative_pose(
            Rk.flatten(0, 1),
            tk.flatten(0, 1),
            x1s[:, None].expand(shape).flatten(0, 1),
            x2s[:, None].expand(shape).flatten(0, 1),
            sub_valid[:, None].expand(P, k_top, S2).flatten(0, 1),
            thr2[:, None].expand(P, k_top).flatten(),
            cfg.refine_iterations,
        )
        Ek = essential_from_pose(Rk, tk).reshape(P, k_top, 3, 3)
        Mbest = torch.zeros(P, 3, 3, dtype=x1.dtype)
        Rb = torch.zeros(P, 3, 3, dtype=x1.dtype)
        tb = torch.zeros(P, 3, dtype=x1.dtype)
        Rk, tk = Rk.reshape(P, k_top, 3, 3), tk.reshape(P, k_top, 3)
        chunk = max(1, cfg.max_elements // max(1, k_top * M))
        for s in range(0, P, chunk):
            sl = slice(s, min(P, s + chunk))
            sc = _msac(Ek[sl], x1c[sl, None], x2c[sl, None], vc[sl, None], thr2[sl, None, None])
            b = sc.argmin(1)
            ar = torch.arange(b.shape[0])
            Rb[sl], tb[sl] = Rk[sl][ar, b], tk[sl][ar, b]
        Rb, tb = refine_relative_pose(
            Rb, tb, x1c, x2c, vc, thr2, max(2, cfg.refine_iterations // 2)
        )
        Mbest = essential_from_pose(Rb, tb)
        err = sampson_error(Mbest, x1c, x2c)
        inliers = torch.zeros_like(valid)
        inliers.scatter_(1, order, vc & (err < thr2[:, None]))
        return Mbest, inliers

    # Local optimisation of the best few hypotheses of every pair at once: iteratively
    # reweighted 8-point on their inliers (a wider threshold first, as in LO-RANSAC), then the
    # best by MSAC on all correspondences.
    cand = top_M
    chunk = max(1, cfg.max_elements // max(1, k_top * M * 4))
    for s in range(0, P, chunk):
        sl = slice(s, min(P, s + chunk))
        Mk = cand[sl]
        x1k, x2k, vk = x1c[sl, None], x2c[sl, None], vc[sl, None]
        t2 = thr2[sl, None, None]
        cur = _msac(Mk, x1k, x2k, vk, t2)
        for it in range(cfg.refine_iterations):
            scale = 9.0 if it == 0 else (4.0 if it == 1 else 1.0)
            err = torch.nan_to_num(sampson_error(Mk, x1k, x2k), nan=math.inf)
            inl = vk & (err < scale * t2)
            w = inl.double() / (1.0 + err / (scale * t2))
            enough = inl.sum(-1) >= 8
            shape = (-1, k_top, -1, -1)
            new = torch.nan_to_num(fit(x1k.expand(shape), x2k.expand(shape), w))
            sc = _msac(new, x1k, x2k, vk, t2)
            better = enough & (sc < cur)
            Mk = torch.where(better[..., None, None], new, Mk)
            cur = torch.where(better, sc, cur)
        cand[sl] = Mk
        b = cur.argmin(1)
        cand[sl, 0] = Mk[torch.arange(b.shape[0]), b]
    Mbest = cand[:, 0]
    err = sampson_error(Mbest, x1c, x2c)
    inl_c = vc & (err < thr2[:, None])
    inliers = torch.zeros_like(valid)
    inliers.scatter_(1, order, inl_c)
    return Mbest, inliers


def estimate_two_view(
    x1: Float[Tensor, "P M 2"],
    x2: Float[Tensor, "P M 2"],
    valid: Bool[Tensor, "P M"],
    focal: Float[Tensor, " P"] | float | None = None,
    config: TwoViewConfig | None = None,
) -> TwoViewGeometry:
    """Essential-matrix geometry and relative pose for calibrated coordinates.

    ``x1, x2`` are normalised image coordinates (``K^-1 p``); ``focal`` (pixels, per pair or
    one value) converts the pixel threshold. With ``focal=None`` the inputs are pixels and a
    fundamental matrix is estimated (no pose: ``R = I``, ``t = 0``).
    """
    cfg = config or TwoViewConfig()
    P = valid.shape[0]
    x1, x2 = x1.double(), x2.double()
    eye = torch.eye(3, dtype=torch.float64).expand(P, 3, 3).clone()
    if focal is None:
        Fm, inl = ransac_two_view(x1, x2, valid, cfg.threshold_px, "fundamental", cfg)
        R, t = eye, torch.zeros(P, 3, dtype=torch.float64)
        angle = torch.zeros(P, dtype=torch.float64)
        mat = Fm
    else:
        f = torch.as_tensor(focal, dtype=torch.float64).expand(P)
        E, inl = ransac_two_view(x1, x2, valid, cfg.threshold_px / f, "essential", cfg)
        R, t, _ = pose_from_essential(E, x1, x2, inl)
        # Points behind a camera are outliers of the chosen pose.
        l1, l2 = two_view_depths(R, t, x1, x2)
        inl = inl & (l1 > 0) & (l2 > 0)
        ang = triangulation_angles_deg(R, t, x1, x2)
        ang = torch.where(inl, ang, torch.full_like(ang, math.nan))
        angle = torch.nan_to_num(ang.nanmedian(dim=1).values, nan=0.0)
        mat = E
    n_in = inl.sum(1)
    n_valid = valid.sum(1).clamp(min=1)
    ok = (n_in >= cfg.min_inliers) & (n_in.double() / n_valid >= cfg.min_inlier_ratio)
    return TwoViewGeometry(mat, inl, n_in, ok, R, t, angle)


def _shared_focal_cost(
    F: Float[Tensor, "P 3 3"], principal_point: Float[Tensor, "2"], w: Tensor, fs: Tensor
) -> Tensor:
    """Weighted median over the pairs of ``(s1 - s2) / (s1 + s2)`` of ``E = K^T F K``, for each
    candidate focal length in ``fs`` (0 = a perfect essential matrix)."""
    cx, cy = float(principal_point[0]), float(principal_point[1])
    K = torch.zeros(fs.shape[0], 3, 3, dtype=torch.float64)
    K[:, 0, 0] = fs
    K[:, 1, 1] = fs
    K[:, 0, 2] = cx
    K[:, 1, 2] = cy
    K[:, 2, 2] = 1.0
    E = K[:, None].transpose(-1, -2) @ F.double()[None] @ K[:, None]
    s = torch.linalg.svdvals(E)
    r = (s[..., 0] - s[..., 1]) / (s[..., 0] + s[..., 1]).clamp(min=1e-300)  # (C, P)
    order = r.argsort(dim=1)
    cw = torch.cumsum(w[order], dim=1)
    med = (cw >= 0.5 * w.sum()).double().argmax(dim=1)
    return r.gather(1, order.gather(1, med[:, None]))[:, 0]


def estimate_shared_focal(
    F: Float[Tensor, "P 3 3"],
    principal_point: Float[Tensor, "2"],
    weights: Float[Tensor, " P"] | None = None,
    f_range: tuple[float, float] = (100.0, 10000.0),
    num_candidates: int = 200,
) -> float:
    """Focal length (pixels) shared by all images, from fundamental matrices.

    For the right ``K``, ``E = K^T F K`` has two equal singular values. Candidates on a log grid
    are scored by the weighted median of ``(s1 - s2) / (s1 + s2)`` over the pairs, then the best
    is refined on a finer grid around it. Robust to a minority of bad pairs. Whether the pairs
    determine the focal length at all: :func:`shared_focal_contrast`.
    """
    w = torch.ones(F.shape[0], dtype=torch.float64) if weights is None else weights.double()
    lo, hi = math.log(f_range[0]), math.log(f_range[1])
    fs = torch.exp(torch.linspace(lo, hi, num_candidates, dtype=torch.float64))
    best = float(fs[_shared_focal_cost(F, principal_point, w, fs).argmin()])
    step = (hi - lo) / (num_candidates - 1)
    fs = torch.exp(
        torch.linspace(math.log(best) - step, math.log(best) + step, 41, dtype=torch.float64)
    )
    return float(fs[_shared_focal_cost(F, principal_point, w, fs).argmin()])


def shared_focal_contrast(
    F: Float[Tensor, "P 3 3"],
    principal_point: Float[Tensor, "2"],
    focal: float,
    weights: Float[Tensor, " P"] | None = None,
    factor: float = 2.0,
) -> float:
    """How much better ``focal`` explains the pairs than ``focal / factor`` and ``focal * factor``
    (the smaller of their costs minus its cost, cost as in :func:`estimate_shared_focal`).

    Near 0 when the pairs cannot tell focal lengths apart: cameras fixating one point (every
    optical axis through one point, e.g. an orbit around an object) are the known degeneracy
    of focal length from fundamental matrices; the minimum found there is numerical noise, so
    it would differ from machine to machine.
    """
    w = torch.ones(F.shape[0], dtype=torch.float64) if weights is None else weights.double()
    fs = torch.tensor([focal, focal / factor, focal * factor], dtype=torch.float64)
    c = _shared_focal_cost(F, principal_point, w, fs)
    return float(torch.minimum(c[1], c[2]) - c[0])


def estimate_per_image_focals(
    F: Float[Tensor, "P 3 3"],
    pairs: Int[Tensor, "P 2"],
    principal_points: Float[Tensor, "N 2"],
    sizes: Float[Tensor, " N"],
    weights: Float[Tensor, " P"] | None = None,
    ratio_range: tuple[float, float] = (0.4, 4.0),
    num_candidates: int = 80,
    sweeps: int = 5,
    prior_weight: float = 0.01,
) -> tuple[Float[Tensor, " N"], float]:
    """One focal length per image (pixels) from the fundamental matrices of image pairs.

    ``F[p]`` maps image ``pairs[p, 0]`` to ``pairs[p, 1]`` (``x2^T F x1 = 0``). Focal lengths
    are searched as ratios of each image's largest side (``sizes``) on a log grid: first one
    ratio for all images, then per image by coordinate descent (each image's ratio on the grid,
    the others fixed), scoring the weighted mean of the truncated essential-matrix residual
    ``(s1 - s2) / (s1 + s2)`` of ``K2^T F K1`` over the image's pairs, plus a weak pull
    (``prior_weight`` per unit of log ratio) towards the shared ratio for images whose pairs
    leave their focal length unobservable. Returns the focal lengths and the shared ratio
    (at an edge of ``ratio_range`` when the focal length is not observable at all).
    """
    F = F.double()
    pp = principal_points.double()
    size = sizes.double()
    w = torch.ones(F.shape[0], dtype=torch.float64) if weights is None else weights.double()
    i1, i2 = pairs[:, 0], pairs[:, 1]

    def K(f: Tensor, img: Tensor) -> Tensor:
        out = torch.zeros(*f.shape, 3, 3, dtype=torch.float64)
        out[..., 0, 0] = f
        out[..., 1, 1] = f
        out[..., 0, 2] = pp[img, 0].expand(f.shape)
        out[..., 1, 2] = pp[img, 1].expand(f.shape)
        out[..., 2, 2] = 1.0
        return out

    def resid(f1: Tensor, f2: Tensor, a: Tensor, b: Tensor, Fm: Tensor) -> Tensor:
        s = torch.linalg.svdvals(K(f2, b).transpose(-1, -2) @ Fm @ K(f1, a))
        r = (s[..., 0] - s[..., 1]) / (s[..., 0] + s[..., 1]).clamp(min=1e-300)
        return r.clamp(max=0.3)

    ratios = torch.exp(
        torch.linspace(
            math.log(ratio_range[0]), math.log(ratio_range[1]), num_candidates, dtype=torch.float64
        )
    )
    r = resid(ratios[:, None] * size[i1], ratios[:, None] * size[i2], i1, i2, F[None])
    rho0 = float(ratios[((r * w).sum(1) / w.sum()).argmin()])
    f = rho0 * size
    if rho0 <= ratios[1] or rho0 >= ratios[-2]:
        return f, rho0
    prior = prior_weight * torch.log(ratios / rho0).abs()
    for _ in range(sweeps):
        for i in range(size.numel()):
            sel = ((i1 == i) | (i2 == i)).nonzero()[:, 0]
            if sel.numel() == 0:
                continue
            fc = ratios[:, None] * size[i]
            f1 = torch.where(i1[sel] == i, fc, f[i1[sel]])
            f2 = torch.where(i2[sel] == i, fc, f[i2[sel]])
            r = resid(f1, f2, i1[sel], i2[sel], F[sel][None])
            cost = (r * w[sel]).sum(1) / w[sel].sum() + prior
            f[i] = fc[cost.argmin(), 0]
    return f, rho0
