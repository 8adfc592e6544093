"""Conversion between :class:`BAProblem` and ``pycolmap.Reconstruction``.

BAL problems (camera looking down -z, image y up) become COLMAP RADIAL cameras with
``[f, 0, 0, k1, k2]`` through :func:`sceneforge.core.conventions.bal_to_opencv`
(``R' = F R``, ``t' = F t``, observation ``(x, -y)``, ``F = diag(1, -1, -1)``); the
residuals are identical up to the y sign. Caveat: COLMAP gives a zero residual to
observations of points at (near) zero or negative depth, so its own cost differs
from the BAL cost wherever such observations exist; score solutions with
:func:`sceneforge.recon.bal.bal_cost` instead.
"""

from __future__ import annotations

import numpy as np
import torch

from sceneforge.core.cameras import MODEL_PARAMS, convert_params, most_general_model
from sceneforge.core.conventions import (
    bal_to_opencv,
    opencv_to_bal,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
)
from sceneforge.core.rotations import (
    angle_axis_to_matrix,
    matrix_to_quat_wxyz,
    quat_wxyz_to_angle_axis,
)
from sceneforge.recon.ba import BAProblem


def _pycolmap():
    try:
        import pycolmap
    except ImportError as e:  # pragma: no cover - pycolmap is a core dependency
        raise ImportError("the COLMAP bridge needs pycolmap (pip install pycolmap)") from e
    return pycolmap


def problem_to_reconstruction(
    problem: BAProblem, width: int | None = None, height: int | None = None
):
    """Build a ``pycolmap.Reconstruction`` (one camera, trivial rig and image per BA camera).

    ``width``/``height`` default to a size covering every observation (BAL files have
    none); they do not affect bundle adjustment. Image ``i`` gets id ``i + 1`` and name
    ``"{i:06d}"``; point ``j`` is added ``j``-th (ids follow the insertion order).
    """
    pycolmap = _pycolmap()
    p = problem.detach().to(device="cpu", dtype=torch.float64)
    cfw = p.cam_from_world()
    intr = p.camera_intrinsics()
    obs = p.observations
    model = p.model
    if model == "BAL":
        cfw, intr, obs = bal_to_opencv(cfw, intr, obs)
        model = "RADIAL"
    if width is None or height is None:
        extent = float(obs.abs().max()) if obs.numel() else 1.0
        size = int(2 * np.ceil(extent) + 2)
        width, height = width or size, height or size
    rec = pycolmap.Reconstruction()
    cam_idx = p.cam_idx.numpy()
    pt_idx = p.point_idx.numpy()
    obs_np = obs.numpy()
    point2d_index = np.zeros(len(cam_idx), dtype=np.int64)
    quats = quat_wxyz_to_xyzw(matrix_to_quat_wxyz(cfw[:, :, :3])).numpy()
    for i in range(p.num_cameras):
        cam = pycolmap.Camera(
            model=model,
            width=int(width),
            height=int(height),
            params=intr[i].numpy(),
            camera_id=i + 1,
        )
        rec.add_camera_with_trivial_rig(cam)
        sel = np.flatnonzero(cam_idx == i)
        point2d_index[sel] = np.arange(len(sel))
        image = pycolmap.Image(
            name=f"{i:06d}", keypoints=obs_np[sel], camera_id=i + 1, image_id=i + 1
        )
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(quats[i]), cfw[i, :, 3].numpy())
        rec.add_image_with_trivial_frame(image, pose)
    order = np.argsort(pt_idx, kind="stable")
    bounds = np.searchsorted(pt_idx[order], np.arange(p.num_points + 1))
    pts = p.points.numpy()
    for j in range(p.num_points):
        track = pycolmap.Track()
        for k in order[bounds[j] : bounds[j + 1]]:
            track.add_element(int(cam_idx[k]) + 1, int(point2d_index[k]))
        rec.add_point3D(pts[j], track)
    return rec


def reconstruction_to_problem(
    rec, to_bal: bool | None = None, dtype: torch.dtype = torch.float64
) -> BAProblem:
    """Read poses, intrinsics, points and observations back from a reconstruction.

    Images with a pose are taken in ``image_id`` order, points in ``point3D_id`` order.
    ``to_bal`` (default: all cameras RADIAL with zero principal point) converts back to
    the BAL frame with :func:`sceneforge.core.conventions.opencv_to_bal`; otherwise all
    cameras are expressed in their most general common model.
    """
    image_ids = sorted(i for i, im in rec.images.items() if im.has_pose)
    if not image_ids:
        raise ValueError("reconstruction has no posed images")
    images = [rec.images[i] for i in image_ids]
    models = [rec.cameras[im.camera_id].model.name for im in images]
    for m in models:
        if m not in MODEL_PARAMS:
            raise ValueError(
                f"camera model {m} is not supported; use one of {sorted(MODEL_PARAMS)}"
            )
    target = most_general_model(models)
    intr = torch.stack(
        [
            convert_params(m, torch.tensor(rec.cameras[im.camera_id].params, dtype=dtype), target)
            for m, im in zip(models, images)
        ]
    )
    quats = torch.tensor(
        np.stack([im.cam_from_world().rotation.quat for im in images]), dtype=dtype
    )
    trans = torch.tensor(np.stack([im.cam_from_world().translation for im in images]), dtype=dtype)
    rot_mat = angle_axis_to_matrix(quat_wxyz_to_angle_axis(quat_xyzw_to_wxyz(quats)))
    cfw = torch.cat([rot_mat, trans[:, :, None]], -1)
    index_of = {iid: k for k, iid in enumerate(image_ids)}
    point_ids = sorted(rec.points3D)
    pts, cam_idx, pt_idx, xy = [], [], [], []
    for j, pid in enumerate(point_ids):
        p3d = rec.points3D[pid]
        pts.append(p3d.xyz)
        for el in p3d.track.elements:
            if el.image_id not in index_of:
                continue
            cam_idx.append(index_of[el.image_id])
            pt_idx.append(j)
            xy.append(rec.images[el.image_id].points2D[el.point2D_idx].xy)
    points = torch.tensor(np.array(pts).reshape(-1, 3), dtype=dtype)
    obs = torch.tensor(np.array(xy).reshape(-1, 2), dtype=dtype)
    if to_bal is None:
        to_bal = target == "RADIAL" and bool((intr[:, 1:3] == 0).all())
    model = target
    if to_bal:
        cfw, intr, obs = opencv_to_bal(cfw, convert_params(target, intr, "RADIAL"), obs)
        model = "BAL"
    rotation = quat_wxyz_to_angle_axis(matrix_to_quat_wxyz(cfw[:, :, :3]))
    return BAProblem(
        model=model,
        rotation=rotation,
        translation=cfw[:, :, 3].contiguous(),
        intrinsics=intr,
        points=points,
        cam_idx=torch.tensor(cam_idx, dtype=torch.long),
        point_idx=torch.tensor(pt_idx, dtype=torch.long),
        observations=obs,
    )


def colmap_bundle_adjust(
    problem: BAProblem,
    num_threads: int = 1,
    function_tolerance: float = 1e-6,
    gradient_tolerance: float = 1e-10,
    parameter_tolerance: float = 1e-8,
    max_iterations: int = 100,
    refine_intrinsics: bool = True,
):
    """Run pycolmap's (Ceres) bundle adjustment on ``problem``.

    Returns ``(solved_problem, pycolmap_summary, solve_seconds)``; only the Ceres solve is
    timed (conversion excluded). The principal point stays fixed, focal and radial terms
    are refined unless ``refine_intrinsics`` is False.
    """
    import time

    pycolmap = _pycolmap()
    rec = problem_to_reconstruction(problem)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.print_summary = False
    opts.refine_focal_length = refine_intrinsics
    opts.refine_extra_params = refine_intrinsics
    opts.refine_principal_point = False
    so = opts.ceres.solver_options
    so.function_tolerance = function_tolerance
    so.gradient_tolerance = gradient_tolerance
    so.parameter_tolerance = parameter_tolerance
    so.max_num_iterations = max_iterations
    so.num_threads = num_threads
    opts.ceres.min_num_residuals_for_cpu_multi_threading = 0 if num_threads > 1 else 50000
    config = pycolmap.BundleAdjustmentConfig()
    for iid in rec.images:
        config.add_image(iid)
    adjuster = pycolmap.create_default_bundle_adjuster(opts, config, rec)
    t0 = time.perf_counter()
    summary = adjuster.solve()
    wall = time.perf_counter() - t0
    solved = reconstruction_to_problem(rec, to_bal=problem.model == "BAL", dtype=problem.dtype)
    return solved, summary, wall
