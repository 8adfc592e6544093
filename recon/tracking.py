"""``build_tracks``: images in, sub-pixel point tracks over all frames out (VGGSfM-style).

Steps: query points on a few query frames spread over the sequence -> match each query frame
into every frame -> merge into tracks (no track claims two points in one frame) -> sub-pixel
refinement of every observation against its track's anchor patch (affine Lucas-Kanade, after a
coarse-to-fine search for the learned features; SIFT matches are already within a pixel).

Defaults were chosen by measurement (benchmarks/tracks.py, benchmarks/RESULTS.md "Tracks"): on
CPU, pycolmap SIFT + mutual nearest neighbour. ALIKED + LightGlue costs ~3x SIFT per image and
~60x NN per pair there (8-13x end to end) without better refined accuracy; XFeat + NN is faster
than SIFT but less accurate on wide baselines and needs the optional ``[learned]`` extra. With
CUDA, ``auto`` picks ALIKED + LightGlue.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from sceneforge.core.scene import SceneData
from sceneforge.recon.features import (
    FeatureExtractor,
    Features,
    FeaturesConfig,
    default_feature_method,
    select_query_frames,
)
from sceneforge.recon.matching import Matcher, MatchingConfig
from sceneforge.recon.refine import (
    PatchRefiner,
    RefineConfig,
    TrackRefiner,
    default_search_levels,
)
from sceneforge.recon.retrieval import PairSelectionConfig, select_image_pairs
from sceneforge.recon.tracks import Tracks, merge_matches


@dataclass
class TracksConfig:
    """Everything ``build_tracks`` does, one sub-config per stage."""

    features: FeaturesConfig = field(default_factory=lambda: FeaturesConfig(method="auto"))
    """Query-point extraction (``method='auto'``: SIFT on CPU, ALIKED on CUDA)."""
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(method="auto"))
    """Matching (``method='auto'``: LightGlue for ALIKED, mutual NN otherwise)."""
    refine: RefineConfig = field(default_factory=RefineConfig)
    """Sub-pixel refinement settings."""
    num_query_frames: int = 8
    """Query frames spread over the sequence (0 = every frame is a query frame)."""
    max_frame_distance: int | None = None
    """Match a query frame only with frames at most this many indices away (ordered captures);
    None = with every frame."""
    neighbor_frames: int = 1
    """Also match every frame with the next this many frames (0 = query pairs only). In an
    ordered capture a point seen only by consecutive frames between two query frames would
    otherwise be split into pairs: with no track through three images there, the relative
    scale of the camera motion on either side is not fixed (measured: the 24-view indoor walk,
    whose query frames are 3-4 frames apart, fell into two scale groups; 1 links them)."""
    pair_selection: PairSelectionConfig = field(default_factory=PairSelectionConfig)
    """Which pairs are matched: ``query`` (default) = the query frames and neighbour frames
    above; ``exhaustive`` / ``sequential`` / ``retrieval`` (or ``auto`` above its
    ``exhaustive_max_images``) = the list of :func:`select_image_pairs` instead, every frame
    then a query frame (each track anchored in its best-connected frame)."""
    refine_enabled: bool = True
    """Run the sub-pixel refinement."""
    min_track_length: int = 2
    """Drop tracks seen in fewer frames."""
    verbose: bool = False
    """Print per-stage progress."""


def resolve_config(config: TracksConfig) -> TracksConfig:
    """Replace ``auto`` feature / matcher / refinement-search choices by the measured defaults
    for this machine and feature method."""
    feats = config.features
    if feats.method == "auto":
        feats = replace(feats, method=default_feature_method())
    match = config.matching
    if match.method == "auto":
        match = replace(match, method="lightglue" if feats.method == "aliked" else "nn")
    ref = config.refine
    if ref.search_levels is None:
        ref = replace(ref, search_levels=default_search_levels(feats.method))
    return replace(config, features=feats, matching=match, refine=ref)


class _Frames:
    """Uniform access to images / masks of a SceneData, tensors or image files."""

    def __init__(self, source, masks: Sequence | None = None) -> None:
        from sceneforge.core.image_io import read_image, read_mask

        self._read_image, self._read_mask = read_image, read_mask
        self.scene = source if isinstance(source, SceneData) else None
        if self.scene is not None:
            if masks is not None:
                raise ValueError("pass masks inside the SceneData, not separately")
            self.n = len(self.scene)
            self.names = list(self.scene.image_names)
        else:
            self.items = list(source)
            self.n = len(self.items)
            self.names = [
                str(x) if isinstance(x, (str, os.PathLike)) else f"image {i}"
                for i, x in enumerate(self.items)
            ]
            self.masks = list(masks) if masks is not None else None
            if self.masks is not None and len(self.masks) != self.n:
                raise ValueError(f"{len(self.masks)} masks for {self.n} images: counts must match")

    def image(self, i: int) -> Tensor:
        if self.scene is not None:
            return self.scene.load_image(i)
        x = self.items[i]
        if isinstance(x, (str, os.PathLike)):
            return self._read_image(Path(x))
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"image {i}: expected an H x W x 3 tensor or a path, got {type(x)}")
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def mask(self, i: int) -> Tensor | None:
        if self.scene is not None:
            return self.scene.load_mask(i)
        if self.masks is None or self.masks[i] is None:
            return None
        m = self.masks[i]
        return self._read_mask(Path(m)) if isinstance(m, (str, os.PathLike)) else m.to(torch.bool)


def query_pairs(
    n: int, queries: list[int], max_distance: int | None, neighbors: int = 0
) -> list[tuple[int, int]]:
    """Pairs to match: ``(query, frame)`` for every query with every other frame (within
    ``max_distance`` if given), then ``(i, i + d)`` for ``d <= neighbors``; each unordered
    pair once."""
    pairs, seen = [], set()
    cand = [(q, j) for q in queries for j in range(n)]
    cand += [(i, i + d) for d in range(1, neighbors + 1) for i in range(n - d)]
    for q, j in cand:
        if j == q or (max_distance is not None and abs(j - q) > max_distance):
            continue
        key = (min(q, j), max(q, j))
        if key in seen:
            continue
        seen.add(key)
        pairs.append((q, j))
    return pairs


def extract_features(
    scene_or_images: SceneData | Sequence[Tensor | str | os.PathLike],
    config: TracksConfig | None = None,
    masks: Sequence[Tensor | str | os.PathLike | None] | None = None,
) -> list[Features]:
    """The query-point features :func:`build_tracks` would extract, to pass to several calls
    (e.g. tracking again with other query frames without extracting again)."""
    config = resolve_config(config or TracksConfig())
    frames = _Frames(scene_or_images, masks)
    return FeatureExtractor(config.features).extract_many(frames.n, frames.image, frames.mask)


def build_tracks(
    scene_or_images: SceneData | Sequence[Tensor | str | os.PathLike],
    config: TracksConfig | None = None,
    masks: Sequence[Tensor | str | os.PathLike | None] | None = None,
    refiner: TrackRefiner | None = None,
    log: Callable[[str], None] | None = None,
    features: Sequence[Features] | None = None,
) -> Tracks:
    """Tracks over all frames of a scene or image list.

    Args:
        scene_or_images: a :class:`SceneData` (its masks are used) or a list of ``H W 3``
            images (float [0, 1] or uint8) / image paths; sizes may differ.
        config: settings (defaults: measured CPU/GPU defaults).
        masks: optional per-image masks (True = usable) when images are given as a list.
        refiner: replaces the default :class:`PatchRefiner` (e.g. a learned fine tracker).
        log: progress callback (defaults to ``print`` when ``config.verbose``).
        features: every frame's features from :func:`extract_features` with the same
            config (skips extraction).

    Returns:
        :class:`Tracks`; ``tracks.info`` holds the methods used and per-stage timings.
    """
    config = resolve_config(config or TracksConfig())
    frames = _Frames(scene_or_images, masks)
    if frames.n < 2:
        raise ValueError(f"need at least 2 images to build tracks, got {frames.n}")
    log = log or (print if config.verbose else (lambda _msg: None))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    matcher = Matcher(config.matching, features=config.features.method)
    if features is None:
        features = extract_features(scene_or_images, config, masks)
    elif len(features) != frames.n:
        raise ValueError(f"{len(features)} feature sets for {frames.n} images: counts must match")
    feats = list(features)
    sizes = torch.tensor([f.image_size for f in feats], dtype=torch.long).reshape(-1, 2)
    timings["features_s"] = time.perf_counter() - t0
    log(
        f"features: {sum(len(f) for f in feats)} keypoints in {frames.n} images "
        f"({timings['features_s']:.1f} s)"
    )

    t0 = time.perf_counter()
    selection = select_image_pairs([f.descriptors for f in feats], config.pair_selection)
    if selection.pairs is None:
        nq = frames.n if config.num_query_frames <= 0 else config.num_query_frames
        queries = select_query_frames(frames.n, nq)
        pairs = query_pairs(frames.n, queries, config.max_frame_distance, config.neighbor_frames)
    else:
        queries = list(range(frames.n))
        pairs = [(int(i), int(j)) for i, j in selection.pairs.tolist()]
        log(
            f"pairs: {selection.method}, {len(pairs)} of {frames.n * (frames.n - 1) // 2} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    timings["pair_selection_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pair_matches = {p: (m.idx, m.scores) for p, m in matcher.match_pairs(feats, pairs).items()}
    timings["matching_s"] = time.perf_counter() - t0
    log(
        f"matching: {len(pairs)} pairs, {sum(v[0].shape[0] for v in pair_matches.values())} "
        f"matches ({timings['matching_s']:.1f} s)"
    )

    t0 = time.perf_counter()
    tracks = merge_matches(
        pair_matches, [f.keypoints for f in feats], sizes, queries, config.min_track_length
    )
    del pair_matches
    timings["merge_s"] = time.perf_counter() - t0
    log(f"merge: {tracks.num_tracks} tracks, mean length {tracks.mean_length():.2f}")

    if config.refine_enabled and tracks.num_tracks:
        t0 = time.perf_counter()
        refiner = refiner or PatchRefiner(config.refine)
        tracks = refiner(tracks, frames.image, frames.mask).filter(config.min_track_length)
        timings["refine_s"] = time.perf_counter() - t0
        log(
            f"refine: {tracks.num_tracks} tracks, mean length {tracks.mean_length():.2f} "
            f"({timings['refine_s']:.1f} s)"
        )
    tracks.info.update(
        features=config.features.method,
        matcher=config.matching.method,
        query_frames=queries,
        num_pairs=len(pairs),
        pair_selection=selection.info,
        image_names=frames.names,
        **timings,
    )
    return tracks
