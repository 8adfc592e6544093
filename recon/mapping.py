"""The pieces of the SfM's triangulate → bundle adjust → filter loop
(:class:`RefinementConfig`): one bundle adjustment of the registered cameras, PnP
registration of the images still left out, and the final filter of the points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from sceneforge.core.cameras import make_rigid, project, transform_points, unproject
from sceneforge.core.rotations import angle_axis_to_matrix, matrix_to_angle_axis
from sceneforge.recon.global_sfm import PnPConfig, pnp_ransac
from sceneforge.recon.intrinsics import _focals
from sceneforge.recon.tracks import TrackPixels


@dataclass
class RefinementConfig:
    """Triangulate → bundle adjust → filter → re-triangulate loop."""

    rounds: int = 3
    """Iterations of the loop."""
    robust_triangulation: bool = False
    """First round: RANSAC triangulation over view pairs (slower; for noisy global poses)."""
    max_reproj_px: float = 4.0
    """Observations with a larger reprojection error are dropped."""
    min_tri_angle_deg: float = 1.5
    """Points whose largest triangulation angle is smaller are dropped."""
    ba_iterations: int = 30
    """Levenberg-Marquardt iterations per bundle adjustment."""
    ba_function_tolerance: float = 1e-4
    """Bundle adjustment stops once an iteration lowers the cost by less than this fraction.
    Past 1e-4 the cost crawls (fern: -0.05% over the last 20 of 30 iterations) without
    changing poses measurably (AUC and agreement with COLMAP identical to 1e-6)."""
    ba_first_round_function_tolerance: float = 1e-2
    """The same for the first round, whose points are re-triangulated and filtered anyway
    (1e-2 vs 1e-6: same poses and points on the benchmark scenes, 2-3x fewer iterations)."""
    ba_loss: Literal["trivial", "huber", "cauchy", "soft_l1"] = "cauchy"
    """Robust loss of the bundle adjustment."""
    ba_loss_scale_px: float = 2.0
    """Scale of the robust loss in pixels."""
    refine_principal_point: bool = False
    """Also refine cx, cy (poorly constrained; COLMAP keeps them fixed by default)."""
    max_points_ba: int = 20000
    """Bundle-adjust at most this many points (the longest tracks)."""
    min_image_points: int = 30
    """Images that end with fewer points are left unregistered (listed in the summary), as the
    PnP fallback would not register them either (:attr:`PnPConfig.min_inliers`): on blowtorch
    such images were 25 degrees off the reference poses."""
    converged_max_filtered: float = 0.05
    """From the second round on, stop early when a round registers no new image, filters at
    most this fraction of the observations and lowers the mean reprojection error by less than
    ``converged_min_gain`` (relative) or ``converged_min_gain_px``."""
    converged_min_gain: float = 0.2
    """Relative decrease of the mean reprojection error below which a round counts as
    converged (see ``converged_max_filtered``; 0 disables the early stop)."""
    converged_min_gain_px: float = 0.05
    """A decrease of the mean reprojection error by less than this (pixels) also counts as
    converged: errors of hundredths of a pixel (synthetic walk: 0.08 -> 0.04 px) leave
    nothing for another round to improve."""


def _ba(
    model: str,
    cam_from_world: Tensor,
    intr: Tensor,
    points: Tensor,
    obs_cam: Tensor,
    obs_pt: Tensor,
    obs_xy: Tensor,
    intr_mode: str,
    cfg: RefinementConfig,
    fix_points: bool = False,
    function_tolerance: float = 1e-6,
    fixed_cameras: tuple[int, ...] = (),
) -> tuple[Tensor, Tensor, Tensor, list[float]]:
    """One bundle adjustment on the registered cameras (``fixed_cameras`` keep their pose);
    returns poses, intrinsics, points and the cost after each iteration."""
    from sceneforge.recon.ba import BAOptions, BAProblem, bundle_adjust

    shared = intr_mode == "shared"
    prob = BAProblem(
        model=model,
        rotation=matrix_to_angle_axis(cam_from_world[:, :, :3]),
        translation=cam_from_world[:, :, 3].clone(),
        intrinsics=intr[:1].clone() if shared else intr.clone(),
        points=points.clone(),
        cam_idx=obs_cam,
        point_idx=obs_pt,
        observations=obs_xy,
    )
    opts = BAOptions(
        max_iterations=cfg.ba_iterations,
        loss=cfg.ba_loss,
        loss_scale=cfg.ba_loss_scale_px,
        intrinsics="fixed" if intr_mode == "fixed" else intr_mode,
        fix_points=fix_points,
        fixed_cameras=fixed_cameras,
        function_tolerance=function_tolerance,
        constant_intrinsics=() if cfg.refine_principal_point else ("cx", "cy"),
        # The pipeline's thread setting (BAOptions' default, all cores, oversubscribes).
        num_threads=torch.get_num_threads(),
    )
    res, summary = bundle_adjust(prob, opts)
    T = make_rigid(angle_axis_to_matrix(res.rotation), res.translation)
    intr_out = (
        res.intrinsics.expand(cam_from_world.shape[0], -1).clone() if shared else res.intrinsics
    )
    return T, intr_out, res.points, [float(c) for c in summary.costs]


def _register_pnp(
    xy: TrackPixels,
    vis: Tensor,
    track_ids: Tensor,
    points: Tensor,
    use: Tensor,
    registered: Tensor,
    model: str,
    intr: Tensor,
    cfg: PnPConfig,
) -> dict[int, Tensor]:
    """PnP for every unregistered image with enough 2D-3D correspondences."""
    out: dict[int, Tensor] = {}
    has_pt = use.any(1)
    for i in (~registered).nonzero()[:, 0].tolist():
        sel = has_pt & vis[track_ids, i]
        if int(sel.sum()) < max(cfg.min_inliers, 6):
            continue
        rays = unproject(xy[track_ids[sel], i], model, intr[i].expand(int(sel.sum()), -1))[..., :2]
        T, inl = pnp_ransac(points[sel], rays, float(_focals(model, intr[i : i + 1])[0]), cfg)
        if int(inl.sum()) >= cfg.min_inliers and bool(torch.isfinite(T).all()):
            out[i] = T
    return out


def _final_filter(
    xy: TrackPixels,
    use: Tensor,
    track_ids: Tensor,
    points: Tensor,
    cam_from_world: Tensor,
    intr: Tensor,
    model: str,
    cfg: RefinementConfig,
) -> Tensor:
    """Drop observations above the error threshold and points with < 2 observations or a
    too small triangulation angle (in place on ``use``); returns the kept points."""
    pi, ii = use.nonzero(as_tuple=True)
    uv, depth = project(transform_points(cam_from_world[ii], points[pi]), model, intr[ii])
    err = (uv - xy[track_ids[pi], ii]).norm(dim=-1)
    bad = (err >= cfg.max_reproj_px) | (depth <= 0)
    use[pi[bad], ii[bad]] = False
    centers = -(cam_from_world[:, :, :3].transpose(-1, -2) @ cam_from_world[:, :, 3:])[..., 0]
    pi, ii = use.nonzero(as_tuple=True)
    d = torch.nn.functional.normalize(centers[ii] - points[pi], dim=-1)
    # Largest angle per point: angle between each ray and the point's mean ray, doubled bound.
    mean = torch.zeros_like(points).index_add_(0, pi, d)
    mean = torch.nn.functional.normalize(mean, dim=-1)
    ang = torch.rad2deg(torch.acos((d * mean[pi]).sum(-1).clamp(-1, 1)))
    max_ang = torch.zeros(points.shape[0], dtype=points.dtype).scatter_reduce_(
        0, pi, ang, "amax", include_self=True
    )
    keep = (use.sum(1) >= 2) & (2.0 * max_ang >= cfg.min_tri_angle_deg)
    return keep
