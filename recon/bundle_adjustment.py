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
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from sceneforge.core.atomic import atomic_open
from sceneforge.core.cameras import MODEL_PARAMS, check_model, project, split_params
from sceneforge.core.rotations import angle_axis_to_matrix, rotate_angle_axis, skew

# ----------------------------------------------------------------------------- data types


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


# ----------------------------------------------------------------------------- projection


# Generic intrinsics g = (fx, fy, cx, cy, k1, k2, p1, p2); each model's parameter feeding them.
_GENERIC_SOURCES: dict[str, tuple[int | None, ...]] = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2, None, None, None, None),
    "PINHOLE": (0, 1, 2, 3, None, None, None, None),
    "SIMPLE_RADIAL": (0, 0, 1, 2, 3, None, None, None),
    "RADIAL": (0, 0, 1, 2, 3, 4, None, None),
    "OPENCV": (0, 1, 2, 3, 4, 5, 6, 7),
    "BAL": (0, 0, None, None, 1, 2, None, None),
}


def _generic_map(model: str, dtype, device) -> Tensor:
    """``(8, P)`` matrix mapping model parameters to the generic 8-vector."""
    src = _GENERIC_SOURCES[model]
    a = torch.zeros(8, len(MODEL_PARAMS[model]), dtype=dtype, device=device)
    for g, p in enumerate(src):
        if p is not None:
            a[g, p] = 1.0
    return a


def project_observations(
    model: str, rotation: Tensor, translation: Tensor, intrinsics: Tensor, points: Tensor
) -> tuple[Tensor, Tensor]:
    """Reference projection per observation with the core functions (autograd-friendly).

    All inputs are already gathered per observation: ``(M, 3)``, ``(M, 3)``, ``(M, P)``,
    ``(M, 3)``. Returns pixels ``(M, 2)`` and depth ``(M,)``.
    """
    pc = rotate_angle_axis(rotation, points) + translation
    return project(pc, model, intrinsics)


def _small_mm(a: Tensor, b: Tensor) -> Tensor:
    """Batched product of tiny matrices, elementwise (much faster than bmm for 2x3 @ 3x3)."""
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for k in range(1, a.shape[-1]):
        out = out + a[..., :, k, None] * b[..., None, k, :]
    return out


def _left_jacobian(rotation: Tensor) -> Tensor:
    """SO(3) left Jacobian ``J_l(w) = I + b [w]_x + c [w]_x^2`` (stable at zero)."""
    theta2 = (rotation * rotation).sum(-1)
    small = theta2 < 1e-8
    th2s = torch.where(small, torch.ones_like(theta2), theta2)
    th = th2s.sqrt()
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(th)) / th2s)
    c = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (th - torch.sin(th)) / (th2s * th))
    K = skew(rotation)
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    return eye + b[..., None, None] * K + c[..., None, None] * _small_mm(K, K)


def project_with_jacobians(
    model: str,
    rotation: Tensor,
    translation: Tensor,
    intrinsics: Tensor,
    points: Tensor,
    with_jacobians: bool = True,
    cam_index: Tensor | None = None,
    point_jacobian_only: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Pixels, depth and analytic Jacobians per observation.

    Inputs are gathered per observation, or, with ``cam_index (M,)``, given per camera
    (``rotation``/``translation``/``intrinsics`` of shape ``(Nc, .)``) so rotation matrices
    and SO(3) Jacobians are computed once per camera. Returns ``pixels (M, 2)``,
    ``depth (M,)``, ``J_pose (M, 2, 6)`` (angle-axis then translation), ``J_intr (M, 2, P)``,
    ``J_point (M, 2, 3)`` (with ``point_jacobian_only``, ``J_pose`` and ``J_intr`` are None:
    triangulation needs only ``J_point``). The angle-axis derivative is exact:
    ``d(R(w) X)/dw = -[R X]_x J_l(w)`` with the SO(3) left Jacobian ``J_l``.
    """
    if cam_index is None:
        rx = rotate_angle_axis(rotation, points)
        R = jl = None
    else:
        R = angle_axis_to_matrix(rotation)[cam_index]
        rx = R[:, :, 0] * points[:, 0:1] + R[:, :, 1] * points[:, 1:2] + R[:, :, 2] * points[:, 2:3]
        jl = (
            _left_jacobian(rotation)[cam_index]
            if with_jacobians and not point_jacobian_only
            else None
        )
        translation = translation[cam_index]
        intrinsics = intrinsics[cam_index]
    pc = rx + translation
    fx, fy, cx, cy, dist = split_params(model, intrinsics)
    sign = -1.0 if model == "BAL" else 1.0
    depth = sign * pc[:, 2]
    inv_d = 1.0 / depth
    x = pc[:, 0] * inv_d
    y = pc[:, 1] * inv_d
    k1, k2, p1, p2 = dist.unbind(-1)
    x2, y2, xy = x * x, y * y, x * y
    r2 = x2 + y2
    radial = 1.0 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x2)
    yd = y * radial + p1 * (r2 + 2.0 * y2) + 2.0 * p2 * xy
    pixels = torch.stack([fx * xd + cx, fy * yd + cy], -1)
    if not with_jacobians:
        return pixels, depth, None, None, None
    m = pc.shape[0]
    g = 2.0 * (k1 + 2.0 * k2 * r2)
    d00 = radial + x2 * g + 2.0 * p1 * y + 6.0 * p2 * x
    d01 = xy * g + 2.0 * p1 * x + 2.0 * p2 * y
    d11 = radial + y2 * g + 6.0 * p1 * y + 2.0 * p2 * x
    # d pixel / d P (2x3): diag(f) * Jdist * dxy/dP with dxy/dP = [[1,0,-s x],[0,1,-s y]] / d.
    a00, a01, a10, a11 = fx * d00 * inv_d, fx * d01 * inv_d, fy * d01 * inv_d, fy * d11 * inv_d
    a02 = -sign * (a00 * x + a01 * y)
    a12 = -sign * (a10 * x + a11 * y)
    dpix_dP = torch.stack([a00, a01, a02, a10, a11, a12], -1).reshape(m, 2, 3)
    if R is None:
        R = angle_axis_to_matrix(rotation)
        jl = None if point_jacobian_only else _left_jacobian(rotation)
    j_point = _small_mm(dpix_dP, R)
    if point_jacobian_only:
        return pixels, depth, None, None, j_point
    # Row a of dpix/dP times [rx]_x is (a x rx)^T.
    a_cross = torch.linalg.cross(dpix_dP, rx[:, None, :].expand(-1, 2, -1), dim=-1)
    d_rot = -_small_mm(a_cross, jl)
    j_pose = torch.cat([d_rot, dpix_dP], -1)
    # Generic intrinsics derivatives (2 x 8), then mapped to the model's parameters.
    z = torch.zeros_like(x)
    o = torch.ones_like(x)
    ju = torch.stack(
        [xd, z, o, z, fx * x * r2, fx * x * r2 * r2, fx * 2.0 * xy, fx * (r2 + 2.0 * x2)], -1
    )
    jv = torch.stack(
        [z, yd, z, o, fy * y * r2, fy * y * r2 * r2, fy * (r2 + 2.0 * y2), fy * 2.0 * xy], -1
    )
    j_intr = torch.stack([ju, jv], 1) @ _generic_map(model, pc.dtype, pc.device)
    return pixels, depth, j_pose, j_intr, j_point


# ----------------------------------------------------------------------------- robust losses


def robust_rho(loss: str, s: Tensor, a: float) -> tuple[Tensor, Tensor, Tensor]:
    """``rho(s), rho'(s), rho''(s)`` of a Ceres-style loss on the squared norm ``s``."""
    if loss == "trivial":
        return s, torch.ones_like(s), torch.zeros_like(s)
    b = a * a
    if loss == "huber":
        inl = s <= b
        ss = torch.where(inl, torch.ones_like(s), s).sqrt()
        rho = torch.where(inl, s, 2.0 * a * ss - b)
        r1 = torch.where(inl, torch.ones_like(s), a / ss)
        r2 = torch.where(
            inl, torch.zeros_like(s), -r1 / (2.0 * torch.where(inl, torch.ones_like(s), s))
        )
        return rho, r1, r2
    if loss == "cauchy":
        u = 1.0 + s / b
        r1 = 1.0 / u
        return b * torch.log(u), r1, -r1 * r1 / b
    if loss == "soft_l1":
        u = torch.sqrt(1.0 + s / b)
        r1 = 1.0 / u
        return 2.0 * b * (u - 1.0), r1, -r1 * r1 * r1 / (2.0 * b)
    raise ValueError(f"unknown robust loss {loss!r}; use trivial, huber, cauchy or soft_l1")


def _robust_cost(loss: str, a: float, r: Tensor) -> Tensor:
    """``0.5 * sum rho(|r_i|^2)`` (differentiable)."""
    s = (r * r).sum(-1)
    return 0.5 * robust_rho(loss, s, a)[0].sum()


# ----------------------------------------------------------------------------- structure


@dataclass
class _Structure:
    """Index bookkeeping of one problem (built once per solve).

    Observations must be sorted by camera (``bundle_adjust`` does it), so each camera's
    observations form a contiguous segment and per-camera sums are single GEMMs.
    """

    nc: int
    npts: int
    ni: int  # number of intrinsic blocks (0 if fixed)
    P: int
    cam: Tensor
    pt: Tensor
    intr_block: Tensor | None  # per observation
    col_idx: Tensor  # (Nc, C) reduced-system indices of each camera's [pose | intr]
    col_obs: Tensor  # (M, C) the same per observation
    cam_chunks: Tensor  # (Ncc, L) observation indices per chunk of one camera (M = padding)
    cam_chunk_cam: Tensor  # (Ncc,) camera of each chunk
    pair_chunks_a: Tensor  # (Npc, L) first observation of each pair in a chunk (M = padding)
    pair_chunks_b: Tensor  # (Npc, L) second observation
    pair_chunk_cams: Tensor  # (Npc, 2) camera pair (ca <= cb) of each chunk
    free_pose: Tensor  # (Nc, 6) float mask
    free_intr: Tensor | None  # (Ni, P) float mask
    free_points: bool

    @property
    def nr(self) -> int:
        return 6 * self.nc + self.P * self.ni


def _point_pairs(pt: Tensor, npts: int) -> tuple[Tensor, Tensor]:
    """Pairs (a, b) of distinct observations of the same point, each unordered pair once."""
    device = pt.device
    order = torch.from_numpy(np.argsort(pt.cpu().numpy(), kind="stable")).to(device)
    counts = torch.bincount(pt, minlength=npts)
    starts = torch.cumsum(counts, 0) - counts
    pid_sorted = pt[order]
    rep = counts[pid_sorted]
    a = torch.repeat_interleave(torch.arange(pt.shape[0], device=device), rep)
    offs = torch.arange(a.shape[0], device=device) - torch.repeat_interleave(
        torch.cumsum(rep, 0) - rep, rep
    )
    b = starts[pid_sorted[a]] + offs
    keep = b > a  # sorted positions: strict upper triangle of each track
    return order[a[keep]], order[b[keep]]


def _gauge_scale_coordinate(problem: BAProblem, options: BAOptions) -> tuple[int, int]:
    """(camera, translation coordinate) to fix so the scale about the gauge camera is fixed."""
    g = options.gauge_camera
    R = angle_axis_to_matrix(problem.rotation.detach())
    t = problem.translation.detach()
    centers = -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0]
    if options.scale_camera is None:
        d = (centers - centers[g]).norm(dim=-1)
        d[g] = -1.0
        k = int(torch.argmax(d))
    else:
        k = options.scale_camera
    if k == g:
        raise ValueError("scale_camera must differ from gauge_camera")
    # Scaling about camera g's centre moves t_k along R_k (c_k - c_g).
    v = R[k] @ (centers[k] - centers[g])
    if float(v.norm()) == 0.0:
        raise ValueError(f"cameras {g} and {k} share a centre: cannot fix the scale with them")
    return k, int(torch.argmax(v.abs()))


def _build_structure(problem: BAProblem, options: BAOptions) -> _Structure:
    nc, npts = problem.num_cameras, problem.num_points
    P = len(MODEL_PARAMS[problem.model])
    dev, dt = problem.device, problem.dtype
    cam, pt = problem.cam_idx.long(), problem.point_idx.long()
    if options.intrinsics == "fixed":
        ni = 0
    elif options.intrinsics == "shared" or problem.intrinsics.shape[0] == 1:
        ni = 1
    elif options.intrinsics == "per_camera":
        ni = nc
    else:
        raise ValueError(f"unknown intrinsics mode {options.intrinsics!r}")
    intr_block = None if ni == 0 else (torch.zeros_like(cam) if ni == 1 else cam)
    free_pose = torch.ones(nc, 6, dtype=dt, device=dev)
    for c in options.fixed_cameras:
        if not 0 <= c < nc:
            raise ValueError(f"fixed camera index {c} out of range [0, {nc})")
        free_pose[c] = 0.0
    if options.gauge == "fix_camera_and_scale":
        if not 0 <= options.gauge_camera < nc or nc < 2:
            raise ValueError(
                "gauge 'fix_camera_and_scale' needs >= 2 cameras and a valid gauge_camera"
            )
        free_pose[options.gauge_camera] = 0.0
        k, coord = _gauge_scale_coordinate(problem, options)
        free_pose[k, 3 + coord] = 0.0
    elif options.gauge != "none":
        raise ValueError(f"unknown gauge {options.gauge!r}")
    free_intr = None
    if ni:
        free_intr = torch.ones(ni, P, dtype=dt, device=dev)
        for name in options.constant_intrinsics:
            if name not in MODEL_PARAMS[problem.model]:
                raise ValueError(
                    f"{problem.model} has no intrinsic {name!r}: {MODEL_PARAMS[problem.model]}"
                )
            free_intr[:, MODEL_PARAMS[problem.model].index(name)] = 0.0
    m = cam.shape[0]
    if m > 1 and bool((cam[1:] < cam[:-1]).any()):
        raise ValueError("internal: observations must be sorted by camera")
    pose_cols = torch.arange(6 * nc, device=dev).reshape(nc, 6)
    if ni:
        blk = (
            torch.zeros(nc, dtype=torch.long, device=dev)
            if ni == 1
            else torch.arange(nc, device=dev)
        )
        intr_cols = 6 * nc + blk[:, None] * P + torch.arange(P, device=dev)
        col_idx = torch.cat([pose_cols, intr_cols], 1)
    else:
        col_idx = pose_cols
    pa, pb = _point_pairs(pt, npts)
    swap = cam[pa] > cam[pb]
    pa, pb = torch.where(swap, pb, pa), torch.where(swap, pa, pb)
    key = (cam[pa] * nc + cam[pb]).cpu().numpy()
    order = np.argsort(key, kind="stable")
    pa_np, pb_np, key = pa.cpu().numpy()[order], pb.cpu().numpy()[order], key[order]
    cam_np = cam.cpu().numpy()
    c_pos, c_seg = _chunk_table(cam_np, _CHUNK)
    p_pos, p_seg = _chunk_table(key, _CHUNK)
    pa_ext = np.append(pa_np, m)
    pb_ext = np.append(pb_np, m)
    p_pos = np.where(p_pos < 0, len(pa_np), p_pos)

    def t(a):
        return torch.as_tensor(a, dtype=torch.long, device=dev)

    return _Structure(
        nc,
        npts,
        ni,
        P,
        cam,
        pt,
        intr_block,
        col_idx,
        col_idx[cam],
        t(np.where(c_pos < 0, m, c_pos)),
        t(c_seg),
        t(pa_ext[p_pos]),
        t(pb_ext[p_pos]),
        t(np.stack([p_seg // nc, p_seg % nc], 1).reshape(-1, 2)),
        free_pose,
        free_intr,
        not options.fix_points,
    )


_CHUNK = 16  # observations (or pairs) per GEMM chunk in the block sums


def _chunk_table(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sorted ``keys`` into runs, and each run into chunks of ``size`` positions.

    Returns ``(Nch, size)`` positions (``-1`` pads a run's last chunk) and each chunk's key.
    """
    if len(keys) == 0:
        return np.zeros((0, size), dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lengths = np.diff(np.r_[starts, len(keys)])
    nch = -(-lengths // size)
    first_chunk = np.cumsum(nch) - nch
    pos = -np.ones((int(nch.sum()), size), dtype=np.int64)
    run = np.repeat(np.arange(len(starts)), lengths)
    within = np.arange(len(keys)) - starts[run]
    pos[first_chunk[run] + within // size, within % size] = np.arange(len(keys))
    return pos, np.repeat(keys[starts], nch)


# ----------------------------------------------------------------------------- linearisation


@dataclass
class _Linearisation:
    """Per-observation (corrected) residuals and Jacobians plus the block normal equations."""

    r: Tensor  # (M, 2)
    jc: Tensor  # (M, 2, C) camera side [pose | intr]
    jp: Tensor  # (M, 2, 3)
    U: Tensor  # (Nr, Nr) dense camera-side block
    V: Tensor  # (Np, 3, 3)
    Wk: Tensor  # (M, 3, C) per-observation W^T = (J_c^T J_p)^T
    Wk_ext: Tensor  # (M + 1, 3, C) with a zero row for chunk padding
    gc: Tensor  # (Nr,)
    gp: Tensor  # (Np, 3)


def _gather_params(problem: BAProblem, st: _Structure, rot, trans, intr, pts):
    """Per-observation parameters; ``intr`` has one row (shared) or one per camera."""
    m = st.cam.shape[0]
    intr_obs = intr[0].expand(m, -1) if intr.shape[0] == 1 else intr[st.cam]
    return rot[st.cam], trans[st.cam], intr_obs, pts[st.pt]


def _residuals(problem: BAProblem, st: _Structure, params, with_jacobians: bool):
    rot, trans, intr, pts = params
    intr_c = intr.expand(st.nc, -1) if intr.shape[0] == 1 else intr
    pix, depth, jpose, jintr, jpt = project_with_jacobians(
        problem.model, rot, trans, intr_c, pts[st.pt], with_jacobians, cam_index=st.cam
    )
    r = pix - problem.observations
    w = problem.weights
    if w is not None:
        r = r * w[:, None]
        if with_jacobians:
            jpose = jpose * w[:, None, None]
            jintr = jintr * w[:, None, None]
            jpt = jpt * w[:, None, None]
    return r, jpose, jintr, jpt


def _assemble(st: _Structure, blocks: Tensor, ca: Tensor, cb: Tensor) -> Tensor:
    """Sum ``(K, C, C)`` blocks at camera pairs ``(ca, cb)`` into a dense ``(Nr, Nr)``."""
    C = st.col_idx.shape[1]
    rows = st.col_idx[ca][:, :, None].expand(-1, C, C)
    cols = st.col_idx[cb][:, None, :].expand(-1, C, C)
    out = torch.zeros(st.nr, st.nr, dtype=blocks.dtype, device=blocks.device)
    return out.index_put_((rows, cols), blocks, accumulate=True)


def _scatter_vector(st: _Structure, vec: Tensor) -> Tensor:
    """Sum ``(M, C)`` camera-side per-observation vectors into ``(Nr,)``."""
    out = torch.zeros(st.nr, dtype=vec.dtype, device=vec.device)
    return out.index_add_(0, st.col_obs.reshape(-1), vec.reshape(-1))


def _gather_vector(st: _Structure, x: Tensor) -> Tensor:
    """Camera-side ``(Nr,)`` vector to per-observation ``(M, C)``."""
    return x[st.col_obs]


def _free_mask_c(st: _Structure) -> Tensor:
    parts = [st.free_pose.reshape(-1)]
    if st.ni:
        parts.append(st.free_intr.reshape(-1))
    return torch.cat(parts)


def _chunk_gram(a_ext: Tensor, b_ext: Tensor, ia: Tensor, ib: Tensor) -> Tensor:
    """``sum_l A[ia[n, l]]^T B[ib[n, l]]`` per chunk ``n`` as one batched GEMM.

    ``a_ext``/``b_ext`` are ``(M + 1, k, C)`` with a zero last row used by the padding; the
    gathered chunks are ``(n, L * k, C)`` views, so no transposing copies are made.
    """
    n, L = ia.shape
    k, C = a_ext.shape[1], a_ext.shape[2]
    A = a_ext.index_select(0, ia.reshape(-1)).reshape(n, L * k, C)
    B = b_ext.index_select(0, ib.reshape(-1)).reshape(n, L * k, C)
    return torch.bmm(A.transpose(1, 2), B)


def _linearise(problem: BAProblem, st: _Structure, params, options: BAOptions) -> _Linearisation:
    r, jpose, jintr, jpt = _residuals(problem, st, params, True)
    m = r.shape[0]
    C = st.col_idx.shape[1]
    # Camera-side Jacobian written straight into a buffer with the zero padding row.
    jc_ext = r.new_empty(m + 1, 2, C)
    jc_ext[m] = 0.0
    jc = jc_ext[:m]
    jc[:, :, :6] = jpose
    if st.ni:
        jc[:, :, 6:] = jintr
    free_c = _free_mask_c(st)
    if not bool(free_c.all()):  # frozen parameters: zero their Jacobian columns
        jc.mul_(free_c[st.col_obs][:, None, :])
    if not st.free_points:
        jpt = torch.zeros_like(jpt)
    if options.loss != "trivial":
        s = (r * r).sum(-1)
        _, rho1, rho2 = robust_rho(options.loss, s, options.loss_scale)
        sq1 = rho1.sqrt()
        if options.robust_method == "triggs":
            use = (s > 0) & (rho2 > 0)
            ss = torch.where(use, s, torch.ones_like(s))
            D = torch.where(use, 1.0 + 2.0 * ss * rho2 / rho1, torch.ones_like(s))
            alpha = 1.0 - D.clamp(min=0).sqrt()
            res_scale = torch.where(use, sq1 / (1.0 - alpha), sq1)
            a_sq = torch.where(use, alpha / ss, torch.zeros_like(s))
        else:
            res_scale, a_sq = sq1, torch.zeros_like(s)
        ra = r * a_sq[:, None]
        rjc = r[:, 0, None] * jc[:, 0] + r[:, 1, None] * jc[:, 1]
        rjp = r[:, 0, None] * jpt[:, 0] + r[:, 1, None] * jpt[:, 1]
        jc.copy_(sq1[:, None, None] * (jc - ra[:, :, None] * rjc[:, None, :]))
        jpt = sq1[:, None, None] * (jpt - ra[:, :, None] * rjp[:, None, :])
        r = r * res_scale[:, None]
    # U: Gram matrices of chunks of each camera's observations, one batched GEMM.
    c = st.cam_chunk_cam
    U = _assemble(st, _chunk_gram(jc_ext, jc_ext, st.cam_chunks, st.cam_chunks), c, c)
    j0, j1 = jpt[:, 0], jpt[:, 1]
    vblk = j0[:, :, None] * j0[:, None, :] + j1[:, :, None] * j1[:, None, :]
    V = torch.zeros(st.npts, 9, dtype=r.dtype, device=r.device).index_add_(
        0, st.pt, vblk.reshape(-1, 9)
    )
    Wk_ext = r.new_empty(m + 1, 3, C)
    Wk_ext[m] = 0.0
    Wk = Wk_ext[:m]
    torch.mul(j0[:, :, None], jc[:, 0, None, :], out=Wk)
    Wk.addcmul_(j1[:, :, None], jc[:, 1, None, :])
    r0, r1 = r[:, 0:1], r[:, 1:2]
    gc = _scatter_vector(st, jc[:, 0] * r0 + jc[:, 1] * r1)
    gp = torch.zeros(st.npts, 3, dtype=r.dtype, device=r.device).index_add_(
        0, st.pt, j0 * r0 + j1 * r1
    )
    return _Linearisation(r, jc, jpt, U, V.reshape(-1, 3, 3), Wk, Wk_ext, gc, gp)


def _inv3(A: Tensor) -> Tensor:
    """Batched 3x3 inverse by the adjugate (fast and parallel for many small SPD blocks)."""
    a, b, c = A[:, 0, 0], A[:, 0, 1], A[:, 0, 2]
    d, e, f = A[:, 1, 0], A[:, 1, 1], A[:, 1, 2]
    g, h, i = A[:, 2, 0], A[:, 2, 1], A[:, 2, 2]
    c00, c01, c02 = e * i - f * h, c * h - b * i, b * f - c * e
    c10, c11, c12 = f * g - d * i, a * i - c * g, c * d - a * f
    c20, c21, c22 = d * h - e * g, b * g - a * h, a * e - b * d
    det = a * c00 + b * c10 + c * c20
    adj = torch.stack([c00, c01, c02, c10, c11, c12, c20, c21, c22], -1).reshape(-1, 3, 3)
    return adj / det[:, None, None]


def _mat3_vec(A: Tensor, x: Tensor) -> Tensor:
    """Batched ``(N, 3, 3) @ (N, 3)`` without bmm (tiny matrices are faster elementwise)."""
    return A[:, :, 0] * x[:, 0:1] + A[:, :, 1] * x[:, 1:2] + A[:, :, 2] * x[:, 2:3]


def _schur_solve(
    st: _Structure,
    lin: _Linearisation,
    rc: Tensor,
    rp: Tensor,
    damp_c: Tensor | None,
    damp_p: Tensor | None,
) -> tuple[Tensor, Tensor] | None:
    """Solve ``[U+Dc W; W^T V+Dp] [xc; xp] = [rc; rp]`` by eliminating the points.

    The reduced camera matrix ``S = U - sum_j W_j V_j^-1 W_j^T`` is built from one GEMM
    per camera (the ``a == b`` terms) and one per camera pair sharing points. Frozen
    camera-side entries get a unit diagonal (their rows are zero), fixed points a unit
    block. Returns None if the reduced system is not positive definite.
    """
    free_c = _free_mask_c(st)
    V = lin.V
    if damp_p is not None:
        V = V + torch.diag_embed(damp_p)
    if not st.free_points:
        V = torch.eye(3, dtype=V.dtype, device=V.device).expand_as(V)
    Vinv = _inv3(V)
    Vg = Vinv[st.pt]  # (M, 3, 3)
    Wk = lin.Wk
    # (W V^-1)^T = V^-1 W^T per observation, in the (M, 3, C) layout.
    m = Wk.shape[0]
    Y_ext = Wk.new_empty(m + 1, *Wk.shape[1:])
    Y_ext[m] = 0.0
    Yk = Y_ext[:m]
    torch.mul(Vg[:, :, 0:1], Wk[:, None, 0, :], out=Yk)
    Yk.addcmul_(Vg[:, :, 1:2], Wk[:, None, 1, :])
    Yk.addcmul_(Vg[:, :, 2:3], Wk[:, None, 2, :])
    c = st.cam_chunk_cam
    S = lin.U - _assemble(st, _chunk_gram(Y_ext, lin.Wk_ext, st.cam_chunks, st.cam_chunks), c, c)
    if st.pair_chunks_a.numel():
        G = _chunk_gram(Y_ext, lin.Wk_ext, st.pair_chunks_a, st.pair_chunks_b)
        X = _assemble(st, G, st.pair_chunk_cams[:, 0], st.pair_chunk_cams[:, 1])
        S = S - X - X.T
    diag = S.diagonal()
    if damp_c is not None:
        diag += damp_c
    diag += 1.0 - free_c  # frozen rows/cols are zero: unit diagonal keeps S definite
    vp = _mat3_vec(Vinv, rp)
    vpo = vp[st.pt]
    wv = Wk[:, 0] * vpo[:, 0:1] + Wk[:, 1] * vpo[:, 1:2] + Wk[:, 2] * vpo[:, 2:3]
    rhs = rc - _scatter_vector(st, wv)
    rhs = rhs * free_c
    L, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:
        return None
    xc = torch.cholesky_solve(rhs[:, None], L)[:, 0] * free_c
    xo = _gather_vector(st, xc)
    wx = (Wk * xo[:, None, :]).sum(-1)
    t = rp - torch.zeros_like(rp).index_add_(0, st.pt, wx)
    xp = _mat3_vec(Vinv, t)
    if not st.free_points:
        xp = torch.zeros_like(xp)
    return xc, xp


# ----------------------------------------------------------------------------- solver


def _cost_terms(problem: BAProblem, st: _Structure, params, options: BAOptions) -> Tensor:
    """Per-observation ``0.5 * rho(|r|^2)``."""
    r = _residuals(problem, st, params, False)[0]
    return 0.5 * robust_rho(options.loss, (r * r).sum(-1), options.loss_scale)[0]


def _apply_step(params, st: _Structure, xc: Tensor, xp: Tensor):
    rot, trans, intr, pts = params
    pose = xc[: 6 * st.nc].reshape(st.nc, 6)
    new_intr = intr
    if st.ni:
        new_intr = intr + xc[6 * st.nc :].reshape(st.ni, st.P)
    return rot + pose[:, :3], trans + pose[:, 3:], new_intr, pts + xp


def _grad_max(lin: _Linearisation, st: _Structure) -> float:
    """Max-norm of the gradient on the free parameters."""
    g = float(lin.gc.abs().max())
    return max(g, float(lin.gp.abs().max())) if st.free_points else g


def _flat_norm(params) -> float:
    return math.sqrt(sum(float((p * p).sum()) for p in params))


@contextmanager
def _threads(n: int | None):
    """torch threads ``n`` inside the block (None: :func:`available_cores`, see
    :attr:`BAOptions.num_threads`), the previous count after."""
    from sceneforge.recon.features import available_cores

    old = torch.get_num_threads()
    torch.set_num_threads(n if n is not None else available_cores())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _solve(
    problem: BAProblem, options: BAOptions
) -> tuple[tuple[Tensor, ...], BASummary, _Structure]:
    """Run LM on a detached problem; returns the optimised parameters and summary."""
    t0 = time.perf_counter()
    st = _build_structure(problem, options)
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
    lin = _linearise(problem, st, params, options)
    if not math.isfinite(cost):
        termination, message = "FAILURE", "initial cost is not finite"
        it = options.max_iterations  # skip the loop
    free_c = _free_mask_c(st)
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
        sol = _schur_solve(st, lin, -lin.gc, -lin.gp, damp_c, damp_p)
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
        jd = (lin.jc * _gather_vector(st, xc)[:, None, :]).sum(-1) + (
            lin.jp * xp[st.pt][:, None, :]
        ).sum(-1)
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
            cand_lin = _linearise(problem, st, cand, options)
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
            lin = cand_lin if cand_lin is not None else _linearise(problem, st, params, options)
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


# ----------------------------------------------------------------------------- implicit gradients


def _free_params_grad(problem, st, options, params, obs, weights, create_graph: bool):
    """Gradient of the robust cost w.r.t. (rot, trans, intr, pts), frozen entries zeroed."""
    rot, trans, intr, pts = params
    p2 = replace(problem, observations=obs, weights=weights)
    r = _reference_residuals(p2, st, (rot, trans, intr, pts))
    cost = _robust_cost(options.loss, options.loss_scale, r)
    grads = torch.autograd.grad(cost, (rot, trans, intr, pts), create_graph=create_graph)
    return _mask_params(st, grads)


def _reference_residuals(problem: BAProblem, st: _Structure, params) -> Tensor:
    rot, trans, intr, pts = params
    r_o, t_o, k_o, x_o = _gather_params(problem, st, rot, trans, intr, pts)
    pix, _ = project_observations(problem.model, r_o, t_o, k_o, x_o)
    r = pix - problem.observations
    if problem.weights is not None:
        r = r * problem.weights[:, None]
    return r


def _mask_params(st: _Structure, p):
    rot, trans, intr, pts = p
    rot = rot * st.free_pose[:, :3]
    trans = trans * st.free_pose[:, 3:]
    intr = intr * st.free_intr if st.ni else torch.zeros_like(intr)
    pts = pts if st.free_points else torch.zeros_like(pts)
    return rot, trans, intr, pts


def _to_blocks(st: _Structure, p) -> tuple[Tensor, Tensor]:
    rot, trans, intr, pts = p
    xc = torch.cat([rot, trans], -1).reshape(-1)
    if st.ni:
        xc = torch.cat([xc, intr.reshape(-1)])
    return xc, pts


def _from_blocks(st: _Structure, xc: Tensor, xp: Tensor, intr_like: Tensor):
    pose = xc[: 6 * st.nc].reshape(st.nc, 6)
    intr = xc[6 * st.nc :].reshape(st.ni, st.P) if st.ni else torch.zeros_like(intr_like)
    return pose[:, :3], pose[:, 3:], intr, xp


class _ImplicitBA(torch.autograd.Function):
    """Identity on the solved parameters; backward by implicit differentiation."""

    @staticmethod
    def forward(ctx, observations, weights, rot, trans, intr, pts, info):
        ctx.info = info
        ctx.save_for_backward(observations, weights, rot, trans, intr, pts)
        return rot.clone(), trans.clone(), intr.clone(), pts.clone()

    @staticmethod
    def backward(ctx, g_rot, g_trans, g_intr, g_pts):
        problem, st, options = ctx.info
        obs, weights, rot, trans, intr, pts = ctx.saved_tensors
        gouts = [
            torch.zeros_like(x) if g is None else g
            for g, x in zip((g_rot, g_trans, g_intr, g_pts), (rot, trans, intr, pts))
        ]
        bc, bp = _to_blocks(st, _mask_params(st, gouts))
        with torch.enable_grad():
            params = tuple(x.detach().requires_grad_(True) for x in (rot, trans, intr, pts))
            obs_d = obs.detach().requires_grad_(True)
            w_d = None if weights is None else weights.detach().requires_grad_(True)
            lin = _linearise(problem.detach(), st, tuple(x.detach() for x in params), options)

            def precond(vc, vp):
                sol = _schur_solve(st, lin, vc, vp, None, None)
                if sol is None:
                    raise RuntimeError(
                        "implicit BA gradient: the Gauss-Newton matrix is singular; fix the "
                        "gauge (options.gauge='fix_camera_and_scale') or freeze parameters"
                    )
                return sol

            if options.implicit_exact_hessian:
                w_const = None if w_d is None else w_d.detach()
                grad_fn = _free_params_grad(problem, st, options, params, obs, w_const, True)

                def hvp(vc, vp):
                    v = _from_blocks(st, vc, vp, intr)
                    live = [i for i, g in enumerate(grad_fn) if g.requires_grad]
                    hv = torch.autograd.grad(
                        [grad_fn[i] for i in live],
                        params,
                        grad_outputs=[v[i] for i in live],
                        retain_graph=True,
                        allow_unused=True,
                    )
                    hv = [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]
                    return _to_blocks(st, _mask_params(st, hv))

                vc, vp = _pcg(hvp, precond, bc, bp, options.implicit_cg_tolerance)
            else:
                vc, vp = precond(bc, bp)
            v = _mask_params(st, _from_blocks(st, vc, vp, intr))
            grads = _free_params_grad(problem, st, options, params, obs_d, w_d, True)
            inner = sum((g * vv).sum() for g, vv in zip(grads, v) if g.requires_grad)
            wrt = (obs_d,) if w_d is None else (obs_d, w_d)
            out = torch.autograd.grad(-inner, wrt, allow_unused=True)
        g_obs = out[0]
        g_w = out[1] if w_d is not None else None
        return g_obs, g_w, None, None, None, None, None


def _pcg(hvp, precond, bc: Tensor, bp: Tensor, tol: float, max_iter: int = 100):
    """Preconditioned CG on the two-block vector (camera side, points)."""

    def dot(a, b):
        return (a[0] * b[0]).sum() + (a[1] * b[1]).sum()

    x = precond(bc, bp)
    hx = hvp(*x)
    r = (bc - hx[0], bp - hx[1])
    bnorm = math.sqrt(float(dot((bc, bp), (bc, bp)))) or 1.0
    z = precond(*r)
    p = z
    rz = dot(r, z)
    for _ in range(max_iter):
        if math.sqrt(float(dot(r, r))) <= tol * bnorm:
            break
        hp = hvp(*p)
        alpha = rz / dot(p, hp)
        x = (x[0] + alpha * p[0], x[1] + alpha * p[1])
        r = (r[0] - alpha * hp[0], r[1] - alpha * hp[1])
        z = precond(*r)
        rz_new = dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        p = (z[0] + beta * p[0], z[1] + beta * p[1])
    return x


# ----------------------------------------------------------------------------- public API


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
    # Sort observations by camera so that per-camera sums are contiguous segments.
    perm = torch.from_numpy(np.argsort(problem.cam_idx.cpu().numpy(), kind="stable")).to(
        problem.device
    )
    work = replace(
        problem,
        cam_idx=problem.cam_idx[perm],
        point_idx=problem.point_idx[perm],
        observations=problem.observations[perm],
        weights=None if problem.weights is None else problem.weights[perm],
    )
    with _threads(options.num_threads if problem.device.type == "cpu" else None):
        with torch.no_grad():
            params, summary, st = _solve(work.detach(), options)
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
        rot, trans, intr, pts = _ImplicitBA.apply(
            work.observations, work.weights, rot, trans, intr, pts, info
        )
    if intr.shape[0] != problem.intrinsics.shape[0]:
        intr = intr.expand(problem.intrinsics.shape[0], -1).clone()
    result = replace(problem, rotation=rot, translation=trans, intrinsics=intr, points=pts)
    return result, summary


def evaluate_cost(problem: BAProblem, loss: str = "trivial", loss_scale: float = 1.0) -> Tensor:
    """``0.5 * sum rho(|r|^2)`` with the core projection (differentiable reference)."""
    cam = problem.cam_idx.long()
    intr = problem.camera_intrinsics()[cam]
    pix, _ = project_observations(
        problem.model,
        problem.rotation[cam],
        problem.translation[cam],
        intr,
        problem.points[problem.point_idx.long()],
    )
    r = pix - problem.observations
    if problem.weights is not None:
        r = r * problem.weights[:, None]
    return _robust_cost(loss, loss_scale, r)


def make_synthetic_problem(
    model: str = "BAL",
    num_cameras: int = 6,
    num_points: int = 40,
    noise_px: float = 0.0,
    visibility: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> BAProblem:
    """A problem with known ground truth: cameras on a ring looking at points near the origin.

    Observations are exact projections plus Gaussian ``noise_px``; each point keeps a
    random subset of views (probability ``visibility``, at least two).
    """
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(num_points, 3, generator=g, dtype=dtype) * 2 - 1) * 1.0
    ang = torch.arange(num_cameras, dtype=dtype) * (1.2 * math.pi / max(num_cameras, 1))
    centers = torch.stack([4 * torch.sin(ang), 0.3 * torch.cos(3 * ang), -4 * torch.cos(ang)], -1)
    fwd = -centers / centers.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=dtype).expand_as(fwd)
    right = torch.linalg.cross(up, fwd, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(fwd, right, dim=-1)
    R = torch.stack([right, down, fwd], 1)  # rows: OpenCV camera axes in world
    if model == "BAL":
        R = R * torch.tensor([1.0, -1.0, -1.0], dtype=dtype)[:, None]
    t = -(R @ centers[:, :, None])[:, :, 0]
    base = {
        "SIMPLE_PINHOLE": [500.0, 320.0, 240.0],
        "PINHOLE": [500.0, 510.0, 320.0, 240.0],
        "SIMPLE_RADIAL": [500.0, 320.0, 240.0, -0.05],
        "RADIAL": [500.0, 320.0, 240.0, -0.05, 0.01],
        "OPENCV": [500.0, 510.0, 320.0, 240.0, -0.05, 0.01, 1e-3, -1e-3],
        "BAL": [500.0, -0.05, 0.01],
    }[model]
    intr = torch.tensor(base, dtype=dtype).repeat(num_cameras, 1)
    intr[:, 0] += torch.randn(num_cameras, generator=g, dtype=dtype) * 5
    vis = torch.rand(num_points, num_cameras, generator=g) < visibility
    order = torch.rand(num_points, num_cameras, generator=g).argsort(1)[:, :2]
    vis[torch.arange(num_points)[:, None], order] = True
    pi, ci = vis.nonzero(as_tuple=True)
    from sceneforge.core.rotations import matrix_to_angle_axis

    rot = matrix_to_angle_axis(R)
    pix, _ = project_observations(model, rot[ci], t[ci], intr[ci], pts[pi])
    pix = pix + noise_px * torch.randn(pix.shape, generator=g, dtype=dtype)
    return BAProblem(model, rot, t, intr, pts, ci, pi, pix)


def perturb_problem(problem: BAProblem, scale: float = 1e-2, seed: int = 1) -> BAProblem:
    """Copy of ``problem`` with poses, focal lengths and points perturbed (observations kept)."""
    g = torch.Generator().manual_seed(seed)
    dt = problem.dtype

    def n(t, s):
        return t + s * torch.randn(t.shape, generator=g, dtype=dt).to(t.device)

    intr = problem.intrinsics.clone()
    intr[:, 0] = intr[:, 0] * (
        1 + scale * torch.randn(intr.shape[0], generator=g, dtype=dt).to(intr.device)
    )
    return replace(
        problem,
        rotation=n(problem.rotation, scale),
        translation=n(problem.translation, scale),
        intrinsics=intr,
        points=n(problem.points, scale),
    )


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
