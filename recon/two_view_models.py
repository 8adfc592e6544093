"""The RANSAC models of :mod:`sceneforge.recon.two_view` (essential, fundamental,
homography: minimal solver, error, local optimisation and final refinement), the helpers that
pad, compact and subsample the pairs' rows, and the torch thread setting of the stage."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sceneforge.recon.epipolar import (
    _sampson_terms,
    essential_from_pose,
    fundamental_8pt,
    pose_from_essential,
    refine_relative_pose,
    sampson_error,
)
from sceneforge.recon.five_point import cheiral_sample, five_point, seven_point
from sceneforge.recon.homography import homography_4pt, homography_dlt, homography_sampson_error
from sceneforge.recon.lo_ransac import (
    RansacModel,
    RansacOptions,
    lo_ransac,
    required_samples,
    select_masked,
)

if TYPE_CHECKING:
    from sceneforge.recon.two_view import TwoViewConfig


def compact_rows(x1: Tensor, x2: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Move valid correspondences to the front of each row; returns the permutation too."""
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    g = order[..., None].expand(-1, -1, 2)
    return torch.gather(x1, 1, g), torch.gather(x2, 1, g), torch.gather(valid, 1, order), order


def uncompact_rows(mask: Tensor, order: Tensor) -> Tensor:
    out = torch.zeros_like(mask)
    out.scatter_(1, order, mask)
    return out


def spread(mask: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Up to ``n`` masked entries per row, spread over the row by a fixed scrambled order
    (deterministic, no generator): indices and which are real."""
    M = mask.shape[1]
    order = torch.argsort((torch.arange(M, device=mask.device) * 2654435761) % 4294967296)
    return select_masked(mask, order.expand_as(mask), n)


def take(x: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, 2))


def robust_weights(err: Tensor, mask: Tensor, thr2: Tensor) -> Tensor:
    """Cauchy weights of the correspondences under ``thr2`` (zero elsewhere)."""
    inl = mask & (err < thr2[:, None])
    return torch.where(inl, 1.0 / (1.0 + err / thr2[:, None]), torch.zeros_like(err))


def five_point_cheiral(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """5-point solutions that can put their sample in front of both cameras."""
    batch = x1.shape[:-2]
    x1, x2 = x1.reshape(-1, 5, 2), x2.reshape(-1, 5, 2)
    E, real = five_point(x1, x2)
    n, k = real.nonzero(as_tuple=True)  # test the real solutions only (about half)
    front = cheiral_sample(E[n, k][:, None], x1[n], x2[n])[:, 0]
    real = real.clone()
    real[n, k] = front
    E = torch.where(real[..., None, None], E, torch.zeros_like(E))
    return E.reshape(*batch, 10, 3, 3), real.reshape(*batch, 10)


def cheiral_pose(E: Tensor, x1: Tensor, x2: Tensor, inl: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The pose of ``E`` that puts most of up to ``n`` of the inliers (spread over the row)
    in front of both cameras."""
    idx, ok = spread(inl, n)
    R, t, _ = pose_from_essential(E, take(x1, idx), take(x2, idx), ok)
    return R, t


def essential_model(cfg: TwoViewConfig) -> RansacModel:
    def fit(n: int, iters: int, passes: int):
        def run(E: Tensor, x1: Tensor, x2: Tensor, valid: Tensor, inl: Tensor, thr2: Tensor):
            R = t = None
            for p in range(passes):
                if p:  # re-estimate the inliers of the refined model
                    inl = valid & (sampson_error(essential_from_pose(R, t), x1, x2) < thr2[:, None])
                idx, ok = spread(inl, n)
                y1, y2 = take(x1, idx), take(x2, idx)
                if R is None:  # the pose of E by cheirality of (a spread subset of) its inliers
                    R, t = cheiral_pose(E, y1, y2, ok, cfg.cheirality_subset)
                R, t = refine_relative_pose(R, t, y1, y2, ok, thr2, iters)
            if R is None:  # no pass: E projected onto the essential manifold
                R, t, _ = pose_from_essential(E, x1, x2, inl)
            return essential_from_pose(R, t)

        return run

    return RansacModel(
        5,
        five_point_cheiral,
        sampson_error,
        fit(cfg.refine_subset, cfg.refine_iterations, cfg.refine_passes),
        fit(cfg.final_subset, cfg.final_iterations, cfg.final_passes),
    )


def fundamental_model(cfg: TwoViewConfig) -> RansacModel:
    def fit(iters: int):
        def run(Fm: Tensor, x1: Tensor, x2: Tensor, valid: Tensor, inl: Tensor, thr2: Tensor):
            for _ in range(iters):
                num, den = _sampson_terms(Fm, x1, x2)
                err = num * num / den.clamp(min=1e-300)
                w = robust_weights(err, inl, thr2) / den.clamp(min=1e-12)
                enough = (w > 0).sum(1) >= 8
                new = torch.nan_to_num(fundamental_8pt(x1, x2, w))
                Fm = torch.where(enough[:, None, None], new, Fm)
                inl = valid & (err < thr2[:, None])
            return Fm

        return run

    return RansacModel(
        7, seven_point, sampson_error, fit(cfg.refine_iterations), fit(cfg.final_iterations)
    )


def homography_model(cfg: TwoViewConfig) -> RansacModel:
    def fit(iters: int):
        def run(Hm: Tensor, x1: Tensor, x2: Tensor, valid: Tensor, inl: Tensor, thr2: Tensor):
            for _ in range(iters):
                err = homography_sampson_error(Hm, x1, x2)
                w = robust_weights(err, inl, thr2)
                enough = (w > 0).sum(1) >= 4
                new = torch.nan_to_num(homography_dlt(x1, x2, w + 1e-12 * inl))
                Hm = torch.where(enough[:, None, None], new, Hm)
                inl = valid & (err < thr2[:, None])
            return Hm

        return run

    return RansacModel(
        4,
        homography_4pt,
        homography_sampson_error,
        fit(cfg.h_refine_iterations),
        fit(2 * cfg.h_refine_iterations),
    )


def ransac_options(cfg: TwoViewConfig, max_hypotheses: int, min_hypotheses: int) -> RansacOptions:
    return RansacOptions(
        round_size=cfg.round_size,
        min_hypotheses=min(min_hypotheses, max_hypotheses),
        max_hypotheses=max_hypotheses,
        confidence=cfg.confidence,
        trials_factor=cfg.trials_factor,
        preemptive_subset=cfg.preemptive_subset,
        num_verified=cfg.num_verified,
        num_local=cfg.num_local,
        max_elements=cfg.max_elements,
    )


def homography_samples(inl: Tensor, valid: Tensor, cfg: TwoViewConfig) -> Tensor:
    """Homography samples needed to find, with ``cfg.confidence``, one that has
    ``h_inlier_ratio`` times the epipolar inliers (a weaker homography changes nothing)."""
    ratio = cfg.h_inlier_ratio * inl.sum(1).double() / valid.sum(1).clamp(min=1)
    need = required_samples(ratio, 4, cfg.confidence).clamp(max=1e9)
    return need.ceil().long()


def estimate_homography(
    x1: Tensor,
    x2: Tensor,
    valid: Tensor,
    inl: Tensor,
    thr2: Tensor,
    cfg: TwoViewConfig,
    opts: RansacOptions,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Homography of every pair by LO-RANSAC on up to ``h_subset`` of its correspondences
    (spread over the row), then its inliers among all of them."""
    idx, ok = spread(valid, cfg.h_subset)
    H, _, _ = lo_ransac(
        homography_model(cfg),
        take(x1, idx),
        take(x2, idx),
        ok,
        thr2,
        opts,
        gen,
        homography_samples(inl, valid, cfg),
    )
    return H, valid & (homography_sampson_error(H, x1, x2) < thr2[:, None])


def pixel_normalisation(x1: Tensor, x2: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per pair, a similarity for each image with a common scale (centroids to 0, mean
    distance sqrt(2)): ``T1, T2`` and the scale (Sampson distances scale by it)."""
    w = valid.double()
    n = w.sum(1).clamp(min=1)
    mu1 = (x1 * w[..., None]).sum(1) / n[:, None]
    mu2 = (x2 * w[..., None]).sum(1) / n[:, None]
    d = ((x1 - mu1[:, None]).norm(dim=-1) + (x2 - mu2[:, None]).norm(dim=-1)) * w
    s = math.sqrt(2.0) / (0.5 * d.sum(1) / n).clamp(min=1e-12)
    Ts = []
    for mu in (mu1, mu2):
        T = torch.zeros(x1.shape[0], 3, 3, dtype=x1.dtype, device=x1.device)
        T[:, 0, 0] = s
        T[:, 1, 1] = s
        T[:, :2, 2] = -s[:, None] * mu
        T[:, 2, 2] = 1.0
        Ts.append(T)
    return Ts[0], Ts[1], s


def unit_frobenius(M: Tensor) -> Tensor:
    return M / M.flatten(-2).norm(dim=-1).clamp(min=1e-300)[..., None, None]
