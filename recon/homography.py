"""Homographies between two views, batched: minimal and weighted DLT, Sampson error, rotation
fits and the decomposition into candidate poses.

Used beside the essential / fundamental matrix to recognise pairs whose correspondences are
explained by a homography (a planar scene, or a camera that only rotates), see
:mod:`sceneforge.recon.two_view`.

- :func:`homography_4pt`: the exact homography through four correspondences (null vector of
  the ``8 x 9`` DLT system by a complete QR; degenerate samples give a zero matrix, never an
  exception);
- :func:`homography_dlt`: weighted, Hartley-normalised DLT on many correspondences (the local
  optimisation of LO-RANSAC, reweighted by the caller);
- :func:`homography_sampson_error`: the squared Sampson distance of a correspondence to the
  homography, i.e. the first-order geometric distance in the joint 4D space of both points.
  The epipolar Sampson error (one equation, codimension 1) and this one (two equations,
  codimension 2) are both first-order approximations of the same geometric distance, so one
  pixel threshold counts inliers of both comparably (an exact correspondence of a plane has
  error 0 under both; with Gaussian noise sigma they are ``sigma^2 chi^2_1`` and
  ``sigma^2 chi^2_2``);
- :func:`rotation_from_bearings`: the rotation best aligning the viewing rays (weighted
  Kabsch), the model of a camera that only rotates (``H = R`` in calibrated coordinates);
- :func:`decompose_homography`: the (up to) four ``(R, t, n)`` of a calibrated homography
  ``H ~ R + t n^T`` (Faugeras' SVD method), and :func:`pose_from_homography` that picks one by
  cheirality (and, between two valid interpretations of a plane, by a reference pose).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.recon.epipolar import apply_affine, hartley_normalization, two_view_depths
from sceneforge.recon.five_point import null_space


def _homogeneous(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def dlt_rows(x1: Float[Tensor, "*B k 2"], x2: Float[Tensor, "*B k 2"]) -> Float[Tensor, "*B 2k 9"]:
    """The two rows per correspondence of ``x2 x (H x1) = 0`` (row-major ``H``)."""
    a = _homogeneous(x1)
    z = torch.zeros_like(a)
    u2, v2 = x2[..., 0:1], x2[..., 1:2]
    r1 = torch.cat([z, -a, v2 * a], dim=-1)
    r2 = torch.cat([a, z, -u2 * a], dim=-1)
    return torch.stack([r1, r2], dim=-2).flatten(-3, -2)


def homography_4pt(
    x1: Float[Tensor, "*B 4 2"], x2: Float[Tensor, "*B 4 2"]
) -> tuple[Float[Tensor, "*B 1 3 3"], Bool[Tensor, "*B 1"]]:
    """The homography through four correspondences (unit Frobenius norm) and whether it is
    usable (finite, not from a degenerate sample). One solution slot, for RANSAC."""
    A = dlt_rows(x1, x2)
    h = null_space(A, 1)[..., 0]
    # A sample whose points are (nearly) collinear leaves more than one null direction: the
    # residual of the chosen vector against the next singular value tells; a cheap test is
    # the determinant of the result (collinear triples give a singular homography).
    H = h.reshape(*h.shape[:-1], 3, 3)
    det = torch.linalg.det(H)
    ok = torch.isfinite(det) & (det.abs() > 1e-10)
    H = torch.where(ok[..., None, None], H, torch.zeros_like(H))
    return H[..., None, :, :], ok[..., None]


def homography_dlt(
    x1: Float[Tensor, "*B M 2"],
    x2: Float[Tensor, "*B M 2"],
    weights: Float[Tensor, "*B M"],
) -> Float[Tensor, "*B 3 3"]:
    """Weighted, Hartley-normalised DLT (unit Frobenius norm)."""
    T1, T2 = hartley_normalization(x1, weights), hartley_normalization(x2, weights)
    y1, y2 = apply_affine(T1, x1), apply_affine(T2, x2)
    # A^T W A of the rows of dlt_rows in closed form: with a = (y1, 1) and S_k = sum w_k a a^T
    # for w_k = w, w u2, w v2, w (u2^2 + v2^2), its 3x3 blocks are
    # [[S_0, 0, -S_1], [0, S_0, -S_2], [-S_1, -S_2, S_3]] (one small matmul, no 2M x 9 rows).
    a = _homogeneous(y1)
    u2, v2 = y2[..., 0], y2[..., 1]
    wk = torch.stack([weights, weights * u2, weights * v2, weights * (u2 * u2 + v2 * v2)], -2)
    aa = (a[..., :, None] * a[..., None, :]).flatten(-2)  # (*B, M, 9)
    S = (wk @ aa).unflatten(-1, (3, 3))  # (*B, 4, 3, 3)
    S0, S1, S2, S3 = S.unbind(-3)
    Z = torch.zeros_like(S0)
    AtA = torch.cat(
        [
            torch.cat([S0, Z, -S1], -1),
            torch.cat([Z, S0, -S2], -1),
            torch.cat([-S1, -S2, S3], -1),
        ],
        -2,
    )
    _, vecs = torch.linalg.eigh(AtA)
    Hn = vecs[..., 0].reshape(*AtA.shape[:-2], 3, 3)
    H = torch.linalg.solve(T2, Hn @ T1)
    return H / H.flatten(-2).norm(dim=-1).clamp(min=1e-300)[..., None, None]


def homography_sampson_error(
    H: Float[Tensor, "*B 3 3"], x1: Float[Tensor, "*B N 2"], x2: Float[Tensor, "*B N 2"]
) -> Float[Tensor, "*B N"]:
    """Squared Sampson distance of each correspondence to ``x2 ~ H x1`` (two equations)."""
    h = [[H[..., i, j, None] for j in range(3)] for i in range(3)]
    u1, v1, u2, v2 = x1[..., 0], x1[..., 1], x2[..., 0], x2[..., 1]
    # Fused multiply-adds and in-place accumulation (about half the temporaries).
    h1 = torch.addcmul(torch.addcmul(h[0][2], h[0][0], u1), h[0][1], v1)
    h2 = torch.addcmul(torch.addcmul(h[1][2], h[1][0], u1), h[1][1], v1)
    h3 = torch.addcmul(torch.addcmul(h[2][2], h[2][0], u1), h[2][1], v1)
    r1 = torch.addcmul(-h1, u2, h3)
    r2 = torch.addcmul(-h2, v2, h3)
    j11 = torch.addcmul(-h[0][0], u2, h[2][0])
    j12 = torch.addcmul(-h[0][1], u2, h[2][1])
    j21 = torch.addcmul(-h[1][0], v2, h[2][0])
    j22 = torch.addcmul(-h[1][1], v2, h[2][1])
    h33 = h3 * h3
    a = torch.addcmul(h33, j11, j11).addcmul_(j12, j12)
    b = (j11 * j21).addcmul_(j12, j22)
    c = torch.addcmul(h33, j21, j21).addcmul_(j22, j22)
    det = (a * c).addcmul_(b, b, value=-1.0).clamp_(min=1e-300)
    num = (c * r1 * r1).addcmul_(b * r1, r2, value=-2.0).addcmul_(a * r2, r2)
    return num.div_(det)


def rotation_from_bearings(
    x1: Float[Tensor, "*B M 2"], x2: Float[Tensor, "*B M 2"], weights: Float[Tensor, "*B M"]
) -> Float[Tensor, "*B 3 3"]:
    """Rotation ``R`` minimising ``sum w |b2 - R b1|^2`` over the unit viewing rays ``b`` of
    calibrated points (weighted Kabsch)."""
    b1 = torch.nn.functional.normalize(_homogeneous(x1), dim=-1)
    b2 = torch.nn.functional.normalize(_homogeneous(x2), dim=-1)
    C = (b2 * weights[..., None]).transpose(-1, -2) @ b1  # sum w b2 b1^T
    U, _, Vh = torch.linalg.svd(C)
    d = torch.linalg.det(U @ Vh)
    D = torch.ones(*C.shape[:-2], 3, dtype=C.dtype, device=C.device)
    D[..., 2] = d.sign() + (d == 0).to(C.dtype)
    return U @ torch.diag_embed(D) @ Vh


def decompose_homography(
    H: Float[Tensor, "*B 3 3"],
) -> tuple[Float[Tensor, "*B 4 3 3"], Float[Tensor, "*B 4 3"], Float[Tensor, "*B 4 3"]]:
    """The four ``(R, t, n)`` with ``H ~ R + t n^T`` (``n`` unit plane normal in camera 1,
    ``t`` scaled by the inverse plane distance) of a calibrated homography.

    Faugeras' method: with ``H = U diag(d1, d2, d3) V^T`` (scaled so that ``d2 = 1``) the two
    in-plane solutions and their sign flips. For ``d1 = d3`` (a pure rotation) ``t = 0``.
    """
    U, S, Vh = torch.linalg.svd(H)
    H = H / S[..., 1, None, None]
    U, S, Vh = torch.linalg.svd(H)
    s = torch.linalg.det(U) * torch.linalg.det(Vh)
    d1, d2, d3 = S[..., 0], S[..., 1], S[..., 2]
    den = (d1 * d1 - d3 * d3).clamp(min=1e-300)
    x1 = ((d1 * d1 - d2 * d2) / den).clamp(min=0).sqrt()
    x3 = ((d2 * d2 - d3 * d3) / den).clamp(min=0).sqrt()
    sin_t = ((d1 * d1 - d2 * d2) * (d2 * d2 - d3 * d3)).clamp(min=0).sqrt() / ((d1 + d3) * d2)
    cos_t = (d2 * d2 + d1 * d3) / ((d1 + d3) * d2)
    Rs, ts, ns = [], [], []
    for e1, e3 in ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)):
        sn = e1 * e3 * sin_t
        Rp = torch.zeros_like(H)
        Rp[..., 0, 0] = cos_t
        Rp[..., 0, 2] = -sn
        Rp[..., 1, 1] = 1.0
        Rp[..., 2, 0] = sn
        Rp[..., 2, 2] = cos_t
        tp = torch.stack([e1 * x1, torch.zeros_like(x1), -e3 * x3], -1) * (d1 - d3)[..., None]
        npr = torch.stack([e1 * x1, torch.zeros_like(x1), e3 * x3], -1)
        R = s[..., None, None] * U @ Rp @ Vh
        R = R * torch.linalg.det(R).sign()[..., None, None]
        Rs.append(R)
        ts.append(s[..., None] * (U @ tp[..., None])[..., 0])
        ns.append((Vh.transpose(-1, -2) @ npr[..., None])[..., 0])
    return torch.stack(Rs, -3), torch.stack(ts, -2), torch.stack(ns, -2)


def pose_from_homography(
    H: Float[Tensor, "B 3 3"],
    x1: Float[Tensor, "B M 2"],
    x2: Float[Tensor, "B M 2"],
    mask: Bool[Tensor, "B M"],
    R_ref: Float[Tensor, "B 3 3"],
    t_ref: Float[Tensor, "B 3"],
) -> tuple[Float[Tensor, "B 3 3"], Float[Tensor, "B 3"]]:
    """Relative pose (unit ``t``) of a calibrated homography: of its four decompositions,
    those putting most ``mask`` points in front of both cameras; among these (a plane seen
    from two views is often genuinely ambiguous: two interpretations with every point in
    front), the one closest to the reference pose ``R_ref, t_ref`` (the epipolar estimate)."""
    Rs, ts, _ = decompose_homography(H)
    ts = torch.nn.functional.normalize(ts, dim=-1)
    shape = (-1, 4, -1, -1)
    l1, l2 = two_view_depths(Rs, ts, x1[:, None].expand(shape), x2[:, None].expand(shape))
    front = ((l1 > 0) & (l2 > 0) & mask[:, None]).sum(-1)
    best = front == front.max(1, keepdim=True).values
    cos_r = (
        torch.diagonal(Rs.transpose(-1, -2) @ R_ref[:, None], dim1=-2, dim2=-1).sum(-1) - 1
    ) / 2
    dist = torch.acos(cos_r.clamp(-1, 1)) + torch.acos((ts * t_ref[:, None]).sum(-1).clamp(-1, 1))
    pick = torch.where(best, dist, torch.full_like(dist, math.inf)).argmin(1)
    ar = torch.arange(H.shape[0], device=H.device)
    return Rs[ar, pick], ts[ar, pick]
