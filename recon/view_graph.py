"""The view graph of the SfM: which image pairs get a two-view geometry, their shared tracks
as batches, and what the verified pairs say about the whole (connected image groups, groups
of pairs with related scales, enough motion, agreement of two pose sets)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.recon.global_sfm import connected_components
from sceneforge.recon.sfm_error import SfMError
from sceneforge.recon.tracks import TrackPixels


@dataclass
class PairsConfig:
    """Which image pairs get a two-view geometry."""

    min_shared_tracks: int = 30
    """Pairs sharing fewer tracks are skipped."""
    max_correspondences: int = 2000
    """At most this many (random) shared tracks per pair go into RANSAC."""
    max_pairs_per_image: int = 30
    """Keep at most this many best-connected pairs per image (0 = all)."""
    focal_pairs_per_image: int = 4
    """Unknown focal lengths are estimated from the fundamental matrices of each image's this
    many best-connected pairs (their union; 0 = all pairs): the estimate is a robust median,
    which the weaker pairs only slow down (fern: a third of the pairs, same focal length)."""


def select_pairs(
    visible: Bool[Tensor, "T N"], cfg: PairsConfig
) -> tuple[Int[Tensor, "P 2"], Int[Tensor, " P"]]:
    """Pairs ``(i < j)`` sharing at least ``min_shared_tracks`` tracks, best per image kept."""
    n = visible.shape[1]
    co = torch.zeros(n, n, dtype=torch.float64)
    for s in range(0, visible.shape[0], 8192):  # tracks in blocks: no T x N float table
        v = visible[s : s + 8192].double()
        co += v.T @ v  # integer counts: exact in float64 whatever the block order
    co = co.long()
    iu = torch.triu_indices(n, n, 1)
    cnt = co[iu[0], iu[1]]
    ok = cnt >= cfg.min_shared_tracks
    pairs, cnt = iu.T[ok], cnt[ok]
    if cfg.max_pairs_per_image > 0 and pairs.shape[0]:
        keep = torch.zeros(pairs.shape[0], dtype=torch.bool)
        for i in range(n):
            inc = ((pairs[:, 0] == i) | (pairs[:, 1] == i)).nonzero()[:, 0]
            top = inc[cnt[inc].argsort(descending=True)[: cfg.max_pairs_per_image]]
            keep[top] = True
        pairs, cnt = pairs[keep], cnt[keep]
    return pairs, cnt


def best_pairs_per_image(
    pairs: Int[Tensor, "P 2"], counts: Int[Tensor, " P"], n: int, k: int
) -> Int[Tensor, " S"]:
    """Indices of the union of every image's ``k`` pairs with the most shared tracks (all
    pairs when ``k <= 0``)."""
    if k <= 0:
        return torch.arange(pairs.shape[0])
    keep = torch.zeros(pairs.shape[0], dtype=torch.bool)
    for i in range(n):
        inc = ((pairs[:, 0] == i) | (pairs[:, 1] == i)).nonzero()[:, 0]
        keep[inc[counts[inc].argsort(descending=True)[:k]]] = True
    return keep.nonzero()[:, 0]


def shared_track_sample(
    visible: Bool[Tensor, "T N"],
    pairs: Int[Tensor, "P 2"],
    cap: int,
    seed: int = 0,
    batch_pairs: int = 256,
) -> tuple[Int[Tensor, "P M"], Bool[Tensor, "P M"]]:
    """Up to ``cap`` shared tracks of every pair as track indices, in random order (padding
    after them: index 0, ``valid`` False).

    Built ``batch_pairs`` pairs at a time, so the transient memory grows with tracks x batch,
    not tracks x pairs (issue 25: the ``T x P`` keys and their argsort took 10+ GB at 1,000
    images). Each pair's random keys are drawn from one generator in pair order and ties are
    broken by track index (stable sort): the result depends on ``seed`` only, not on
    ``batch_pairs``.
    """
    gen = torch.Generator().manual_seed(seed)
    num_pairs, num_tracks = pairs.shape[0], visible.shape[0]
    width = min(cap, num_tracks)
    idx = torch.zeros(num_pairs, width, dtype=torch.int32)
    valid = torch.zeros(num_pairs, width, dtype=torch.bool)
    for s in range(0, num_pairs, max(batch_pairs, 1)):
        pb = pairs[s : s + max(batch_pairs, 1)]
        both = (visible[:, pb[:, 0]] & visible[:, pb[:, 1]]).T  # (B, T)
        key = torch.rand(both.shape, generator=gen, dtype=torch.float64) + (~both).double() * 2
        order = key.argsort(dim=1, stable=True)[:, :width]
        idx[s : s + pb.shape[0]] = order.to(torch.int32)
        valid[s : s + pb.shape[0]] = torch.gather(both, 1, order)
    m = int(valid.sum(1).max()) if valid.numel() else 0
    return idx[:, :m].contiguous(), valid[:, :m].contiguous()


def gather_correspondences(
    data: Float[Tensor, "T N C"] | TrackPixels, pairs: Int[Tensor, "B 2"], idx: Int[Tensor, "B M"]
) -> tuple[Float[Tensor, "B M C"], Float[Tensor, "B M C"]]:
    """The observations ``data`` (a ``T x N x C`` table or :class:`TrackPixels`) of tracks
    ``idx`` in the first and second image of each pair."""
    i = idx.long()
    return data[i, pairs[:, :1]], data[i, pairs[:, 1:]]


def _check_motion(pair_angles_deg: Tensor, min_angle_deg: float) -> None:
    """SfMError when no verified pair has a usable baseline (the camera only rotated)."""
    best = float(pair_angles_deg.max())
    if best < min_angle_deg:
        raise SfMError(
            f"degenerate camera motion: the median triangulation angle of every verified image "
            f"pair is below {min_angle_deg:g} deg (largest {best:.2f} deg), i.e. the camera "
            "only rotated (or moved far too little for the scene's depth); 3D points cannot be "
            "recovered. Move the camera between photos instead of turning in place."
        )


def _pose_agreement(
    T_a: Float[Tensor, "N 3 4"],
    reg_a: Bool[Tensor, " N"],
    T_b: Float[Tensor, "N 3 4"],
    reg_b: Bool[Tensor, " N"],
    min_common: int = 4,
    max_error_deg: float = 5.0,
) -> float | None:
    """Fraction of the image pairs registered in both models whose relative poses agree
    (rotation and translation direction within ``max_error_deg``); None with fewer than
    ``min_common`` images in both (too few pairs to judge)."""
    from sceneforge.core.metrics import relative_pose_errors

    both = reg_a & reg_b
    if int(both.sum()) < max(min_common, 2):
        return None
    r, t = relative_pose_errors(T_a[both], T_b[both])
    return float((torch.maximum(r, t) < max_error_deg).double().mean())


def image_groups(num_images: int, edges: Int[Tensor, "E 2"]) -> list[list[int]]:
    """Connected groups (2+ images) of the verified-pair graph, largest first."""
    return [g for g in connected_components(num_images, edges) if len(g) >= 2]


def scale_linked_edge_groups(
    vis: Bool[Tensor, "T N"], edges: Int[Tensor, "E 2"], min_tracks: int = 5
) -> int:
    """How many groups of image pairs have relative scales fixed by the data.

    A pair's relative translation has no length; two pairs sharing an image have a fixed
    length ratio only if at least ``min_tracks`` tracks are seen in all three images or the
    third pair of the triangle is verified too. With tracks of length 2 only (e.g. a capture
    turning so fast that no point is seen in three images) every pair is its own group and
    the camera positions along the chain are not determined, however small the reprojection
    error."""
    ne = edges.shape[0]
    if ne == 0:
        return 0
    linked: list[tuple[int, int]] = []  # pairs of edges whose relative scale is fixed
    n = vis.shape[1]
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[edges[:, 0], edges[:, 1]] = True
    adj[edges[:, 1], edges[:, 0]] = True
    e_list = edges.tolist()
    for j in range(n):
        inc = [k for k, (a, b) in enumerate(e_list) if a == j or b == j]
        if len(inc) < 2:
            continue
        v = vis[vis[:, j]].double()
        co = v.T @ v  # tracks through j also seen in a and b
        other = [b if a == j else a for a, b in (e_list[k] for k in inc)]
        for x in range(len(inc)):
            for y in range(x + 1, len(inc)):
                a, b = other[x], other[y]
                if co[a, b] >= min_tracks or bool(adj[a, b]):
                    linked.append((inc[x], inc[y]))
    return len(connected_components(ne, linked))
