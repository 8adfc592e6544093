"""The photometric loss of a training batch: mean squared error (NeRF's), or 3DGS's
``(1 - lambda) L1 + lambda (1 - SSIM)`` on batches of whole patches / views (SSIM needs image
neighbourhoods; 3DGS and gsplat use ``lambda = 0.2``). Pixels outside ``valid`` do not count:
the L1 and squared errors are averaged over valid pixels and the SSIM map over the valid pixels
of each patch."""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.metrics import ssim_map
from sceneforge.fields.datasets import PatchLayout

Photometric = Literal["mse", "l1-ssim"]


def masked_mean(x: Float[Tensor, "B C"], valid: Bool[Tensor, " B"] | None) -> Tensor:
    """Mean of ``x`` over the rows where ``valid`` (all rows without it; 0 when none is)."""
    if valid is None:
        return x.mean()
    v = valid.to(x.device)
    return (x * v[:, None]).sum() / (x.shape[1] * v.sum()).clamp(min=1)


def patch_ssim(
    pred: Float[Tensor, "B 3"],
    target: Float[Tensor, "B 3"],
    layout: PatchLayout,
    valid: Bool[Tensor, " B"] | None,
) -> Tensor:
    """Mean SSIM (differentiable) of the batch's patches over their valid pixels."""
    if min(layout.height, layout.width) < 6:
        raise ValueError(
            f"the l1-ssim loss needs patches of at least 6x6 pixels (SSIM's 11x11 window), got "
            f"{layout.height}x{layout.width}: raise --trainer.patch-size or use mse"
        )
    shape = (layout.view.shape[0], layout.height, layout.width, 3)
    p, t = pred.reshape(shape), target.reshape(shape)
    maps = [ssim_map(p[k], t[k], dtype=torch.float32) for k in range(shape[0])]
    maps = torch.stack(maps).reshape(-1)
    return masked_mean(maps[:, None], valid)


def distortion_loss(
    weights: Float[Tensor, "R S"], edges: Float[Tensor, "R S1"]
) -> Float[Tensor, " R"]:
    """mip-NeRF 360's distortion loss per ray, in O(S): ``sum_ij w_i w_j |m_i - m_j| +
    1/3 sum_i w_i^2 (e_(i+1) - e_i)`` for interval midpoints ``m`` and sorted ``edges`` (in a
    normalised ray coordinate, ``S + 1`` per ray); pulls each ray's weight into one compact
    interval (fewer floaters and fog)."""
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    width = edges[:, 1:] - edges[:, :-1]
    wm = weights * mid
    w_before = torch.cumsum(weights, -1) - weights
    wm_before = torch.cumsum(wm, -1) - wm
    inter = 2.0 * (weights * (mid * w_before - wm_before)).sum(-1)
    intra = (weights.pow(2) * width).sum(-1) / 3.0
    return inter + intra


def plane_tv(plane: Float[Tensor, "P C H W"]) -> Tensor:
    """Mean squared difference between neighbouring texels of feature planes (K-Planes'
    smoothness prior on tri-plane features)."""
    return (plane[..., 1:, :] - plane[..., :-1, :]).pow(2).mean() + (
        plane[..., :, 1:] - plane[..., :, :-1]
    ).pow(2).mean()


def photometric_loss(
    kind: Photometric,
    pred: Float[Tensor, "B 3"],
    target: Float[Tensor, "B 3"],
    valid: Bool[Tensor, " B"] | None,
    layout: PatchLayout | None,
    ssim_lambda: float,
) -> tuple[Tensor, Tensor]:
    """``(loss, mse)`` of a batch (``mse`` over valid pixels, for the PSNR in the log)."""
    err = pred - target
    mse = masked_mean(err.pow(2), valid)
    if kind == "mse":
        return mse, mse
    if kind != "l1-ssim":
        raise ValueError(f"photometric loss must be 'mse' or 'l1-ssim', got {kind!r}")
    if layout is None:
        raise ValueError(
            "the l1-ssim loss needs batches of patches or whole views (SSIM compares image "
            "neighbourhoods): use --trainer.batch patches / images, or --trainer.photometric mse"
        )
    l1 = masked_mean(err.abs(), valid)
    loss = (1.0 - ssim_lambda) * l1
    if ssim_lambda > 0:
        loss = loss + ssim_lambda * (1.0 - patch_ssim(pred, target, layout, valid))
    return loss, mse


__all__ = [
    "Photometric",
    "distortion_loss",
    "masked_mean",
    "plane_tv",
    "patch_ssim",
    "photometric_loss",
]
