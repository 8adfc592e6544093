"""Camera refinement while training: per-image pose and focal corrections (nerfstudio's
``CameraOptimizer``, ``SO3xR3`` / ``SE3``, in sceneforge's conventions).

Every training image ``j`` gets a 6-vector ``xi_j = (rho, omega)`` (translation part first, as
nerfstudio) and, optionally, a log focal scale ``phi_j``; all start at zero (= the input
cameras exactly). The correction acts in the camera frame::

    world_from_cam' = world_from_cam @ [R_d | t_d]      K' = K with fx, fy times exp(phi)

with ``R_d = exp(omega)`` and ``t_d = rho`` (``SO3xR3``) or ``t_d = V(omega) rho`` (``SE3``,
the full se(3) exponential). On a training ray (origin = camera centre ``c``, unit direction
``d``) this is::

    d_c = R_cw d,  d_c' = normalize(d_c.x, d_c.y, s d_c.z),  d' = R_wc R_d d_c',  o' = c + R_wc t_d

(dividing the normalised image coordinates by ``s`` = scaling the focal lengths by ``s``: exact
for pinhole cameras, first order for distorted ones). Everything is written as "input ray plus
a correction that is exactly zero at zero parameters", so with refinement on, step 0 renders
exactly the unrefined rays. An L2 regulariser (``camera_opt_weight * mean |params|^2``) keeps
the corrections small and pins the gauge (a global drift of all cameras).

Two options against corrections that absorb a young field's errors instead of pose errors
(benchmarks/RESULTS.md): a warm-up (:func:`warmup_factor`: the corrections stay frozen for a
fraction of the run, then their learning rate ramps up; a function of the schedule fraction,
so exact on resume) and pixel units (:func:`pixel_scale`: the optimised parameters are the
image motion the corrections cause, so Adam's step size, about ``lr`` per step whatever the
gradient's size, and the regulariser mean the same for any focal length and scene scale).

Held-out views get no correction of their own (they have no parameters). The field is learned
in the frame of the *refined* training cameras, which may drift from the input frame by a
global similarity (the gauge; the regulariser only damps it), so held-out cameras are mapped
into that frame before rendering (:func:`eval_cameras`, as BARF / nerfstudio-style
evaluations): by the Sim(3) that aligns the reference training cameras (by default the input
ones; a benchmark with ground truth sets :attr:`CameraOptimizer.align_reference` to the true
ones) onto the refined ones, fitted on the camera centres and on points at the scene's depth on
the optical axes (:func:`~sceneforge.core.metrics.sim3_cameras_to_cameras`). Refined training
cameras are exported with :meth:`CameraOptimizer.refined_cameras` and written into the run
(:data:`REFINED_CAMERAS`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sceneforge.core.cameras import MODEL_PARAMS, Cameras, compose_rigid, invert_rigid
from sceneforge.core.metrics import sim3_cameras_to_cameras, transform_cameras_sim3
from sceneforge.core.rotations import _sinc_and_cosc, angle_axis_to_matrix, skew
from sceneforge.core.scene import SceneData

#: Refined training cameras of a run (next to its checkpoint), written when refinement is on.
REFINED_CAMERAS = "refined_cameras.json"
MODES = ("SO3xR3", "SE3")


def so3_exp_minus_identity(omega: Float[Tensor, "*b 3"]) -> Float[Tensor, "*b 3 3"]:
    """``exp([omega]_x) - I`` (exactly zero at ``omega = 0``)."""
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return angle_axis_to_matrix(omega) - eye


def _se3_v(omega: Float[Tensor, "*b 3"]) -> Float[Tensor, "*b 3 3"]:
    """The left Jacobian ``V = I + b K + c K^2`` of SO(3) (``t = V rho`` in the se(3) exp)."""
    theta2 = (omega * omega).sum(-1)
    a, b = _sinc_and_cosc(theta2)
    small = theta2 < 1e-6
    safe = torch.where(small, torch.ones_like(theta2), theta2)
    c = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (1.0 - a) / safe)
    k = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(k.shape)
    return eye + b[..., None, None] * k + c[..., None, None] * (k @ k)


def pose_delta(xi: Float[Tensor, "*b 6"], mode: str = "SO3xR3") -> Float[Tensor, "*b 3 4"]:
    """The exp map of ``xi = (rho, omega)``: ``[R_d | t_d]`` (``SO3xR3``: ``t_d = rho``;
    ``SE3``: ``t_d = V(omega) rho``)."""
    if mode not in MODES:
        raise ValueError(f"unknown camera refinement {mode!r}; use one of {MODES}")
    rho, omega = xi[..., :3], xi[..., 3:]
    R = angle_axis_to_matrix(omega)
    t = rho if mode == "SO3xR3" else (_se3_v(omega) @ rho[..., None])[..., 0]
    return torch.cat([R, t[..., None]], dim=-1)


def refine_rays(
    origins: Float[Tensor, "B 3"],
    directions: Float[Tensor, "B 3"],
    z_per_t: Float[Tensor, " B"],
    cam_rot: Float[Tensor, "B 3 3"],
    xi: Float[Tensor, "B 6"],
    log_focal: Float[Tensor, " B"] | None = None,
    mode: str = "SO3xR3",
) -> tuple[Float[Tensor, "B 3"], Float[Tensor, "B 3"], Float[Tensor, " B"]]:
    """Rays of cameras corrected by ``xi`` / ``log_focal`` (per ray: its image's values).

    ``cam_rot`` is the rotation of each ray's input ``cam_from_world``; ``directions`` are unit
    (as :meth:`Cameras.rays`). Returns ``origins'``, unit ``directions'`` and ``z_per_t'``
    (camera-z per unit length in the corrected camera). Exactly the inputs at zero parameters.
    """
    if mode not in MODES:
        raise ValueError(f"unknown camera refinement {mode!r}; use one of {MODES}")
    rho, omega = xi[..., :3], xi[..., 3:]
    t_d = rho if mode == "SO3xR3" else (_se3_v(omega) @ rho[..., None])[..., 0]
    d_c = (cam_rot @ directions[..., None])[..., 0]
    delta_c = torch.zeros_like(d_c)
    z_ratio = torch.ones_like(z_per_t)
    if log_focal is not None:
        # normalize(x, y, s z) - (x, y, z) for unit d_c, as e = s^2 - 1 times a smooth term
        s = torch.exp(log_focal)
        e = torch.expm1(2.0 * log_focal)
        z2 = d_c[..., 2] ** 2
        n = torch.sqrt(1.0 + e * z2)
        xy = -e * z2 / (n * (1.0 + n))
        zz = e * (1.0 - z2) / (n * (s + n))
        delta_c = torch.cat([d_c[..., :2] * xy[..., None], (d_c[..., 2] * zz)[..., None]], -1)
        z_ratio = 1.0 + zz
    rot_m1 = so3_exp_minus_identity(omega)
    d_new_c = (rot_m1 @ (d_c + delta_c)[..., None])[..., 0] + delta_c
    world_rot = cam_rot.transpose(-1, -2)
    d_out = directions + (world_rot @ d_new_c[..., None])[..., 0]
    o_out = origins + (world_rot @ t_d[..., None])[..., 0]
    return o_out, d_out, z_per_t * z_ratio


def refined_cam_from_world(
    cam_from_world: Float[Tensor, "N 3 4"], delta: Float[Tensor, "N 3 4"]
) -> Float[Tensor, "N 3 4"]:
    """``cam_from_world'`` of ``world_from_cam @ delta``: ``[R_d^T R | R_d^T (t - t_d)]``."""
    return compose_rigid(invert_rigid(delta), cam_from_world)


def scale_focal(cameras: Cameras, scale: Float[Tensor, " N"]) -> Cameras:
    """``cameras`` with their focal lengths (``f`` / ``fx`` / ``fy``) times ``scale``."""
    cols = [k for k, name in enumerate(MODEL_PARAMS[cameras.model]) if name in ("f", "fx", "fy")]
    p = cameras.params.clone()
    p[:, cols] = p[:, cols] * scale.to(p)[:, None]
    return dataclasses.replace(cameras, params=p)


class CameraOptimizer(nn.Module):
    """Per-training-image pose (and focal) corrections, zero-initialised (= input cameras).

    Args:
        mode: ``SO3xR3`` or ``SE3`` (see :func:`pose_delta`).
        cameras: the input cameras of the training images, in training order.
        focal: also refine a per-image focal scale.
        lr: learning rate of its optimizer parameter group.
        weight: L2 regulariser weight.
    """

    def __init__(
        self,
        mode: str,
        cameras: Cameras,
        focal: bool = False,
        lr: float = 1e-3,
        weight=1e-2,
        warmup: float = 0.0,
        units: Tensor | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown camera refinement {mode!r}; use one of {MODES}")
        self.mode, self.lr, self.weight = mode, float(lr), float(weight)
        self.warmup = float(warmup)
        """Fraction of the run with frozen corrections (see :func:`warmup_factor`)."""
        self.input_cameras = cameras.to(dtype=torch.float64, device="cpu")
        n = len(cameras)
        self.pose = nn.Parameter(torch.zeros(n, 6))
        """The optimised corrections in :attr:`units` per component (``xi = pose / units``)."""
        self.log_focal = nn.Parameter(torch.zeros(n)) if focal else None
        # float64: the rays' rotation is cast per batch (exact refined cameras in float64 tests)
        self.register_buffer("cam_rot", cameras.cam_from_world[:, :, :3].double().clone())
        # what one unit of the optimised parameter is, per camera and component of xi: ones =
        # radians and scene units; :func:`pixel_scale` = pixels of image motion (so Adam's
        # step, ~lr per step whatever the gradient's size, and the regulariser are in pixels)
        units = torch.ones(n, 6) if units is None else units.float().clone()
        self.register_buffer("units", units, persistent=False)
        self.align_reference: Tensor | None = None
        """``N 3 4`` training ``cam_from_world`` the held-out cameras' frame is aligned by
        (:func:`eval_cameras`; None = the input cameras; not saved in checkpoints)."""

    def xi(self) -> Float[Tensor, "N 6"]:
        """The corrections ``(rho, omega)`` in scene units and radians."""
        return self.pose / self.units

    def apply(
        self,
        origins: Float[Tensor, "B 3"],
        directions: Float[Tensor, "B 3"],
        z_per_t: Float[Tensor, " B"],
        image_idx: Int[Tensor, " B"],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`refine_rays` of training rays of images ``image_idx`` (on this module's device)."""
        dev = self.pose.device
        j = image_idx.to(dev)
        lf = self.log_focal[j] if self.log_focal is not None else None
        return refine_rays(
            origins.to(dev),
            directions.to(dev),
            z_per_t.to(dev),
            self.cam_rot[j].to(origins.dtype),
            self.xi()[j],
            lf,
            self.mode,
        )

    def apply_to_batch(self, batch):
        """A :class:`~sceneforge.fields.datasets.RayBatch` with corrected rays (same pixels)."""
        o, d, z = self.apply(batch.origins, batch.directions, batch.z_per_t, batch.image_idx)
        return dataclasses.replace(batch, origins=o, directions=d, z_per_t=z)

    def regularizer(self) -> Tensor:
        """``weight * (mean |pose|^2 + mean phi^2)`` (``pose`` in :attr:`units`)."""
        reg = self.pose.pow(2).sum(-1).mean()
        if self.log_focal is not None:
            reg = reg + self.log_focal.pow(2).mean()
        return self.weight * reg

    def param_groups(self) -> list[dict]:
        """One optimizer group (its own learning rate)."""
        params = [self.pose] + ([self.log_focal] if self.log_focal is not None else [])
        return [{"params": params, "lr": self.lr, "name": "camera_opt", "warmup": self.warmup}]

    @torch.no_grad()
    def refined_cameras(self) -> Cameras:
        """The training cameras with the corrections applied (float64, CPU)."""
        delta = pose_delta(self.xi().detach().double().cpu(), self.mode)
        cams = self.input_cameras.with_poses(
            refined_cam_from_world(self.input_cameras.cam_from_world, delta)
        )
        if self.log_focal is not None:
            cams = scale_focal(cams, self.log_focal.detach().double().cpu().exp())
        return cams

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Mean rotation (degrees) / translation / |log focal scale| of the corrections."""
        p = self.xi().detach().double()
        out = {
            "camera_opt_rot_deg": float(p[:, 3:].norm(dim=-1).mean()) * 180.0 / math.pi,
            "camera_opt_trans": float(p[:, :3].norm(dim=-1).mean()),
        }
        if self.log_focal is not None:
            out["camera_opt_focal"] = float(self.log_focal.detach().abs().mean())
        return out


def warmup_factor(fraction: float, warmup: float) -> float:
    """Learning-rate multiplier of the camera corrections at ``fraction`` of the run: 0 for
    the first ``warmup`` (the field settles on the input cameras first, so the corrections do
    not absorb a young field's errors), then a linear ramp to 1 over the next ``warmup``; 1
    throughout when ``warmup`` is 0. A function of the schedule fraction only: exact on
    resume and follows a time budget like the learning-rate decay."""
    if warmup <= 0:
        return 1.0
    return min(max(fraction / warmup - 1.0, 0.0), 1.0)


def group_lr_factor(group: dict, fraction: float) -> float:
    """:func:`warmup_factor` of an optimizer group (1 for groups without ``warmup``)."""
    return warmup_factor(fraction, float(group.get("warmup", 0.0)))


def pixel_scale(cameras: Cameras, depth: float, downscale: int = 1) -> Float[Tensor, "N 6"]:
    """Pixels of image motion per unit of each correction component ``(rho, omega)``, per
    camera: ``f / depth`` per unit of translation (a point at the scene depth moves by
    ``f t / z``) and ``f`` per radian of rotation, ``f`` the mean focal length in pixels at
    the training resolution (``1 / downscale``). With it the regulariser is the mean squared
    image motion the corrections cause, whatever the scene's scale and the image size."""
    K = cameras.K.double()
    f = 0.5 * (K[:, 0, 0] + K[:, 1, 1]) / max(int(downscale), 1)
    per_t = f / max(float(depth), 1e-9)
    return torch.stack([per_t] * 3 + [f] * 3, dim=-1).float()


def scene_depth(scene: SceneData, indices: list[int]) -> float:
    """A typical depth of the scene in cameras ``indices``: the median camera-z of the sparse
    points in front of them, else the mean distance of their centres from their centroid."""
    cfw = scene.cameras.cam_from_world[list(indices)].double()
    if scene.points is not None and len(scene.points) > 0:
        z = (cfw[:, None, 2, :3] * scene.points.double()[None]).sum(-1) + cfw[:, None, 2, 3]
        z = z[z > 0]
        if z.numel() > 0:
            return float(z.median())
    c = invert_rigid(cfw)[..., 3]
    return max(float((c - c.mean(0)).norm(dim=-1).mean()), 1e-6)


@torch.no_grad()
def eval_cameras(trainer) -> Cameras:
    """The scene's cameras for held-out rendering: unchanged without refinement; with it,
    mapped into the refined training cameras' frame by the Sim(3) from the reference training
    cameras (:attr:`CameraOptimizer.align_reference`, default the input ones) to the refined
    ones (centres + optical-axis points at :func:`scene_depth`)."""
    opt, scene = getattr(trainer, "camera_opt", None), trainer.scene
    if opt is None or len(trainer.train_indices) < 3:  # < 3 centres: no Sim(3) to fit
        return scene.cameras
    idx = list(trainer.train_indices)
    ref = opt.align_reference
    ref = opt.input_cameras.cam_from_world if ref is None else ref.double().cpu()
    s, R, t = sim3_cameras_to_cameras(
        ref, opt.refined_cameras().cam_from_world, scene_depth(scene, idx)
    )
    if not all(bool(torch.isfinite(x).all()) for x in (s, R, t)):  # e.g. all centres equal
        return scene.cameras
    cfw = transform_cameras_sim3(scene.cameras.cam_from_world.double(), s, R, t)
    return scene.cameras.with_poses(cfw.to(scene.cameras.cam_from_world))


def real_capture_config(cfg, renders_rays: bool):
    """The effective settings of ``real_capture`` / ``camera_opt auto`` (see
    :class:`~sceneforge.fields.trainer_config.TrainerConfig`); idempotent."""
    mode = cfg.camera_opt
    if mode == "auto":
        mode = "SO3xR3" if cfg.real_capture and renders_rays else "off"
    elif mode != "off" and not renders_rays:
        raise ValueError(
            f"camera_opt {mode!r} refines the rays of ray-marched models; the {cfg.model!r} "
            "model renders whole cameras (use camera_opt off)"
        )
    cfg = dataclasses.replace(cfg, camera_opt=mode)
    if cfg.real_capture and cfg.model == "nerf" and not cfg.nerf.field.color_affine:
        field = dataclasses.replace(cfg.nerf.field, color_affine=True)
        cfg = dataclasses.replace(cfg, nerf=dataclasses.replace(cfg.nerf, field=field))
    return cfg


def heldout_protocol(cfg, has_appearance: bool) -> dict[str, str]:
    """How held-out views are evaluated (for eval.json)."""
    p = {
        "heldout_cameras": "input poses and intrinsics (no per-view refinement)"
        + (
            "; training cameras refined ("
            + cfg.camera_opt
            + "), held-out poses mapped into their frame by the Sim(3) aligning the input "
            "training cameras to the refined ones (centres and optical-axis points)"
            if cfg.camera_opt != "off"
            else ""
        ),
        "heldout_appearance": "mean training appearance" if has_appearance else "none",
    }
    if cfg.eval_color_correct:
        p["psnr_cc"] = "per-image least-squares affine colour correction onto the ground truth"
    if has_appearance and cfg.eval_appearance_fit_steps > 0:
        p["psnr_right_fit"] = (
            f"appearance fitted for {cfg.eval_appearance_fit_steps} steps on the left half, "
            "metric on the right half (NeRF-W)"
        )
    return p


def camera_optimizer(cfg, scene, train_indices: list[int], device) -> CameraOptimizer | None:
    """The trainer's camera refinement from its config (None when ``camera_opt`` is off)."""
    if cfg.camera_opt == "off":
        return None
    cams = scene.cameras[list(train_indices)]
    scale = None
    if cfg.camera_opt_units == "pixels":
        scale = pixel_scale(cams, scene_depth(scene, list(train_indices)), cfg.downscale)
    opt = CameraOptimizer(
        cfg.camera_opt,
        cams,
        cfg.camera_opt_focal,
        cfg.camera_opt_lr,
        cfg.camera_opt_weight,
        cfg.camera_opt_warmup,
        scale,
    )
    return opt.to(device)


# -- the trainer's seam (each accepts ``None`` = refinement off) ------------------------------


def param_groups(opt: CameraOptimizer | None) -> list[dict]:
    return [] if opt is None else opt.param_groups()


def refine_batch(opt: CameraOptimizer | None, batch):
    """``batch`` with its rays corrected (unchanged when off)."""
    return batch if opt is None else opt.apply_to_batch(batch)


def regularizer(opt: CameraOptimizer | None) -> Tensor | float:
    return 0.0 if opt is None or opt.weight <= 0 else opt.regularizer()


def describe(trainer) -> dict:
    """eval.json facts: the camera refinement and the held-out protocol (with ``real_capture``
    or ``camera_opt`` only: other runs' facts stay as they were)."""
    cfg = trainer.cfg
    if not cfg.real_capture and trainer.camera_opt is None:
        return {}
    out: dict = {"camera_opt": cfg.camera_opt, "real_capture": cfg.real_capture}
    if trainer.camera_opt is not None:
        out.update(trainer.camera_opt.stats())
    has_app = bool(getattr(trainer.model, "has_appearance", False))
    out["heldout_protocol"] = heldout_protocol(cfg, has_app)
    return out


def state(opt: CameraOptimizer | None) -> dict | None:
    return None if opt is None else {k: v.detach().clone() for k, v in opt.state_dict().items()}


def load_state(opt: CameraOptimizer | None, s: dict | None) -> None:
    """Restore :func:`state` (a ValueError when refinement is on in one and off in the other)."""
    if (opt is None) != (s is None):
        raise ValueError(
            "camera refinement is "
            + ("off" if opt is None else "on")
            + " in this trainer but "
            + ("on" if s is not None else "off")
            + " in the checkpoint"
        )
    if opt is not None:
        opt.load_state_dict(s)


def refined_cameras_json(opt: CameraOptimizer, names: list[str]) -> dict:
    """The refined training cameras as plain data (``cam_from_world`` 3x4, ``K`` 3x3, the
    COLMAP model and params, and the applied correction) per image name."""
    cams = opt.refined_cameras()
    K = cams.K
    out = {}
    for j, name in enumerate(names):
        out[name] = {
            "cam_from_world": cams.cam_from_world[j].tolist(),
            "K": K[j].tolist(),
            "model": cams.model,
            "params": cams.params[j].tolist(),
            "width": int(cams.width[j]),
            "height": int(cams.height[j]),
            "correction": opt.xi()[j].detach().double().cpu().tolist(),
        }
    return {"mode": opt.mode, "focal": opt.log_focal is not None, "cameras": out}


def write_refined_cameras(trainer, run_dir: Path) -> Path | None:
    """Write :data:`REFINED_CAMERAS` into ``run_dir`` when ``trainer`` refines its cameras."""
    from sceneforge.core.atomic import atomic_write_json

    opt = getattr(trainer, "camera_opt", None)
    if opt is None:
        return None
    names = [trainer.scene.image_names[i] for i in trainer.train_indices]
    path = Path(run_dir) / REFINED_CAMERAS
    atomic_write_json(path, refined_cameras_json(opt, names))
    return path


def perturb_training_cameras(
    scene: SceneData, rot_deg: float, trans: float, holdout_every: int = 8, seed: int = 0
) -> SceneData:
    """``scene`` with every camera except the held-out ones (index % ``holdout_every`` == 0)
    turned by ``rot_deg`` degrees about a random axis and moved by ``trans`` (camera frame):
    the wrong-pose input of camera-refinement tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    n = len(scene)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    tdir = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    cfw = scene.cameras.cam_from_world.clone()
    R = angle_axis_to_matrix(axis * math.radians(rot_deg)).to(cfw)
    new_t = (R @ cfw[:, :, 3:])[..., 0] + trans * tdir.to(cfw)
    new = torch.cat([R @ cfw[:, :, :3], new_t[..., None]], -1)
    keep = torch.tensor([i % holdout_every == 0 for i in range(n)])
    new[keep] = cfw[keep]
    return dataclasses.replace(scene, cameras=scene.cameras.with_poses(new))


__all__ = [
    "perturb_training_cameras",
    "REFINED_CAMERAS",
    "CameraOptimizer",
    "camera_optimizer",
    "describe",
    "eval_cameras",
    "group_lr_factor",
    "pixel_scale",
    "scene_depth",
    "warmup_factor",
    "load_state",
    "param_groups",
    "refine_batch",
    "regularizer",
    "state",
    "pose_delta",
    "heldout_protocol",
    "real_capture_config",
    "refine_rays",
    "refined_cam_from_world",
    "refined_cameras_json",
    "scale_focal",
    "so3_exp_minus_identity",
    "write_refined_cameras",
]
