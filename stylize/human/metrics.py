"""3D pose metrics (issue 20): MPJPE and PA-MPJPE, pure tensor functions.

Both take predicted and ground-truth joints (or 3D keypoints) ``[F, K, 3]`` in metres and
return the per-frame mean per-joint position error ``[F]`` in millimetres (``unit_mm``
converts other units):

- :func:`mpjpe`: after subtracting each skeleton's root (a joint index, or the mean of several
  indices, e.g. both hips when the keypoint set has no pelvis; ``root=None``: no alignment).
- :func:`pa_mpjpe`: after the per-frame similarity (scale, rotation, translation) that best
  aligns the prediction to the ground truth in the least-squares sense (Umeyama's closed form,
  :func:`procrustes_align`).

Average the per-frame values over frames (``.mean()``) for the usual single figure.

:func:`person_psnr` is the image metric of the 4D human benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.metrics import dilate_mask, psnr


def _check(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.dim() != 3 or pred.shape[-1] != 3:
        raise ValueError(
            f"pred and gt must both be [F, K, 3], got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )


def _root(points: Tensor, root: int | Sequence[int]) -> Tensor:
    idx = [root] if isinstance(root, int) else list(root)
    return points[:, idx].mean(1, keepdim=True)


def mpjpe(
    pred: Float[Tensor, "F K 3"],
    gt: Float[Tensor, "F K 3"],
    root: int | Sequence[int] | None = 0,
    unit_mm: float = 1000.0,
) -> Float[Tensor, " F"]:
    """Root-aligned mean per-joint position error per frame, in mm (see the module docstring)."""
    _check(pred, gt)
    if root is not None:
        pred = pred - _root(pred, root)
        gt = gt - _root(gt, root)
    return (pred - gt).norm(dim=-1).mean(-1) * unit_mm


def procrustes_align(
    pred: Float[Tensor, "F K 3"], gt: Float[Tensor, "F K 3"]
) -> Float[Tensor, "F K 3"]:
    """``pred`` mapped by the per-frame similarity ``s R x + t`` (``det R = +1``) minimising
    the squared distance to ``gt`` (Umeyama 1991)."""
    _check(pred, gt)
    mu_p, mu_g = pred.mean(1, keepdim=True), gt.mean(1, keepdim=True)
    p, g = pred - mu_p, gt - mu_g
    var_p = (p**2).sum((1, 2)).clamp_min(torch.finfo(pred.dtype).tiny)
    cov = g.transpose(1, 2) @ p  # [F, 3, 3] = sum_k g_k p_k^T
    u, sv, vt = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vt))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    d = torch.ones_like(sv)
    d[:, 2] = sign
    rot = u @ torch.diag_embed(d) @ vt
    scale = (sv * d).sum(-1) / var_p
    return scale[:, None, None] * p @ rot.transpose(1, 2) + mu_g


def pa_mpjpe(
    pred: Float[Tensor, "F K 3"], gt: Float[Tensor, "F K 3"], unit_mm: float = 1000.0
) -> Float[Tensor, " F"]:
    """Procrustes-aligned (similarity, per frame) mean per-joint position error, in mm."""
    return mpjpe(procrustes_align(pred, gt), gt, root=None, unit_mm=unit_mm)


def person_psnr(
    pred: Float[Tensor, "H W 3"],
    target: Float[Tensor, "H W 3"],
    person: Bool[Tensor, "H W"],
    dilate: int = 4,
) -> float:
    """PSNR (dB, images in [0, 1]) over the pixels of the ground-truth ``person`` mask dilated
    by ``dilate`` pixels (the issue's person PSNR: the person and a thin band round them, so a
    render that misses the silhouette is penalised)."""
    return psnr(pred, target, dilate_mask(person, dilate))
