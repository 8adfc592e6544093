"""Differentiable Levenberg-Marquardt bundle adjustment in PyTorch.

The solver mirrors Ceres' trust-region LM (gain-ratio step acceptance, Nielsen-style
radius update, Jacobi scaling, function/gradient/parameter tolerances) on a
block-sparse problem: analytic batched Jacobians per observation, the normal
equations kept as per-camera and per-point blocks, the points eliminated by a Schur
complement (3x3 blocks inverted in batch) and the reduced camera system solved
densely by Cholesky. Everything is device-agnostic (CPU/CUDA) and works in float32
and float64.

Differentiability: :func:`bundle_adjust` returns optimised parameters that carry
gradients with respect to the observations and their weights, computed by implicit
differentiation at the optimum (``x*(theta)`` defined by ``grad_x f(x*, theta) = 0``),
never by unrolling iterations. The backward pass solves with the Hessian on the free
(gauge-fixed) parameters using the same Schur machinery: the Gauss-Newton matrix
directly, or (default) the exact Hessian by conjugate gradients preconditioned with
the Gauss-Newton Schur solve.

Parameterisation: each camera has an angle-axis rotation and a translation
(``cam_from_world``: ``P = R(aa) X + t``), intrinsics in the core model's order
(:data:`sceneforge.core.cameras.MODEL_PARAMS`), and ``P`` is projected with
:func:`sceneforge.core.cameras.project` (model ``"BAL"`` looks down -z as in BAL files).

Modules: :mod:`.problem` (data types), :mod:`.residuals` (projection, Jacobians, robust
losses), :mod:`.structure` (index bookkeeping), :mod:`.schur` (normal equations and their
Schur solve), :mod:`.lm` (the trust-region loop), :mod:`.implicit` (backward pass),
:mod:`.adjust` (entry points), :mod:`.synthetic` (generated problems).
"""

from sceneforge.recon.ba.adjust import bundle_adjust, evaluate_cost, plot_cost
from sceneforge.recon.ba.problem import BAOptions, BAProblem, BASummary
from sceneforge.recon.ba.residuals import project_observations, project_with_jacobians, robust_rho
from sceneforge.recon.ba.synthetic import make_synthetic_problem, perturb_problem

__all__ = [
    "BAOptions",
    "BAProblem",
    "BASummary",
    "bundle_adjust",
    "evaluate_cost",
    "make_synthetic_problem",
    "perturb_problem",
    "plot_cost",
    "project_observations",
    "project_with_jacobians",
    "robust_rho",
]
