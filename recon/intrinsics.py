"""Camera intrinsics of the SfM: model, sharing and priors (:class:`CameraConfig`), and
their initial values, known or estimated from the fundamental matrices of the image pairs
(:mod:`sceneforge.recon.self_calibration`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sceneforge.core.cameras import MODEL_PARAMS, convert_params
from sceneforge.recon.self_calibration import estimate_per_image_focals
from sceneforge.recon.sfm_error import SfMError


@dataclass
class CameraConfig:
    """Intrinsics: model, sharing, and what is known."""

    model: str = "SIMPLE_RADIAL"
    """COLMAP camera model to estimate (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV)."""
    shared: bool = True
    """One camera for all images (else one per image)."""
    focal: float | None = None
    """Known focal length in pixels (of the full-size image); None estimates it."""
    params: tuple[float, ...] | None = None
    """Known full parameter vector in the model's order (overrides ``focal``)."""
    focal_range: tuple[float, float] = (0.4, 4.0)
    """Search range of an unknown focal length, in units of the largest image side."""
    focal_prior: float = 1.2
    """Focal length (in units of the largest side) used when it is not observable."""
    focal_min_contrast: float = 1e-3
    """A shared focal length estimated from the pairs is used only when it explains them better
    than half and twice its value by at least this (``shared_focal_contrast``); below it the
    pairs do not determine it (e.g. cameras fixating one point) and the prior is used."""
    fix_intrinsics: bool = False
    """Keep known intrinsics fixed in bundle adjustment (else they only initialise it)."""


def initial_intrinsics(
    sizes_hw: Int[Tensor, "N 2"], cfg: CameraConfig, focal: float | Tensor | None
) -> Float[Tensor, "N P"]:
    """Parameters in ``cfg.model``: the known ones, else ``focal`` with the principal point at
    the image centre and zero distortion."""
    n = sizes_hw.shape[0]
    if cfg.model not in MODEL_PARAMS or cfg.model == "BAL":
        raise SfMError(f"unsupported camera model {cfg.model!r}")
    if cfg.params is not None:
        p = torch.tensor(cfg.params, dtype=torch.float64)
        if p.numel() != len(MODEL_PARAMS[cfg.model]):
            raise SfMError(
                f"camera params {cfg.params} do not fit {cfg.model} {MODEL_PARAMS[cfg.model]}"
            )
        return p.expand(n, -1).clone()
    f = torch.as_tensor(focal, dtype=torch.float64).expand(n)
    h, w = sizes_hw[:, 0].double(), sizes_hw[:, 1].double()
    pin = torch.stack([f, w / 2, h / 2], -1)
    return convert_params("SIMPLE_PINHOLE", pin, cfg.model)


def _per_image_focals(
    fgeo, pairs: Tensor, sizes: Tensor, cfg: CameraConfig, log: Callable[[str], None]
) -> Tensor:
    """One initial focal length per image (cameras not shared, e.g. internet photos), from the
    verified fundamental matrices; the prior for every image when they leave it unobservable."""
    ok = fgeo.success
    side = sizes.max(1).values.double()
    pp = sizes.flip(1).double() / 2
    f, rho = estimate_per_image_focals(
        fgeo.matrix[ok], pairs[ok], pp, side, fgeo.num_inliers[ok].double(), cfg.focal_range
    )
    lo, hi = cfg.focal_range
    if rho < 1.05 * lo or rho > 0.95 * hi:
        log(f"focal lengths not observable from the pairs; using {cfg.focal_prior:g} x image size")
        return cfg.focal_prior * side
    log(
        f"per-image focal lengths from {int(ok.sum())} fundamental matrices: "
        f"{float(f.min()):.0f}-{float(f.max()):.0f} px (shared ratio {rho:.2f})"
    )
    return f


def _focals(model: str, params: Tensor) -> Tensor:
    from sceneforge.core.cameras import split_params

    fx, fy, *_ = split_params(model, params)
    return 0.5 * (fx + fy)
