"""Local bundle adjustment of an incremental model (:mod:`sceneforge.recon.incremental`).

After a round of registrations only the new images and the registered images sharing the
most points with them are adjusted, with the points they see; every other camera observing
those points keeps its exact pose (a constraint, not a variable) and the intrinsics stay
fixed. The whole model is adjusted only every so often (and at the end), so that a round
costs about the same at image 300 as at image 30.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.cameras import project, transform_points
from sceneforge.recon.tracks import TrackPixels

AdjustFn = Callable[..., tuple[Tensor, Tensor, Tensor]]
"""``adjust(cam_from_world, intr, points, obs_cam, obs_pt, obs_xy, fix_points, fix_intr,
fixed_cameras=())`` -> poses, intrinsics, points: one bundle adjustment of the given cameras
(those listed in ``fixed_cameras`` keep their pose)."""


def local_window(
    obs: Bool[Tensor, "T N"], registered: Bool[Tensor, " N"], new: Int[Tensor, " B"], size: int
) -> Int[Tensor, " W"]:
    """Images of a local bundle adjustment (sorted): ``new`` plus the registered images that
    share the most model points (``obs``) with them, ``size`` in all (at least ``new``); ties
    go to the lower index."""
    conn = obs[obs[:, new].any(1)].sum(0)  # points shared with the new images, per image
    conn[~registered] = 0
    conn[new] = 0
    order = conn.argsort(descending=True, stable=True)[: max(0, size - new.numel())]
    return torch.cat([new, order[conn[order] > 0]]).sort().values


def drop_outliers(
    model: str,
    T: Float[Tensor, "N 3 4"],
    intr: Float[Tensor, "N P"],
    X: Float[Tensor, "T 3"],
    obs: Bool[Tensor, "T N"],
    xy: TrackPixels,
    tids: Int[Tensor, " K"],
    ids: Int[Tensor, " C"],
    pi: Int[Tensor, " M"],
    vi: Int[Tensor, " M"],
    max_reproj_px: float,
) -> None:
    """Drop the observations ``(tids[pi], ids[vi])`` of ``obs`` (in place) whose reprojection
    error reaches ``max_reproj_px`` or whose point is behind the camera, then the points left
    with fewer than two."""
    uv, depth = project(transform_points(T[ids][vi], X[tids][pi]), model, intr[ids][vi])
    bad = ((uv - xy[tids[pi], ids[vi]]).norm(dim=-1) >= max_reproj_px) | (depth <= 0)
    obs[tids[pi[bad]], ids[vi[bad]]] = False
    obs[obs.sum(1) < 2] = False


def local_bundle_adjustment(
    model: str,
    T: Float[Tensor, "N 3 4"],
    intr: Float[Tensor, "N P"],
    X: Float[Tensor, "T 3"],
    obs: Bool[Tensor, "T N"],
    xy: TrackPixels,
    registered: Bool[Tensor, " N"],
    new: Int[Tensor, " B"],
    adjust: AdjustFn,
    size: int,
    max_reproj_px: float,
) -> Int[Tensor, " W"]:
    """Bundle adjust the window of :func:`local_window` around the images ``new`` and the
    points the window sees (``obs``); the other registered cameras observing those points
    and all intrinsics stay fixed. Updates ``T`` (window rows only), ``X`` and ``obs``
    (outliers dropped) in place; returns the window."""
    win = local_window(obs, registered, new, size)
    tids = obs[:, win].any(1).nonzero()[:, 0]
    seen = obs[tids].any(0) & registered
    seen[win] = False
    ids = torch.cat([win, seen.nonzero()[:, 0]])  # the window first, then the fixed cameras
    pi, vi = obs[tids][:, ids].nonzero(as_tuple=True)
    fixed = tuple(range(win.numel(), ids.numel()))
    T_r, _, P = adjust(
        T[ids], intr[ids], X[tids], vi, pi, xy[tids[pi], ids[vi]], False, True, fixed
    )
    T[win] = T_r[: win.numel()]  # the fixed cameras keep their exact poses
    X[tids] = P
    drop_outliers(model, T, intr, X, obs, xy, tids, ids, pi, vi, max_reproj_px)
    return win
