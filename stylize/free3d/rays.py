"""Relative camera poses and per-pixel Plücker ray maps (the conditioning of Free3D).

Conventions are sceneforge's (OpenCV cameras, ``cam_from_world``, COLMAP pixel centres, see
:mod:`sceneforge.core.cameras`). Free3D conditions on the **target** camera expressed in the
**source** camera's frame: ``target_from_source`` maps source-camera points into the target
camera, and the rays of the target camera are written in source-camera coordinates.

A Plücker ray map has 6 channels per pixel: the unit direction ``d`` and the moment
``m = o x d`` (``o``: the target camera centre in the source frame). Maps can be computed at
any resolution (the intrinsics are rescaled with :func:`scale_intrinsics`) or pooled from a
finer map with :func:`resize_ray_map` (area pooling keeps ``m = o x d`` exact, as ``o`` is one
point per camera).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import compose_rigid, invert_rigid, pixel_centers


def as_rigid(T: Float[Tensor, "*batch R 4"]) -> Float[Tensor, "*batch 3 4"]:
    """``[3, 4]`` view of a rigid transform given as ``[3, 4]`` or homogeneous ``[4, 4]``."""
    if T.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"a rigid transform is [3, 4] or [4, 4], got {tuple(T.shape)}")
    return T[..., :3, :]


def relative_pose(
    source_cam_from_world: Float[Tensor, "*batch R 4"],
    target_cam_from_world: Float[Tensor, "*batch R 4"],
) -> Float[Tensor, "*batch 3 4"]:
    """``target_from_source``: maps points of the source camera frame into the target's."""
    src, tgt = as_rigid(source_cam_from_world), as_rigid(target_cam_from_world)
    return compose_rigid(tgt, invert_rigid(src))


def scale_intrinsics(
    K: Float[Tensor, "*batch 3 3"], sx: float, sy: float
) -> Float[Tensor, "*batch 3 3"]:
    """Intrinsics of the same camera with the image resized by ``(sx, sy)`` (width, height).

    With COLMAP pixel centres a resize maps ``u -> sx * u`` exactly, so the first row is
    scaled by ``sx`` and the second by ``sy``.
    """
    s = torch.tensor([sx, sy, 1.0], dtype=K.dtype, device=K.device)
    return K * s[:, None]


def plucker_rays(
    K: Float[Tensor, "B 3 3"],
    target_from_source: Float[Tensor, "B R 4"],
    height: int,
    width: int,
) -> Float[Tensor, "B 6 H W"]:
    """Plücker maps ``(d, o x d)`` of a target camera's pixels, in the source camera frame.

    Args:
        K: target intrinsics for an image of ``height x width`` pixels.
        target_from_source: ``[3, 4]`` or ``[4, 4]`` relative poses (see :func:`relative_pose`).
        height: rows of the map.
        width: columns of the map.

    Returns:
        ``[B, 6, H, W]``: channels 0-2 the unit direction, 3-5 the moment.
    """
    T = as_rigid(target_from_source)
    source_from_target = invert_rigid(T)
    R, o = source_from_target[..., :3], source_from_target[..., 3]  # [B,3,3], [B,3]
    uv = pixel_centers(height, width, dtype=K.dtype, device=K.device)  # [H,W,2]
    uv1 = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1).reshape(1, -1, 3)
    d_cam = torch.linalg.solve(K, uv1.transpose(-1, -2).expand(K.shape[0], 3, -1))  # [B,3,HW]
    d = R @ d_cam
    d = d / d.norm(dim=1, keepdim=True)
    m = torch.cross(o[..., None].expand_as(d), d, dim=1)
    return torch.cat([d, m], dim=1).reshape(K.shape[0], 6, height, width)


def rays_for_views(
    source_K: Float[Tensor, "B 3 3"],
    target_from_source: Float[Tensor, "B V R 4"],
    height: int,
    width: int,
    target_K: Float[Tensor, "B V 3 3"] | None = None,
) -> Float[Tensor, "BV 6 H W"]:
    """Plücker maps of ``V`` target views per source, flattened view-major to ``[B*V, ...]``.

    ``K`` are given for the ``height x width`` map; the targets default to the source's
    intrinsics (Free3D renders every view with the source camera's lens).
    """
    b, v = target_from_source.shape[:2]
    if target_K is None:
        target_K = source_K[:, None].expand(b, v, 3, 3)
    return plucker_rays(
        target_K.reshape(b * v, 3, 3),
        target_from_source.reshape(b * v, *target_from_source.shape[2:]),
        height,
        width,
    )


def resize_ray_map(
    rays: Float[Tensor, "B C H W"], height: int, width: int
) -> Float[Tensor, "B C h w"]:
    """Area-pool (or, for upsampling, nearest-resize) a ray map to ``height x width``."""
    if rays.shape[-2:] == (height, width):
        return rays
    if height <= rays.shape[-2] and width <= rays.shape[-1]:
        return F.adaptive_avg_pool2d(rays, (height, width))
    return F.interpolate(rays, size=(height, width), mode="nearest")


__all__ = [
    "as_rigid",
    "plucker_rays",
    "rays_for_views",
    "relative_pose",
    "resize_ray_map",
    "scale_intrinsics",
]
