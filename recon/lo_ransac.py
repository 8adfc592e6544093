"""Batched LO-RANSAC over many image pairs for 3x3 two-view models (E, F, H).

Every pair is a row of a padded batch whose valid correspondences come first (see
``two_view_models.compact_rows``). The loop runs in rounds; each round, for every still active pair:

1. draw ``round_size`` minimal samples (one ``(P, round_size, k)`` draw for *all* pairs, so a
   pair's samples depend only on the seed, its row and its number of correspondences);
2. solve them all in one call of the minimal solver (up to ``S`` solutions each);
3. score every real solution by MSAC (truncated squared error) on a fixed random subset of the
   pair's correspondences (preemptive scoring: ``P x hypotheses x subset`` instead of
   ``x M``; in float32, as it only ranks), and verify the ``num_verified`` best of the round
   on all correspondences in the input dtype (their inlier masks are kept for the LO step);
4. local optimisation (LO): the ``num_local`` best verified hypotheses of the round that beat
   the pair's best so far are refitted on their inliers by the model's non-minimal
   ``local_opt``; the best of them (refitted or not) becomes the pair's best;
5. adaptive termination per pair: with inlier ratio ``e`` of the best model, ``k``-point
   samples need ``log(1 - confidence) / log(1 - e^k)`` draws; a pair stops once it drew that
   many (at least ``min_hypotheses``, at most ``max_hypotheses``).

The best model of every pair is finally refitted once more on its inliers (the model's
``refine``), and kept if its MSAC score does not get worse. Everything is deterministic: the
random numbers come from one seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

Solver = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(x1 (N, k, 2), x2) -> (models (N, S, 3, 3), real (N, S))``."""
ErrorFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(models (..., 3, 3), x1 (..., M, 2), x2) -> squared errors (..., M)``."""
LocalOpt = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``(models (A, 3, 3), x1 (A, M, 2), x2, valid (A, M), inliers (A, M), thr2 (A,))
-> refitted models (A, 3, 3)``."""


@dataclass(frozen=True)
class RansacModel:
    """A model kind: its minimal solver, error and non-minimal refit."""

    sample_size: int
    """Correspondences in a minimal sample."""
    solve: Solver
    """Minimal solver."""
    error: ErrorFn
    """Squared error of correspondences (same units as the threshold)."""
    local_opt: LocalOpt
    """Non-minimal refit on the inliers of a new best model (LO step)."""
    refine: LocalOpt
    """Final (more thorough) refit of the best model on its inliers."""


@dataclass(frozen=True)
class RansacOptions:
    """Schedule of :func:`lo_ransac` (filled from ``TwoViewConfig``)."""

    round_size: int = 32
    """Minimal samples drawn per pair and round."""
    min_hypotheses: int = 64
    """Samples drawn per pair at least."""
    max_hypotheses: int = 512
    """Samples drawn per pair at most."""
    confidence: float = 0.999
    """Probability of having drawn one all-inlier sample (adaptive termination)."""
    trials_factor: float = 1.0
    """Factor on the number of samples that adaptive termination asks for (noisy all-inlier
    samples do not always lead to the best model)."""
    preemptive_subset: int = 256
    """Correspondences per pair on which every hypothesis is scored."""
    num_verified: int = 4
    """Best hypotheses per pair and round scored on all correspondences."""
    num_local: int = 1
    """Best verified hypotheses per pair and round that get a local optimisation (those that
    beat the pair's best so far)."""
    max_elements: int = 262_144
    """Upper bound on hypotheses x correspondences scored at once (memory and cache)."""


def msac_score(err: Tensor, valid: Tensor, thr2: Tensor) -> Tensor:
    """Sum of squared errors truncated at ``thr2`` over the valid correspondences (lower is
    better); non-finite errors count as outliers."""
    err = torch.nan_to_num(err, nan=math.inf)
    return torch.where(valid, torch.minimum(err, thr2), torch.zeros_like(err)).sum(-1)


def random_order(valid: Bool[Tensor, "P M"], gen: torch.Generator) -> Int[Tensor, "P M"]:
    """A random permutation of every row with its valid entries first."""
    keys = torch.rand(valid.shape, generator=gen, dtype=torch.float64).to(valid.device)
    return torch.argsort(keys + 2.0 * (~valid).double(), dim=1)


def select_masked(
    mask: Bool[Tensor, "P M"], order: Int[Tensor, "P M"], k: int
) -> tuple[Int[Tensor, "P k"], Bool[Tensor, "P k"]]:
    """Up to ``k`` entries of each row where ``mask`` holds, in the random ``order``; returns
    their indices and which of them are real (rows with fewer than ``k``)."""
    k = min(k, mask.shape[1])
    m = torch.gather(mask, 1, order)
    first = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, :k]
    return torch.gather(order, 1, first), torch.gather(m, 1, first)


def _gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """``x (P, M, 2)`` at ``idx (P, *I)`` -> ``(P, *I, 2)``."""
    flat = idx.flatten(1)
    out = torch.gather(x, 1, flat[..., None].expand(-1, -1, 2))
    return out.reshape(*idx.shape, 2)


def required_samples(inlier_ratio: Tensor, k: int, confidence: float) -> Tensor:
    """Draws needed for an all-inlier ``k``-sample with probability ``confidence``."""
    e = inlier_ratio.clamp(1e-6, 1.0 - 1e-12) ** k
    return math.log(1.0 - confidence) / torch.log1p(-e)


def lo_ransac(
    model: RansacModel,
    x1: Float[Tensor, "P M 2"],
    x2: Float[Tensor, "P M 2"],
    valid: Bool[Tensor, "P M"],
    thr2: Float[Tensor, " P"],
    opts: RansacOptions,
    gen: torch.Generator,
    max_samples: Int[Tensor, " P"] | None = None,
) -> tuple[Float[Tensor, "P 3 3"], Bool[Tensor, "P M"], Float[Tensor, " P"]]:
    """Best model of every pair, its inlier mask and its MSAC score.

    ``valid`` must be compacted (valid correspondences first in every row). ``max_samples``
    optionally lowers ``opts.max_hypotheses`` per pair.
    """
    P, M = valid.shape
    dt, dev = x1.dtype, x1.device
    if P == 0 or M == 0:
        return (
            torch.zeros(P, 3, 3, dtype=dt, device=dev),
            valid.clone(),
            x1.new_full((P,), math.inf),
        )
    k = model.sample_size
    counts = valid.sum(1)
    order = random_order(valid, gen)
    S = min(M, opts.preemptive_subset)
    sub, sub_valid = order[:, :S], torch.gather(valid, 1, order[:, :S])
    x1s, x2s = _gather_points(x1, sub), _gather_points(x2, sub)

    # Preemptive scores only rank hypotheses (the best few are verified in the input dtype):
    # float32 halves their cost.
    x1s32, x2s32, thr2_32 = x1s.float(), x2s.float(), thr2.float()

    best = torch.zeros(P, 3, 3, dtype=dt, device=dev)
    best_score = torch.full((P,), math.inf, dtype=dt, device=dev)
    best_mask = torch.zeros(P, M, dtype=torch.bool, device=dev)
    drawn = torch.zeros(P, dtype=torch.long, device=dev)
    possible = counts >= k
    active = possible.clone()
    cap = torch.full((P,), opts.max_hypotheses, dtype=torch.long, device=dev)
    if max_samples is not None:
        cap = torch.minimum(cap, max_samples.to(cap))
    H = opts.round_size
    while bool(active.any()):
        u = torch.rand(P, H, k, generator=gen, dtype=torch.float64).to(dev)
        a = active.nonzero()[:, 0]
        cnt = counts[a]
        idx = torch.minimum((u[a] * cnt[:, None, None]).long(), (cnt[:, None, None] - 1))
        Ms, real = model.solve(_gather_points(x1[a], idx), _gather_points(x2[a], idx))
        A = a.shape[0]
        Ms, real = Ms.reshape(A, -1, 3, 3), real.reshape(A, -1)
        # Keep the real solutions only (fewest columns covering every pair).
        keep = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
        C = max(1, int(real.sum(1).max()))
        keep = keep[:, :C]
        real = torch.gather(real, 1, keep)
        Ms = torch.gather(Ms, 1, keep[..., None, None].expand(-1, -1, 3, 3))
        Ms32 = Ms.float()
        # Preemptive scoring on the subset, in chunks of pairs.
        kv = min(C, opts.num_verified)
        cand = torch.zeros(A, kv, 3, 3, dtype=dt, device=dev)
        cand_ok = torch.zeros(A, kv, dtype=torch.bool, device=dev)
        chunk = max(1, opts.max_elements // max(1, C * S))
        for s in range(0, A, chunk):
            sl = slice(s, min(A, s + chunk))
            aa = a[sl]
            err = model.error(Ms32[sl], x1s32[aa, None], x2s32[aa, None])
            sc = msac_score(err, sub_valid[aa, None], thr2_32[aa, None, None])
            sc = torch.where(real[sl], sc, torch.full_like(sc, math.inf))
            top = sc.topk(kv, dim=1, largest=False)
            cand[sl] = torch.gather(Ms[sl], 1, top.indices[..., None, None].expand(-1, -1, 3, 3))
            cand_ok[sl] = torch.isfinite(top.values)
        # Verification of the round's best few on all correspondences (their inlier masks are
        # kept for the local optimisation).
        vs = torch.zeros(A, kv, dtype=dt, device=dev)
        vmask = torch.zeros(A, kv, M, dtype=torch.bool, device=dev)
        chunk = max(1, opts.max_elements // max(1, kv * M))
        for s in range(0, A, chunk):
            sl = slice(s, min(A, s + chunk))
            aa = a[sl]
            err = model.error(cand[sl], x1[aa, None], x2[aa, None])
            sc = msac_score(err, valid[aa, None], thr2[aa, None, None])
            vs[sl] = torch.where(cand_ok[sl], sc, torch.full_like(sc, math.inf))
            vmask[sl] = valid[aa, None] & (err < thr2[aa, None, None])
        # Local optimisation of the best ``num_local`` verified candidates that beat the
        # pair's best so far, all at once; the best result (refined or not) is kept.
        nl = min(kv, opts.num_local)
        top = vs.topk(nl, dim=1, largest=False)
        cs, ci = top.values, top.indices
        cm = torch.gather(cand, 1, ci[..., None, None].expand(-1, -1, 3, 3))
        better = cs < best_score[a, None]
        pi, ki = better.nonzero(as_tuple=True)
        if pi.numel():
            ii = a[pi]
            Mi, si = cm[pi, ki], cs[pi, ki]
            inl = vmask[pi, ci[pi, ki]]
            Mo = model.local_opt(Mi, x1[ii], x2[ii], valid[ii], inl, thr2[ii])
            err = model.error(Mo, x1[ii], x2[ii])
            so = msac_score(err, valid[ii], thr2[ii, None])
            take = so < si
            Mi = torch.where(take[:, None, None], Mo, Mi)
            si = torch.where(take, so, si)
            inl = torch.where(take[:, None], valid[ii] & (err < thr2[ii, None]), inl)
            # the best of every pair's refined candidates
            score = torch.full((A, nl), math.inf, dtype=dt, device=dev)
            score[pi, ki] = si
            res = torch.zeros(A, nl, 3, 3, dtype=dt, device=dev)
            res[pi, ki] = Mi
            res_mask = torch.zeros(A, nl, M, dtype=torch.bool, device=dev)
            res_mask[pi, ki] = inl
            b = score.argmin(1)
            ar = torch.arange(A, device=dev)
            bs, bm, bk = score[ar, b], res[ar, b], res_mask[ar, b]
            up = bs < best_score[a]
            ii = a[up]
            best[ii], best_score[ii], best_mask[ii] = bm[up], bs[up], bk[up]
        drawn[a] += H
        best_inl = best_mask.sum(1)
        need = required_samples(best_inl.double() / counts.clamp(min=1), k, opts.confidence)
        need = (need * opts.trials_factor).clamp(min=opts.min_hypotheses)
        active = possible & (drawn < need) & (drawn < cap)

    # Final refinement of every pair's best model on its inliers.
    ok = possible & torch.isfinite(best_score)
    ii = ok.nonzero()[:, 0]
    if ii.numel():
        Mi = best[ii]
        Mo = model.refine(Mi, x1[ii], x2[ii], valid[ii], best_mask[ii], thr2[ii])
        err = model.error(Mo, x1[ii], x2[ii])
        so = msac_score(err, valid[ii], thr2[ii, None])
        take = so <= best_score[ii]
        best[ii] = torch.where(take[:, None, None], Mo, Mi)
        best_score[ii] = torch.where(take, so, best_score[ii])
        inl = valid[ii] & (err < thr2[ii, None])
        best_mask[ii] = torch.where(take[:, None], inl, best_mask[ii])
    inliers = best_mask & ok[:, None]
    return best, inliers, best_score
