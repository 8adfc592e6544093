"""Rotation parameterisations: angle-axis, quaternion (w, x, y, z), 6D, matrix.

All functions are batched over leading dimensions, differentiable, and safe at
zero rotation (Taylor expansions), so they can sit inside bundle adjustment and
field optimisation. Quaternions are always ``quat_wxyz``; the xyzw order other
libraries use is converted only in :mod:`sceneforge.core.conventions`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

_SMALL = 1e-8


def skew(v: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3 3"]:
    """Cross-product matrix ``[v]_x`` so that ``skew(v) @ w == cross(v, w)``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def _sinc_and_cosc(theta2: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``sin(t)/t`` and ``(1-cos(t))/t^2`` for ``theta2 = t^2``, stable at 0."""
    small = theta2 < _SMALL
    safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe)
    return a, b


def angle_axis_to_matrix(aa: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3 3"]:
    """Rodrigues' formula: rotation vector (axis times angle in radians) to matrix."""
    theta2 = (aa * aa).sum(-1)
    a, b = _sinc_and_cosc(theta2)
    k = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def rotate_angle_axis(
    aa: Float[Tensor, "*batch 3"], points: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 3"]:
    """Rotate ``points`` by ``aa`` without forming the matrix (the BA hot path)."""
    theta2 = (aa * aa).sum(-1, keepdim=True)
    a, b = _sinc_and_cosc(theta2)
    cross = torch.linalg.cross(aa, points, dim=-1)
    return points + a * cross + b * torch.linalg.cross(aa, cross, dim=-1)


def matrix_to_quat_wxyz(R: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 4"]:
    """Matrix to unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Four candidate squared magnitudes 4*q_i^2; pick the largest for stability.
    q_abs = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22],
        dim=-1,
    )
    q_abs = torch.sqrt(torch.clamp(q_abs, min=0.0))
    m21_12 = m[..., 2, 1] - m[..., 1, 2]
    m02_20 = m[..., 0, 2] - m[..., 2, 0]
    m10_01 = m[..., 1, 0] - m[..., 0, 1]
    m10p01 = m[..., 1, 0] + m[..., 0, 1]
    m02p20 = m[..., 0, 2] + m[..., 2, 0]
    m12p21 = m[..., 1, 2] + m[..., 2, 1]
    cands = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21_12, m02_20, m10_01], -1),
            torch.stack([m21_12, q_abs[..., 1] ** 2, m10p01, m02p20], -1),
            torch.stack([m02_20, m10p01, q_abs[..., 2] ** 2, m12p21], -1),
            torch.stack([m10_01, m02p20, m12p21, q_abs[..., 3] ** 2], -1),
        ],
        dim=-2,
    )
    denom = 2.0 * torch.clamp(q_abs, min=0.1)
    cands = cands / denom[..., None]
    best = q_abs.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_wxyz_to_matrix(q: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3 3"]:
    """Quaternion (w, x, y, z), normalised first, to rotation matrix."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def quat_wxyz_to_angle_axis(q: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3"]:
    """Quaternion (w, x, y, z) to rotation vector, stable at zero rotation."""
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., 0], q[..., 1:]
    s2 = (v * v).sum(-1)
    small = s2 < _SMALL
    s = torch.where(small, torch.ones_like(s2), s2).sqrt()
    angle = 2.0 * torch.atan2(s, w)
    scale = torch.where(small, 2.0 / w.clamp(min=_SMALL) * (1 - s2 / (3 * w * w)), angle / s)
    return v * scale[..., None]


def angle_axis_to_quat_wxyz(aa: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 4"]:
    """Rotation vector to quaternion (w, x, y, z), stable at zero rotation."""
    theta2 = (aa * aa).sum(-1)
    small = theta2 < _SMALL
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    half_sinc = torch.where(small, 0.5 - theta2 / 48.0, torch.sin(theta / 2) / theta)
    w = torch.where(small, 1.0 - theta2 / 8.0, torch.cos(theta / 2))
    return torch.cat([w[..., None], aa * half_sinc[..., None]], dim=-1)


def matrix_to_angle_axis(R: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 3"]:
    """Rotation matrix to rotation vector (through the quaternion, stable near 0 and pi)."""
    return quat_wxyz_to_angle_axis(matrix_to_quat_wxyz(R))


def rot6d_to_matrix(d6: Float[Tensor, "*batch 6"]) -> Float[Tensor, "*batch 3 3"]:
    """Zhou et al.'s continuous 6D representation (first two columns) to matrix."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rot6d(R: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 6"]:
    """Rotation matrix to its 6D representation (first two columns)."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def rotation_angle_deg(R: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch"]:
    """Angle of a rotation in degrees, robust near 0 (uses the quaternion)."""
    q = matrix_to_quat_wxyz(R)
    return torch.rad2deg(2.0 * torch.atan2(q[..., 1:].norm(dim=-1), q[..., 0].abs()))
