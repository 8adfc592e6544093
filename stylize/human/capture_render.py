"""The field side of ``sceneforge human`` (:mod:`.capture`): the ``human4d`` training scene
(stage e), training with the one trainer (stage f) and the render stage (g), in which the
trained field is rendered as

- ``input``: every kept frame from the static camera with its own fitted body (held-out frames
  too: their bodies are fitted, their frame codes untrained), and the held-out frames'
  PSNR over the whole image and over the person (the detector's person mask when it gave
  masks, else the pixels the render's person weight covers by more than a half);
- ``orbit``: ``orbit_views`` cameras on a circle round the person at the anchor frame
  (:func:`~sceneforge.fields.camera_paths.orbit_cameras`: the static camera's distance,
  height and up);
- ``new_pose``: a procedural motion (:func:`~.motions.make_motion`) on the fitted subject
  (its shape, the anchor frame's root orientation composed with the motion's, the anchor
  frame's fitted root translation: the motion's own displacement is dropped, the person
  moves in place and stays inside the trained scene), seen by the static camera.

Each goes to ``OUT/renders/NAME/`` (``NNNN.png`` + ``video.mp4``, or ``video.gif`` without an
mp4 writer), built in a temporary folder and swapped in whole. The stage also writes the
fitted-body overlays of the kept frames (``OUT/renders/fit_overlay``,
:func:`~.capture_report.write_fit_overlays`; ``out_dir`` is ``OUT/renders``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sceneforge.core.atomic import atomic_dir, atomic_write_json
from sceneforge.core.cameras import Cameras
from sceneforge.core.image_io import write_image_atomic
from sceneforge.core.metrics import psnr
from sceneforge.core.progress import RunLog
from sceneforge.core.rotations import angle_axis_to_matrix, matrix_to_angle_axis
from sceneforge.core.run_files import CHECKPOINT, CONFIG, EVAL, HISTORY, VIDEO
from sceneforge.core.scene import SceneData
from sceneforge.fields.api import TIME_BUDGET_MAX_STEPS, write_video
from sceneforge.fields.camera_paths import orbit_cameras
from sceneforge.fields.datasets import downscale_image

from .body_model import BodyModel
from .capture_report import write_fit_overlays
from .field import HumanTrainerConfig
from .fit import FitResult
from .motions import make_motion

if TYPE_CHECKING:
    from .capture import HumanCaptureConfig


# ----------------------------------------------------------------------------- scene, train


def scene_box(
    body: BodyModel, fit: FitResult, camera: Cameras, depth_factor: float
) -> torch.Tensor:
    """``[2, 3]`` world box holding the fitted bodies (+ 20 % of their size), the camera and its
    frustum up to ``depth_factor`` times the person's median distance."""
    verts = fit.bodies(body).vertices.double().reshape(-1, 3)
    lo, hi = verts.amin(0), verts.amax(0)
    pad = 0.2 * (hi - lo).max()
    dist = float(fit.transl[:, 2].median().clamp_min(0.1))  # the world is the camera's frame
    far = max(depth_factor, 1.0) * dist
    fx, fy, cx, cy = camera.params[0].double().tolist()
    w, h = int(camera.width[0]), int(camera.height[0])
    corners = torch.tensor(
        [[(0 - cx) / fx, (0 - cy) / fy], [(w - cx) / fx, (h - cy) / fy]], dtype=torch.float64
    )
    frustum = torch.cat([corners * far, torch.full((2, 1), far, dtype=torch.float64)], 1)
    pts = torch.cat([lo[None] - pad, hi[None] + pad, frustum, torch.zeros(1, 3).double()])
    return torch.stack([pts.amin(0), pts.amax(0)])


def split_frames(n: int, heldout_every: int) -> tuple[list[int], list[int]]:
    """Training and held-out kept-frame indices (every ``heldout_every``-th held out, starting
    at ``heldout_every // 2`` so the first and last frames train; none with fewer than 3)."""
    if heldout_every <= 1 or n < 3:
        return list(range(n)), []
    ev = [i for i in range(heldout_every // 2, n, heldout_every) if 0 < i < n - 1]
    return [i for i in range(n) if i not in ev], ev


def build_scene(
    frames: torch.Tensor,
    names: list[str],
    camera: Cameras,
    fit: FitResult,
    box: torch.Tensor,
    train: list[int],
) -> SceneData:
    """The ``human4d`` training scene of the kept frames ``train`` (indices into ``frames``,
    ``names`` and the fit): the static camera per image, the fits in ``metadata["human"]``."""
    n = len(train)
    cams = Cameras(
        "PINHOLE",
        camera.params.expand(n, 4).clone(),
        camera.width.expand(n).clone(),
        camera.height.expand(n).clone(),
        camera.cam_from_world.expand(n, 3, 4).clone(),
    )
    meta = {
        "aabb": box.tolist(),
        "human": {
            "frame": list(train),
            "pose": fit.pose.float(),
            "transl": fit.transl.float(),
            "shape": fit.shape.float(),
        },
    }
    return SceneData(
        cams, [names[i] for i in train], images=[frames[i] for i in train], metadata=meta
    )


# ----------------------------------------------------------------------------- stage f


def trainer_config(cfg: HumanCaptureConfig) -> HumanTrainerConfig:
    """The trainer settings of the capture (its body model, steps, no trainer hold-out)."""
    h4 = dataclasses.replace(
        cfg.train.trainer.human4d, body_model=cfg.body_model, body_model_path=cfg.body_model_path
    )
    timed = cfg.train.steps == 0 and cfg.train.max_seconds is not None
    return dataclasses.replace(
        cfg.train.trainer,
        model="human4d",
        human4d=h4,
        holdout_every=0,
        max_steps=TIME_BUDGET_MAX_STEPS if timed else cfg.train.steps,
        max_seconds=cfg.train.max_seconds,
        schedule="time" if timed else "steps",
    )


def load_trainer(scene: SceneData, tcfg: HumanTrainerConfig, run_dir: Path):
    """A trainer on ``scene``, restored from ``run_dir/checkpoint.pt`` when present."""
    from sceneforge.fields.trainer import Trainer

    if (run_dir / CHECKPOINT).exists():
        keep = ("max_steps", "max_seconds", "schedule", "progress", "device", "num_threads")
        over = {k: getattr(tcfg, k) for k in keep}
        return Trainer.from_checkpoint(run_dir / CHECKPOINT, scene, run_dir, **over)
    return Trainer(scene, tcfg, run_dir)


def train_capture(scene: SceneData, run_dir: Path, cfg: HumanCaptureConfig, log: RunLog):
    """Stage (f): train (continuing from ``run_dir``'s checkpoint) and save the checkpoint,
    ``config.json``, ``eval.json`` (train stats) and ``history.json`` there."""
    from sceneforge.core.progress import trainer_progress
    from sceneforge.fields.checkpoints import config_to_dict

    tcfg = trainer_config(cfg)
    trainer = load_trainer(scene, tcfg, run_dir)
    start = trainer.step
    if start:
        log(f"train: continuing from {run_dir / CHECKPOINT} at step {start}")
    atomic_write_json(run_dir / CONFIG, config_to_dict(trainer.config))
    t0 = time.perf_counter()
    with log.task("train", tcfg.max_steps, start) as task:
        trainer.add_hook(trainer_progress(task), 1)
        last = trainer.train()
    trainer.save_checkpoint(run_dir / CHECKPOINT)
    res = {
        "steps": trainer.step,
        "started_at_step": start,
        "train_s": time.perf_counter() - t0,
        "wall_s": trainer.wall_s,  # training time over every call (resumes included)
        "train_psnr": last.get("psnr", math.nan),
        "loss": last.get("loss", math.nan),
        "num_train_images": len(scene),
    }
    atomic_write_json(run_dir / EVAL, res)
    atomic_write_json(run_dir / HISTORY, {"history": trainer.history})
    return trainer, res


# ----------------------------------------------------------------------------- renders


def render_frames(
    trainer, cameras: Cameras, frames: list[int], downscale: int, poses=None, transl=None
) -> list[dict[str, torch.Tensor]]:
    """Render ``cameras[k]`` with the body of kept frame ``frames[k]`` (``poses[k]`` /
    ``transl[k]`` overriding it when given) as the trainer renders (its thread count)."""
    outs = []
    for k, f in enumerate(frames):
        pose = None if poses is None else poses[k]
        t = None if transl is None else transl[k]
        outs.append(trainer.render_camera(cameras, k, -1, downscale, frame=f, pose=pose, transl=t))
    return outs


def _write(folder: Path, images: list[torch.Tensor], fps: int) -> str:
    """``NNNN.png`` frames and a video into ``folder`` (a temporary folder swapped in)."""
    with atomic_dir(folder) as tmp:
        for k, img in enumerate(images):
            write_image_atomic(tmp / f"{k:04d}.png", img.clamp(0, 1))
        video = write_video(images, tmp / VIDEO, fps)
    return str(folder / video.name)


def new_pose_sequence(
    body: BodyModel, fit: FitResult, frame: int, motion: str, num_frames: int, fps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-angle poses ``[T, J, 3]`` and translations ``[T, 3]`` of ``motion`` on the fitted
    subject at kept frame ``frame`` (see the module docstring)."""
    m = make_motion(body, motion, num_frames, fps, shape=fit.shape.to(body.dtype))
    rots = m.rotations.double().clone()
    root = angle_axis_to_matrix(fit.pose[frame, 0].double()[None])[0]
    rots[:, 0] = root @ rots[:, 0]
    pose = matrix_to_angle_axis(rots).float()
    transl = fit.transl[frame].double().expand(num_frames, 3).float()
    return pose, transl


def body_center(body: BodyModel, fit: FitResult, frame: int) -> torch.Tensor:
    """Centre of the fitted body's bounding box at kept frame ``frame``."""
    v = fit.bodies(body, slice(frame, frame + 1)).vertices[0]
    return ((v.amin(0) + v.amax(0)) / 2).double()


def heldout_psnr(
    trainer,
    frames: torch.Tensor,
    heldout: list[int],
    person_masks: torch.Tensor | None,
) -> dict:
    """PSNR of the held-out kept frames at the training downscale: whole image and person."""
    if not heldout:
        return {}
    ds = trainer.downscale
    cam = trainer.scene.cameras[[0] * len(heldout)]
    outs = render_frames(trainer, cam, heldout, ds)
    whole, person = [], []
    for k, f in enumerate(heldout):
        gt = downscale_image(frames[f].float() / 255.0, ds)
        pred = outs[k]["rgb"][: gt.shape[0], : gt.shape[1]]
        if person_masks is not None:
            m = downscale_image(person_masks[f][..., None].float(), ds)[..., 0] > 0.5
        else:
            m = outs[k]["human"][: gt.shape[0], : gt.shape[1]] > 0.5
        whole.append(psnr(pred, gt))
        if bool(m.any()):
            person.append(psnr(pred, gt, m))
    return {
        "heldout_psnr": sum(whole) / len(whole),
        "heldout_person_psnr": sum(person) / len(person) if person else float("nan"),
        "heldout_person_mask": "detector" if person_masks is not None else "render",
    }


def render_outputs(
    trainer,
    body: BodyModel,
    fit: FitResult,
    frames: torch.Tensor,
    names: list[str],
    split: dict,
    out_dir: Path,
    cfg,
    log: Callable[[str], None],
    person_masks: torch.Tensor | None = None,
) -> dict:
    """The render stage (see the module docstring): ``frames`` are the kept frames
    (``[U, H, W, 3]`` uint8, ``names``), ``split`` the scene record (``train`` / ``heldout``
    kept-frame indices), ``cfg`` the :class:`~.capture.HumanCaptureConfig`."""
    ds = max(int(cfg.render_downscale), 1)
    train = list(split["train"])
    anchor = train[len(train) // 2] if cfg.render_frame is None else int(cfg.render_frame)
    if not 0 <= anchor < len(names):
        raise ValueError(f"render_frame {anchor}: the capture kept {len(names)} frames")
    cam = trainer.scene.cameras[[0]]
    res = heldout_psnr(trainer, frames, list(split["heldout"]), person_masks)
    if res:
        log(
            f"render: held-out frames PSNR {res['heldout_psnr']:.2f} dB, person "
            f"{res['heldout_person_psnr']:.2f} dB ({res['heldout_person_mask']} mask)"
        )
    every = list(range(len(names)))
    imgs = [r["rgb"] for r in render_frames(trainer, cam[[0] * len(every)], every, ds)]
    res["input"] = _write(out_dir / "input", imgs, cfg.fps)
    log(f"render: {len(imgs)} input frames -> {out_dir / 'input'}")
    orbit = orbit_cameras(cam, body_center(body, fit, anchor), cfg.orbit_views)
    imgs = [r["rgb"] for r in render_frames(trainer, orbit, [anchor] * len(orbit), ds)]
    res["orbit"] = _write(out_dir / "orbit", imgs, cfg.fps)
    log(f"render: orbit of {len(imgs)} views at frame {names[anchor]} -> {out_dir / 'orbit'}")
    pose, transl = new_pose_sequence(body, fit, anchor, cfg.motion, cfg.motion_frames, cfg.fps)
    n = len(pose)
    outs = render_frames(trainer, cam[[0] * n], [anchor] * n, ds, pose, transl)
    res["new_pose"] = _write(out_dir / "new_pose", [r["rgb"] for r in outs], cfg.fps)
    log(f"render: {n} frames of {cfg.motion!r} on the fitted subject -> {out_dir / 'new_pose'}")
    res["render_frame"] = names[anchor]
    res["fit_overlay"] = write_fit_overlays(out_dir.parent, body, fit, cam, frames, names)[
        "fit_overlay"
    ]
    log(f"render: the fitted body over the {len(names)} kept frames -> {res['fit_overlay']}")
    return res


__all__ = [
    "body_center",
    "build_scene",
    "load_trainer",
    "scene_box",
    "split_frames",
    "train_capture",
    "trainer_config",
    "heldout_psnr",
    "new_pose_sequence",
    "render_frames",
    "render_outputs",
]
