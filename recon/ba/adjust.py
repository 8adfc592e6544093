"""Public entry points: :func:`bundle_adjust`, :func:`evaluate_cost`, :func:`plot_cost`."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from sceneforge.core.atomic import atomic_open
from sceneforge.core.heap import keep_freed_memory
from sceneforge.recon.ba.implicit import ImplicitBA
from sceneforge.recon.ba.lm import solve, solver_threads
from sceneforge.recon.ba.problem import BAOptions, BAProblem, BASummary
from sceneforge.recon.ba.residuals import behind_camera_mask, project_observations, robust_cost
from sceneforge.recon.ba.structure import CHUNK, pad_by_camera


def bundle_adjust(
    problem: BAProblem, options: BAOptions | None = None
) -> tuple[BAProblem, BASummary]:
    """Minimise ``0.5 * sum rho(|w (project(...) - obs)|^2)`` over poses, intrinsics and points.

    Returns the problem with optimised parameters and a :class:`BASummary`. If the
    observations or weights require grad (and grad mode is on), the returned parameters
    are differentiable with respect to them by implicit differentiation; this needs a
    fixed gauge (``options.gauge='fix_camera_and_scale'``, fixed points or fixed cameras).
    """
    options = options or BAOptions()
    if problem.num_observations == 0:
        raise ValueError("bundle_adjust: the problem has no observations")
    # Observations sorted by camera, each camera's run padded to whole GEMM chunks, so that
    # per-camera sums are batched GEMMs over views (the padding slots contribute zero).
    src, pad_rows = pad_by_camera(problem.cam_idx.cpu().numpy(), CHUNK)
    perm = torch.from_numpy(src).to(problem.device)
    work = replace(
        problem,
        cam_idx=problem.cam_idx[perm],
        point_idx=problem.point_idx[perm],
        observations=problem.observations[perm],
        weights=None if problem.weights is None else problem.weights[perm],
    )
    cpu = problem.device.type == "cpu"
    if cpu and options.keep_freed_memory:
        keep_freed_memory()
    with solver_threads(options.num_threads if cpu else None), torch.no_grad():
        params, summary, st = solve(work.detach(), options, pad_rows)
    rot, trans, intr, pts = params
    needs_grad = torch.is_grad_enabled() and (
        problem.observations.requires_grad
        or (problem.weights is not None and problem.weights.requires_grad)
    )
    if needs_grad:
        gauge_free = (
            options.gauge == "none"
            and not options.fix_points
            and len(options.fixed_cameras) < problem.num_cameras
        )
        if gauge_free:
            raise ValueError(
                "implicit differentiation needs a fixed gauge: set options.gauge="
                "'fix_camera_and_scale' (or fix points/cameras)"
            )
        info = (work.detach(), st, options)
        rot, trans, intr, pts = ImplicitBA.apply(
            work.observations, work.weights, rot, trans, intr, pts, info
        )
    if intr.shape[0] != problem.intrinsics.shape[0]:
        intr = intr.expand(problem.intrinsics.shape[0], -1).clone()
    result = replace(problem, rotation=rot, translation=trans, intrinsics=intr, points=pts)
    return result, summary


def evaluate_cost(
    problem: BAProblem,
    loss: str = "trivial",
    loss_scale: float = 1.0,
    behind_camera: str = "keep",
) -> Tensor:
    """``0.5 * sum rho(|r|^2)`` with the core projection (differentiable reference).

    ``behind_camera="zero"`` scores COLMAP's objective (see :attr:`BAOptions.behind_camera`).
    """
    cam = problem.cam_idx.long()
    intr = problem.camera_intrinsics()[cam]
    pix, depth = project_observations(
        problem.model,
        problem.rotation[cam],
        problem.translation[cam],
        intr,
        problem.points[problem.point_idx.long()],
    )
    r = pix - problem.observations
    if problem.weights is not None:
        r = r * problem.weights[:, None]
    if behind_camera == "zero":
        r = r * (~behind_camera_mask(depth.detach())).to(r.dtype)[:, None]
    elif behind_camera != "keep":
        raise ValueError(f"unknown behind_camera {behind_camera!r}; use 'keep' or 'zero'")
    return robust_cost(loss, loss_scale, r)


def plot_cost(summary: BASummary, path: str | os.PathLike) -> Path:
    """Write a PNG of the cost per iteration (log scale), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(range(len(summary.costs)), summary.costs, marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost 0.5 * sum rho(r^2)")
    ax.set_title(f"{summary.termination}: {summary.final_cost:.6g}")
    ax.grid(True, which="both", alpha=0.3)
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
