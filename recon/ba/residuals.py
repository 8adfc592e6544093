"""Reprojection residuals: projection with analytic Jacobians per observation, robust losses."""

from __future__ import annotations

import torch
from torch import Tensor

from sceneforge.core.cameras import MODEL_PARAMS, project, split_params
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


def _generic_map(model: str, dtype, device) -> Tensor:
    """``(8, P)`` matrix mapping model parameters to the generic 8-vector."""
    src = _GENERIC_SOURCES[model]
    a = torch.zeros(8, len(MODEL_PARAMS[model]), dtype=dtype, device=device)
    for g, p in enumerate(src):
        if p is not None:
            a[g, p] = 1.0
    return a


def project_observations(
    model: str, rotation: Tensor, translation: Tensor, intrinsics: Tensor, points: Tensor
) -> tuple[Tensor, Tensor]:
    """Reference projection per observation with the core functions (autograd-friendly).

    All inputs are already gathered per observation: ``(M, 3)``, ``(M, 3)``, ``(M, P)``,
    ``(M, 3)``. Returns pixels ``(M, 2)`` and depth ``(M,)``.
    """
    pc = rotate_angle_axis(rotation, points) + translation
    return project(pc, model, intrinsics)


def _small_mm(a: Tensor, b: Tensor) -> Tensor:
    """Batched product of tiny matrices, elementwise (much faster than bmm for 2x3 @ 3x3)."""
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for k in range(1, a.shape[-1]):
        out = out + a[..., :, k, None] * b[..., None, k, :]
    return out


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
    return eye + b[..., None, None] * K + c[..., None, None] * _small_mm(K, K)


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
    if cam_index is None:
        rx = rotate_angle_axis(rotation, points)
        R = jl = None
    else:
        R = angle_axis_to_matrix(rotation)[cam_index]
        rx = R[:, :, 0] * points[:, 0:1] + R[:, :, 1] * points[:, 1:2] + R[:, :, 2] * points[:, 2:3]
        jl = (
            _left_jacobian(rotation)[cam_index]
            if with_jacobians and not point_jacobian_only
            else None
        )
        translation = translation[cam_index]
        intrinsics = intrinsics[cam_index]
    pc = rx + translation
    fx, fy, cx, cy, dist = split_params(model, intrinsics)
    sign = -1.0 if model == "BAL" else 1.0
    depth = sign * pc[:, 2]
    inv_d = 1.0 / depth
    x = pc[:, 0] * inv_d
    y = pc[:, 1] * inv_d
    k1, k2, p1, p2 = dist.unbind(-1)
    x2, y2, xy = x * x, y * y, x * y
    r2 = x2 + y2
    radial = 1.0 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x2)
    yd = y * radial + p1 * (r2 + 2.0 * y2) + 2.0 * p2 * xy
    pixels = torch.stack([fx * xd + cx, fy * yd + cy], -1)
    if not with_jacobians:
        return pixels, depth, None, None, None
    m = pc.shape[0]
    g = 2.0 * (k1 + 2.0 * k2 * r2)
    d00 = radial + x2 * g + 2.0 * p1 * y + 6.0 * p2 * x
    d01 = xy * g + 2.0 * p1 * x + 2.0 * p2 * y
    d11 = radial + y2 * g + 6.0 * p1 * y + 2.0 * p2 * x
    # d pixel / d P (2x3): diag(f) * Jdist * dxy/dP with dxy/dP = [[1,0,-s x],[0,1,-s y]] / d.
    a00, a01, a10, a11 = fx * d00 * inv_d, fx * d01 * inv_d, fy * d01 * inv_d, fy * d11 * inv_d
    a02 = -sign * (a00 * x + a01 * y)
    a12 = -sign * (a10 * x + a11 * y)
    dpix_dP = torch.stack([a00, a01, a02, a10, a11, a12], -1).reshape(m, 2, 3)
    if R is None:
        R = angle_axis_to_matrix(rotation)
        jl = None if point_jacobian_only else _left_jacobian(rotation)
    j_point = _small_mm(dpix_dP, R)
    if point_jacobian_only:
        return pixels, depth, None, None, j_point
    # Row a of dpix/dP times [rx]_x is (a x rx)^T.
    a_cross = torch.linalg.cross(dpix_dP, rx[:, None, :].expand(-1, 2, -1), dim=-1)
    d_rot = -_small_mm(a_cross, jl)
    j_pose = torch.cat([d_rot, dpix_dP], -1)
    # Generic intrinsics derivatives (2 x 8), then mapped to the model's parameters.
    z = torch.zeros_like(x)
    o = torch.ones_like(x)
    ju = torch.stack(
        [xd, z, o, z, fx * x * r2, fx * x * r2 * r2, fx * 2.0 * xy, fx * (r2 + 2.0 * x2)], -1
    )
    jv = torch.stack(
        [z, yd, z, o, fy * y * r2, fy * y * r2 * r2, fy * (r2 + 2.0 * y2), fy * 2.0 * xy], -1
    )
    j_intr = torch.stack([ju, jv], 1) @ _generic_map(model, pc.dtype, pc.device)
    return pixels, depth, j_pose, j_intr, j_point


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
