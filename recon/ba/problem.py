"""Bundle-adjustment problem, solver options and solve summary (the data types)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from sceneforge.core.cameras import MODEL_PARAMS, check_model
from sceneforge.core.rotations import angle_axis_to_matrix


@dataclass
class BAProblem:
    """A bundle-adjustment problem: cameras, points and 2D observations.

    Attributes:
        model: camera model name from :data:`sceneforge.core.cameras.MODEL_PARAMS`.
        rotation: ``(Nc, 3)`` angle-axis of each ``cam_from_world`` rotation.
        translation: ``(Nc, 3)`` translation of each ``cam_from_world``.
        intrinsics: ``(Nc, P)`` per-camera or ``(1, P)`` shared intrinsics.
        points: ``(Np, 3)`` world points.
        cam_idx: ``(M,)`` camera index of each observation.
        point_idx: ``(M,)`` point index of each observation.
        observations: ``(M, 2)`` observed pixels.
        weights: optional ``(M,)`` per-observation weights (residual = w * (proj - obs)).
    """

    model: str
    rotation: Tensor
    translation: Tensor
    intrinsics: Tensor
    points: Tensor
    cam_idx: Tensor
    point_idx: Tensor
    observations: Tensor
    weights: Tensor | None = None

    def __post_init__(self) -> None:
        check_model(self.model)
        nc, npts, m = self.rotation.shape[0], self.points.shape[0], self.cam_idx.shape[0]
        p = len(MODEL_PARAMS[self.model])
        checks = [
            (
                self.rotation.shape == (nc, 3),
                f"rotation must be (Nc, 3), got {tuple(self.rotation.shape)}",
            ),
            (
                self.translation.shape == (nc, 3),
                f"translation must be ({nc}, 3), got {tuple(self.translation.shape)}",
            ),
            (
                self.intrinsics.ndim == 2
                and self.intrinsics.shape[1] == p
                and self.intrinsics.shape[0] in (1, nc),
                f"{self.model} intrinsics must be ({nc}, {p}) or (1, {p}), got {tuple(self.intrinsics.shape)}",
            ),
            (
                self.points.shape == (npts, 3),
                f"points must be (Np, 3), got {tuple(self.points.shape)}",
            ),
            (self.point_idx.shape == (m,), "point_idx must have one entry per observation"),
            (
                self.observations.shape == (m, 2),
                f"observations must be ({m}, 2), got {tuple(self.observations.shape)}",
            ),
            (self.weights is None or self.weights.shape == (m,), "weights must be (M,)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"BAProblem: {msg}")
        if m and (int(self.cam_idx.min()) < 0 or int(self.cam_idx.max()) >= nc):
            raise ValueError(f"BAProblem: cam_idx out of range [0, {nc})")
        if m and (int(self.point_idx.min()) < 0 or int(self.point_idx.max()) >= npts):
            raise ValueError(f"BAProblem: point_idx out of range [0, {npts})")

    @property
    def num_cameras(self) -> int:
        return self.rotation.shape[0]

    @property
    def num_points(self) -> int:
        return self.points.shape[0]

    @property
    def num_observations(self) -> int:
        return self.cam_idx.shape[0]

    @property
    def shared_intrinsics(self) -> bool:
        return self.intrinsics.shape[0] == 1 and self.num_cameras > 1

    @property
    def dtype(self) -> torch.dtype:
        return self.points.dtype

    @property
    def device(self) -> torch.device:
        return self.points.device

    def camera_intrinsics(self) -> Tensor:
        """``(Nc, P)`` intrinsics (the shared row expanded)."""
        return self.intrinsics.expand(self.num_cameras, -1)

    def cam_from_world(self) -> Tensor:
        """``(Nc, 3, 4)`` extrinsics ``[R | t]``."""
        return torch.cat([angle_axis_to_matrix(self.rotation), self.translation[:, :, None]], -1)

    def to(self, device=None, dtype=None) -> BAProblem:
        """Move/cast float tensors (indices only move)."""

        def f(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return BAProblem(
            self.model,
            f(self.rotation),
            f(self.translation),
            f(self.intrinsics),
            f(self.points),
            self.cam_idx.to(device),
            self.point_idx.to(device),
            f(self.observations),
            f(self.weights),
        )

    def detach(self) -> BAProblem:
        def d(t):
            return None if t is None else t.detach()

        return replace(
            self,
            rotation=d(self.rotation),
            translation=d(self.translation),
            intrinsics=d(self.intrinsics),
            points=d(self.points),
            observations=d(self.observations),
            weights=d(self.weights),
        )


@dataclass
class BAOptions:
    """Solver settings (defaults follow Ceres' trust-region LM)."""

    max_iterations: int = 100
    """Maximum number of trust-region iterations (accepted + rejected steps)."""
    function_tolerance: float = 1e-6
    """Stop when |cost change| / cost falls below this."""
    gradient_tolerance: float = 1e-10
    """Stop when the max-norm of the gradient falls below this."""
    parameter_tolerance: float = 1e-8
    """Stop when |step| <= tol * (|x| + tol)."""
    initial_trust_region_radius: float = 1e4
    """Initial LM radius (damping is diag(J^T J) / radius)."""
    max_trust_region_radius: float = 1e16
    """Upper bound of the LM radius."""
    min_trust_region_radius: float = 1e-32
    """Stop when the radius shrinks below this."""
    min_relative_decrease: float = 1e-3
    """Minimum gain ratio (actual / predicted decrease) to accept a step."""
    min_lm_diagonal: float = 1e-6
    """Lower clamp of the (scaled) LM diagonal."""
    max_lm_diagonal: float = 1e32
    """Upper clamp of the (scaled) LM diagonal."""
    jacobi_scaling: bool = True
    """Scale columns by 1 / (1 + sqrt(diag(J^T J))) computed at the first iteration, like Ceres."""
    loss: Literal["trivial", "huber", "cauchy", "soft_l1"] = "trivial"
    """Robust loss rho(s) on the squared residual norm s of each observation."""
    loss_scale: float = 1.0
    """Scale ``a`` of the robust loss (pixels)."""
    behind_camera: Literal["keep", "zero"] = "keep"
    """Observations whose point is at (near) zero or negative depth: keep their residual (the
    BAL objective) or give them a zero residual and Jacobian, as COLMAP's cost functions do
    (depth below the dtype's machine epsilon)."""
    robust_method: Literal["triggs", "irls"] = "triggs"
    """Ceres' corrector (Triggs, applied where rho'' > 0) or plain IRLS sqrt(rho') weighting."""
    intrinsics: Literal["per_camera", "shared", "fixed"] = "per_camera"
    """Refine intrinsics per camera, as one block shared by all cameras, or keep them fixed."""
    constant_intrinsics: tuple[str, ...] = ()
    """Intrinsic parameter names held constant (e.g. ("cx", "cy"))."""
    fix_points: bool = False
    """Keep all 3D points constant (pose/intrinsics-only refinement)."""
    fixed_cameras: tuple[int, ...] = ()
    """Indices of cameras whose pose is held constant."""
    gauge: Literal["none", "fix_camera_and_scale"] = "none"
    """'none' leaves the 7-dof similarity gauge to the damping (as Ceres' BAL); otherwise fix
    the pose of ``gauge_camera`` and one translation coordinate of ``scale_camera``."""
    gauge_camera: int = 0
    """Camera whose pose is fixed by the gauge."""
    scale_camera: int | None = None
    """Camera with one translation coordinate fixed (default: farthest from gauge_camera)."""
    num_threads: int | None = None
    """torch CPU threads during the solve (None: every core of this process's CPU affinity
    mask, never chosen from the load). Threads change only the order of float sums: the
    solution moves in its last bits."""
    keep_freed_memory: bool = True
    """On glibc, let the process keep freed memory for reuse (once per process; see
    sceneforge.core.heap): the solver's temporaries are then not page-faulted in again every
    iteration (~20% of a solve on the shared BAL problems). Timing only."""
    implicit_exact_hessian: bool = True
    """Backward solves with the exact Hessian (CG, GN-preconditioned) instead of Gauss-Newton."""
    implicit_cg_tolerance: float = 1e-12
    """Relative residual tolerance of the backward CG."""
    verbose: bool = False
    """Print one line per iteration."""


@dataclass
class BASummary:
    """What happened during a solve (Ceres-like)."""

    initial_cost: float
    final_cost: float
    iterations: int
    num_successful_steps: int
    num_unsuccessful_steps: int
    termination: str
    message: str
    wall_time_s: float
    costs: list[float] = field(default_factory=list)
    """Cost after each iteration (index 0: initial; rejected steps repeat the cost)."""
    radii: list[float] = field(default_factory=list)
    """Trust-region radius after each iteration."""
    num_threads: int = 1
    device: str = "cpu"

    def __str__(self) -> str:
        return (
            f"BA {self.termination}: {self.message}; cost {self.initial_cost:.6e} -> "
            f"{self.final_cost:.6e} in {self.iterations} iterations "
            f"({self.num_successful_steps} ok), {self.wall_time_s:.3f} s"
        )
