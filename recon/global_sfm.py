"""Global camera initialisation: rotation averaging, translation averaging, PnP fallback.

All cameras are solved at once from the view graph (pairs with a relative pose):
- **Rotation averaging**: chordal L2 initialisation (linear least squares on the rotation
  matrices, projected onto SO(3)), then robust IRLS refinement in the Lie algebra
  (Chatterjee & Govindu style) with Cauchy weights.
- **Translation averaging**: BATA-style bearing constraints ``d_ab (a - b) ≈ v_ab`` between
  camera centres (relative translation directions) and between cameras and track points
  (viewing rays, GLOMAP-style global positioning), solved by alternating the scale factors
  ``d = 1 / |a - b|`` with a weighted linear solve. The linear system is the same for x, y, z
  (a weighted graph Laplacian), and the points are eliminated by a Schur complement on a
  diagonal block, so each iteration is one small dense ``N x N`` solve.
- **PnP** (fallback for images the global step leaves out): batched DLT + RANSAC over
  hypotheses, then refinement with the bundle adjuster (points fixed).

Conventions: ``R_rel[e] = R_j R_i^T`` and ``t_rel[e]`` (unit) for edge ``(i, j)``, i.e. the
pose ``cam_j_from_cam_i`` as returned by :mod:`sceneforge.recon.two_view`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.rotations import angle_axis_to_matrix, matrix_to_angle_axis


@dataclass
class RotationAveragingConfig:
    """Rotation averaging settings."""

    irls_iterations: int = 20
    """Robust refinement iterations after the chordal initialisation."""
    cauchy_scale_deg: float = 5.0
    """Scale of the Cauchy weights on the residual rotation angle."""
    max_residual_deg: float = 10.0
    """Edges whose residual exceeds this after refinement are reported as outliers."""


@dataclass
class TranslationAveragingConfig:
    """Translation averaging (global positioning) settings."""

    iterations: int = 100
    """Alternations of scale update and weighted linear solve."""
    use_points: bool = True
    """Add camera-to-point bearing constraints from the tracks (robust for collinear motion)."""
    max_points: int = 4000
    """Tracks used as points: the longest ones ..."""
    points_per_image: int = 1000
    """... plus each image's longest tracks, up to this many per image: where the camera
    turns fast, long tracks are rare and the global longest leave those images (and the
    pairs linking them) almost without point constraints."""
    pair_weight: float = 1.0
    """Weight of a camera-camera constraint relative to a camera-point one."""
    cauchy_scale: float = 0.1
    """Scale of the Cauchy weights on the bearing residual (chord length)."""
    min_pair_angle_deg: float = 1.0
    """Pairs whose median triangulation angle is below this give no translation constraint."""
    seed: int = 0
    """Seed of the random initialisation."""


@dataclass
class PnPConfig:
    """Absolute pose (PnP registration) settings."""

    num_hypotheses: int = 512
    """RANSAC samples of three points (up to four P3P poses each), evaluated at once."""
    threshold_px: float = 4.0
    """Inlier reprojection threshold in pixels."""
    min_inliers: int = 30
    """Fewer inliers: the image stays unregistered."""
    seed: int = 0
    """Sampler seed."""


# ----------------------------------------------------------------------------- graph utils


def connected_components(num_nodes: int, edges) -> list[list[int]]:
    """Connected components (singletons included) of an undirected graph given as ``(E, 2)``
    node pairs (tensor or list), largest first, ties by smallest node."""
    parent = list(range(num_nodes))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in edges.tolist() if isinstance(edges, Tensor) else edges:
        parent[find(i)] = find(j)
    comp: dict[int, list[int]] = {}
    for a in range(num_nodes):
        comp.setdefault(find(a), []).append(a)
    return sorted(comp.values(), key=lambda c: (-len(c), c[0]))


def largest_component(num_nodes: int, edges: Int[Tensor, "E 2"]) -> Bool[Tensor, " N"]:
    """Mask of the nodes in the largest connected component of the graph."""
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    if num_nodes and edges.shape[0]:
        mask[connected_components(num_nodes, edges)[0]] = True
    return mask


def _project_so3(M: Float[Tensor, "*B 3 3"]) -> Float[Tensor, "*B 3 3"]:
    U, _, Vh = torch.linalg.svd(M)
    d = torch.linalg.det(U @ Vh)
    D = torch.ones_like(M[..., 0])
    D[..., 2] = d
    return U @ torch.diag_embed(D) @ Vh


# ----------------------------------------------------------------------------- rotations


def rotation_averaging(
    num_images: int,
    edges: Int[Tensor, "E 2"],
    R_rel: Float[Tensor, "E 3 3"],
    weights: Float[Tensor, " E"] | None = None,
    config: RotationAveragingConfig | None = None,
) -> tuple[Float[Tensor, "N 3 3"], Bool[Tensor, " N"], Bool[Tensor, " E"]]:
    """Absolute rotations ``R_i`` (cam_from_world) with ``R_j ≈ R_rel R_i`` on every edge.

    Only the largest connected component is solved (its first image is the identity);
    returns the rotations, which images were solved, and the inlier edges.
    """
    cfg = config or RotationAveragingConfig()
    dt = torch.float64
    R_rel = R_rel.to(dt)
    E = edges.shape[0]
    w0 = torch.ones(E, dtype=dt) if weights is None else weights.to(dt)
    solved = largest_component(num_images, edges)
    R_abs = torch.eye(3, dtype=dt).repeat(num_images, 1, 1)
    if int(solved.sum()) < 2:
        return R_abs, solved, torch.zeros(E, dtype=torch.bool)
    ids = solved.nonzero()[:, 0]
    local = torch.full((num_images,), -1, dtype=torch.long)
    local[ids] = torch.arange(ids.numel())
    keep = solved[edges[:, 0]] & solved[edges[:, 1]]
    ei, ej = local[edges[keep, 0]], local[edges[keep, 1]]
    Rr, w = R_rel[keep], w0[keep]
    n = ids.numel()

    def solve_blocks(rhs: Tensor, ww: Tensor) -> Tensor:
        """Weighted LS of ``x_j - Rr x_i = rhs`` (3-vectors, K right-hand sides); x_0 = 0."""
        k = rhs.shape[-1]
        A = torch.zeros(n * 3, n * 3, dtype=dt)
        b = torch.zeros(n * 3, k, dtype=dt)
        eye = torch.eye(3, dtype=dt)
        # Blocks of J^T W J for rows [ -Rr at i | I at j ].
        Aii = ww[:, None, None] * (Rr.transpose(-1, -2) @ Rr)
        Ajj = ww[:, None, None] * eye
        Aij = -ww[:, None, None] * Rr.transpose(-1, -2)
        A4 = A.view(n, 3, n, 3)
        A4.index_put_(
            (
                ei[:, None, None],
                torch.arange(3)[None, :, None],
                ei[:, None, None],
                torch.arange(3)[None, None, :],
            ),
            Aii,
            accumulate=True,
        )
        A4.index_put_(
            (
                ej[:, None, None],
                torch.arange(3)[None, :, None],
                ej[:, None, None],
                torch.arange(3)[None, None, :],
            ),
            Ajj,
            accumulate=True,
        )
        A4.index_put_(
            (
                ei[:, None, None],
                torch.arange(3)[None, :, None],
                ej[:, None, None],
                torch.arange(3)[None, None, :],
            ),
            Aij,
            accumulate=True,
        )
        A4.index_put_(
            (
                ej[:, None, None],
                torch.arange(3)[None, :, None],
                ei[:, None, None],
                torch.arange(3)[None, None, :],
            ),
            Aij.transpose(-1, -2),
            accumulate=True,
        )
        b3 = b.view(n, 3, k)
        b3.index_add_(0, ei, -(Rr.transpose(-1, -2) @ rhs) * ww[:, None, None])
        b3.index_add_(0, ej, rhs * ww[:, None, None])
        x = torch.linalg.solve(A[3:, 3:] + 1e-9 * torch.eye(3 * n - 3, dtype=dt), b[3:])
        return torch.cat([torch.zeros(3, k, dtype=dt), x], 0).view(n, 3, k)

    # Chordal L2: the columns of R_i satisfy r_j = Rr r_i; with R_0 = I the system for the
    # three columns is x_j - Rr x_i = 0 with x_0 = e_c, i.e. rhs moved to the root's rows.
    # Solve via the update form: x = e_c + dx, dx_0 = 0 -> dx_j - Rr dx_i = -(e_c_j - Rr e_c_i).
    eye = torch.eye(3, dtype=dt)
    rhs = -(eye.expand(Rr.shape[0], 3, 3) - Rr)  # x = I everywhere as the linearisation point
    dx = solve_blocks(rhs, w)
    R = _project_so3(eye + dx)  # rows 3x3 per camera (columns are the solved x^c)

    # Robust IRLS refinement in the tangent space: w_j - Rr w_i = log(Rr R_i R_j^T)^-1 ...
    scale = math.radians(cfg.cauchy_scale_deg)
    for _ in range(cfg.irls_iterations):
        Eres = Rr @ R[ei] @ R[ej].transpose(-1, -2)  # identity when consistent
        r = matrix_to_angle_axis(Eres)  # (Ek, 3)
        rn = r.norm(dim=-1)
        ww = w / (1.0 + (rn / scale) ** 2)
        d = solve_blocks(r[..., None], ww)[..., 0]  # w_j - Rr w_i = r
        R = angle_axis_to_matrix(d) @ R
        if float(d.norm(dim=-1).max()) < 1e-10:
            break
    Eres = Rr @ R[ei] @ R[ej].transpose(-1, -2)
    res_deg = torch.rad2deg(matrix_to_angle_axis(Eres).norm(dim=-1))
    R_abs[ids] = R
    inl = torch.zeros(E, dtype=torch.bool)
    inl[keep] = res_deg < cfg.max_residual_deg
    return R_abs, solved, inl


# ----------------------------------------------------------------------------- translations


def translation_averaging(
    R_abs: Float[Tensor, "N 3 3"],
    solved: Bool[Tensor, " N"],
    edges: Int[Tensor, "E 2"],
    t_rel: Float[Tensor, "E 3"],
    edge_weights: Float[Tensor, " E"] | None = None,
    point_obs: tuple[Tensor, Tensor, Tensor] | None = None,
    config: TranslationAveragingConfig | None = None,
) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "P 3"] | None]:
    """Camera centres (and track points) from bearings, all cameras at once.

    Args:
        R_abs: ``cam_from_world`` rotations from :func:`rotation_averaging`.
        solved: which cameras take part.
        edges, t_rel: relative translations (unit, in camera ``j``'s frame).
        edge_weights: confidence per edge (0 drops it).
        point_obs: optional ``(image_idx (O,), point_idx (O,), rays (O, 3))`` with ``rays`` the
            calibrated viewing directions in the camera frame (``K^-1 [u, v, 1]``).

    Returns centres ``(N, 3)`` (unsolved cameras at 0) and the points (or None).
    """
    cfg = config or TranslationAveragingConfig()
    dt = torch.float64
    R_abs = R_abs.to(dt)
    ids = solved.nonzero()[:, 0]
    n = ids.numel()
    local = torch.full((solved.shape[0],), -1, dtype=torch.long)
    local[ids] = torch.arange(n)
    gen = torch.Generator().manual_seed(cfg.seed)

    a_idx, b_idx, v_list, w_list = [], [], [], []
    ew = torch.ones(edges.shape[0], dtype=dt) if edge_weights is None else edge_weights.to(dt)
    keep = solved[edges[:, 0]] & solved[edges[:, 1]] & (ew > 0)
    if bool(keep.any()):
        i, j = edges[keep, 0], edges[keep, 1]
        # t_rel = R_j (c_i - c_j): c_i - c_j ∝ R_j^T t_rel
        v = torch.nn.functional.normalize(
            (R_abs[j].transpose(-1, -2) @ t_rel[keep].to(dt)[..., None])[..., 0], dim=-1
        )
        a_idx.append(local[i])
        b_idx.append(local[j])
        v_list.append(v)
        w_list.append(ew[keep] * cfg.pair_weight)
    num_pts = 0
    if point_obs is not None and cfg.use_points:
        im, pt, rays = point_obs
        ok = solved[im]
        im, pt, rays = im[ok], pt[ok], rays[ok].to(dt)
        if im.numel():
            uniq, pt_local = torch.unique(pt, return_inverse=True)
            num_pts = uniq.numel()
            v = torch.nn.functional.normalize(
                (R_abs[im].transpose(-1, -2) @ rays[..., None])[..., 0], dim=-1
            )
            a_idx.append(n + pt_local)  # point minus camera
            b_idx.append(local[im])
            v_list.append(v)
            w_list.append(torch.ones(im.numel(), dtype=dt))
    if not a_idx or n < 2:
        return torch.zeros(solved.shape[0], 3, dtype=dt), None
    a, b = torch.cat(a_idx), torch.cat(b_idx)
    v, w0 = torch.cat(v_list), torch.cat(w_list)
    nz = n + num_pts

    z = torch.rand(nz, 3, generator=gen, dtype=dt) * 2 - 1
    for _ in range(cfg.iterations):
        diff = z[a] - z[b]
        dist = diff.norm(dim=-1).clamp(min=1e-9)
        d = 1.0 / dist
        res = (d[:, None] * diff - v).norm(dim=-1)
        w = w0 / (1.0 + (res / cfg.cauchy_scale) ** 2)
        z_new = _solve_bearing_system(a, b, d, v, w, n, nz)
        if z_new is None:
            break
        # Fix the scale gauge: mean camera distance to the centroid = 1.
        c = z_new[:n]
        s = (c - c.mean(0)).norm(dim=-1).mean().clamp(min=1e-12)
        z_new = (z_new - c.mean(0)) / s
        step = (z_new - z).norm(dim=-1).max()
        z = z_new
        if float(step) < 1e-7:
            break
    centers = torch.zeros(solved.shape[0], 3, dtype=dt)
    centers[ids] = z[:n]
    pts = z[n:] if num_pts else None
    return centers, pts


def _solve_bearing_system(
    a: Tensor, b: Tensor, d: Tensor, v: Tensor, w: Tensor, n: int, nz: int
) -> Tensor | None:
    """Minimise ``sum w |d (z_a - z_b) - v|^2`` with ``z_0 = 0``; points (indices >= n) are
    eliminated by a Schur complement (their block is diagonal)."""
    dt = v.dtype
    c = w * d * d
    diag = torch.zeros(nz, dtype=dt).index_add_(0, a, c).index_add_(0, b, c)
    rhs = torch.zeros(nz, 3, dtype=dt)
    rhs.index_add_(0, a, (w * d)[:, None] * v).index_add_(0, b, -(w * d)[:, None] * v)
    # Off-diagonal entries -c between a and b.
    cam_cam = (a < n) & (b < n)
    L = torch.zeros(n, n, dtype=dt)
    L.index_put_((a[cam_cam], b[cam_cam]), -c[cam_cam], accumulate=True)
    L.index_put_((b[cam_cam], a[cam_cam]), -c[cam_cam], accumulate=True)
    L += torch.diag(diag[:n])
    rc = rhs[:n].clone()
    cp = a >= n  # point (a) - camera (b) rows
    if bool(cp.any()):
        p, cam, cc = a[cp] - n, b[cp], c[cp]
        dpp = diag[n:].clamp(min=1e-12)
        # Schur: L_cc - L_cp D^-1 L_pc; L_cp[cam, p] = -cc
        M = torch.zeros(n, nz - n, dtype=dt)
        M.index_put_((cam, p), -cc, accumulate=True)
        L -= (M / dpp[None]) @ M.T
        rc -= (M / dpp[None]) @ rhs[n:]
    try:
        zc = torch.linalg.solve(L[1:, 1:] + 1e-12 * torch.eye(n - 1, dtype=dt), rc[1:])
    except RuntimeError:
        return None
    zc = torch.cat([torch.zeros(1, 3, dtype=dt), zc], 0)
    z = torch.zeros(nz, 3, dtype=dt)
    z[:n] = zc
    if nz > n:
        p_rhs = rhs[n:].clone()
        # L_pc z_c: p row gets -cc * z_cam
        p_rhs.index_add_(0, a[cp] - n, c[cp][:, None] * zc[b[cp]])
        z[n:] = p_rhs / diag[n:].clamp(min=1e-12)[:, None]
    return z


# ----------------------------------------------------------------------------- PnP


def pnp_dlt(
    X: Float[Tensor, "*B M 3"],
    x: Float[Tensor, "*B M 2"],
    weights: Float[Tensor, "*B M"] | None = None,
) -> Float[Tensor, "*B 3 4"]:
    """Linear absolute pose from calibrated coordinates ``x`` of world points ``X`` (M >= 6).

    The 3x4 solution is normalised, its rotation projected onto SO(3) and the sign fixed
    so that the points are in front.
    """
    mu = X.mean(-2, keepdim=True)
    sc = (X - mu).norm(dim=-1).mean(-1)[..., None, None].clamp(min=1e-12)
    Xn = (X - mu) / sc
    Xh = torch.cat([Xn, torch.ones_like(Xn[..., :1])], dim=-1)  # (..., M, 4)
    z = torch.zeros_like(Xh)
    r1 = torch.cat([Xh, z, -x[..., 0:1] * Xh], dim=-1)
    r2 = torch.cat([z, Xh, -x[..., 1:2] * Xh], dim=-1)
    A = torch.cat([r1, r2], dim=-2)
    if weights is not None:
        Aw = A * torch.cat([weights, weights], -1)[..., None]
    else:
        Aw = A
    _, vecs = torch.linalg.eigh(Aw.transpose(-1, -2) @ A)
    Pm = vecs[..., 0].reshape(*A.shape[:-2], 3, 4)
    U, S, Vh = torch.linalg.svd(Pm[..., :3])
    s = S.mean(-1)
    R = U @ Vh
    det = torch.linalg.det(R)
    R = R * det[..., None, None]
    sign = det  # P -> sign * P so that R is a rotation
    t = sign[..., None] * Pm[..., 3] / s[..., None]
    # Undo the point normalisation: X = sc Xn + mu -> R Xn + t = (R X - R mu)/sc + t
    t = t * sc[..., 0] - (R @ mu.transpose(-1, -2))[..., 0]
    return torch.cat([R, t[..., None]], dim=-1)


def p3p(
    X: Float[Tensor, "B 3 3"], bearings: Float[Tensor, "B 3 3"]
) -> tuple[Float[Tensor, "B 4 3 3"], Float[Tensor, "B 4 3"], Bool[Tensor, "B 4"]]:
    """Minimal absolute pose from three world points and their bearings (Grunert's quartic).

    Unlike the linear 6-point solution this holds for coplanar points (a floor, a wall).
    Returns up to four ``cam_from_world`` solutions per sample (``R``, ``t``) and which are
    real with all three points in front."""
    X = X.double()
    f = torch.nn.functional.normalize(bearings.double(), dim=-1)
    a2 = (X[:, 1] - X[:, 2]).square().sum(-1)
    b2 = (X[:, 0] - X[:, 2]).square().sum(-1).clamp(min=1e-300)
    c2 = (X[:, 0] - X[:, 1]).square().sum(-1)
    ca, cb, cg = (
        (f[:, 1] * f[:, 2]).sum(-1),
        (f[:, 0] * f[:, 2]).sum(-1),
        (f[:, 0] * f[:, 1]).sum(-1),
    )
    amc, apc = (a2 - c2) / b2, (a2 + c2) / b2
    # Quartic in v = s3 / s1 (depth ratios); Haralick et al. 1994, Grunert's solution.
    A4 = (amc - 1).square() - 4 * c2 / b2 * ca.square()
    A3 = 4 * (amc * (1 - amc) * cb - (1 - apc) * ca * cg + 2 * c2 / b2 * ca.square() * cb)
    A2 = 2 * (
        amc.square() - 1 + 2 * amc.square() * cb.square() + 2 * (b2 - c2) / b2 * ca.square()
        - 4 * apc * ca * cb * cg + 2 * (b2 - a2) / b2 * cg.square()
    )  # fmt: skip
    A1 = 4 * (-amc * (1 + amc) * cb + 2 * a2 / b2 * cg.square() * cb - (1 - apc) * ca * cg)
    A0 = (1 + amc).square() - 4 * a2 / b2 * cg.square()
    lead = torch.where(A4.abs() < 1e-12, torch.full_like(A4, 1e-12), A4)
    comp = torch.zeros(X.shape[0], 4, 4, dtype=X.dtype)
    comp[:, 0] = -torch.stack([A3, A2, A1, A0], -1) / lead[:, None]
    comp[:, 1, 0] = comp[:, 2, 1] = comp[:, 3, 2] = 1.0
    roots = torch.linalg.eigvals(comp)
    v = roots.real
    den = 2 * (cg[:, None] - v * ca[:, None])
    den = torch.where(den.abs() < 1e-12, torch.full_like(den, 1e-12), den)
    u = (amc[:, None] - 1) * v.square() - 2 * amc[:, None] * cb[:, None] * v + 1 + amc[:, None]
    u = u / den
    s1sq = b2[:, None] / (1 + v.square() - 2 * v * cb[:, None])
    ok = (roots.imag.abs() < 1e-6 * (1 + v.abs())) & (s1sq > 0) & (v > 0) & (u > 0)
    s1 = s1sq.clamp(min=0).sqrt()
    depth = torch.stack([s1, u * s1, v * s1], -1)  # (B, 4, 3)
    P = depth[..., None] * f[:, None]  # camera-frame points (B, 4, 3, 3)
    ok = ok & torch.isfinite(P).flatten(-2).all(-1)
    P = torch.where(ok[..., None, None], P, X[:, None])  # keep the SVD below finite
    # Rigid alignment of the world points onto the camera-frame points (Kabsch).
    Xe = X[:, None].expand_as(P)
    mx, mp = Xe.mean(-2, keepdim=True), P.mean(-2, keepdim=True)
    U, _, Vh = torch.linalg.svd((Xe - mx).transpose(-1, -2) @ (P - mp))
    d = torch.linalg.det(Vh.transpose(-1, -2) @ U.transpose(-1, -2))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = Vh.transpose(-1, -2) @ D @ U.transpose(-1, -2)
    t = mp[..., 0, :] - (R @ mx.transpose(-1, -2))[..., 0]
    # Keep solutions that reproduce the bearings (drops spurious roots of degenerate triples:
    # repeated or collinear points).
    Pc = Xe @ R.transpose(-1, -2) + t[..., None, :]
    resid = (torch.nn.functional.normalize(Pc, dim=-1) - f[:, None]).norm(dim=-1).amax(-1)
    area = torch.linalg.cross(X[:, 1] - X[:, 0], X[:, 2] - X[:, 0]).norm(dim=-1)
    scale = (a2 + b2 + c2).clamp(min=1e-300)
    ok = ok & (resid < 1e-6) & (area > 1e-9 * scale)[:, None] & (Pc[..., 2] > 0).all(-1)
    return R, t, ok


def refine_pose(
    T: Float[Tensor, "3 4"],
    X: Float[Tensor, "M 3"],
    x: Float[Tensor, "M 2"],
    iterations: int = 10,
) -> Float[Tensor, "3 4"]:
    """Gauss-Newton on the calibrated reprojection error of one pose (inliers only)."""
    from sceneforge.core.rotations import angle_axis_to_matrix

    R, t = T[:, :3].double(), T[:, 3].double()
    X, x = X.double(), x.double()
    for _ in range(iterations):
        RX = X @ R.T
        pc = RX + t
        z = pc[:, 2:].clamp(min=1e-12)
        r = (pc[:, :2] / z - x).reshape(-1)
        dproj = torch.zeros(X.shape[0], 2, 3, dtype=X.dtype)
        dproj[:, 0, 0] = dproj[:, 1, 1] = 1 / z[:, 0]
        dproj[:, :, 2] = -pc[:, :2] / z.square()
        skew = torch.zeros(X.shape[0], 3, 3, dtype=X.dtype)  # d(pc)/d(omega) = -[RX]x
        skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = RX[:, 2], -RX[:, 1], RX[:, 0]
        skew = skew - skew.transpose(-1, -2)
        J = torch.cat([dproj @ skew, dproj], -1).reshape(-1, 6)
        H = J.T @ J + 1e-9 * torch.eye(6, dtype=X.dtype)
        step = -torch.linalg.solve(H, J.T @ r)
        if not bool(torch.isfinite(step).all()):
            break
        R = angle_axis_to_matrix(step[:3]) @ R
        t = t + step[3:]
        if float(step.norm()) < 1e-12:
            break
    return torch.cat([R, t[:, None]], -1)


def pnp_ransac(
    X: Float[Tensor, "M 3"],
    x: Float[Tensor, "M 2"],
    focal: float,
    config: PnPConfig | None = None,
) -> tuple[Float[Tensor, "3 4"], Bool[Tensor, " M"]]:
    """RANSAC over P3P hypotheses (all at once), then Gauss-Newton on the inliers; returns
    the pose and its inliers. ``x`` are calibrated coordinates."""
    cfg = config or PnPConfig()
    X, x = X.double(), x.double()
    m = X.shape[0]
    eye = torch.cat([torch.eye(3, dtype=X.dtype), torch.zeros(3, 1, dtype=X.dtype)], -1)
    if m < 3:
        return eye, torch.zeros(m, dtype=torch.bool)
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.rand(cfg.num_hypotheses, m, generator=gen).argsort(-1)[:, :3]
    bear = torch.cat([x, torch.ones_like(x[:, :1])], -1)
    R, t, ok = p3p(X[idx], bear[idx])
    hyp = torch.cat([R, t[..., None]], -1).reshape(-1, 3, 4)
    thr = cfg.threshold_px / focal

    def inliers(T: Tensor) -> tuple[Tensor, Tensor]:
        pc = X @ T[..., :3].transpose(-1, -2) + T[..., None, :, 3]
        err = (pc[..., :2] / pc[..., 2:].clamp(min=1e-12) - x).norm(dim=-1)
        good = (pc[..., 2] > 0) & (err < thr)
        return good, torch.where(good, err, torch.full_like(err, thr)).sum(-1)

    good, score = inliers(hyp)
    score = torch.where(ok.reshape(-1), score, torch.full_like(score, math.inf))
    best = torch.nan_to_num(score, nan=math.inf).argmin()
    if not bool(torch.isfinite(score[best])):
        return eye, torch.zeros(m, dtype=torch.bool)
    T, inl = hyp[best], good[best]
    for _ in range(3):
        if int(inl.sum()) < 4:
            break
        T2 = refine_pose(T, X[inl], x[inl])
        inl2, _ = inliers(T2)
        if int(inl2.sum()) < int(inl.sum()) or not bool(torch.isfinite(T2).all()):
            break
        T, inl = T2, inl2
    return T, inl


def translation_points(
    vis: Bool[Tensor, "T N"], solved: Bool[Tensor, " N"], cfg: TranslationAveragingConfig
) -> Int[Tensor, " K"]:
    """Tracks whose bearings constrain translation averaging: the ``max_points`` longest
    overall plus each solved image's ``points_per_image`` longest (ties by track index)."""
    lengths = vis[:, solved].sum(1)
    order = torch.sort(-lengths, stable=True).indices  # longest first, ties by index
    order = order[lengths[order] >= 2]
    keep = torch.zeros(vis.shape[0], dtype=torch.bool, device=vis.device)
    keep[order[: cfg.max_points]] = True
    if cfg.points_per_image > 0:
        ti, fi = vis[order].nonzero(as_tuple=True)  # ti: rank of the track by length
        by_image = torch.sort(fi, stable=True).indices  # per image, still longest first
        f = fi[by_image]
        counts = torch.bincount(f, minlength=vis.shape[1])
        rank = torch.arange(f.numel(), device=f.device) - (torch.cumsum(counts, 0) - counts)[f]
        best = by_image[(rank < cfg.points_per_image) & solved[f]]
        keep[order[ti[best]]] = True
    return keep.nonzero()[:, 0]


def translation_agreement_groups(
    R_abs: Float[Tensor, "N 3 3"],
    centers: Float[Tensor, "N 3"],
    edges: Int[Tensor, "E 2"],
    t_rel: Float[Tensor, "E 3"],
    used: Bool[Tensor, " E"],
    solved: Bool[Tensor, " N"],
    max_angle_deg: float = 5.0,
) -> int:
    """Groups of solved images linked by pairs whose direction ``t_rel`` (camera j's frame)
    the solved centres reproduce within ``max_angle_deg``: more than one group means the
    positions of some block rest on no agreeing pair."""
    i, j = edges[:, 0], edges[:, 1]
    d = centers[i] - centers[j]
    want = (R_abs[j].transpose(-1, -2) @ t_rel.to(R_abs.dtype)[..., None])[..., 0]
    cos = (d * want).sum(-1) / (d.norm(dim=-1) * want.norm(dim=-1)).clamp(min=1e-12)
    ok = used & solved[i] & solved[j] & (cos >= math.cos(math.radians(max_angle_deg)))
    groups = connected_components(int(solved.shape[0]), edges[ok])
    return sum(1 for g in groups if bool(solved[g[0]]))
