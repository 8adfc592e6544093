"""Ceres-style trust-region Levenberg-Marquardt loop on the Schur-eliminated system."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from sceneforge.recon.ba.problem import BAOptions, BAProblem, BASummary
from sceneforge.recon.ba.residuals import robust_rho
from sceneforge.recon.ba.schur import (
    Linearisation,
    free_mask_c,
    gather_vector,
    linearise,
    residuals,
    schur_solve,
)
from sceneforge.recon.ba.structure import Structure, build_structure


def _cost_terms(problem: BAProblem, st: Structure, params, options: BAOptions) -> Tensor:
    """Per-observation ``0.5 * rho(|r|^2)``."""
    r = residuals(problem, st, params)
    return 0.5 * robust_rho(options.loss, (r * r).sum(-1), options.loss_scale)[0]


def _apply_step(params, st: Structure, xc: Tensor, xp: Tensor):
    rot, trans, intr, pts = params
    pose = xc[: 6 * st.nc].reshape(st.nc, 6)
    new_intr = intr
    if st.ni:
        new_intr = intr + xc[6 * st.nc :].reshape(st.ni, st.P)
    return rot + pose[:, :3], trans + pose[:, 3:], new_intr, pts + xp


def _grad_max(lin: Linearisation, st: Structure) -> float:
    """Max-norm of the gradient on the free parameters."""
    g = float(lin.gc.abs().max())
    return max(g, float(lin.gp.abs().max())) if st.free_points else g


def _flat_norm(params) -> float:
    return math.sqrt(sum(float((p * p).sum()) for p in params))


@contextmanager
def solver_threads(n: int | None):
    """torch threads ``n`` inside the block (None: :func:`available_cores`, see
    :attr:`BAOptions.num_threads`), the previous count after."""
    from sceneforge.recon.features import available_cores

    old = torch.get_num_threads()
    torch.set_num_threads(n if n is not None else available_cores())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def solve(
    problem: BAProblem, options: BAOptions, pad_rows: np.ndarray | None = None
) -> tuple[tuple[Tensor, ...], BASummary, Structure]:
    """Run LM on a detached problem; returns the optimised parameters and summary."""
    t0 = time.perf_counter()
    st = build_structure(problem, options, pad_rows)
    intr0 = problem.intrinsics
    if st.ni == 1 and intr0.shape[0] > 1:
        if not bool((intr0 == intr0[:1]).all()):
            raise ValueError("intrinsics='shared' needs identical intrinsics on every camera")
        intr0 = intr0[:1]
    params = (problem.rotation, problem.translation, intr0.clone(), problem.points)
    terms = _cost_terms(problem, st, params, options)
    cost = float(terms.sum())
    initial_cost = cost
    costs, radii = [cost], []
    radius = options.initial_trust_region_radius
    decrease_factor = 2.0
    scale_c = scale_p = None
    n_ok = n_bad = 0
    it = 0
    termination, message = "NO_CONVERGENCE", "maximum number of iterations reached"
    lin = linearise(problem, st, params, options)
    if not math.isfinite(cost):
        termination, message = "FAILURE", "initial cost is not finite"
        it = options.max_iterations  # skip the loop
    free_c = free_mask_c(st)
    while it < options.max_iterations:
        gmax = _grad_max(lin, st)
        if gmax <= options.gradient_tolerance:
            termination, message = "CONVERGENCE", "gradient tolerance reached"
            break
        diag_c = lin.U.diagonal() * free_c
        diag_p = lin.V.diagonal(dim1=1, dim2=2)
        if scale_c is None:
            scale_c = (
                1.0 / (1.0 + diag_c.sqrt()) if options.jacobi_scaling else torch.ones_like(diag_c)
            )
            scale_p = (
                1.0 / (1.0 + diag_p.sqrt()) if options.jacobi_scaling else torch.ones_like(diag_p)
            )
        lo, hi = options.min_lm_diagonal, options.max_lm_diagonal
        damp_c = (diag_c * scale_c**2).clamp(lo, hi) / scale_c**2 / radius
        damp_p = (diag_p * scale_p**2).clamp(lo, hi) / scale_p**2 / radius
        it += 1
        sol = schur_solve(st, lin, -lin.gc, -lin.gp, damp_c, damp_p)
        if sol is None:
            n_bad += 1
            radius /= decrease_factor
            decrease_factor *= 2.0
            costs.append(cost)
            radii.append(radius)
            if radius < options.min_trust_region_radius:
                termination, message = "CONVERGENCE", "trust region radius below minimum"
                break
            continue
        xc, xp = sol
        step_norm = math.sqrt(float((xc * xc).sum()) + float((xp * xp).sum()))
        if step_norm <= options.parameter_tolerance * (
            _flat_norm(params) + options.parameter_tolerance
        ):
            termination, message = "CONVERGENCE", "parameter tolerance reached"
            costs.append(cost)
            radii.append(radius)
            break
        # Predicted decrease of the undamped quadratic model.
        jd = torch.bmm(lin.jc, gather_vector(st, xc)[:, :, None])[:, :, 0]
        jd.add_(torch.bmm(lin.jp, xp.index_select(0, st.pt)[:, :, None])[:, :, 0])
        model_decrease = -float((jd * (lin.r + 0.5 * jd)).sum())
        cand = _apply_step(params, st, xc, xp)
        new_terms = _cost_terms(problem, st, cand, options)
        new_cost = float(new_terms.sum())
        # Summing per-observation differences keeps the change accurate near the optimum.
        change = float((terms - new_terms).sum())
        rho = change / model_decrease if model_decrease > 0 else -1.0
        cand_lin = None
        if (
            math.isfinite(new_cost)
            and rho <= options.min_relative_decrease
            and abs(change) <= 1e-12 * cost
            and abs(model_decrease) <= 1e-12 * cost
        ):
            # Changes below rounding: the cost cannot rank the step, the gradient can.
            cand_lin = linearise(problem, st, cand, options)
            if _grad_max(cand_lin, st) < gmax:
                rho = 1.0
            else:
                cand_lin = None
        if math.isfinite(new_cost) and rho > options.min_relative_decrease:
            params, terms = cand, new_terms
            radius = min(
                options.max_trust_region_radius,
                radius / max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3),
            )
            decrease_factor = 2.0
            n_ok += 1
            old_cost, cost = cost, new_cost
            costs.append(cost)
            radii.append(radius)
            if options.verbose:
                print(f"iter {it:3d} cost {cost:.9e} rho {rho:.3f} radius {radius:.2e}")
            if abs(change) <= options.function_tolerance * old_cost and cand_lin is None:
                termination, message = "CONVERGENCE", "function tolerance reached"
                break
            lin = cand_lin if cand_lin is not None else linearise(problem, st, params, options)
        else:
            n_bad += 1
            radius /= decrease_factor
            decrease_factor *= 2.0
            costs.append(cost)
            radii.append(radius)
            if options.verbose:
                print(f"iter {it:3d} rejected (rho {rho:.3f}) radius {radius:.2e}")
            if radius < options.min_trust_region_radius:
                termination, message = "CONVERGENCE", "trust region radius below minimum"
                break
    summary = BASummary(
        initial_cost=initial_cost,
        final_cost=cost,
        iterations=it,
        num_successful_steps=n_ok,
        num_unsuccessful_steps=n_bad,
        termination=termination,
        message=message,
        wall_time_s=time.perf_counter() - t0,
        costs=costs,
        radii=radii,
        num_threads=torch.get_num_threads(),
        device=str(problem.device),
    )
    return params, summary, st
