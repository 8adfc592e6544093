"""Point tracks over all frames and merging of query-frame matches into tracks.

A :class:`Tracks` holds one row per 3D point: whether it is seen in each frame (``visible``)
and, per observation, its pixel and how sure we are (stored per observation, not per frame:
memory grows with the observations, not tracks x frames). Tracks are built VGGSfM-style:
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

    Stored sparsely (issue 25): a ``T x N`` visibility table (one byte a cell) and, per visible
    observation, its pixel, confidence and keypoint. The observation arrays are in the row-major
    order of ``visible`` (track, then frame), i.e. the order of ``visible.nonzero()``, so
    observation ``o`` of track ``t`` in frame ``f`` has the rank of the key ``t * N + f``. At
    1,000 frames the dense pixel / confidence / keypoint tables this replaces took 20 bytes a
    cell (0.45 GB); the observations are a few hundred thousand rows. Dense views (:attr:`xy`,
    :attr:`confidence`, :attr:`keypoint_idx`) are built on request, for small problems and
    evaluation; the SfM reads pixels through :meth:`pixels`.

    Attributes:
        visible: ``T N`` True where the point is observed in the frame.
        obs_xy: ``O 2`` pixel of each observation (COLMAP convention).
        obs_confidence: ``O`` in [0, 1] (match score times refinement correlation; 1 at the
            anchor).
        obs_keypoint_idx: ``O`` index of the keypoint each observation came from, -1 if none.
        ref_frame: ``T`` the anchor (query) frame of each track; its position there is the query.
        image_sizes: ``N 2`` image ``(height, width)``.
        info: free-form run information (timings, methods); not saved.
    """

    visible: Bool[Tensor, "T N"]
    obs_xy: Float[Tensor, "O 2"]
    obs_confidence: Float[Tensor, " O"]
    obs_keypoint_idx: Int[Tensor, " O"]
    ref_frame: Int[Tensor, " T"]
    image_sizes: Int[Tensor, "N 2"]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.visible.ndim != 2 or self.visible.dtype != torch.bool:
            raise TracksError(
                f"visible must be a (T, N) bool table, got {tuple(self.visible.shape)}"
            )
        t, n = self.visible.shape
        o = int(self.visible.sum())
        if self.obs_xy.shape != (o, 2) or self.obs_confidence.shape != (o,):
            raise TracksError(
                f"inconsistent track arrays: {o} visible observations, obs_xy "
                f"{tuple(self.obs_xy.shape)}, obs_confidence {tuple(self.obs_confidence.shape)}"
            )
        if self.ref_frame.shape != (t,) or self.obs_keypoint_idx.shape != (o,):
            raise TracksError("ref_frame must be (T,) and obs_keypoint_idx (O,)")
        if self.image_sizes.shape != (n, 2):
            raise TracksError(f"image_sizes must be ({n}, 2), got {tuple(self.image_sizes.shape)}")

    @staticmethod
    def from_dense(
        xy: Float[Tensor, "T N 2"],
        visible: Bool[Tensor, "T N"],
        confidence: Float[Tensor, "T N"],
        ref_frame: Int[Tensor, " T"],
        keypoint_idx: Int[Tensor, "T N"],
        image_sizes: Int[Tensor, "N 2"],
        info: dict | None = None,
    ) -> Tracks:
        """Tracks from dense ``T x N`` tables (values where not visible are dropped)."""
        t, n = visible.shape
        if xy.shape != (t, n, 2) or confidence.shape != (t, n) or keypoint_idx.shape != (t, n):
            raise TracksError(
                f"inconsistent track arrays: xy {tuple(xy.shape)}, visible {(t, n)}, "
                f"confidence {tuple(confidence.shape)}, keypoint_idx {tuple(keypoint_idx.shape)}"
            )
        ti, fi = visible.nonzero(as_tuple=True)
        return Tracks(
            visible.clone(),
            xy[ti, fi],
            confidence[ti, fi],
            keypoint_idx[ti, fi],
            ref_frame,
            image_sizes,
            dict(info or {}),
        )

    @property
    def num_tracks(self) -> int:
        return self.visible.shape[0]

    @property
    def num_frames(self) -> int:
        return self.visible.shape[1]

    @property
    def num_observations(self) -> int:
        return self.obs_xy.shape[0]

    def __len__(self) -> int:
        return self.num_tracks

    def lengths(self) -> Int[Tensor, " T"]:
        """Number of frames each track is visible in."""
        return self.visible.sum(dim=1)

    def mean_length(self) -> float:
        return float(self.lengths().float().mean()) if self.num_tracks else 0.0

    def observation_tracks_frames(self) -> tuple[Int[Tensor, " O"], Int[Tensor, " O"]]:
        """Track and frame of every observation (the order of the ``obs_*`` arrays)."""
        return self.visible.nonzero(as_tuple=True)

    def _dense(self, values: Tensor, fill: float) -> Tensor:
        ti, fi = self.observation_tracks_frames()
        out = torch.full((*self.visible.shape, *values.shape[1:]), fill, dtype=values.dtype)
        out[ti, fi] = values
        return out

    @property
    def xy(self) -> Float[Tensor, "T N 2"]:
        """Dense ``T N 2`` pixels (0 where not visible); a new table of ``8 T N`` bytes."""
        return self._dense(self.obs_xy, 0.0)

    @property
    def confidence(self) -> Float[Tensor, "T N"]:
        """Dense ``T N`` confidences (0 where not visible); a new table."""
        return self._dense(self.obs_confidence, 0.0)

    @property
    def keypoint_idx(self) -> Int[Tensor, "T N"]:
        """Dense ``T N`` keypoint indices (-1 where not visible); a new table."""
        return self._dense(self.obs_keypoint_idx, -1)

    def pixels(self, dtype: torch.dtype = torch.float64) -> TrackPixels:
        """Read-only ``(track, frame) -> pixel`` lookup over the observations (no dense table)."""
        return TrackPixels(self.visible, self.obs_xy, dtype)

    def select(self, keep: Tensor) -> Tracks:
        """Tracks at indices / boolean mask ``keep`` (frames unchanged)."""
        idx = torch.arange(self.num_tracks)[keep]
        lengths = self.lengths()
        starts = lengths.cumsum(0) - lengths
        ln = lengths[idx]
        within = torch.arange(int(ln.sum())) - torch.repeat_interleave(ln.cumsum(0) - ln, ln)
        obs = torch.repeat_interleave(starts[idx], ln) + within
        return Tracks(
            self.visible[idx],
            self.obs_xy[obs],
            self.obs_confidence[obs],
            self.obs_keypoint_idx[obs],
            self.ref_frame[idx],
            self.image_sizes,
            dict(self.info),
        )

    def filter(self, min_length: int = 2) -> Tracks:
        """Drop tracks seen in fewer than ``min_length`` frames."""
        return self.select(self.lengths() >= min_length)

    def observations(self) -> tuple[Int[Tensor, " O"], Int[Tensor, " O"], Float[Tensor, "O 2"]]:
        """Visible observations as flat ``(frame_idx, track_idx, xy)`` (for triangulation / BA)."""
        ti, fi = self.observation_tracks_frames()
        return fi, ti, self.obs_xy

    def check(self) -> None:
        """Raise :class:`TracksError` if a keypoint belongs to two tracks or a visible point lies
        outside its image."""
        _, fi = self.observation_tracks_frames()
        kp = self.obs_keypoint_idx
        has = kp >= 0
        key = fi[has] * (int(kp.max()) + 1 if has.any() else 1) + kp[has]
        if key.unique().numel() != key.numel():
            raise TracksError("a keypoint is claimed by two tracks")
        xy = self.obs_xy
        hw = self.image_sizes[fi].to(xy.dtype)
        if ((xy < 0) | (xy[:, 0] > hw[:, 1])[:, None] | (xy[:, 1] > hw[:, 0])[:, None]).any():
            raise TracksError("a visible track point lies outside its image")

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``.npz`` atomically."""
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, **{k: getattr(self, k).numpy() for k in _FIELDS})

    @staticmethod
    def load(path: str | os.PathLike) -> Tracks:
        """Read a file written by :meth:`save` (also the dense files of earlier versions)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "obs_xy" in z:
                    return Tracks(**{k: torch.from_numpy(z[k]) for k in _FIELDS})
                return Tracks.from_dense(**{k: torch.from_numpy(z[k]) for k in _DENSE_FIELDS})
        except (OSError, KeyError, ValueError) as e:
            raise TracksError(f"{path}: not a tracks file ({e})") from e


class TrackPixels:
    """Read-only ``(track, frame) -> pixel`` lookup over the visible observations of
    :class:`Tracks`, indexed like the dense ``T x N x 2`` table it replaces: ``px[rows, cols]``
    with broadcastable index tensors (or an int), ``px.block(rows, cols)`` for a dense
    ``len(rows) x len(cols)`` sub-table. Cells that are not observed read 0. A binary search in
    the sorted observation keys ``t * N + f``: memory is the observations', not ``T x N``."""

    def __init__(self, visible: Bool[Tensor, "T N"], obs_xy: Float[Tensor, "O 2"], dtype) -> None:
        ti, fi = visible.nonzero(as_tuple=True)
        self.shape = (*visible.shape, 2)
        self.dtype = dtype
        self._keys = ti * visible.shape[1] + fi  # ascending: row-major order
        self._values = obs_xy.to(dtype)

    def __getitem__(self, index: tuple[Tensor | int, Tensor | int]) -> Tensor:
        rows, cols = (torch.as_tensor(i, dtype=torch.long) for i in index)
        rows, cols = torch.broadcast_tensors(rows, cols)
        key = (rows * self.shape[1] + cols).reshape(-1)
        out = torch.zeros(key.numel(), 2, dtype=self.dtype)
        if self._keys.numel():
            pos = torch.searchsorted(self._keys, key).clamp(max=self._keys.numel() - 1)
            hit = (self._keys[pos] == key) & (rows.reshape(-1) >= 0)
            out[hit] = self._values[pos[hit]]
        return out.reshape(*rows.shape, 2)

    def block(self, rows: Int[Tensor, " R"], cols: Int[Tensor, " C"]) -> PixelBlock:
        """The pixels of tracks ``rows`` in frames ``cols``, indexed like an ``R x C x 2`` table
        (read on demand; ``.dense()`` builds the table)."""
        return PixelBlock(self, rows, cols)


class PixelBlock:
    """A ``R x C x 2`` window of :class:`TrackPixels` (tracks ``rows``, frames ``cols``) read on
    demand: ``blk[i, j]`` reads ``pixels[rows[i], cols[j]]``. Triangulation reads only its
    observations (``blk[pi, vi]`` of its mask's nonzeros), so no ``T x N`` table is built."""

    def __init__(self, pixels: TrackPixels, rows: Tensor, cols: Tensor) -> None:
        self.pixels, self.rows, self.cols = pixels, rows, cols
        self.shape = (rows.numel(), cols.numel(), 2)
        self.dtype = pixels.dtype

    def __getitem__(self, index: tuple[Tensor, Tensor]) -> Tensor:
        i, j = index
        return self.pixels[self.rows[i], self.cols[j]]

    def dense(self) -> Float[Tensor, "R C 2"]:
        """The whole window as a tensor."""
        return self.pixels[self.rows[:, None], self.cols[None, :]]


_FIELDS = (
    "visible",
    "obs_xy",
    "obs_confidence",
    "obs_keypoint_idx",
    "ref_frame",
    "image_sizes",
)
_DENSE_FIELDS = ("xy", "visible", "confidence", "ref_frame", "keypoint_idx", "image_sizes")


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

    # Observations in row-major (track, frame) order: no dense T x N pixel table (issue 25).
    nodes = np.nonzero(in_track)[0]
    nodes = nodes[np.argsort(track_of[nodes] * n_frames + node_frame[nodes], kind="stable")]
    tr = torch.from_numpy(track_of[nodes])
    fr = torch.from_numpy(node_frame[nodes])
    visible = torch.zeros(t, n_frames, dtype=torch.bool)
    visible[tr, fr] = True
    all_xy = torch.cat([k.float() for k in keypoints], dim=0)
    obs_xy = all_xy[torch.from_numpy(nodes)]
    conf = torch.from_numpy(best[nodes])
    kp_idx = torch.from_numpy(nodes - offset[node_frame[nodes]])

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
    anchor_key = torch.arange(t) * n_frames + ref_t
    conf[torch.searchsorted(tr * n_frames + fr, anchor_key)] = 1.0
    return Tracks(visible, obs_xy, conf, kp_idx, ref_t, image_sizes.clone())


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
        torch.zeros(0, n, dtype=torch.bool),
        torch.zeros(0, 2),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        image_sizes.clone(),
    )
