"""Point tracks over all frames and merging of query-frame matches into tracks.

A :class:`Tracks` holds one row per 3D point: its pixel in every frame (``xy``), whether it is
seen there (``visible``) and how sure we are (``confidence``). Tracks are built VGGSfM-style:
keypoints of a few query frames are matched into every frame; matches sharing a keypoint are
merged (union-find), and merges that would put two points of one frame into one track are
refused, strongest matches first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.atomic import atomic_open


class TracksError(ValueError):
    """Inconsistent tracks (e.g. one keypoint claimed by two tracks)."""


@dataclass
class Tracks:
    """Tracks of ``T`` points through ``N`` frames.

    Attributes:
        xy: ``T N 2`` pixel positions (COLMAP convention); meaningless where not visible.
        visible: ``T N`` True where the point is observed in the frame.
        confidence: ``T N`` in [0, 1] (match score times refinement correlation); 0 if not visible.
        ref_frame: ``T`` the anchor (query) frame of each track; its position there is the query.
        keypoint_idx: ``T N`` index of the keypoint each observation came from, -1 if none.
        image_sizes: ``N 2`` image ``(height, width)``.
        info: free-form run information (timings, methods); not saved.
    """

    xy: Float[Tensor, "T N 2"]
    visible: Bool[Tensor, "T N"]
    confidence: Float[Tensor, "T N"]
    ref_frame: Int[Tensor, " T"]
    keypoint_idx: Int[Tensor, "T N"]
    image_sizes: Int[Tensor, "N 2"]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        t, n = self.visible.shape
        if self.xy.shape != (t, n, 2) or self.confidence.shape != (t, n):
            raise TracksError(
                f"inconsistent track arrays: xy {tuple(self.xy.shape)}, visible {(t, n)}, "
                f"confidence {tuple(self.confidence.shape)}"
            )
        if self.ref_frame.shape != (t,) or self.keypoint_idx.shape != (t, n):
            raise TracksError("ref_frame must be (T,) and keypoint_idx (T, N)")
        if self.image_sizes.shape != (n, 2):
            raise TracksError(f"image_sizes must be ({n}, 2), got {tuple(self.image_sizes.shape)}")

    @property
    def num_tracks(self) -> int:
        return self.visible.shape[0]

    @property
    def num_frames(self) -> int:
        return self.visible.shape[1]

    def __len__(self) -> int:
        return self.num_tracks

    def lengths(self) -> Int[Tensor, " T"]:
        """Number of frames each track is visible in."""
        return self.visible.sum(dim=1)

    def mean_length(self) -> float:
        return float(self.lengths().float().mean()) if self.num_tracks else 0.0

    def select(self, keep: Tensor) -> Tracks:
        """Tracks at indices / boolean mask ``keep`` (frames unchanged)."""
        return Tracks(
            self.xy[keep],
            self.visible[keep],
            self.confidence[keep],
            self.ref_frame[keep],
            self.keypoint_idx[keep],
            self.image_sizes,
            dict(self.info),
        )

    def filter(self, min_length: int = 2) -> Tracks:
        """Drop tracks seen in fewer than ``min_length`` frames."""
        return self.select(self.lengths() >= min_length)

    def observations(self) -> tuple[Int[Tensor, " O"], Int[Tensor, " O"], Float[Tensor, "O 2"]]:
        """Visible observations as flat ``(frame_idx, track_idx, xy)`` (for triangulation / BA)."""
        ti, fi = self.visible.nonzero(as_tuple=True)
        return fi, ti, self.xy[ti, fi]

    def check(self) -> None:
        """Raise :class:`TracksError` if a keypoint belongs to two tracks or a visible point lies
        outside its image."""
        ti, fi = self.visible.nonzero(as_tuple=True)
        kp = self.keypoint_idx[ti, fi]
        has = kp >= 0
        key = fi[has] * (int(kp.max()) + 1 if has.any() else 1) + kp[has]
        if key.unique().numel() != key.numel():
            raise TracksError("a keypoint is claimed by two tracks")
        xy = self.xy[ti, fi]
        hw = self.image_sizes[fi].to(xy.dtype)
        if ((xy < 0) | (xy[:, 0] > hw[:, 1])[:, None] | (xy[:, 1] > hw[:, 0])[:, None]).any():
            raise TracksError("a visible track point lies outside its image")

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``.npz`` atomically."""
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, **{k: getattr(self, k).numpy() for k in _FIELDS})

    @staticmethod
    def load(path: str | os.PathLike) -> Tracks:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                return Tracks(**{k: torch.from_numpy(z[k]) for k in _FIELDS})
        except (OSError, KeyError, ValueError) as e:
            raise TracksError(f"{path}: not a tracks file ({e})") from e


_FIELDS = ("xy", "visible", "confidence", "ref_frame", "keypoint_idx", "image_sizes")


# ----------------------------------------------------------------------------- merging


def merge_matches(
    pair_matches: dict[tuple[int, int], tuple[Tensor, Tensor]],
    keypoints: list[Float[Tensor, "K 2"]],
    image_sizes: Int[Tensor, "N 2"],
    query_frames: list[int],
    min_length: int = 2,
) -> Tracks:
    """Merge pairwise matches into tracks over all frames.

    Args:
        pair_matches: ``(i, j) -> (idx (M, 2) keypoint indices in i and j, scores (M,))``;
            typically ``i`` is a query frame.
        keypoints: per frame ``K_i 2`` keypoint positions.
        image_sizes: ``N 2`` (height, width).
        query_frames: frames whose keypoints are queries; each track's anchor is one of them.
        min_length: tracks seen in fewer frames are dropped.

    Matches are unioned strongest first; a union that would give a track two keypoints in one
    frame is refused (only inside components that actually conflict, found vectorised first).
    """
    n_frames = len(keypoints)
    counts = np.array([k.shape[0] for k in keypoints], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(counts)])
    n_nodes = int(offset[-1])
    node_frame = np.repeat(np.arange(n_frames), counts)
    src, dst, w = [], [], []
    for (i, j), (idx, sc) in pair_matches.items():
        if idx.shape[0] == 0:
            continue
        idx = idx.numpy()
        src.append(offset[i] + idx[:, 0])
        dst.append(offset[j] + idx[:, 1])
        w.append(sc.numpy().astype(np.float32))
    if not src or n_nodes == 0:
        return _empty_tracks(image_sizes)
    src, dst, w = np.concatenate(src), np.concatenate(dst), np.concatenate(w)

    label = component_labels(n_nodes, src, dst)
    # Components holding two nodes of one frame conflict.
    key = label.astype(np.int64) * n_frames + node_frame
    uk, cnt = np.unique(key, return_counts=True)
    bad = np.zeros(label.max() + 1, dtype=bool)
    bad[(uk[cnt > 1] // n_frames)] = True
    if bad.any():
        label = label.copy()
        emask = bad[label[src]]
        order = np.argsort(-w[emask], kind="stable")
        es, ed = src[emask][order], dst[emask][order]
        nodes = np.unique(np.concatenate([es, ed]))
        par = {int(v): int(v) for v in nodes}  # union-find over the conflicting nodes only
        frames = {int(v): 1 << int(node_frame[v]) for v in nodes}  # frame set as a bitmask

        def find(x: int) -> int:
            root = x
            while par[root] != root:
                root = par[root]
            while par[x] != root:
                par[x], x = root, par[x]
            return root

        for a, b in zip(es.tolist(), ed.tolist()):
            ra, rb = find(a), find(b)
            if ra == rb or frames[ra] & frames[rb]:
                continue  # same track already, or the merge would claim two points in a frame
            par[rb] = ra
            frames[ra] |= frames[rb]
        new_base = label.max() + 1
        for v in nodes.tolist():
            label[v] = new_base + find(v)
    # Compact labels, drop short tracks.
    uniq, lab = np.unique(label, return_inverse=True)
    size = np.bincount(lab)
    keep_track = size >= min_length
    remap = -np.ones(uniq.shape[0], dtype=np.int64)
    remap[keep_track] = np.arange(int(keep_track.sum()))
    track_of = remap[lab]
    t = int(keep_track.sum())
    if t == 0:
        return _empty_tracks(image_sizes)
    in_track = track_of >= 0

    # Per node: best incident match score and degree (for confidence and the anchor choice).
    same = track_of[src] == track_of[dst]
    best = np.zeros(n_nodes, dtype=np.float32)
    np.maximum.at(best, src[same], w[same])
    np.maximum.at(best, dst[same], w[same])
    degree = np.bincount(src[same], minlength=n_nodes) + np.bincount(dst[same], minlength=n_nodes)

    xy = torch.zeros(t, n_frames, 2)
    visible = torch.zeros(t, n_frames, dtype=torch.bool)
    conf = torch.zeros(t, n_frames)
    kp_idx = torch.full((t, n_frames), -1, dtype=torch.long)
    nodes = np.nonzero(in_track)[0]
    tr = torch.from_numpy(track_of[nodes])
    fr = torch.from_numpy(node_frame[nodes])
    local = torch.from_numpy(nodes - offset[node_frame[nodes]])
    all_xy = torch.cat([k.float() for k in keypoints], dim=0)
    xy[tr, fr] = all_xy[torch.from_numpy(nodes)]
    visible[tr, fr] = True
    conf[tr, fr] = torch.from_numpy(best[nodes])
    kp_idx[tr, fr] = local

    # Anchor: the query-frame node with the highest degree in each track.
    is_query = np.zeros(n_frames, dtype=bool)
    is_query[list(query_frames)] = True
    qn = nodes[is_query[node_frame[nodes]]]
    score = degree[qn].astype(np.float64) + 1e-3 * best[qn]
    ref = np.full(t, -1, dtype=np.int64)
    order = np.argsort(score, kind="stable")  # ascending: later writes win -> the max
    ref[track_of[qn[order]]] = node_frame[qn[order]]
    no_query = ref < 0  # only possible if matches did not involve a query frame
    if no_query.any():
        first = visible[torch.from_numpy(no_query)].float().argmax(dim=1).numpy()
        ref[no_query] = first
    ref_t = torch.from_numpy(ref)
    conf[torch.arange(t), ref_t] = 1.0
    return Tracks(xy, visible, conf, ref_t, kp_idx, image_sizes.clone())


def component_labels(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected-component label of every node of an undirected graph (the smallest node of
    its component), by vectorised union-find: hook the larger root of every edge to the
    smaller, then compress paths, until no edge joins two roots (a few rounds; numpy only,
    where scipy's import alone cost more than the whole merge)."""
    label = np.arange(num_nodes)
    while True:
        ls, ld = label[src], label[dst]
        join = ls != ld
        if not join.any():
            return label
        np.minimum.at(label, np.maximum(ls, ld)[join], np.minimum(ls, ld)[join])
        while True:
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt


def _empty_tracks(image_sizes: Tensor) -> Tracks:
    n = image_sizes.shape[0]
    return Tracks(
        torch.zeros(0, n, 2),
        torch.zeros(0, n, dtype=torch.bool),
        torch.zeros(0, n),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, n, dtype=torch.long),
        image_sizes.clone(),
    )
