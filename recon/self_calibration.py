"""Focal lengths from fundamental matrices (self-calibration): one focal shared by every
image, its degeneracy test, and one focal per image.

For a fundamental matrix ``F`` between images with intrinsics ``K1, K2`` the essential matrix
``E = K2^T F K1`` has two equal singular values and a zero one; a candidate focal is scored by
the weighted median over the pairs of ``(s1 - s2) / (s1 + s2)`` of the implied ``E``, and the
best candidate on a log-spaced grid wins, refined on a finer grid around it.
Orbits whose cameras all fixate one point make this degenerate (every focal fits about as
well): :func:`shared_focal_contrast` measures it from the data.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor


def _shared_focal_cost(
    F: Float[Tensor, "P 3 3"], principal_point: Float[Tensor, "2"], w: Tensor, fs: Tensor
) -> Tensor:
    """Weighted median over the pairs of ``(s1 - s2) / (s1 + s2)`` of ``E = K^T F K``, for each
    candidate focal length in ``fs`` (0 = a perfect essential matrix)."""
    cx, cy = float(principal_point[0]), float(principal_point[1])
    K = torch.zeros(fs.shape[0], 3, 3, dtype=torch.float64)
    K[:, 0, 0] = fs
    K[:, 1, 1] = fs
    K[:, 0, 2] = cx
    K[:, 1, 2] = cy
    K[:, 2, 2] = 1.0
    E = K[:, None].transpose(-1, -2) @ F.double()[None] @ K[:, None]
    s = torch.linalg.svdvals(E)
    r = (s[..., 0] - s[..., 1]) / (s[..., 0] + s[..., 1]).clamp(min=1e-300)  # (C, P)
    order = r.argsort(dim=1)
    cw = torch.cumsum(w[order], dim=1)
    med = (cw >= 0.5 * w.sum()).double().argmax(dim=1)
    return r.gather(1, order.gather(1, med[:, None]))[:, 0]


def estimate_shared_focal(
    F: Float[Tensor, "P 3 3"],
    principal_point: Float[Tensor, "2"],
    weights: Float[Tensor, " P"] | None = None,
    f_range: tuple[float, float] = (100.0, 10000.0),
    num_candidates: int = 200,
) -> float:
    """Focal length (pixels) shared by all images, from fundamental matrices.

    For the right ``K``, ``E = K^T F K`` has two equal singular values. Candidates on a log grid
    are scored by the weighted median of ``(s1 - s2) / (s1 + s2)`` over the pairs, then the best
    is refined on a finer grid around it. Robust to a minority of bad pairs. Whether the pairs
    determine the focal length at all: :func:`shared_focal_contrast`.
    """
    w = torch.ones(F.shape[0], dtype=torch.float64) if weights is None else weights.double()
    lo, hi = math.log(f_range[0]), math.log(f_range[1])
    fs = torch.exp(torch.linspace(lo, hi, num_candidates, dtype=torch.float64))
    best = float(fs[_shared_focal_cost(F, principal_point, w, fs).argmin()])
    step = (hi - lo) / (num_candidates - 1)
    fs = torch.exp(
        torch.linspace(math.log(best) - step, math.log(best) + step, 41, dtype=torch.float64)
    )
    return float(fs[_shared_focal_cost(F, principal_point, w, fs).argmin()])


def shared_focal_contrast(
    F: Float[Tensor, "P 3 3"],
    principal_point: Float[Tensor, "2"],
    focal: float,
    weights: Float[Tensor, " P"] | None = None,
    factor: float = 2.0,
) -> float:
    """How much better ``focal`` explains the pairs than ``focal / factor`` and ``focal * factor``
    (the smaller of their costs minus its cost, cost as in :func:`estimate_shared_focal`).

    Near 0 when the pairs cannot tell focal lengths apart: cameras fixating one point (every
    optical axis through one point, e.g. an orbit around an object) are the known degeneracy
    of focal length from fundamental matrices; the minimum found there is numerical noise, so
    it would differ from machine to machine.
    """
    w = torch.ones(F.shape[0], dtype=torch.float64) if weights is None else weights.double()
    fs = torch.tensor([focal, focal / factor, focal * factor], dtype=torch.float64)
    c = _shared_focal_cost(F, principal_point, w, fs)
    return float(torch.minimum(c[1], c[2]) - c[0])


def estimate_per_image_focals(
    F: Float[Tensor, "P 3 3"],
    pairs: Int[Tensor, "P 2"],
    principal_points: Float[Tensor, "N 2"],
    sizes: Float[Tensor, " N"],
    weights: Float[Tensor, " P"] | None = None,
    ratio_range: tuple[float, float] = (0.4, 4.0),
    num_candidates: int = 80,
    sweeps: int = 5,
    prior_weight: float = 0.01,
) -> tuple[Float[Tensor, " N"], float]:
    """One focal length per image (pixels) from the fundamental matrices of image pairs.

    ``F[p]`` maps image ``pairs[p, 0]`` to ``pairs[p, 1]`` (``x2^T F x1 = 0``). Focal lengths
    are searched as ratios of each image's largest side (``sizes``) on a log grid: first one
    ratio for all images, then per image by coordinate descent (each image's ratio on the grid,
    the others fixed), scoring the weighted mean of the truncated essential-matrix residual
    ``(s1 - s2) / (s1 + s2)`` of ``K2^T F K1`` over the image's pairs, plus a weak pull
    (``prior_weight`` per unit of log ratio) towards the shared ratio for images whose pairs
    leave their focal length unobservable. Returns the focal lengths and the shared ratio
    (at an edge of ``ratio_range`` when the focal length is not observable at all).
    """
    F = F.double()
    pp = principal_points.double()
    size = sizes.double()
    w = torch.ones(F.shape[0], dtype=torch.float64) if weights is None else weights.double()
    i1, i2 = pairs[:, 0], pairs[:, 1]

    def K(f: Tensor, img: Tensor) -> Tensor:
        out = torch.zeros(*f.shape, 3, 3, dtype=torch.float64)
        out[..., 0, 0] = f
        out[..., 1, 1] = f
        out[..., 0, 2] = pp[img, 0].expand(f.shape)
        out[..., 1, 2] = pp[img, 1].expand(f.shape)
        out[..., 2, 2] = 1.0
        return out

    def resid(f1: Tensor, f2: Tensor, a: Tensor, b: Tensor, Fm: Tensor) -> Tensor:
        s = torch.linalg.svdvals(K(f2, b).transpose(-1, -2) @ Fm @ K(f1, a))
        r = (s[..., 0] - s[..., 1]) / (s[..., 0] + s[..., 1]).clamp(min=1e-300)
        return r.clamp(max=0.3)

    ratios = torch.exp(
        torch.linspace(
            math.log(ratio_range[0]), math.log(ratio_range[1]), num_candidates, dtype=torch.float64
        )
    )
    r = resid(ratios[:, None] * size[i1], ratios[:, None] * size[i2], i1, i2, F[None])
    rho0 = float(ratios[((r * w).sum(1) / w.sum()).argmin()])
    f = rho0 * size
    if rho0 <= ratios[1] or rho0 >= ratios[-2]:
        return f, rho0
    prior = prior_weight * torch.log(ratios / rho0).abs()
    for _ in range(sweeps):
        for i in range(size.numel()):
            sel = ((i1 == i) | (i2 == i)).nonzero()[:, 0]
            if sel.numel() == 0:
                continue
            fc = ratios[:, None] * size[i]
            f1 = torch.where(i1[sel] == i, fc, f[i1[sel]])
            f2 = torch.where(i2[sel] == i, fc, f[i2[sel]])
            r = resid(f1, f2, i1[sel], i2[sel], F[sel][None])
            cost = (r * w[sel]).sum(1) / w[sel].sum() + prior
            f[i] = fc[cost.argmin(), 0]
    return f, rho0


__all__ = ["estimate_per_image_focals", "estimate_shared_focal", "shared_focal_contrast"]
