"""Observation -> canonical mapping of sample points (issue 20's 4D field).

A sample ``x_o`` of frame ``f`` is mapped to the canonical point ``x_c`` with
``LBS(x_c) = (sum_j w_j(x_c) T_j) x_c = x_o``, the weights ``w(x_c)`` looked up in the
canonical :class:`~.skinning_grid.SkinningGrid` (no search over the mesh):

1. **Initialisation** at the nearest posed bone: each point takes the rigid inverse
   ``T_p^-1 x_o`` of the bone segment (parent joint ``p`` -> child joint) nearest to it in the
   posed frame (``J`` segments per point, cheap and vectorised).
2. **Fixed-point iterations** ``x_c <- (sum_j w_j(x_c) T_j)^-1 x_o`` (at most ``iterations``;
   a point stops once its update is below ``tol / 100``). Points whose starting guess is
   farther than the band + ``reject_margin`` from the canonical body (most of a ray's samples
   in the body's box) are not human and are not iterated.
3. **Validity**: converged (``|LBS(x_c) - x_o| < tol``) and within the grid's band of the body
   (:meth:`SkinningGrid.is_human`); everything else is "not human".

The iterations run without grad; when the samples or the bone transforms need gradients
(body-pose refinement), a final Newton step with a constant Jacobian (value unchanged) gives
the exact implicit-function gradients of the fixed point, the weights' slope included (on the
human points only). :func:`signed_distance` interpolates the grid's signed
distance differentiably (density prior of the human field); :class:`NonRigidResidual` is the
learned, zero-initialised non-rigid offset in canonical space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from sceneforge.fields.encodings import FrequencyEncoding

from .skinning_grid import SkinningGrid


@dataclass
class CanonicalMapping:
    """Canonical points of observation-space samples and what they were mapped with."""

    points: Float[Tensor, "N 3"]
    """Canonical points ``x_c`` (differentiable w.r.t. the samples and the bone transforms)."""
    valid: Bool[Tensor, " N"]
    """Converged and within the grid's band of the body (= human)."""
    transforms: Float[Tensor, "N 4 4"]
    """Blended canonical->posed transforms at ``x_c`` (directions: ``R^-1 d``)."""
    distance: Float[Tensor, " N"]
    """Unsigned distance of ``x_c`` to the canonical body (0 inside, inf outside the grid)."""
    residual: Float[Tensor, " N"]
    """``|LBS(x_c) - x_o|`` after the iterations (metres)."""


def posed_bones(
    bone_transforms: Float[Tensor, "J 4 4"],
    canonical_joints: Float[Tensor, "J 3"],
    parents: Sequence[int],
) -> tuple[Float[Tensor, "J 3"], Float[Tensor, "J 3"]]:
    """Posed segments ``(start, end)`` per joint ``j``: from ``j`` to its first child (the
    joint itself for leaves), rigidly attached to joint ``j``'s transform."""
    posed = (bone_transforms[:, :3, :3] @ canonical_joints[:, :, None])[..., 0]
    posed = posed + bone_transforms[:, :3, 3]
    child = list(range(len(parents)))
    for j in range(len(parents) - 1, 0, -1):
        child[parents[j]] = j  # the first child in index order wins
    return posed, posed[child]


def nearest_bone(
    points: Float[Tensor, "N 3"], start: Float[Tensor, "J 3"], end: Float[Tensor, "J 3"]
) -> Tensor:
    """Index of the segment ``start[j] -> end[j]`` nearest to each point, ``[N]``."""
    seg = end - start  # [J, 3]
    rel = points[:, None] - start[None]  # [N, J, 3]
    t = (rel * seg).sum(-1) / seg.pow(2).sum(-1).clamp_min(1e-12)
    closest = start[None] + t.clamp(0, 1)[..., None] * seg[None]
    return (points[:, None] - closest).pow(2).sum(-1).argmin(-1)


def transform_points(
    transforms: Float[Tensor, "N 4 4"], points: Float[Tensor, "N 3"]
) -> Float[Tensor, "N 3"]:
    """``T x`` for per-point 4x4 transforms."""
    return (transforms[:, :3, :3] @ points[:, :, None])[..., 0] + transforms[:, :3, 3]


def grid_blend(
    grid: SkinningGrid, points: Float[Tensor, "N 3"], bone_transforms: Float[Tensor, "J 4 4"]
) -> tuple[Float[Tensor, "N 4 4"], Float[Tensor, " N"]]:
    """Blended transforms ``sum_j w_j(x) T_j`` with the grid's trilinear top-k weights, and the
    unsigned distance to the body (0 inside, inf outside the grid): as
    :meth:`SkinningGrid.lookup` + :func:`~.lbs.blend_transforms` without the dense ``[N, J]``
    weights (a gather of ``8 K`` transforms per point; differentiable in ``points``)."""
    dtype, device = points.dtype, points.device
    size = torch.tensor(grid.shape, device=device)
    u = (points - grid.origin.to(device, dtype)) / grid.voxel
    outside = ((u < 0) | (u > (size - 1).to(dtype))).any(-1)
    u = torch.minimum(u.clamp_min(0), (size - 1).to(dtype))
    i0 = torch.minimum(u.detach().floor().long(), size - 2)
    frac = u - i0.to(dtype)
    flat_t = bone_transforms.to(dtype).reshape(-1, 16)
    strides = torch.tensor([size[1] * size[2], size[2], 1], device=device)
    values = grid.values.to(device, dtype).reshape(-1, grid.values.shape[-1])
    indices = grid.indices.to(device).reshape(-1, grid.indices.shape[-1])
    sdf = grid.sdf.to(device, dtype).reshape(-1)
    corners = torch.tensor([[(c >> a) & 1 for a in range(3)] for c in range(8)], device=device)
    cell = ((i0[:, None, :] + corners[None]) * strides).sum(-1)  # [N, 8]
    wc = torch.where(corners.bool()[None], frac[:, None, :], 1 - frac[:, None, :]).prod(-1)
    w = values[cell] * wc[..., None]  # [N, 8, K]
    blended = torch.einsum("nck,nckf->nf", w, flat_t[indices[cell]])
    total = w.sum((1, 2))
    dist = (wc * sdf[cell]).sum(-1)
    blended = blended / total.clamp_min(1e-12)[:, None]
    dist = dist.clamp_min(0).masked_fill(outside, math.inf)
    return blended.view(-1, 4, 4), dist


def _solve(blended: Float[Tensor, "N 4 4"], x_o: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    return torch.linalg.solve(blended[:, :3, :3], (x_o - blended[:, :3, 3])[..., None])[..., 0]


def canonicalize(
    points: Float[Tensor, "N 3"],
    bone_transforms: Float[Tensor, "J 4 4"],
    grid: SkinningGrid,
    canonical_joints: Float[Tensor, "J 3"],
    parents: Sequence[int],
    iterations: int = 6,
    tol: float = 1e-3,
    reject_margin: float = 0.1,
) -> CanonicalMapping:
    """Map posed samples of one frame to the canonical body (see the module docstring)."""
    n = points.shape[0]
    dt = points.dtype
    dev = points.device
    if n == 0:
        empty = points.new_zeros(0)
        eye = torch.eye(4, dtype=dt, device=dev).expand(0, 4, 4)
        return CanonicalMapping(points, empty.bool(), eye, empty, empty)
    with torch.no_grad():
        x_o = points.detach()
        tr = bone_transforms.detach().to(dt)
        start, end = posed_bones(tr, canonical_joints.detach().to(dt), parents)
        bone = nearest_bone(x_o, start, end)
        rot_t = tr[bone, :3, :3].transpose(-1, -2)
        x_c = (rot_t @ (x_o - tr[bone, :3, 3])[:, :, None])[..., 0]
        # far from the body already at the start: not human, no iterations (most of the box)
        near = signed_distance(grid, x_c) <= grid.band + reject_margin
        idx = near.nonzero()[:, 0]
        xa, oa = x_c[idx], x_o[idx]
        live = torch.arange(idx.shape[0], device=dev)
        for _ in range(iterations):
            if live.numel() == 0:
                break
            new = _solve(grid_blend(grid, xa[live], tr)[0], oa[live])
            moved = (new - xa[live]).norm(dim=-1)
            xa[live] = new
            live = live[moved > 1e-2 * tol]  # converged points stop iterating
        x_c[idx] = xa
        blended = torch.eye(4, dtype=dt, device=dev).repeat(n, 1, 1)
        distance = torch.full((n,), math.inf, dtype=dt, device=dev)
        residual = torch.full((n,), math.inf, dtype=dt, device=dev)
        b_a, d_a = grid_blend(grid, xa, tr)
        blended[idx], distance[idx] = b_a, d_a
        residual[idx] = (transform_points(b_a, xa) - oa).norm(dim=-1)
        valid = (residual < tol) & grid.is_human(distance)
    # Differentiable final step (implicit function theorem), on the human points only: one
    # Newton step x_c - J^-1 (LBS(x_c) - x_o) with the Jacobian J = d LBS / d x_c (weights'
    # slope included) held constant: the value stays x_c, the gradients are those of the exact
    # fixed point.
    if torch.is_grad_enabled() and (points.requires_grad or bone_transforms.requires_grad):
        v = valid.nonzero()[:, 0]
        xv = x_c[v]
        jac = _lbs_jacobian(xv, grid, tr)
        bl = grid_blend(grid, xv, bone_transforms.to(dt))[0]
        res = transform_points(bl, xv) - points[v]
        x_c = x_c.index_put((v,), xv - torch.linalg.solve(jac, res[..., None])[..., 0])
        blended = blended.index_put((v,), bl)
    return CanonicalMapping(x_c, valid, blended, distance, residual)


def _lbs_jacobian(
    x_c: Float[Tensor, "N 3"], grid: SkinningGrid, bone_transforms: Float[Tensor, "J 4 4"]
) -> Float[Tensor, "N 3 3"]:
    """``d LBS(x) / d x`` at ``x_c`` (weights looked up at ``x``), no grad to the inputs."""
    with torch.enable_grad():
        x = x_c.detach().requires_grad_(True)
        f = transform_points(grid_blend(grid, x, bone_transforms.detach())[0], x)
        rows = [torch.autograd.grad(f[:, k].sum(), x, retain_graph=k < 2)[0] for k in range(3)]
    return torch.stack(rows, dim=1)


def signed_distance(grid: SkinningGrid, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
    """Trilinear signed distance to the canonical body (negative inside), differentiable in
    ``points``; outside the grid, the border value plus the distance to the grid box."""
    sdf = grid.sdf.to(points.device, points.dtype)
    size = torch.tensor(grid.shape, device=points.device, dtype=points.dtype)
    u = (points - grid.origin.to(points.device, points.dtype)) / grid.voxel  # voxel units
    g = 2 * u / (size - 1) - 1  # [-1, 1] per axis
    # grid_sample's last coordinate indexes the last spatial dim: volume [1,1,X,Y,Z] -> (z,y,x)
    coords = g.flip(-1)[None, :, None, None, :]
    inner = F.grid_sample(sdf[None, None], coords, align_corners=True, padding_mode="border")
    inner = inner.reshape(-1)
    outside = (u - u.clamp(torch.zeros_like(size), size - 1)).norm(dim=-1) * grid.voxel
    return inner + outside


class NonRigidResidual(nn.Module):
    """A learned offset ``dx(x_c, code)`` in canonical space: positional encoding of ``x_c``
    (normalised to the canonical box) and a per-frame code through a small MLP whose output
    layer starts at zero (the mapping starts as pure LBS); :meth:`forward` returns the offset
    (regularise it towards zero)."""

    def __init__(
        self,
        box: Float[Tensor, "2 3"],
        code_dim: int,
        hidden: int = 32,
        num_frequencies: int = 4,
        max_offset: float = 0.05,
    ) -> None:
        super().__init__()
        self.register_buffer("box", torch.as_tensor(box, dtype=torch.float32).clone())
        self.encoding = FrequencyEncoding(3, num_frequencies)
        self.max_offset = float(max_offset)
        self.mlp = nn.Sequential(
            nn.Linear(self.encoding.out_dim + code_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 3),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(
        self, points: Float[Tensor, "N 3"], code: Float[Tensor, "N C"]
    ) -> Float[Tensor, "N 3"]:
        box = self.box.to(points)
        x = (points - box[0]) / (box[1] - box[0]) * 2 - 1
        h = torch.cat([self.encoding(x), code.to(points)], dim=-1)
        return self.max_offset * torch.tanh(self.mlp(h))


__all__ = [
    "CanonicalMapping",
    "grid_blend",
    "NonRigidResidual",
    "canonicalize",
    "nearest_bone",
    "posed_bones",
    "signed_distance",
    "transform_points",
]
