"""Linearisation into block normal equations and their solve by a Schur complement."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sceneforge.recon.ba.problem import BAOptions, BAProblem
from sceneforge.recon.ba.residuals import behind_camera_mask, projection_columns, robust_rho
from sceneforge.recon.ba.structure import Structure


@dataclass
class Linearisation:
    """Per-observation (corrected) residuals and Jacobians plus the block normal equations."""

    r: Tensor  # (M, 2)
    jc: Tensor  # (M, 2, C) camera side [pose | intr]
    jp: Tensor  # (M, 2, 3)
    U: Tensor  # (Nr, Nr) dense camera-side block
    V: Tensor  # (Np, 3, 3)
    Wk: Tensor  # (M, 3, C) per-observation W^T = (J_c^T J_p)^T
    Wk_ext: Tensor  # (M + 1, 3, C) with a zero row for chunk padding
    gc: Tensor  # (Nr,)
    gp: Tensor  # (Np, 3)


def gather_params(problem: BAProblem, st: Structure, rot, trans, intr, pts):
    """Per-observation parameters; ``intr`` has one row (shared) or one per camera."""
    m = st.cam.shape[0]
    intr_obs = intr[0].expand(m, -1) if intr.shape[0] == 1 else intr[st.cam]
    return rot[st.cam], trans[st.cam], intr_obs, pts[st.pt]


def residuals(problem: BAProblem, st: Structure, params, with_jacobians: bool = False):
    """Weighted residuals ``(M, 2)``; with Jacobians also the camera side, written into an
    ``(M + 1, 2, C)`` buffer whose last row is the zero padding of the chunk tables, and
    ``J_point (M, 2, 3)``."""
    rot, trans, intr, pts = params
    intr_c = intr.expand(st.nc, -1) if intr.shape[0] == 1 else intr
    cols = projection_columns(
        problem.model,
        rot,
        trans,
        intr_c,
        pts,
        st.cam_chunk_cam,
        camera_jacobian=with_jacobians,
        point_jacobian=with_jacobians,
        point_index=st.pt,
        chunk=st.chunk,
    )
    r = torch.stack([cols.u, cols.v], -1) - problem.observations
    w = problem.weights
    if w is not None:
        r = r * w[:, None]
    # Rows with a zero residual and Jacobian: padding slots and, on COLMAP's objective,
    # points behind their camera (few: zeroed by index, not by a full multiplication).
    zero = st.pad_rows
    if st.zero_behind:
        behind = behind_camera_mask(cols.depth).nonzero()[:, 0]
        zero = behind if zero is None else torch.cat([zero, behind])
    if zero is not None:
        r[zero] = 0.0
    if not with_jacobians:
        return r
    m = r.shape[0]
    C = st.col_idx.shape[1]
    # One stacking copy each (row-major (u | v) entries), into a buffer whose first m rows are
    # contiguous: much faster than one strided column write per entry.
    jc_ext = r.new_empty(m + 1, 2, C)
    jc_ext[m] = 0.0
    torch.stack(cols.cam_u[:C] + cols.cam_v[:C], 1, out=jc_ext.view(m + 1, 2 * C)[:m])
    jpt = torch.stack(cols.point_u + cols.point_v, 1).view(m, 2, 3)
    if w is not None:
        jc_ext[:m].mul_(w[:, None, None])
        jpt.mul_(w[:, None, None])
    if zero is not None:
        jc_ext[zero] = 0.0
        jpt[zero] = 0.0
    return r, jc_ext, jpt


def _assemble(st: Structure, blocks: Tensor, flat: Tensor) -> Tensor:
    """Sum ``(K, C, C)`` camera blocks at their flat indices into a dense ``(Nr, Nr)``."""
    out = blocks.new_zeros(st.nr * st.nr)
    return out.index_add_(0, flat, blocks.reshape(-1)).view(st.nr, st.nr)


def _scatter_chunks(st: Structure, vec: Tensor) -> Tensor:
    """Sum ``(Ncc, C)`` per-chunk camera-side vectors into ``(Nr,)``."""
    per_cam = vec.new_zeros(st.nc, vec.shape[1]).index_add_(0, st.cam_chunk_cam, vec)
    out = vec.new_zeros(st.nr)
    return out.index_add_(0, st.col_idx.reshape(-1), per_cam.reshape(-1))


def _chunk_sums(st: Structure, vec: Tensor) -> Tensor:
    """``(M, C)`` per-slot vectors summed over each camera chunk: ``(Ncc, C)``."""
    return vec.view(st.cam_chunk_cam.shape[0], st.chunk, vec.shape[1]).sum(1)


def gather_vector(st: Structure, x: Tensor) -> Tensor:
    """Camera-side ``(Nr,)`` vector to per-observation ``(M, C)``."""
    return x[st.col_idx].index_select(0, st.cam)


def free_mask_c(st: Structure) -> Tensor:
    parts = [st.free_pose.reshape(-1)]
    if st.ni:
        parts.append(st.free_intr.reshape(-1))
    return torch.cat(parts)


def _camera_gram(st: Structure, a_ext: Tensor, b_ext: Tensor) -> Tensor:
    """``sum_l A[l]^T B[l]`` over each run of ``st.chunk`` consecutive slots (one camera's).

    ``a_ext``/``b_ext`` are ``(M + 1, k, C)``; the first M rows viewed as ``(n, L * k, C)``
    chunks need no gather (the slot layout pads every camera to whole chunks).
    """
    n = st.cam_chunk_cam.shape[0]
    k, C = a_ext.shape[1], a_ext.shape[2]
    A = a_ext[:-1].view(n, st.chunk * k, C)
    B = b_ext[:-1].view(n, st.chunk * k, C)
    return torch.bmm(A.transpose(1, 2), B)


PAIR_CHUNKS_PER_GEMM = 1 << 15
"""Pair chunks gathered per batched GEMM of the Schur complement (~0.5M observation pairs:
the two gathers take ~48 C bytes a pair, 1.8 GB at once for 5M pairs at C = 7)."""


def _chunk_gram(a_ext: Tensor, b_ext: Tensor, ia: Tensor, ib: Tensor) -> Tensor:
    """``sum_l A[ia[n, l]]^T B[ib[n, l]]`` per chunk ``n`` as one batched GEMM.

    ``a_ext``/``b_ext`` are ``(M + 1, k, C)`` with a zero last row used by the padding; the
    gathered chunks are ``(n, L * k, C)`` views, so no transposing copies are made.
    """
    n, L = ia.shape
    k, C = a_ext.shape[1], a_ext.shape[2]
    A = a_ext.index_select(0, ia.reshape(-1)).reshape(n, L * k, C)
    B = b_ext.index_select(0, ib.reshape(-1)).reshape(n, L * k, C)
    return torch.bmm(A.transpose(1, 2), B)


def linearise(problem: BAProblem, st: Structure, params, options: BAOptions) -> Linearisation:
    r, jc_ext, jpt = residuals(problem, st, params, True)
    m = r.shape[0]
    C = st.col_idx.shape[1]
    jc = jc_ext[:m]
    free_c = free_mask_c(st)
    if not bool(free_c.all()):  # frozen parameters: zero their Jacobian columns
        jc.mul_(free_c[st.col_obs][:, None, :])
    if not st.free_points:
        jpt = torch.zeros_like(jpt)
    if options.loss != "trivial":
        s = (r * r).sum(-1)
        _, rho1, rho2 = robust_rho(options.loss, s, options.loss_scale)
        sq1 = rho1.sqrt()
        if options.robust_method == "triggs":
            use = (s > 0) & (rho2 > 0)
            ss = torch.where(use, s, torch.ones_like(s))
            D = torch.where(use, 1.0 + 2.0 * ss * rho2 / rho1, torch.ones_like(s))
            alpha = 1.0 - D.clamp(min=0).sqrt()
            res_scale = torch.where(use, sq1 / (1.0 - alpha), sq1)
            a_sq = torch.where(use, alpha / ss, torch.zeros_like(s))
        else:
            res_scale, a_sq = sq1, torch.zeros_like(s)
        ra = r * a_sq[:, None]
        rjc = r[:, 0, None] * jc[:, 0] + r[:, 1, None] * jc[:, 1]
        rjp = r[:, 0, None] * jpt[:, 0] + r[:, 1, None] * jpt[:, 1]
        jc.copy_(sq1[:, None, None] * (jc - ra[:, :, None] * rjc[:, None, :]))
        jpt = sq1[:, None, None] * (jpt - ra[:, :, None] * rjp[:, None, :])
        r = r * res_scale[:, None]
    # U: Gram matrices of chunks of each camera's observations, one batched GEMM.
    U = _assemble(st, _camera_gram(st, jc_ext, jc_ext), st.cam_chunk_flat)
    j0, j1 = jpt[:, 0], jpt[:, 1]
    vblk = torch.bmm(jpt.transpose(1, 2), jpt)
    V = torch.zeros(st.npts, 9, dtype=r.dtype, device=r.device).index_add_(
        0, st.pt, vblk.reshape(-1, 9)
    )
    Wk_ext = r.new_empty(m + 1, 3, C)
    Wk_ext[m] = 0.0
    Wk = Wk_ext[:m]
    torch.mul(j0[:, :, None], jc[:, 0, None, :], out=Wk)
    Wk.addcmul_(j1[:, :, None], jc[:, 1, None, :])
    r0, r1 = r[:, 0:1], r[:, 1:2]
    n = st.cam_chunk_cam.shape[0]
    gc_chunks = torch.bmm(r.reshape(n, 1, 2 * st.chunk), jc.reshape(n, 2 * st.chunk, C))
    gc = _scatter_chunks(st, gc_chunks[:, 0])
    gp = torch.zeros(st.npts, 3, dtype=r.dtype, device=r.device).index_add_(
        0, st.pt, j0 * r0 + j1 * r1
    )
    return Linearisation(r, jc, jpt, U, V.reshape(-1, 3, 3), Wk, Wk_ext, gc, gp)


def _inv3(A: Tensor) -> Tensor:
    """Batched 3x3 inverse by the adjugate (fast and parallel for many small SPD blocks)."""
    a, b, c = A[:, 0, 0], A[:, 0, 1], A[:, 0, 2]
    d, e, f = A[:, 1, 0], A[:, 1, 1], A[:, 1, 2]
    g, h, i = A[:, 2, 0], A[:, 2, 1], A[:, 2, 2]
    c00, c01, c02 = e * i - f * h, c * h - b * i, b * f - c * e
    c10, c11, c12 = f * g - d * i, a * i - c * g, c * d - a * f
    c20, c21, c22 = d * h - e * g, b * g - a * h, a * e - b * d
    det = a * c00 + b * c10 + c * c20
    adj = torch.stack([c00, c01, c02, c10, c11, c12, c20, c21, c22], -1).reshape(-1, 3, 3)
    return adj / det[:, None, None]


def _mat3_vec(A: Tensor, x: Tensor) -> Tensor:
    """Batched ``(N, 3, 3) @ (N, 3)`` without bmm (tiny matrices are faster elementwise)."""
    return A[:, :, 0] * x[:, 0:1] + A[:, :, 1] * x[:, 1:2] + A[:, :, 2] * x[:, 2:3]


def schur_solve(
    st: Structure,
    lin: Linearisation,
    rc: Tensor,
    rp: Tensor,
    damp_c: Tensor | None,
    damp_p: Tensor | None,
) -> tuple[Tensor, Tensor] | None:
    """Solve ``[U+Dc W; W^T V+Dp] [xc; xp] = [rc; rp]`` by eliminating the points.

    The reduced camera matrix ``S = U - sum_j W_j V_j^-1 W_j^T`` is built from one GEMM
    per camera (the ``a == b`` terms) and one per camera pair sharing points. Frozen
    camera-side entries get a unit diagonal (their rows are zero), fixed points a unit
    block. Returns None if the reduced system is not positive definite.
    """
    free_c = free_mask_c(st)
    V = lin.V
    if damp_p is not None:
        V = V + torch.diag_embed(damp_p)
    if not st.free_points:
        V = torch.eye(3, dtype=V.dtype, device=V.device).expand_as(V)
    Vinv = _inv3(V)
    Vg = Vinv[st.pt]  # (M, 3, 3)
    Wk = lin.Wk
    # (W V^-1)^T = V^-1 W^T per observation, in the (M, 3, C) layout.
    m = Wk.shape[0]
    Y_ext = Wk.new_empty(m + 1, *Wk.shape[1:])
    Y_ext[m] = 0.0
    Yk = Y_ext[:m]
    torch.mul(Vg[:, :, 0:1], Wk[:, None, 0, :], out=Yk)
    Yk.addcmul_(Vg[:, :, 1:2], Wk[:, None, 1, :])
    Yk.addcmul_(Vg[:, :, 2:3], Wk[:, None, 2, :])
    S = lin.U - _assemble(st, _camera_gram(st, Y_ext, lin.Wk_ext), st.cam_chunk_flat)
    npc = st.pair_chunks_a.shape[0]
    if npc:
        X = S.new_zeros(st.nr * st.nr)
        for s0 in range(0, npc, PAIR_CHUNKS_PER_GEMM):  # bounded gathers (issue 25)
            s = slice(s0, s0 + PAIR_CHUNKS_PER_GEMM)
            G = _chunk_gram(Y_ext, lin.Wk_ext, st.pair_chunks_a[s], st.pair_chunks_b[s])
            X.index_add_(0, st.pair_chunk_flat(s), G.reshape(-1))
        X = X.view(st.nr, st.nr)
        S = S - X - X.T
    diag = S.diagonal()
    if damp_c is not None:
        diag += damp_c
    diag += 1.0 - free_c  # frozen rows/cols are zero: unit diagonal keeps S definite
    vp = _mat3_vec(Vinv, rp)
    vpo = vp[st.pt]
    wv = Wk[:, 0] * vpo[:, 0:1]
    wv.addcmul_(Wk[:, 1], vpo[:, 1:2]).addcmul_(Wk[:, 2], vpo[:, 2:3])
    rhs = rc - _scatter_chunks(st, _chunk_sums(st, wv))
    rhs = rhs * free_c
    L, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:
        return None
    xc = torch.cholesky_solve(rhs[:, None], L)[:, 0] * free_c
    xo = gather_vector(st, xc)
    wx = torch.bmm(Wk, xo[:, :, None])[:, :, 0]
    t = rp - torch.zeros_like(rp).index_add_(0, st.pt, wx)
    xp = _mat3_vec(Vinv, t)
    if not st.free_points:
        xp = torch.zeros_like(xp)
    return xc, xp
