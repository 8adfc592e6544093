"""Held-out evaluation helpers that separate colour (exposure, white balance) from geometry.

Photo collections such as NeRD's blowtorch change exposure and white balance between photos;
a field with per-image appearance renders held-out views with the *mean* appearance, so part
of its held-out error is a global colour shift, not wrong geometry or texture. Two standard
ways to measure without that shift:

* :func:`color_correct` - a per-image least-squares affine colour transform (3x3 matrix +
  bias) of the render onto the ground truth before the metric ("colour-corrected" PSNR, as
  reported by mip-NeRF 360 / Zip-NeRF; theirs is a per-channel quadratic fit, ours affine).
* :meth:`sceneforge.fields.trainer.Trainer.fit_eval_appearance` - NeRF-W's protocol: the
  held-out image's appearance is optimised on the left half of the image (field frozen) and
  the metric is computed on the right half only.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def fit_color_affine(
    pred: Float[Tensor, "H W 3"],
    target: Float[Tensor, "H W 3"],
    mask: Bool[Tensor, "H W"] | None = None,
) -> Float[Tensor, "4 3"]:
    """Least-squares ``M`` with ``[pred, 1] @ M ~= target`` over the (masked) pixels.

    Solved in float64; a (near) singular system (e.g. a constant render) falls back to the
    minimum-norm solution, so it never fails.
    """
    if pred.shape != target.shape or pred.shape[-1] != 3:
        raise ValueError(f"fit_color_affine: shapes {tuple(pred.shape)} and {tuple(target.shape)}")
    x, y = pred.reshape(-1, 3).double(), target.reshape(-1, 3).double()
    if mask is not None:
        m = mask.reshape(-1)
        if not bool(m.any()):
            raise ValueError("fit_color_affine: the mask selects no pixel")
        x, y = x[m], y[m]
    a = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    # normal equations with a tiny ridge: 4x4, stable for any image size
    ata = a.T @ a + 1e-8 * torch.eye(4, dtype=a.dtype)
    return torch.linalg.lstsq(ata, a.T @ y).solution


def apply_color_affine(
    img: Float[Tensor, "... 3"], affine: Float[Tensor, "4 3"]
) -> Float[Tensor, "... 3"]:
    """``[img, 1] @ affine`` clamped to ``[0, 1]``."""
    x = img.double()
    out = x @ affine[:3].to(x) + affine[3].to(x)
    return out.clamp(0.0, 1.0).to(img.dtype)


def color_correct(
    pred: Float[Tensor, "H W 3"],
    target: Float[Tensor, "H W 3"],
    mask: Bool[Tensor, "H W"] | None = None,
) -> Float[Tensor, "H W 3"]:
    """``pred`` after the affine colour transform that best maps it onto ``target`` (fitted on
    the ``mask`` pixels when given, applied to the whole image)."""
    return apply_color_affine(pred, fit_color_affine(pred, target, mask))


__all__ = ["apply_color_affine", "color_correct", "fit_color_affine"]
