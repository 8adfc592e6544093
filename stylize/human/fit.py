"""Fit a body model to one person's video (issue 20): pose, shape, translation and optionally
the focal length, per frame, to 2D keypoints (and optionally person masks).

Inputs: MediaPipe Pose landmarks ``[F, 33, 2]`` in pixels (:data:`MEDIAPIPE_POSE_LANDMARKS`;
:func:`to_landmarks` scatters a model's own keypoint subset into that layout) with
confidences ``[F, 33]``, one pinhole camera per frame (or one for all) as
:class:`~sceneforge.core.cameras.Cameras` (OpenCV ``cam_from_world``, ``K``), optional person
masks ``[F, H, W]``. Landmarks the model does not map, non-finite ones and those below
``min_confidence`` are ignored; a frame with fewer than ``min_keypoints`` usable ones is an
error naming the frame.

Objective (per frame, averaged over frames). Pixel residuals are divided by the person's size
``s`` (median over frames of the diagonal of the keypoints' bounding box) so that weights do
not depend on the image resolution:

- data: ``sum_k c_k rho(|x_k - proj(X_k)| / s) / sum_k c_k`` with ``rho`` Geman-McClure
  ``x^2 / (1 + x^2 / sigma^2)`` (or Huber / L2), ``sigma = robust_scale``;
- pose prior: ``sum_j |R_j - I|_F^2`` over the body joints (``~ 2 theta^2``: L2 on the angle,
  smooth everywhere), ``chain_prior`` more on the in-between joints (:func:`~.fit_kinematics.chain_joints`);
- hinge prior (``hinge_prior``, :func:`hinge_penalty`): knees and elbows rotate about their
  flexion axis only and do not hyperextend;
- shape prior: ``|shape - default|^2``; anny's phenotypes are clamped to ``[0, 1]``;
- temporal smoothness: ``sum_j |R_j(t+1) - R_j(t)|_F^2`` (root included) and
  ``|transl(t+1) - transl(t)|^2 / height^2`` over consecutive frames (``smooth_order=2``:
  second differences instead);
- masks (optional): projected vertices outside the mask (its distance transform, sampled
  bilinearly) and mask pixels far from every projected vertex (a chamfer term), both robust.

What limits the accuracy (issue 20; anny walk, 256 px, 2 px noise, 30 frames): the depth of
the limbs. A bone's depth comes only from its foreshortening, ``|dz| = L sin(phi)``, which 2 px
of noise on a ~40 px segment leaves almost free, and from nothing else in one frame; errors
were 3-5x larger along the viewing ray than across it. Two priors remove most of it without
using anything about the subject: (a) anny's rig has ~41 joints between the root and the
keypoints (twist bones, 5 spine and 3 neck segments, pelvis, clavicle and metacarpal bones),
~120 rotation numbers per frame for 44 keypoint coordinates, so the fit bent the redundant
joints to absorb noise; ``chain_prior`` holds those near rest, leaving the keypoint joints and
branch points free (MPJPE 79 -> 55 mm, 10 frames, no masks). (b) With free 3-DOF knees and
elbows, a limb's depth flip costs nothing; the hinge prior keeps the flipped and abducted
solutions out (55 -> 43 mm). Not helping here: stronger first-order smoothness (damps the
swing of the limbs: worse), second differences (worse at 15 fps), a larger overall pose prior
(pulls towards the A-pose: worse), more L-BFGS iterations, the mask term (~1 mm).
``benchmarks/human.py --only fit --frames 30 --size 256``: gt2d + 2 px 69.5 -> 42.2 mm
(PA 55.5 -> 35.0); MediaPipe's keypoints (same setup, scratch run) 102.9 -> 95.5 mm, still
dominated by the detections (2-6 px median errors, the occluded arm at low confidence). On a
short, sharper case (6 frames, 512 px, tests) the chain prior costs ~10 mm instead.

Stages: (0) closed-form initialisation per frame, in the camera frame: body up along the
hip->shoulder image direction, the facing angle from the shoulder/hip width in pixels vs in 3D
(its sign, facing towards or away from the viewing ray, from the image direction of the feet),
depth ``z = f * H3d / h2d`` from the shoulder-hip height; (1) global orientation + translation
(+ focal) to the shoulders and hips; (2) everything, all keypoints; (3) with masks, stage 2
again with the mask term (``mask_vertices`` evenly subsampled vertices, ``mask_iters``). Only
joints that move a mapped keypoint (strict ancestors of keypoint joints, and a vertex
keypoint's dominant joint) are optimised; the others (fingers, toes, face) keep the canonical pose. Rotations are
optimised in the continuous 6D representation.

Kinematics: only the joints that place a keypoint (keypoint joints, active joints and their
ancestors, ~52 of anny's 104) are posed, level by level of the tree (:class:`~.fit_kinematics.PoseTree`); the
skipped joints keep the canonical pose, so for skinning their weights move to their nearest
kept ancestor, whose bone transform they share.

Optimiser and precision: L-BFGS with a strong-Wolfe line search in **float64**. The problem
is small (``F x active joints x 6`` numbers), smooth (Geman-McClure, 6D rotations) and
deterministic, so a quasi-Newton method converges in tens of iterations where Adam needs
thousands and a learning-rate schedule; the line search and curvature pairs need float64 at
sub-pixel residuals. Parameters, kinematics and projection run in float64; the model's own
forward (only for vertex keypoints, e.g. SMPL's) runs in the model's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.atomic import atomic_write_json
from sceneforge.core.cameras import Cameras, split_params, transform_points
from sceneforge.core.rotations import matrix_to_angle_axis, matrix_to_rot6d

from .body_model import MEDIAPIPE_POSE_LANDMARKS, BodyModel
from .fit_kinematics import (
    LANDMARK_INDEX,
    TORSO,
    FitProblem,
    KinematicBody,
    active_joints,
    chain_joints,
    hinge_frames,
    unit,
)

NUM_LANDMARKS = len(MEDIAPIPE_POSE_LANDMARKS)
_FEET = (
    (LANDMARK_INDEX["left_ankle"], LANDMARK_INDEX["left_foot_index"]),
    (LANDMARK_INDEX["right_ankle"], LANDMARK_INDEX["right_foot_index"]),
)
_FORMAT = "sceneforge.human_fit/1"


@dataclass
class FitConfig:
    """Options of :func:`fit_body` (weights relative to the data term; see the module docstring)."""

    fit_shape: bool = True
    """Fit the subject's shape (one for all frames; slower on anny: ~3x)."""
    fit_focal: bool = False
    """Also fit one focal scale (weak: on a tiny test it barely moved a 20 % wrong focal)."""
    focal_init: float | None = None
    """Starting fx in pixels (fy keeps the cameras' ratio); None: the cameras' focal."""
    min_confidence: float = 0.2
    """Keypoints below this confidence are ignored."""
    min_keypoints: int = 4
    """A frame with fewer confident keypoints is an error naming the frame."""
    robust: Literal["gm", "huber", "l2"] = "gm"
    """Robust loss of the keypoint residuals (gm = Geman-McClure)."""
    robust_scale: float = 0.05
    """Scale of the robust loss, in units of the person's 2D size."""
    pose_prior: float = 1e-6
    """Weight of the L2 pose regulariser."""
    chain_prior: float = 1e-2
    """Extra L2 pose weight on the in-between joints (see :func:`~.fit_kinematics.chain_joints`)."""
    shape_prior: float = 1e-4
    """Weight of the L2 shape regulariser (towards the default shape)."""
    smooth_pose: float = 1e-4
    """Weight of the frame-to-frame pose smoothness (per frame pair; not scaled by fps)."""
    smooth_transl: float = 1e-3
    """Weight of the frame-to-frame translation smoothness."""
    smooth_order: int = 1
    """Smoothness on frame differences (1: velocity) or second differences (2: acceleration)."""
    hinge_prior: float = 1e-2
    """Weight of the knee / elbow hinge prior (:func:`hinge_penalty`)."""
    mask_weight: float = 0.1
    """Weight of the mask (chamfer) term when masks are given."""
    mask_points: int = 256
    """Mask pixels per frame in the chamfer term."""
    mask_vertices: int = 1024
    """Model vertices (evenly subsampled) projected in the mask term (joint keypoints only)."""
    mask_iters: int = 30
    """L-BFGS iterations of the mask stage (needs every vertex: slower)."""
    stage1_iters: int = 40
    """L-BFGS iterations of the global orientation + translation stage."""
    stage2_iters: int = 300
    """L-BFGS iterations of the all-joints stage."""
    history: int = 20
    """L-BFGS history size."""


@dataclass
class FitResult:
    """A fitted body per frame. ``pose`` axis-angle ``[F, J, 3]`` in the model's convention,
    ``focal`` = fitted ``(fx, fy)`` (None when the cameras' were kept), reprojection error =
    confidence-weighted mean pixel distance of the usable keypoints per frame."""

    model_name: str
    joint_names: list[str]
    pose: Float[Tensor, "F J 3"]
    shape: Float[Tensor, " S"]
    transl: Float[Tensor, "F 3"]
    reprojection_error_px: Float[Tensor, " F"]
    focal: Float[Tensor, " 2"] | None = None
    loss: float = math.nan
    stage_losses: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.pose.shape[0]

    @torch.no_grad()
    def bodies(self, model: BodyModel, frames: slice | list[int] | None = None):
        """``model`` posed with the fitted parameters of ``frames`` (default: every frame), in
        the model's dtype, without grad (:class:`~.body_model.BodyOutput`)."""
        sel = slice(None) if frames is None else frames
        dt = model.dtype
        return model(self.pose[sel].to(dt), self.shape.to(dt), self.transl[sel].to(dt))


# ----------------------------------------------------------------------------- small ops


def to_landmarks(
    keypoints: Float[Tensor, "F K 2"], ids: list[int]
) -> tuple[Float[Tensor, "F 33 2"], Float[Tensor, "F 33"]]:
    """Scatter a model's keypoints (landmark indices ``ids``, as :meth:`BodyModel.keypoints`
    and the synthetic videos give them) into the 33-landmark layout; confidence 1 there, 0
    elsewhere (their pixels are 0)."""
    if keypoints.shape[1] != len(ids):
        raise ValueError(f"{keypoints.shape[1]} keypoints for {len(ids)} landmark ids")
    out = keypoints.new_zeros(keypoints.shape[0], NUM_LANDMARKS, 2)
    conf = keypoints.new_zeros(keypoints.shape[0], NUM_LANDMARKS)
    out[:, ids] = keypoints
    conf[:, ids] = 1.0
    return out, conf


def project_pinhole(
    points_world: Float[Tensor, "F K 3"],
    cam_from_world: Float[Tensor, "F 3 4"],
    focal: Float[Tensor, "F 2"],
    principal: Float[Tensor, "F 2"],
    min_depth: float = 1e-3,
) -> Float[Tensor, "F K 2"]:
    """Pixels of world points: ``f * (x, y) / z + c`` in each frame's camera (depth clamped
    to ``min_depth``, so points behind the camera stay finite)."""
    pc = transform_points(cam_from_world[:, None], points_world)
    z = pc[..., 2:].clamp_min(min_depth)
    return pc[..., :2] / z * focal[:, None] + principal[:, None]


def robust_loss(sq: Tensor, kind: str, sigma: float) -> Tensor:
    """``rho`` of squared normalised residuals: Geman-McClure ``x^2 / (1 + x^2 / sigma^2)``,
    Huber (quadratic up to ``sigma``, then linear) or plain ``x^2``."""
    if kind == "gm":
        return sq / (1.0 + sq / sigma**2)
    if kind == "huber":
        r = (sq + 1e-24).sqrt()
        return torch.where(r <= sigma, sq, 2.0 * sigma * r - sigma**2)
    if kind == "l2":
        return sq
    raise ValueError(f"robust must be 'gm', 'huber' or 'l2', got {kind!r}")


def hinge_penalty(
    rot: Float[Tensor, "F H 3 3"],
    axis: Float[Tensor, "H 3"],
    rest: Float[Tensor, " H"],
    margin: float = 0.1,
) -> Float[Tensor, " F"]:
    """Hinge prior of knees and elbows per frame, on their local rotations ``rot`` (canonical
    axes) with flexion axes ``axis`` and rest flexion angles ``rest``: the rotation off the
    axis ``|R a - a|^2`` (a hinge does not abduct) plus hyperextension
    ``relu(-(theta + rest) - margin)^2`` (it bends one way), ``theta`` the angle about ``a``
    (``atan2(a . vee(R - R^T) / 2, (tr R - 1) / 2)``)."""
    off = ((rot @ axis[..., None])[..., 0] - axis) ** 2
    skew = rot - rot.transpose(-1, -2)
    vee = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], -1) / 2
    theta = torch.atan2((vee * axis).sum(-1), (rot.diagonal(0, -2, -1).sum(-1) - 1) / 2)
    return (off.sum(-1) + F.relu(-(theta + rest) - margin) ** 2).sum(-1)


def _diff(x: Tensor, order: int) -> Tensor:
    """Finite differences of ``order`` (1 or 2) along the first (time) axis."""
    return x[1:] - x[:-1] if order == 1 else x[2:] - 2 * x[1:-1] + x[:-2]


# ----------------------------------------------------------------------------- inputs


def _check_inputs(
    model: BodyModel,
    keypoints: Tensor,
    confidence: Tensor | None,
    cameras: Cameras,
    masks: Tensor | None,
    cfg: FitConfig,
) -> FitProblem:
    if keypoints.dim() != 3 or keypoints.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(
            f"keypoints must be [F, {NUM_LANDMARKS}, 2] (MediaPipe Pose landmarks, pixels), got "
            f"{tuple(keypoints.shape)}; to_landmarks() scatters a model's keypoint subset"
        )
    n = keypoints.shape[0]
    if n == 0:
        raise ValueError("no frames to fit")
    kp = keypoints.double()
    conf = torch.ones(n, NUM_LANDMARKS, dtype=torch.float64) if confidence is None else confidence
    if conf.shape != (n, NUM_LANDMARKS):
        raise ValueError(f"confidence must be [{n}, {NUM_LANDMARKS}], got {tuple(conf.shape)}")
    conf = torch.nan_to_num(conf.double(), nan=0.0).clamp(0.0, 1.0)
    conf = torch.where(kp.isfinite().all(-1), conf, torch.zeros_like(conf))
    conf = torch.where(conf >= cfg.min_confidence, conf, torch.zeros_like(conf))
    kp = torch.nan_to_num(kp, nan=0.0, posinf=0.0, neginf=0.0)
    lm_ids = [i for i, name in enumerate(MEDIAPIPE_POSE_LANDMARKS)
              if name in model.keypoint_joints or name in model.keypoint_vertices]  # fmt: skip
    usable = (conf[:, lm_ids] > 0).sum(1)
    for f in range(n):
        if int(usable[f]) < cfg.min_keypoints:
            raise ValueError(
                f"frame {f}: {int(usable[f])} confident keypoints that {model.name} maps "
                f"(need >= {cfg.min_keypoints}, confidence >= {cfg.min_confidence})"
            )
    if len(cameras) not in (1, n):
        raise ValueError(f"{len(cameras)} cameras for {n} frames (give 1 or {n})")
    fx, fy, cx, cy, dist = split_params(cameras.model, cameras.params.double())
    if cameras.model == "BAL" or bool((dist != 0).any()):
        raise ValueError("fit_body needs pinhole cameras: undistort the keypoints first")
    idx = [0] * n if len(cameras) == 1 else list(range(n))
    focal = torch.stack([fx, fy], -1)[idx]
    if cfg.focal_init is not None:
        focal = focal * (cfg.focal_init / focal[:, :1])
    if masks is not None:
        h, w = cameras.height[idx], cameras.width[idx]
        if masks.dim() != 3 or masks.shape[0] != n:
            raise ValueError(f"masks must be [{n}, H, W], got {tuple(masks.shape)}")
        if bool((h != masks.shape[1]).any() or (w != masks.shape[2]).any()):
            raise ValueError(f"masks are {tuple(masks.shape[1:])}, the cameras' images differ")
        for f in range(n):
            if not bool(masks[f].any()):
                raise ValueError(f"frame {f}: empty person mask")
    joint_names = [model.keypoint_joints.get(MEDIAPIPE_POSE_LANDMARKS[i]) for i in lm_ids]
    kp_joints = None
    if all(j is not None for j in joint_names):
        kp_joints = [model.joint_names.index(j) for j in joint_names]
    sel = conf[:, lm_ids] > 0
    boxes = []
    for f in range(n):
        p = kp[f, lm_ids][sel[f]]
        boxes.append(float((p.amax(0) - p.amin(0)).norm()))
    scale = max(float(torch.tensor(boxes).median()), 1e-6)
    return FitProblem(
        lm_ids, kp_joints, kp[:, lm_ids], conf[:, lm_ids], focal,
        torch.stack([cx, cy], -1)[idx], cameras.cam_from_world.double()[idx], scale,
    )  # fmt: skip


def _initial_pose(
    model: BodyModel, body: KinematicBody, prob: FitProblem, shape: Tensor
) -> tuple[Tensor, Tensor]:
    """Closed-form global orientation (world from canonical) and translation per frame."""
    n = prob.target.shape[0]
    eye = torch.eye(3, dtype=torch.float64).expand(1, model.num_joints, 3, 3)
    zero = torch.zeros(1, 3, dtype=torch.float64)
    kp3, _ = body(eye, shape, zero)
    kp3 = kp3[0].detach()
    pos = {lm: i for i, lm in enumerate(prob.lm_ids)}
    if not all(t in pos for t in TORSO):
        raise ValueError(f"{model.name} does not map the shoulders and hips")
    ls, rs, lh, rh = (kp3[pos[t]] for t in TORSO)
    up3, left3 = unit((ls + rs) / 2 - (lh + rh) / 2), unit(ls - rs + lh - rh)
    left3 = unit(left3 - (left3 @ up3) * up3)
    canon_axes = torch.stack([left3, up3, torch.linalg.cross(left3, up3)], -1)
    torso_h3 = float(((ls + rs) / 2 - (lh + rh) / 2).norm())
    width3 = float(((ls - rs).norm() + (lh - rh).norm()) / 2)
    mid_hip3 = (lh + rh) / 2
    root3 = body.j0[0]

    w, x = prob.weight, prob.target
    ok = torch.stack([w[:, pos[t]] > 0 for t in TORSO], -1).all(-1)
    if not bool(ok.any()):
        raise ValueError("no frame has confident shoulders and hips: cannot initialise")
    good = torch.nonzero(ok)[:, 0]
    rots, transl, signs = [], [], []
    for f in range(n):
        g = int(good[(good - f).abs().argmin()])  # nearest frame with a torso
        p_ls, p_rs, p_lh, p_rh = (x[g, pos[t]] for t in TORSO)
        d = (p_ls + p_rs - p_lh - p_rh) / 2
        h2 = float(d.norm().clamp_min(1e-6))
        up_i = d / h2
        lat = torch.stack([-up_i[1], up_i[0]])
        fpx = float(prob.focal[g].mean())
        z = fpx * torso_h3 / h2
        cos_yaw = float((((p_ls - p_rs + p_lh - p_rh) / 2) @ lat) * z / (fpx * width3))
        cos_yaw = max(-1.0, min(1.0, cos_yaw))
        foot = 0.0
        for a, b in _FEET:
            if a in pos and b in pos and w[g, pos[a]] > 0 and w[g, pos[b]] > 0:
                foot += float((x[g, pos[b]] - x[g, pos[a]]) @ lat)
        signs.append(math.copysign(1.0, foot) if abs(foot) > 0.05 * h2 else 0.0)
        up_c = torch.cat([up_i, up_i.new_zeros(1)])
        lat_c, ez = torch.cat([lat, lat.new_zeros(1)]), torch.tensor([0.0, 0.0, 1.0]).double()
        rots.append((up_c, lat_c, ez, cos_yaw))
        ctr = ((p_lh + p_rh) / 2 - prob.principal[g]) / prob.focal[g]
        transl.append(z * torch.cat([ctr, ctr.new_ones(1)]))
    # frames without a clear foot cue take the sign of their nearest frame with one
    known = [i for i, s in enumerate(signs) if s != 0.0]
    out_r, out_t = [], []
    for f, ((up_c, lat_c, ez, c), hip_c) in enumerate(zip(rots, transl)):
        s = signs[min(known, key=lambda i: abs(i - f))] if known else 1.0
        left_c = c * lat_c + s * math.sqrt(max(0.0, 1.0 - c * c)) * ez
        cam_axes = torch.stack([left_c, up_c, torch.linalg.cross(left_c, up_c)], -1)
        r_cw, t_cw = prob.cam_from_world[f, :, :3], prob.cam_from_world[f, :, 3]
        r_w = r_cw.T @ cam_axes @ canon_axes.T
        hip_w = r_cw.T @ (hip_c - t_cw)
        out_r.append(r_w)
        out_t.append(hip_w - r_w @ (mid_hip3 - root3) - root3)
    return torch.stack(out_r), torch.stack(out_t)


# ----------------------------------------------------------------------------- masks


def _mask_targets(masks: Tensor, points: int) -> tuple[Tensor, Tensor, Tensor]:
    """Distance (px) to the nearest mask pixel ``[F, 1, H, W]`` and up to ``points`` mask
    pixel centres per frame ``[F, P, 2]`` with their validity ``[F, P]``."""
    from scipy.ndimage import distance_transform_edt

    dist = torch.stack(
        [torch.from_numpy(distance_transform_edt(~m.bool().cpu().numpy())) for m in masks]
    )[:, None].double()
    n = masks.shape[0]
    pix = torch.zeros(n, points, 2, dtype=torch.float64)
    valid = torch.zeros(n, points, dtype=torch.bool)
    for f in range(n):
        rc = torch.nonzero(masks[f].bool()).double()
        pick = torch.linspace(0, len(rc) - 1, min(points, len(rc))).round().long()
        pix[f, : len(pick)] = rc[pick].flip(-1) + 0.5
        valid[f, : len(pick)] = True
    return dist, pix, valid


def mask_loss(
    verts_px: Float[Tensor, "F V 2"],
    dist: Float[Tensor, "F 1 H W"],
    pix: Float[Tensor, "F P 2"],
    valid: Bool[Tensor, "F P"],
    scale: float,
    kind: str = "gm",
    sigma: float = 0.05,
) -> Float[Tensor, " F"]:
    """Silhouette term per frame: projected vertices' distance outside the mask plus mask
    pixels' distance to the nearest projected vertex (both robust, divided by ``scale``)."""
    h, w = dist.shape[-2:]
    grid = torch.stack([2 * verts_px[..., 0] / w - 1, 2 * verts_px[..., 1] / h - 1], -1)
    inside = F.grid_sample(dist, grid[:, None], align_corners=False, padding_mode="border")
    beyond = (
        F.relu(-verts_px[..., 0]) + F.relu(verts_px[..., 0] - w)
        + F.relu(-verts_px[..., 1]) + F.relu(verts_px[..., 1] - h)
    )  # fmt: skip
    out_term = robust_loss(((inside[:, 0, 0] + beyond) / scale) ** 2, kind, sigma).mean(-1)
    near = torch.cdist(pix, verts_px).amin(-1)
    cover = robust_loss((near / scale) ** 2, kind, sigma) * valid
    return out_term + cover.sum(-1) / valid.sum(-1).clamp_min(1)


# ----------------------------------------------------------------------------- fitting


def _lbfgs(params: list[Tensor], objective, iters: int, history: int) -> float:
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=iters, history_size=history, line_search_fn="strong_wolfe",
        tolerance_grad=1e-12, tolerance_change=1e-15,
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(objective())


def fit_body(
    model: BodyModel,
    keypoints: Float[Tensor, "F 33 2"],
    cameras: Cameras,
    confidence: Float[Tensor, "F 33"] | None = None,
    masks: Bool[Tensor, "F H W"] | None = None,
    shape: Float[Tensor, " S"] | None = None,
    config: FitConfig | None = None,
) -> FitResult:
    """Fit ``model`` to a video's keypoints (see the module docstring). ``shape``: the
    subject's shape to start from (default: the model's default), kept when
    ``config.fit_shape`` is False."""
    cfg = config or FitConfig()
    prob = _check_inputs(model, keypoints, confidence, cameras, masks, cfg)
    n = prob.target.shape[0]
    weights = model.canonical(model._shape(shape))[2].detach()
    active = active_joints(model, prob.lm_ids, weights)
    body = KinematicBody(model, prob, active, cfg.fit_shape, weights, cfg.mask_vertices)
    base = model.default_shape().double()
    start = base if shape is None else model._shape(shape).double().detach()
    delta = (start - base).clone().requires_grad_(cfg.fit_shape)
    log_f = torch.zeros(1, dtype=torch.float64, requires_grad=cfg.fit_focal)

    body.linearise(body.shape(delta))
    with torch.no_grad():
        r0, t0 = _initial_pose(model, body, prob, body.shape(delta))
    root6d = matrix_to_rot6d(r0).clone().requires_grad_(True)
    eye6 = matrix_to_rot6d(torch.eye(3, dtype=torch.float64))
    body6d = eye6.expand(n, len(active), 6).clone().requires_grad_(True)
    transl = t0.clone().requires_grad_(True)
    with torch.no_grad():
        rot_c = body.rotations(eye6[None], body6d[:1])
        kp_c, _ = body(rot_c, body.shape(delta), torch.zeros_like(t0[:1]))
        height = float((kp_c[0].amax(0) - kp_c[0].amin(0)).norm())  # the person's 3D size
    eye = torch.eye(3, dtype=torch.float64)
    chain = chain_joints(model, prob.lm_ids, active)
    hinge_j, hinge_axes, hinge_rest = hinge_frames(model, body, prob.lm_ids, active)
    torso = torch.tensor([t in TORSO for t in prob.lm_ids], dtype=torch.float64)
    mask_data = None if masks is None else _mask_targets(masks, cfg.mask_points)

    def objective(stage: int) -> Tensor:
        rot = body.rotations(root6d, body6d)
        kp, verts = body(rot, body.shape(delta), transl, stage == 3)
        focal = prob.focal * log_f.exp()
        px = project_pinhole(kp, prob.cam_from_world, focal, prob.principal)
        w = prob.weight * torso if stage == 1 else prob.weight
        sq = ((px - prob.target) ** 2).sum(-1) / prob.scale**2
        data = (w * robust_loss(sq, cfg.robust, cfg.robust_scale)).sum(1) / w.sum(1).clamp_min(
            1e-12
        )
        total = data.mean()
        act_rot = rot[:, [0, *active]]
        order = min(cfg.smooth_order, n - 1)
        if order >= 1:
            dr = _diff(act_rot, order)
            total = total + cfg.smooth_pose * (dr**2).sum((-1, -2, -3)).mean()
            dt = (_diff(transl, order) ** 2).sum(-1) / height**2
            total = total + cfg.smooth_transl * dt.mean()
        if stage == 1:
            return total
        total = total + cfg.pose_prior * ((act_rot[:, 1:] - eye) ** 2).sum((-1, -2, -3)).mean()
        if cfg.chain_prior > 0:
            dev = ((act_rot[:, 1:] - eye) ** 2).sum((-1, -2))
            total = total + cfg.chain_prior * (dev * chain).sum(-1).mean()
        total = total + cfg.shape_prior * (delta**2).sum()
        if cfg.hinge_prior > 0 and hinge_j:
            hinge = hinge_penalty(rot[:, hinge_j], hinge_axes, hinge_rest)
            total = total + cfg.hinge_prior * hinge.mean()
        if stage == 3 and mask_data is not None and verts is not None:
            vpx = project_pinhole(verts, prob.cam_from_world, focal, prob.principal)
            ml = mask_loss(vpx, *mask_data, prob.scale, cfg.robust, cfg.robust_scale)
            total = total + cfg.mask_weight * ml.mean()
        return total

    losses: dict[str, float] = {}
    stage1 = [root6d, transl] + ([log_f] if cfg.fit_focal else [])
    losses["stage1"] = _lbfgs(stage1, lambda: objective(1), cfg.stage1_iters, cfg.history)
    body.linearise(body.shape(delta))
    stage2 = stage1 + [body6d] + ([delta] if cfg.fit_shape else [])
    losses["stage2"] = _lbfgs(stage2, lambda: objective(2), cfg.stage2_iters, cfg.history)
    if masks is not None:
        losses["stage3"] = _lbfgs(stage2, lambda: objective(3), cfg.mask_iters, cfg.history)

    body.linearise(body.shape(delta), jacobian=False)  # exact joints of the final shape
    with torch.no_grad():
        rot = body.rotations(root6d, body6d)
        kp, _ = body(rot, body.shape(delta), transl)
        focal = prob.focal * log_f.exp()
        px = project_pinhole(kp, prob.cam_from_world, focal, prob.principal)
        err = ((px - prob.target).norm(dim=-1) * prob.weight).sum(1) / prob.weight.sum(1)
        return FitResult(
            model_name=model.name,
            joint_names=list(model.joint_names),
            pose=matrix_to_angle_axis(rot),
            shape=body.shape(delta).detach().clone(),
            transl=transl.detach().clone(),
            reprojection_error_px=err,
            focal=focal[0].detach().clone() if cfg.fit_focal else None,
            loss=losses["stage3" if masks is not None else "stage2"],
            stage_losses=losses,
        )


# ----------------------------------------------------------------------------- files


def write_fit(path: str | Path, result: FitResult) -> Path:
    """Write ``result`` as JSON, atomically."""
    obj = {
        "format": _FORMAT,
        "model_name": result.model_name,
        "joint_names": list(result.joint_names),
        "pose": result.pose.double().tolist(),
        "shape": result.shape.double().tolist(),
        "transl": result.transl.double().tolist(),
        "reprojection_error_px": result.reprojection_error_px.double().tolist(),
        "focal": None if result.focal is None else result.focal.double().tolist(),
        "loss": result.loss,
        "stage_losses": dict(result.stage_losses),
    }
    return atomic_write_json(path, obj)


def read_fit(path: str | Path) -> FitResult:
    """Read a file written by :func:`write_fit`."""
    import json

    with open(path, encoding="utf-8") as fh:
        obj = json.load(fh)
    if obj.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a {_FORMAT} file (format {obj.get('format')!r})")
    pose = torch.tensor(obj["pose"], dtype=torch.float64)
    n, j = len(obj["transl"]), len(obj["joint_names"])
    if pose.shape != (n, j, 3):
        raise ValueError(f"{path}: pose is {tuple(pose.shape)}, expected ({n}, {j}, 3)")
    return FitResult(
        model_name=obj["model_name"],
        joint_names=list(obj["joint_names"]),
        pose=pose,
        shape=torch.tensor(obj["shape"], dtype=torch.float64),
        transl=torch.tensor(obj["transl"], dtype=torch.float64).reshape(n, 3),
        reprojection_error_px=torch.tensor(obj["reprojection_error_px"], dtype=torch.float64),
        focal=None if obj["focal"] is None else torch.tensor(obj["focal"], dtype=torch.float64),
        loss=float(obj["loss"]),
        stage_losses={k: float(v) for k, v in obj.get("stage_losses", {}).items()},
    )
