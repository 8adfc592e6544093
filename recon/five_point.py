"""Minimal epipolar solvers, batched: the 5-point essential and the 7-point fundamental matrix.

Both take any batch of minimal samples ``(*B, k, 2)`` and return a fixed number of solution
slots with a validity mask, so that RANSAC can solve all hypotheses of all pairs in one call.

5-point (calibrated, ``x2^T E x1 = 0``), after Nistér (2004) in the action-matrix form of
Stewénius, Engels and Nistér (2006):

1. the five epipolar equations are linear in the 9 entries of ``E``; their 4-dimensional null
   space (complete QR of the ``9 x 5`` transposed system, backward stable, no squaring of the
   condition number as with ``A^T A``) gives ``E = x X + y Y + z Z + W``;
2. ``det E = 0`` and the nine trace constraints ``2 E E^T E - tr(E E^T) E = 0`` are ten cubic
   equations in ``(x, y, z)`` over the 20 monomials of degree <= 3 (polynomial products by
   constant multiplication tables, so everything stays a batched ``einsum``);
3. eliminating the ten cubic monomials (a batched ``10 x 10`` solve) leaves the quotient basis
   ``(x^2, xy, xz, y^2, yz, z^2, x, y, z, 1)``; multiplication by ``x`` maps it into the
   eliminated monomials ``x^3, x^2y, x^2z, xy^2, xyz, xz^2`` and the basis itself, which gives
   the ``10 x 10`` action matrix;
4. its real eigenvalues are the solutions (LAPACK returns an exactly zero imaginary part for
   real eigenvalues of a real matrix, so the test is exact); ``(x, y, z)`` are read from the
   eigenvector's last four entries. Up to 10 essential matrices per sample, unit Frobenius norm.

7-point (uncalibrated): the 2-dimensional null space ``F = F2 + l (F1 - F2)`` of the seven
equations and the cubic ``det F(l) = 0``, whose coefficients follow from determinants and
adjugates (``det(A + l B) = det A + l tr(adj(A) B) + l^2 tr(adj(B) A) + l^3 det B``). Its roots are
the eigenvalues of the ``3 x 3`` companion matrix; up to 3 fundamental matrices per sample.
The 7-point solver expects well-scaled (e.g. Hartley-normalised) coordinates.

Degenerate samples (repeated or collinear points) never raise: their slots come back invalid.
All computations in the input dtype (use float64).
"""

from __future__ import annotations

import functools
import itertools

import torch
from jaxtyping import Bool, Float
from torch import Tensor


@functools.cache
def _monomials(deg: int) -> tuple[tuple[int, int, int], ...]:
    """Exponents of the monomials of ``(x, y, z)`` of total degree <= ``deg``, by decreasing
    degree then lexicographic (``x^3, x^2y, ..., z^3, x^2, ..., z, 1``)."""
    out = []
    for d in range(deg, -1, -1):
        for e in itertools.product(range(d, -1, -1), repeat=3):
            if sum(e) == d:
                out.append(e)
    return tuple(sorted(out, key=lambda e: (-sum(e), -e[0], -e[1])))


@functools.cache
def _mult_table(da: int, db: int) -> Tensor:
    """``T[a, b, c] = 1`` where monomial ``a`` (degree <= da) times ``b`` (<= db) is ``c``."""
    A, B, C = _monomials(da), _monomials(db), _monomials(da + db)
    index = {e: i for i, e in enumerate(C)}
    T = torch.zeros(len(A), len(B), len(C), dtype=torch.float64)
    for i, ea in enumerate(A):
        for j, eb in enumerate(B):
            T[i, j, index[tuple(p + q for p, q in zip(ea, eb))]] = 1.0
    return T


def _table(da: int, db: int, like: Tensor) -> Tensor:
    return _mult_table(da, db).to(dtype=like.dtype, device=like.device)


def epipolar_rows(
    x1: Float[Tensor, "*B k 2"], x2: Float[Tensor, "*B k 2"]
) -> Float[Tensor, "*B k 9"]:
    """Rows ``x2 (x) x1`` of the linear system ``A vec(M) = 0`` (row-major ``M``)."""
    a1 = torch.cat([x1, torch.ones_like(x1[..., :1])], dim=-1)
    a2 = torch.cat([x2, torch.ones_like(x2[..., :1])], dim=-1)
    return (a2[..., :, None] * a1[..., None, :]).flatten(-2)


def null_space(A: Float[Tensor, "*B k n"], dim: int) -> Float[Tensor, "*B n dim"]:
    """Orthonormal basis of the last ``dim`` directions of ``A`` (its null space when
    ``rank A = n - dim``), by a complete QR of ``A^T``."""
    Q, _ = torch.linalg.qr(A.transpose(-1, -2), mode="complete")
    return Q[..., -dim:]


def _poly_mul(a: Tensor, b: Tensor, T: Tensor) -> Tensor:
    """Product of polynomials ``a (..., na)`` and ``b (..., nb)`` by the flattened table."""
    return (a[..., :, None] * b[..., None, :]).flatten(-2) @ T


def five_point_constraints(
    basis: Float[Tensor, "*B 4 3 3"],
) -> Float[Tensor, "*B 10 20"]:
    """The ten cubic constraints on ``E = x X + y Y + z Z + W`` (``basis = (X, Y, Z, W)``), as
    coefficients over :func:`_monomials` ``(3)``: the nine trace constraints, then ``det E``."""
    E = basis.permute(*range(basis.ndim - 3), -2, -1, -3)  # (*B, 3, 3, 4): linear polys
    T11 = _table(1, 1, E).flatten(0, 1)
    T21 = _table(2, 1, E).flatten(0, 1)
    # (E E^T)_ij = sum_k E_ik E_jk: coefficient products by a batched matmul, then the table.
    EEt = torch.einsum("...ika,...jkb->...ijab", E, E).flatten(-2) @ T11  # (*B, 3, 3, 10)
    EEtE = torch.einsum("...ika,...kjb->...ijab", EEt, E).flatten(-2) @ T21  # (*B, 3, 3, 20)
    tr = EEt[..., 0, 0, :] + EEt[..., 1, 1, :] + EEt[..., 2, 2, :]
    trace_c = 2.0 * EEtE - _poly_mul(tr[..., None, None, :], E, T21)
    r1, r2 = E[..., 1, :, :], E[..., 2, :, :]  # (*B, 3, 4)
    i, j = [1, 2, 0], [2, 0, 1]
    cof = _poly_mul(r1[..., i, :], r2[..., j, :], T11) - _poly_mul(
        r1[..., j, :], r2[..., i, :], T11
    )
    det = _poly_mul(cof, E[..., 0, :, :], T21).sum(-2)
    return torch.cat([trace_c.flatten(-3, -2), det[..., None, :]], dim=-2)


def five_point(
    x1: Float[Tensor, "*B 5 2"], x2: Float[Tensor, "*B 5 2"]
) -> tuple[Float[Tensor, "*B 10 3 3"], Bool[Tensor, "*B 10"]]:
    """All essential matrices through five calibrated correspondences (``x2^T E x1 = 0``).

    Returns 10 solution slots (unit Frobenius norm) and which of them are real solutions.
    """
    batch = x1.shape[:-2]
    N = null_space(epipolar_rows(x1, x2), 4)  # (*B, 9, 4)
    basis = N.transpose(-1, -2).reshape(*batch, 4, 3, 3)
    C = five_point_constraints(basis)  # (*B, 10, 20)
    # Scale each equation (the trace constraints and the determinant differ in magnitude).
    C = C / C.abs().amax(-1, keepdim=True).clamp(min=1e-300)
    B, info = torch.linalg.solve_ex(C[..., :10], C[..., 10:], check_errors=False)
    ok = (info == 0) & torch.isfinite(B).flatten(-2).all(-1)
    B = torch.where(ok[..., None, None], B, torch.zeros_like(B))
    Mx = torch.zeros(*batch, 10, 10, dtype=x1.dtype, device=x1.device)
    Mx[..., :6, :] = -B[..., :6, :]
    Mx[..., 6, 0] = 1.0  # x * x = x^2
    Mx[..., 7, 1] = 1.0  # x * y = xy
    Mx[..., 8, 2] = 1.0  # x * z = xz
    Mx[..., 9, 6] = 1.0  # x * 1 = x
    vals, vecs = torch.linalg.eig(Mx)
    v = vecs.real  # (*B, 10 entries, 10 solutions)
    real = (vals.imag == 0) & ok[..., None]
    w = v[..., 9, :]
    real = real & (w.abs() > 1e-12 * v.abs().amax(-2))
    w = torch.where(real, w, torch.ones_like(w))
    xyz = v[..., 6:9, :] / w[..., None, :]  # (*B, 3, 10)
    coef = torch.cat([xyz, torch.ones_like(xyz[..., :1, :])], dim=-2)  # (*B, 4, 10)
    E = torch.einsum("...ks,...kij->...sij", coef, basis)
    nrm = E.flatten(-2).norm(dim=-1)
    real = real & torch.isfinite(nrm) & (nrm > 0)
    E = E / torch.where(real, nrm, torch.ones_like(nrm))[..., None, None]
    E = torch.where(real[..., None, None], E, torch.zeros_like(E))
    return E, real


def essential_poses(
    E: Float[Tensor, "*B 3 3"],
) -> tuple[Float[Tensor, "*B 2 3 3"], Float[Tensor, "*B 3"]]:
    """The two rotations and the unit translation (up to sign) of an essential matrix, in
    closed form (no SVD): ``t`` is the left null vector of ``E`` (largest cross product of two
    columns) and, with ``E`` scaled to ``|E|_F = sqrt 2``, ``R = cof(E) -+ [t]x E`` (since
    ``cof([t]x R) = t t^T R`` and ``[t]x^T [t]x = I - t t^T``)."""
    E = E * (2.0**0.5 / E.flatten(-2).norm(dim=-1).clamp(min=1e-300))[..., None, None]
    c = [E[..., :, i] for i in range(3)]
    crosses = torch.stack(
        [torch.linalg.cross(c[(i + 1) % 3], c[(i + 2) % 3], dim=-1) for i in range(3)], dim=-2
    )  # (*B, 3, 3): row i is column i of cof(E); each is parallel to t
    cof = crosses.transpose(-1, -2)
    best = crosses.norm(dim=-1).argmax(-1)
    t = torch.gather(crosses, -2, best[..., None, None].expand(*best.shape, 1, 3))[..., 0, :]
    t = t / t.norm(dim=-1, keepdim=True).clamp(min=1e-300)
    tx = torch.zeros_like(E)
    tx[..., 0, 1], tx[..., 0, 2], tx[..., 1, 2] = -t[..., 2], t[..., 1], -t[..., 0]
    tx = tx - tx.transpose(-1, -2)
    txE = tx @ E
    return torch.stack([cof - txE, cof + txE], dim=-3), t


def cheiral_sample(
    E: Float[Tensor, "*B S 3 3"], x1: Float[Tensor, "*B k 2"], x2: Float[Tensor, "*B k 2"]
) -> Bool[Tensor, "*B S"]:
    """Whether one of the four poses of each solution puts all ``k`` sample points in front
    of both cameras (the chirality test of a minimal sample: discards impossible solutions)."""
    Rs, t = essential_poses(E)  # (*B, S, 2, 3, 3), (*B, S, 3)
    # Depths l1 (camera 1), l2 (camera 2) of  l1 R x1 - l2 x2 = -t  in least squares, with
    # explicit components (reductions over 3-vectors are slow). Flipping t flips both signs,
    # so all-in-front is tested for +t and for -t at once.
    u1, v1 = x1[..., None, None, :, 0], x1[..., None, None, :, 1]  # (*B, 1, 1, k)
    u2, v2 = x2[..., None, None, :, 0], x2[..., None, None, :, 1]
    a = [
        Rs[..., i, 0, None] * u1 + Rs[..., i, 1, None] * v1 + Rs[..., i, 2, None] for i in range(3)
    ]
    tt = [t[..., None, None, i] for i in range(3)]  # (*B, S, 1, 1)
    aa = a[0] * a[0] + a[1] * a[1] + a[2] * a[2]
    ab = a[0] * u2 + a[1] * v2 + a[2]
    bb = u2 * u2 + v2 * v2 + 1.0
    at = a[0] * tt[0] + a[1] * tt[1] + a[2] * tt[2]
    bt = u2 * tt[0] + v2 * tt[1] + tt[2]
    det = aa * bb - ab * ab  # >= 0; the signs below do not need the division
    l1 = ab * bt - bb * at
    l2 = aa * bt - ab * at
    pos = ((l1 > 0) & (l2 > 0)).all(-1)
    neg = ((l1 < 0) & (l2 < 0)).all(-1)
    return ((pos | neg) & (det > 0).all(-1)).any(-1)


def _adjugate(A: Tensor) -> Tensor:
    """Adjugate of ``3 x 3`` matrices (transposed cofactors)."""
    c = torch.linalg.cross(A[..., 1, :], A[..., 2, :], dim=-1)
    d = torch.linalg.cross(A[..., 2, :], A[..., 0, :], dim=-1)
    e = torch.linalg.cross(A[..., 0, :], A[..., 1, :], dim=-1)
    return torch.stack([c, d, e], dim=-1)


def seven_point(
    x1: Float[Tensor, "*B 7 2"], x2: Float[Tensor, "*B 7 2"]
) -> tuple[Float[Tensor, "*B 3 3 3"], Bool[Tensor, "*B 3"]]:
    """All rank-2 fundamental matrices through seven correspondences (``x2^T F x1 = 0``).

    Returns 3 solution slots (unit Frobenius norm) and which of them are real solutions.
    """
    batch = x1.shape[:-2]
    N = null_space(epipolar_rows(x1, x2), 2)  # (*B, 9, 2)
    F1 = N[..., 0].reshape(*batch, 3, 3)
    F2 = N[..., 1].reshape(*batch, 3, 3)
    A, Bm = F2, F1 - F2
    c0 = torch.linalg.det(A)
    c1 = (_adjugate(A) * Bm.transpose(-1, -2)).sum((-1, -2))  # tr(adj(A) B)
    c2 = (_adjugate(Bm) * A.transpose(-1, -2)).sum((-1, -2))
    c3 = torch.linalg.det(Bm)
    scale = torch.stack([c0, c1, c2, c3], -1).abs().amax(-1).clamp(min=1e-300)
    ok = c3.abs() > 1e-10 * scale
    lead = torch.where(ok, c3, torch.ones_like(c3))
    comp = torch.zeros(*batch, 3, 3, dtype=x1.dtype, device=x1.device)
    comp[..., 0, 0] = -c2 / lead
    comp[..., 0, 1] = -c1 / lead
    comp[..., 0, 2] = -c0 / lead
    comp[..., 1, 0] = 1.0
    comp[..., 2, 1] = 1.0
    ok = ok & torch.isfinite(comp).flatten(-2).all(-1)
    comp = torch.where(ok[..., None, None], comp, torch.zeros_like(comp))
    roots = torch.linalg.eigvals(comp)
    real = (roots.imag == 0) & ok[..., None]
    lam = roots.real
    # One Newton step on the cubic polishes the companion roots.
    p = ((c3[..., None] * lam + c2[..., None]) * lam + c1[..., None]) * lam + c0[..., None]
    dp = (3 * c3[..., None] * lam + 2 * c2[..., None]) * lam + c1[..., None]
    step = p / torch.where(dp.abs() > 0, dp, torch.ones_like(dp))
    lam = torch.where(step.abs() < 1e-3 * (1 + lam.abs()), lam - step, lam)
    F = A[..., None, :, :] + lam[..., None, None] * Bm[..., None, :, :]
    nrm = F.flatten(-2).norm(dim=-1)
    real = real & torch.isfinite(nrm) & (nrm > 0)
    F = F / torch.where(real, nrm, torch.ones_like(nrm))[..., None, None]
    F = torch.where(real[..., None, None], F, torch.zeros_like(F))
    return F, real
