"""Linear blend skinning (LBS): kinematic chain, forward and inverse skinning.

Conventions (shared by every body model of :mod:`sceneforge.stylize.human`):

- A skeleton is ``J`` joints with ``parents[j] < j`` for ``j > 0`` and ``parents[0] == -1``
  (the SMPL ``kintree_table[0]``; the root is joint 0).
- ``local_rotations[..., j]`` rotates joint ``j``'s subtree about joint ``j``, in the
  *canonical world-aligned axes* (SMPL's convention): zero rotations everywhere give the
  canonical (rest) pose.
- ``bone_transforms[..., j]`` (4x4) map canonical points to posed points in world space:
  ``x_posed = T_j x_canonical`` for a point rigidly attached to joint ``j``
  (``T_j = G_j [I | -c_j]`` with ``G_j`` the posed joint frame and ``c_j`` the canonical joint).
- Skinning weights ``[..., N, J]`` are non-negative and sum to one per point.

Forward LBS maps ``x_c -> (sum_j w_j T_j) x_c``; inverse LBS inverts the *blended* 4x4 for
the given weights, so ``lbs_inverse(lbs_forward(x, w, T), w, T) == x`` exactly (to round-off).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor


def _as_parents(parents: Sequence[int] | Tensor) -> list[int]:
    out = [int(p) for p in (parents.tolist() if isinstance(parents, Tensor) else parents)]
    if not out or out[0] >= 0:
        raise ValueError("parents[0] must be negative (joint 0 is the root)")
    for j, p in enumerate(out[1:], start=1):
        if not 0 <= p < j:
            raise ValueError(f"parents[{j}] = {p}: parents must precede their children")
    return out


def rigid_4x4(
    rotation: Float[Tensor, "*batch 3 3"], translation: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 4 4"]:
    """``[R | t]`` as a homogeneous 4x4 matrix."""
    top = torch.cat([rotation, translation[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom = torch.cat([bottom[..., :3], torch.ones_like(bottom[..., 3:])], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def batch_rigid_transform(
    local_rotations: Float[Tensor, "B J 3 3"],
    canonical_joints: Float[Tensor, "B J 3"],
    parents: Sequence[int] | Tensor,
) -> tuple[Float[Tensor, "B J 3"], Float[Tensor, "B J 4 4"]]:
    """Forward kinematics along the kinematic tree (SMPL's ``batch_rigid_transform``).

    Args:
        local_rotations: each joint's rotation relative to its parent, world-aligned axes.
        canonical_joints: joint positions in the canonical pose.
        parents: parent index per joint (``-1`` for the root).

    Returns:
        posed joint positions ``[B, J, 3]`` (the root stays at its canonical position; add a
        translation afterwards) and the canonical->posed bone transforms ``[B, J, 4, 4]``.
    """
    par = _as_parents(parents)
    rel = canonical_joints.clone()
    rel[:, 1:] = canonical_joints[:, 1:] - canonical_joints[:, par[1:]]
    local = rigid_4x4(local_rotations, rel)
    chain = [local[:, 0]]
    for j in range(1, len(par)):
        chain.append(chain[par[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)  # posed joint frames G_j
    posed_joints = world[..., :3, 3]
    # T_j = G_j [I | -c_j]: subtract the rotated canonical joint from the translation.
    shift = (world[..., :3, :3] @ canonical_joints[..., None])[..., 0]
    transforms = rigid_4x4(world[..., :3, :3], posed_joints - shift)
    return posed_joints, transforms


def blend_transforms(
    weights: Float[Tensor, "*batch N J"], bone_transforms: Float[Tensor, "*batch J 4 4"]
) -> Float[Tensor, "*batch N 4 4"]:
    """Per-point blended transforms ``sum_j w_j T_j``."""
    flat = bone_transforms.flatten(-2)  # [..., J, 16]
    return (weights @ flat).unflatten(-1, (4, 4))


def lbs_forward(
    points_canonical: Float[Tensor, "*batch N 3"],
    weights: Float[Tensor, "*batch N J"],
    bone_transforms: Float[Tensor, "*batch J 4 4"],
) -> Float[Tensor, "*batch N 3"]:
    """Canonical -> posed points: ``x_p = (sum_j w_j T_j) x_c``."""
    blended = blend_transforms(weights, bone_transforms)
    return (blended[..., :3, :3] @ points_canonical[..., None])[..., 0] + blended[..., :3, 3]


def lbs_inverse(
    points_posed: Float[Tensor, "*batch N 3"],
    weights: Float[Tensor, "*batch N J"],
    bone_transforms: Float[Tensor, "*batch J 4 4"],
) -> Float[Tensor, "*batch N 3"]:
    """Posed -> canonical points through the inverse of the blended transform.

    The blended 3x3 block is in general not a rotation, so it is solved with
    ``torch.linalg.solve`` rather than transposed. With the weights of the canonical point,
    this exactly undoes :func:`lbs_forward`.
    """
    blended = blend_transforms(weights, bone_transforms)
    rhs = (points_posed - blended[..., :3, 3])[..., None]
    return torch.linalg.solve(blended[..., :3, :3], rhs)[..., 0]


def invert_bone_transforms(
    bone_transforms: Float[Tensor, "*batch J 4 4"],
) -> Float[Tensor, "*batch J 4 4"]:
    """Posed->canonical rigid transforms ``T_j^-1`` (rotation transposed)."""
    rot_t = bone_transforms[..., :3, :3].transpose(-1, -2)
    return rigid_4x4(rot_t, -(rot_t @ bone_transforms[..., :3, 3:])[..., 0])
