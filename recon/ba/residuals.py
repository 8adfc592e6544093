"""Reprojection residuals: projection with analytic Jacobians per observation, robust losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sceneforge.core.cameras import MODEL_PARAMS, project
from sceneforge.core.rotations import angle_axis_to_matrix, rotate_angle_axis, skew

# Generic intrinsics g = (fx, fy, cx, cy, k1, k2, p1, p2); each model's parameter feeding them.
_GENERIC_SOURCES: dict[str, tuple[int | None, ...]] = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2, None, None, None, None),
    "PINHOLE": (0, 1, 2, 3, None, None, None, None),
    "SIMPLE_RADIAL": (0, 0, 1, 2, 3, None, None, None),
    "RADIAL": (0, 0, 1, 2, 3, 4, None, None),
    "OPENCV": (0, 1, 2, 3, 4, 5, 6, 7),
    "BAL": (0, 0, None, None, 1, 2, None, None),
}


def behind_camera_mask(depth: Tensor) -> Tensor:
    """Observations COLMAP's cost functions give a zero residual: depth below the dtype's
    machine epsilon (``BAOptions.behind_camera="zero"``)."""
    return depth < torch.finfo(depth.dtype).eps


def project_observations(
    model: str, rotation: Tensor, translation: Tensor, intrinsics: Tensor, points: Tensor
) -> tuple[Tensor, Tensor]:
    """Reference projection per observation with the core functions (autograd-friendly).

    All inputs are already gathered per observation: ``(M, 3)``, ``(M, 3)``, ``(M, P)``,
    ``(M, 3)``. Returns pixels ``(M, 2)`` and depth ``(M,)``.
    """
    pc = rotate_angle_axis(rotation, points) + translation
    return project(pc, model, intrinsics)


def _left_jacobian(rotation: Tensor) -> Tensor:
    """SO(3) left Jacobian ``J_l(w) = I + b [w]_x + c [w]_x^2`` (stable at zero)."""
    theta2 = (rotation * rotation).sum(-1)
    small = theta2 < 1e-8
    th2s = torch.where(small, torch.ones_like(theta2), theta2)
    th = th2s.sqrt()
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(th)) / th2s)
    c = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (th - torch.sin(th)) / (th2s * th))
    K = skew(rotation)
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    return eye + b[..., None, None] * K + c[..., None, None] * (K @ K)


@dataclass
class ProjectionColumns:
    """Projection and Jacobians per observation as contiguous ``(M,)`` vectors.

    One vector per matrix entry ("structure of arrays"): every operation is a contiguous
    elementwise kernel instead of a strided one on tiny trailing dimensions, and the
    entries that are zero for a camera model are never computed. ``cam_u``/``cam_v`` hold
    the rows of ``d pixel / d [angle-axis, translation, model intrinsics]``, ``point_u`` /
    ``point_v`` those of ``d pixel / d X``; None where not requested.
    """

    u: Tensor
    v: Tensor
    depth: Tensor
    cam_u: list[Tensor] | None = None
    cam_v: list[Tensor] | None = None
    point_u: list[Tensor] | None = None
    point_v: list[Tensor] | None = None


def _rows(table: Tensor, index: Tensor | None) -> list[Tensor]:
    """``(N, K)`` table (rows gathered by ``index``) as K contiguous vectors."""
    t = table.T.contiguous()
    if index is not None:
        t = t.index_select(1, index)
    return list(t.unbind(0))


def _sum(*terms: Tensor | None) -> Tensor | None:
    """Sum of the terms that exist (None: structurally zero)."""
    live = [t for t in terms if t is not None]
    if not live:
        return None
    out = live[0]
    for t in live[1:]:
        out = out + t
    return out


def _mul(*factors: Tensor | float | None) -> Tensor | float | None:
    """Product, None if any factor is structurally zero."""
    out: Tensor | float = 1.0
    for f in factors:
        if f is None:
            return None
        out = out * f
    return out


def projection_columns(
    model: str,
    rotation: Tensor,
    translation: Tensor,
    intrinsics: Tensor,
    points: Tensor,
    cam_index: Tensor | None = None,
    camera_jacobian: bool = False,
    point_jacobian: bool = False,
    point_index: Tensor | None = None,
    chunk: int = 0,
) -> ProjectionColumns:
    """Pixels, depth and (optionally) analytic Jacobians as per-entry vectors.

    Shapes and conventions as :func:`project_with_jacobians`, which stacks these columns;
    with ``point_index (M,)`` the points are given per point ``(Np, 3)`` and gathered here.
    With ``chunk > 0`` the observations come in runs of ``chunk`` that share a camera and
    ``cam_index`` holds one camera per run (``M / chunk`` entries): per-camera values are
    then broadcast over each run instead of being gathered per observation.
    """
    sign = -1.0 if model == "BAL" else 1.0
    src = _GENERIC_SOURCES[model]
    need_jl = camera_jacobian
    need_R = need_jl or point_jacobian
    per_cam = [angle_axis_to_matrix(rotation).reshape(-1, 9), translation]
    if need_jl:
        per_cam.append(_left_jacobian(rotation).reshape(-1, 9))
    used = sorted({p for p in src if p is not None})
    per_cam.append(intrinsics[:, used])
    cols = _rows(torch.cat(per_cam, 1), cam_index)
    if chunk:
        cols = [c[:, None] for c in cols]
    R, t = cols[:9], cols[9:12]
    jl = cols[12:21] if need_jl else None
    intr = dict(zip(used, cols[21 if need_jl else 12 :]))
    fx, fy, cx, cy, k1, k2, p1, p2 = (None if p is None else intr[p] for p in src)
    X, Y, Z = _rows(points, point_index)
    if chunk:
        X, Y, Z = (c.view(-1, chunk) for c in (X, Y, Z))
    rx = [
        torch.addcmul(torch.addcmul(R[3 * i] * X, R[3 * i + 1], Y), R[3 * i + 2], Z)
        for i in range(3)
    ]
    pc = [rx[i] + t[i] for i in range(3)]
    depth = pc[2] if sign > 0 else -pc[2]
    inv_d = depth.reciprocal()
    x, y = pc[0] * inv_d, pc[1] * inv_d
    x2, y2, xy = x * x, y * y, x * y
    r2 = x2 + y2
    k_sum = _sum(k1, _mul(k2, r2))
    radial = None if k_sum is None else 1.0 + r2 * k_sum
    xd = _sum(x if radial is None else x * radial, _mul(2.0, p1, xy), _mul(p2, r2 + 2.0 * x2))
    yd = _sum(y if radial is None else y * radial, _mul(p1, r2 + 2.0 * y2), _mul(2.0, p2, xy))
    u = fx * xd if cx is None else torch.addcmul(cx, fx, xd)
    v = fy * yd if cy is None else torch.addcmul(cy, fy, yd)
    out = ProjectionColumns(u, v, depth)
    if not need_R:
        return _flatten(out) if chunk else out
    # d pixel / d P (2x3) = diag(f) * d(distorted)/d(x, y) * [[1, 0, -s x], [0, 1, -s y]] / d.
    one = torch.ones_like(x) if radial is None else radial
    # g = 2 d(radial)/d(r2)
    if k1 is None:
        g = None if k2 is None else 4.0 * k2 * r2
    else:
        g = 2.0 * k1 if k2 is None else 2.0 * (k1 + 2.0 * k2 * r2)
    d00 = _sum(one, _mul(x2, g), _mul(2.0, p1, y), _mul(6.0, p2, x))
    d01 = _sum(_mul(xy, g), _mul(2.0, p1, x), _mul(2.0, p2, y))
    d11 = _sum(one, _mul(y2, g), _mul(6.0, p1, y), _mul(2.0, p2, x))
    fxi, fyi = fx * inv_d, fy * inv_d
    a0 = [fxi * d00, _mul(fxi, d01)]
    a1 = [_mul(fyi, d01), fyi * d11]
    a0.append(-sign * _sum(a0[0] * x, _mul(a0[1], y)))
    a1.append(-sign * _sum(_mul(a1[0], x), a1[1] * y))
    a0 = [torch.zeros_like(x) if a is None else a for a in a0]
    a1 = [torch.zeros_like(x) if a is None else a for a in a1]
    if point_jacobian:  # a @ R
        out.point_u = [_dot3(a0, R[c], R[3 + c], R[6 + c]) for c in range(3)]
        out.point_v = [_dot3(a1, R[c], R[3 + c], R[6 + c]) for c in range(3)]
    if camera_jacobian:
        # Row a of dpix/dP times [rx]_x is (a x rx)^T; d(R X)/dw = -[R X]_x J_l(w).
        rows = []
        for a in (a0, a1):
            ax = [
                a[1] * rx[2] - a[2] * rx[1],
                a[2] * rx[0] - a[0] * rx[2],
                a[0] * rx[1] - a[1] * rx[0],
            ]
            d_rot = [-_dot3(ax, jl[c], jl[3 + c], jl[6 + c]) for c in range(3)]
            rows.append(d_rot + list(a))
        # Generic intrinsics (fx, fy, cx, cy, k1, k2, p1, p2) derivatives, summed per model
        # parameter that feeds them.
        generic = {
            0: lambda: (xd, None),
            1: lambda: (None, yd),
            2: lambda: (1.0, None),
            3: lambda: (None, 1.0),
            4: lambda: (fx * x * r2, fy * y * r2),
            5: lambda: (fx * x * r2 * r2, fy * y * r2 * r2),
            6: lambda: (fx * 2.0 * xy, fy * (r2 + 2.0 * y2)),
            7: lambda: (fx * (r2 + 2.0 * x2), fy * 2.0 * xy),
        }
        for p in range(len(MODEL_PARAMS[model])):
            feeds = [generic[gi]() for gi, sp in enumerate(src) if sp == p]
            for k, row in enumerate(rows):
                col = _sum(*(f[k] for f in feeds if f[k] is not None))
                if col is None or isinstance(col, float):
                    col = torch.full_like(x, 0.0 if col is None else col)
                row.append(col)
        out.cam_u, out.cam_v = rows
    return _flatten(out) if chunk else out


def _flatten(out: ProjectionColumns) -> ProjectionColumns:
    """Runs-by-chunk ``(n, L)`` columns (or per-run ``(n, 1)`` ones) as ``(M,)`` vectors."""
    shape = out.u.shape

    def f(t: Tensor) -> Tensor:
        return t.expand(shape).reshape(-1)

    def fl(ts: list[Tensor] | None) -> list[Tensor] | None:
        return None if ts is None else [f(t) for t in ts]

    return ProjectionColumns(
        f(out.u),
        f(out.v),
        f(out.depth),
        fl(out.cam_u),
        fl(out.cam_v),
        fl(out.point_u),
        fl(out.point_v),
    )


def _dot3(a: list[Tensor], b0: Tensor, b1: Tensor, b2: Tensor) -> Tensor:
    """``a[0] b0 + a[1] b1 + a[2] b2`` elementwise."""
    return torch.addcmul(torch.addcmul(a[0] * b0, a[1], b1), a[2], b2)


def project_with_jacobians(
    model: str,
    rotation: Tensor,
    translation: Tensor,
    intrinsics: Tensor,
    points: Tensor,
    with_jacobians: bool = True,
    cam_index: Tensor | None = None,
    point_jacobian_only: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Pixels, depth and analytic Jacobians per observation.

    Inputs are gathered per observation, or, with ``cam_index (M,)``, given per camera
    (``rotation``/``translation``/``intrinsics`` of shape ``(Nc, .)``) so rotation matrices
    and SO(3) Jacobians are computed once per camera. Returns ``pixels (M, 2)``,
    ``depth (M,)``, ``J_pose (M, 2, 6)`` (angle-axis then translation), ``J_intr (M, 2, P)``,
    ``J_point (M, 2, 3)`` (with ``point_jacobian_only``, ``J_pose`` and ``J_intr`` are None:
    triangulation needs only ``J_point``). The angle-axis derivative is exact:
    ``d(R(w) X)/dw = -[R X]_x J_l(w)`` with the SO(3) left Jacobian ``J_l``.
    """
    cols = projection_columns(
        model,
        rotation,
        translation,
        intrinsics,
        points,
        cam_index,
        camera_jacobian=with_jacobians and not point_jacobian_only,
        point_jacobian=with_jacobians,
    )
    pixels = torch.stack([cols.u, cols.v], -1)
    if not with_jacobians:
        return pixels, cols.depth, None, None, None
    j_point = torch.stack([torch.stack(cols.point_u, -1), torch.stack(cols.point_v, -1)], 1)
    if point_jacobian_only:
        return pixels, cols.depth, None, None, j_point
    j_cam = torch.stack([torch.stack(cols.cam_u, -1), torch.stack(cols.cam_v, -1)], 1)
    return pixels, cols.depth, j_cam[:, :, :6], j_cam[:, :, 6:], j_point


def robust_rho(loss: str, s: Tensor, a: float) -> tuple[Tensor, Tensor, Tensor]:
    """``rho(s), rho'(s), rho''(s)`` of a Ceres-style loss on the squared norm ``s``."""
    if loss == "trivial":
        return s, torch.ones_like(s), torch.zeros_like(s)
    b = a * a
    if loss == "huber":
        inl = s <= b
        ss = torch.where(inl, torch.ones_like(s), s).sqrt()
        rho = torch.where(inl, s, 2.0 * a * ss - b)
        r1 = torch.where(inl, torch.ones_like(s), a / ss)
        r2 = torch.where(
            inl, torch.zeros_like(s), -r1 / (2.0 * torch.where(inl, torch.ones_like(s), s))
        )
        return rho, r1, r2
    if loss == "cauchy":
        u = 1.0 + s / b
        r1 = 1.0 / u
        return b * torch.log(u), r1, -r1 * r1 / b
    if loss == "soft_l1":
        u = torch.sqrt(1.0 + s / b)
        r1 = 1.0 / u
        return 2.0 * b * (u - 1.0), r1, -r1 * r1 * r1 / (2.0 * b)
    raise ValueError(f"unknown robust loss {loss!r}; use trivial, huber, cauchy or soft_l1")


def robust_cost(loss: str, a: float, r: Tensor) -> Tensor:
    """``0.5 * sum rho(|r_i|^2)`` (differentiable)."""
    s = (r * r).sum(-1)
    return 0.5 * robust_rho(loss, s, a)[0].sum()
