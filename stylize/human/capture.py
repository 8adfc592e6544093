"""``sceneforge human VIDEO OUT`` (issue 20): one video of a person in, a 4D human out.

Stages, each recorded in ``OUT/human_stages.json`` (written atomically) with a key of its
inputs and settings; a re-run skips a stage whose key matches and whose output exists, and
redoes it (and so every later stage, whose keys chain) otherwise:

(a) ``frames``: the video's sharpest frame of each of ``max_frames`` windows
    (:func:`~sceneforge.core.video_input.sample_video_frames`), or up to ``max_frames`` evenly
    spaced images of a folder (sorted by name = temporal order), scaled to at most
    ``max_image_size`` -> ``OUT/frames`` (built in a temporary folder, swapped in whole);
(b) ``detections``: 2D pose per frame (MediaPipe by default, :mod:`.detect`, imported only
    then; any ``detector`` callable otherwise) -> ``OUT/detections.npz``; frames without a
    person (or without confident shoulders, hips and enough body keypoints) are dropped with a
    note naming them; no usable frame at all, or fewer than ``min_frames``, is an error naming
    the input and the frames, and nothing is written;
(c) camera: **one static camera** for every frame (identity pose: the world is the camera's
    frame; ``K`` from ``focal_px``, else a guess from ``default_fov_deg`` over the longer image
    side; principal point at the centre). A moving camera is **not supported**: the person's
    motion and the camera's would be confused (the body fit would absorb the camera's motion);
(d) ``fit``: the body model fitted to the kept frames' keypoints (and the detector's person
    masks, ``fit_masks``) -> ``OUT/fit.json`` (:func:`~.fit.write_fit`);
(e) ``scene``: the ``human4d`` training scene (frames, the static camera, per-image frame ids,
    the fits in ``metadata["human"]``, a scene box around the fitted bodies and the camera
    frustum up to ``background_depth`` times the person's distance); every
    ``heldout_every``-th kept frame is held out -> ``OUT/scene.json``;
(f) ``train``: the one trainer (:class:`~sceneforge.fields.trainer.Trainer`, model
    ``human4d``) -> ``OUT/train`` (``checkpoint.pt``, ``config.json``, ``eval.json``,
    ``history.json``); continues from its checkpoint (a killed run, or more ``steps``);
(g) ``render`` (:mod:`.capture_render`): the input frames, an orbit around the person and a
    new-pose sequence -> ``OUT/renders/{input,orbit,new_pose}`` (PNG frames + ``video.mp4``),
    the held-out person PSNR; then ``OUT/human.json`` (the summary).

The person masks of the detector are used by the fit only: the trainer's scene masks mean
"usable pixel", and the person and the background are both trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sceneforge.core.atomic import atomic_dir, atomic_write_json
from sceneforge.core.cameras import Cameras
from sceneforge.core.progress import RunLog
from sceneforge.core.run_files import CHECKPOINT, HUMAN_STAGES, HUMAN_TRAIN_DIR, LOG_FILE

from .body_model import MEDIAPIPE_POSE_LANDMARKS, BodyModel
from .capture_config import HumanCaptureConfig, HumanTrainConfig
from .capture_render import (
    build_scene,
    load_trainer,
    render_outputs,
    scene_box,
    split_frames,
    train_capture,
    trainer_config,
)
from .capture_report import write_capture_report, write_fit_overlays
from .detections import PoseDetections, read_detections, write_detections
from .field import build_body_model
from .fit import TORSO, FitConfig, fit_body, read_fit, write_fit
from .motions import MOTIONS

#: Names inside ``OUT`` (a human capture's output folder).
STAGES_FILE = HUMAN_STAGES
FRAMES_DIR = "frames"
DETECTIONS = "detections.npz"
FIT = "fit.json"
SCENE = "scene.json"
TRAIN_DIR = HUMAN_TRAIN_DIR
#: Inside ``TRAIN_DIR``: the key of the scene and settings the checkpoint was trained with.
TRAIN_INPUTS = "capture_inputs.json"
RENDERS_DIR = "renders"
SUMMARY = "human.json"
STAGES = ("frames", "detections", "fit", "scene", "train", "render")
#: Landmarks every body model maps (shoulders, elbows, wrists, hips, knees, ankles).
BODY_LANDMARKS = tuple(
    MEDIAPIPE_POSE_LANDMARKS.index(f"{s}_{p}")
    for p in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")
    for s in ("left", "right")
)

Detector = Callable[[list[Path]], PoseDetections]
"""``detector(frame_files) -> PoseDetections`` (one entry per file, in order)."""


class HumanCaptureError(ValueError):
    """Bad input to ``sceneforge human`` (no frames, no person, a bad record): names the file."""


# ----------------------------------------------------------------------------- records


def _key(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Stages:
    """``OUT/human_stages.json``: per stage its key, seconds and results."""

    def __init__(self, out: Path, resume: bool) -> None:
        self.path = out / STAGES_FILE
        self.done: dict = {}
        if resume and self.path.exists():
            try:
                self.done = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise HumanCaptureError(
                    f"{self.path}: unreadable stage record ({e}); delete it to redo the capture"
                ) from e

    def get(self, name: str, key: str) -> dict | None:
        rec = self.done.get(name)
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def mark(self, name: str, key: str, seconds: float, result: dict) -> dict:
        self.done[name] = {"key": key, "seconds": round(seconds, 3), **result}
        atomic_write_json(self.path, self.done, default=str)
        return self.done[name]


def _source_key(src: Path) -> dict:
    if src.is_file():
        st = src.stat()
        return {"video": str(src.resolve()), "bytes": st.st_size, "mtime": st.st_mtime}
    from sceneforge.core.image_io import scan_folder

    files = scan_folder(src)[0]
    return {
        "folder": str(src.resolve()),
        "files": [[p.name, p.stat().st_size, p.stat().st_mtime] for p in files],
    }


# ----------------------------------------------------------------------------- stages a-c


def _frames(src: Path, out: Path, cfg: HumanCaptureConfig, log) -> dict:
    """Stage (a): frames into ``OUT/frames`` (a temporary folder swapped in whole)."""
    from sceneforge.core.image_io import list_images
    from sceneforge.core.video_input import VideoConfig, copy_images, sample_video_frames

    with atomic_dir(out / FRAMES_DIR) as tmp:
        if src.is_file():
            vc = VideoConfig(num_frames=cfg.max_frames, min_frames=1)
            rec = sample_video_frames(src, tmp, vc, cfg.max_image_size, log)
            names = [f["file"] for f in rec["frames"]]
        else:
            files = list_images(src)  # errors name an empty or missing folder
            if len(files) > cfg.max_frames:
                pick = np.linspace(0, len(files) - 1, cfg.max_frames).round().astype(int)
                files = [files[i] for i in sorted(set(pick.tolist()))]
            with tempfile.TemporaryDirectory() as links:  # copy_images copies a whole folder
                for p in files:
                    os.symlink(p.resolve(), Path(links) / p.name)
                copy_images(links, tmp, cfg.max_image_size, log=log)
            names = [p.name for p in files]
    log(f"frames: {len(names)} from {src} -> {out / FRAMES_DIR}")
    return {"files": names}


def load_frames(folder: Path, names: list[str]) -> torch.Tensor:
    """``[F, H, W, 3]`` uint8 frames; an error names a missing or differently sized one."""
    from PIL import Image

    arrays = []
    for n in names:
        p = folder / n
        try:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise HumanCaptureError(f"{p}: not a readable frame ({e}); delete {folder}") from e
        if arrays[-1].shape != arrays[0].shape:
            raise HumanCaptureError(
                f"{p}: {arrays[-1].shape[1]}x{arrays[-1].shape[0]} pixels, the first frame "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}: a video's frames share one size"
            )
    return torch.from_numpy(np.stack(arrays))


def usable_frames(
    det: PoseDetections, names: list[str], cfg: FitConfig
) -> tuple[list[int], dict[str, str]]:
    """Indices of the frames with a usable person and ``{name: reason}`` of the others (no
    person; shoulders and hips not all confident; fewer than ``cfg.min_keypoints`` confident
    body keypoints)."""
    conf = torch.nan_to_num(det.confidence.double(), nan=0.0)
    ok = (conf >= cfg.min_confidence) & det.keypoints.isfinite().all(-1)
    keep, dropped = [], {}
    for i, name in enumerate(names):
        n_body = int(ok[i, list(BODY_LANDMARKS)].sum())
        if not bool(det.found[i]):
            dropped[name] = "no person found"
        elif not bool(ok[i, list(TORSO)].all()):
            dropped[name] = "shoulders and hips not all detected"
        elif n_body < cfg.min_keypoints:
            dropped[name] = f"{n_body} confident body keypoints (need {cfg.min_keypoints})"
        else:
            keep.append(i)
    return keep, dropped


def _detect(src: Path, out: Path, names: list[str], cfg: HumanCaptureConfig, detector, log) -> dict:
    """Stage (b): detections of every frame -> ``OUT/detections.npz`` (nothing written when the
    video has too few usable frames)."""
    paths = [out / FRAMES_DIR / n for n in names]
    w, h = load_frames(out / FRAMES_DIR, names[:1]).shape[2:0:-1]
    if detector is None:
        from .detect import detect_pose

        det = detect_pose(paths, cfg.detect)
    else:
        det = detector(paths)
    if len(det) != len(paths):
        raise HumanCaptureError(
            f"{src}: the detector gave {len(det)} results for {len(paths)} frames"
        )
    if tuple(det.image_size) != (int(w), int(h)):
        raise HumanCaptureError(
            f"{src}: detections are for {det.image_size[0]}x{det.image_size[1]} images, the "
            f"frames in {out / FRAMES_DIR} are {w}x{h}"
        )
    keep, dropped = usable_frames(det, names, cfg.fit)
    listed = ", ".join(f"{n} ({r})" for n, r in list(dropped.items())[:12])
    more = f" and {len(dropped) - 12} more" if len(dropped) > 12 else ""
    if not keep:
        raise HumanCaptureError(
            f"{src}: no person found in any of its {len(names)} frames ({listed}{more})"
        )
    if len(keep) < cfg.min_frames:
        raise HumanCaptureError(
            f"{src}: a usable person in {len(keep)} of {len(names)} frames "
            f"({', '.join(names[i] for i in keep)}), need at least {cfg.min_frames}; "
            f"dropped: {listed}{more}"
        )
    if dropped:
        log(f"detections: dropped {len(dropped)} frame(s): {listed}{more}")
    write_detections(out / DETECTIONS, det)
    return {
        "kept": [names[i] for i in keep],
        "dropped": dropped,
        "source": det.source,
        "notes": list(det.notes),
    }


def static_camera(width: int, height: int, focal_px: float | None, fov_deg: float) -> Cameras:
    """The one pinhole camera of every frame: identity pose, principal point at the centre,
    ``fx = fy = focal_px`` (else from ``fov_deg`` over the longer side)."""
    if focal_px is None:
        if not 1.0 < fov_deg < 179.0:
            raise HumanCaptureError(f"default_fov_deg must be in (1, 179), got {fov_deg}")
        focal_px = max(width, height) / 2 / math.tan(math.radians(fov_deg) / 2)
    if not focal_px > 0:
        raise HumanCaptureError(f"focal_px must be positive, got {focal_px}")
    params = torch.tensor([[focal_px, focal_px, width / 2, height / 2]], dtype=torch.float64)
    return Cameras(
        "PINHOLE",
        params,
        torch.tensor([width]),
        torch.tensor([height]),
        torch.eye(3, 4, dtype=torch.float64)[None],
    )


# ----------------------------------------------------------------------------- stages d-e


def _fit(out: Path, body: BodyModel, camera: Cameras, kept: list[int], cfg: HumanCaptureConfig):
    """Stage (d): the body fit of the kept frames -> ``OUT/fit.json``."""
    det = read_detections(out / DETECTIONS).subset(kept)
    masks = det.masks if cfg.fit_masks and det.masks is not None else None
    if masks is not None and not bool(masks.flatten(1).any(1).all()):
        masks = None  # an empty mask would fail the fit: keypoints only
    res = fit_body(body, det.keypoints, camera, det.confidence, masks, None, cfg.fit)
    write_fit(out / FIT, res)
    return res


# ----------------------------------------------------------------------------- the job


def _check_config(cfg: HumanCaptureConfig) -> None:
    if cfg.max_frames < 1 or cfg.min_frames < 1:
        raise HumanCaptureError("max_frames and min_frames must be at least 1")
    if cfg.min_frames > cfg.max_frames:
        raise HumanCaptureError(f"min_frames {cfg.min_frames} > max_frames {cfg.max_frames}")
    if cfg.train.steps < 0 or cfg.orbit_views < 1 or cfg.motion_frames < 1 or cfg.fps < 1:
        raise HumanCaptureError("steps >= 0, orbit_views, motion_frames and fps >= 1 needed")
    unknown = [m for m in cfg.motion.split("+") if m not in MOTIONS]
    if unknown:
        raise HumanCaptureError(f"unknown motion(s) {unknown}; use {', '.join(MOTIONS)}")
    if cfg.body_model == "anny" and importlib.util.find_spec("anny") is None:
        from .anny_model import import_anny

        import_anny()  # an ImportError saying how to install it, before any work
    if cfg.body_model == "smpl":
        from .smpl_model import find_smpl_file

        if not cfg.body_model_path:
            raise HumanCaptureError("body_model smpl needs --body-model-path (your SMPL file)")
        find_smpl_file(cfg.body_model_path)  # FileNotFoundError naming the path


def capture_human(
    video_or_folder: str | Path,
    out_dir: str | Path,
    config: HumanCaptureConfig | None = None,
    detector: Detector | None = None,
    progress: Callable[[str], None] | None = None,
    resume: bool = True,
) -> dict:
    """Run (or resume) the human capture of a video file or a folder of frames into
    ``out_dir`` (see the module docstring); returns ``OUT/human.json``'s content.

    ``detector``: ``detector(frame_files) -> PoseDetections`` (default: MediaPipe,
    :func:`.detect.detect_pose`). ``progress``: where messages go besides ``OUT/log.txt``
    (default: print). ``resume`` False redoes every stage (training from step 0).
    """
    cfg = config or HumanCaptureConfig()
    _check_config(cfg)
    src, out = Path(video_or_folder), Path(out_dir)
    if not src.exists():
        raise HumanCaptureError(f"{src}: no such video file or folder")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise HumanCaptureError(f"{out}: the output folder may not be (inside) the input")
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / LOG_FILE, console=progress or print)
    stages = _Stages(out, resume)
    if not resume and (out / TRAIN_DIR).exists():
        shutil.rmtree(out / TRAIN_DIR)

    def stage(name: str, key: str, exists: bool, fn: Callable[[], dict]) -> dict:
        rec = stages.get(name, key)
        if rec is not None and exists:
            log(f"[{name}] already finished ({rec['seconds']:.1f} s); skipped")
            return rec
        log(f"[{name}] ...")
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        log(f"[{name}] done in {dt:.1f} s")
        return stages.mark(name, key, dt, result)

    k_frames = _key(_source_key(src), cfg.max_frames, cfg.max_image_size)
    frames_rec = stage(
        "frames", k_frames, (out / FRAMES_DIR).is_dir(), lambda: _frames(src, out, cfg, log)
    )
    names = frames_rec["files"]
    det_id = (
        ["mediapipe", dataclasses.asdict(cfg.detect)]
        if detector is None
        else _detector_name(detector)
    )
    k_det = _key(k_frames, det_id, cfg.min_frames, cfg.fit.min_confidence, cfg.fit.min_keypoints)
    det_rec = stage(
        "detections",
        k_det,
        (out / DETECTIONS).is_file(),
        lambda: _detect(src, out, names, cfg, detector, log),
    )
    kept_names = det_rec["kept"]
    kept = [names.index(n) for n in kept_names]
    frames = load_frames(out / FRAMES_DIR, kept_names)
    height, width = frames.shape[1:3]
    camera = static_camera(width, height, cfg.focal_px, cfg.default_fov_deg)
    focal = float(camera.params[0, 0])
    if cfg.focal_px is None:
        log(
            f"camera: static; focal {focal:.1f} px guessed from a {cfg.default_fov_deg:g} degree "
            "field of view (give --focal-px when you know it)"
        )
    body = build_body_model(trainer_config(cfg).human4d)
    k_fit = _key(
        k_det,
        cfg.body_model,
        cfg.body_model_path,
        focal,
        cfg.fit_masks,
        dataclasses.asdict(cfg.fit),
    )
    stage("fit", k_fit, (out / FIT).is_file(), lambda: _fit_record(out, body, camera, kept, cfg))
    fit = read_fit(out / FIT)
    train_idx, heldout = split_frames(len(kept), cfg.train.heldout_every)
    box = scene_box(body, fit, camera, cfg.train.background_depth)
    k_scene = _key(k_fit, cfg.train.heldout_every, cfg.train.background_depth)
    scene_rec = stage(
        "scene",
        k_scene,
        (out / SCENE).is_file(),
        lambda: _scene_record(out, kept_names, train_idx, heldout, box, focal),
    )
    box = torch.tensor(scene_rec["aabb"], dtype=torch.float64)
    scene = build_scene(frames, kept_names, camera, fit, box, scene_rec["train"])
    tcfg = trainer_config(cfg)
    model_cfg = config_dict_without(tcfg, ("max_steps", "max_seconds", "progress", "log_every"))
    k_train_base = _key(k_scene, model_cfg)
    old = stages.done.get("train", {})
    inputs = out / TRAIN_DIR / TRAIN_INPUTS  # written before training: a killed run resumes
    if (out / TRAIN_DIR).exists() and _read_base(inputs) != k_train_base:
        log(f"train: {out / TRAIN_DIR} was trained on other inputs or settings; starting over")
        shutil.rmtree(out / TRAIN_DIR)
    done_train = (
        old.get("base") == k_train_base
        and old.get("steps", -1) >= cfg.train.steps
        and old.get("max_seconds") == cfg.train.max_seconds  # a new budget trains on
    )
    k_train = _key(
        k_train_base, old.get("steps") if done_train else cfg.train.steps, cfg.train.max_seconds
    )
    trainer = None

    def do_train() -> dict:
        nonlocal trainer
        atomic_write_json(inputs, {"base": k_train_base})
        trainer, res = train_capture(scene, out / TRAIN_DIR, cfg, log)
        return {"base": k_train_base, "max_seconds": cfg.train.max_seconds, **res}

    train_rec = stage(
        "train", k_train, done_train and (out / TRAIN_DIR / CHECKPOINT).is_file(), do_train
    )

    def do_render() -> dict:
        tr = trainer or load_trainer(scene, tcfg, out / TRAIN_DIR)
        det = read_detections(out / DETECTIONS)
        masks = None if det.masks is None else det.masks[kept]
        rec = render_outputs(
            tr, body, fit, frames, kept_names, scene_rec, out / RENDERS_DIR, cfg, log, masks
        )
        return rec

    k_render = _key(
        k_train, train_rec["steps"], cfg.orbit_views, cfg.render_frame, cfg.motion,
        cfg.motion_frames, cfg.fps, cfg.render_downscale,
    )  # fmt: skip
    if cfg.render:
        render_rec = stage("render", k_render, (out / RENDERS_DIR).is_dir(), do_render)
    else:
        render_rec = {}
        log("[render] skipped (render False)")
    rep = [float(x) for x in fit.reprojection_error_px]
    summary = {
        "input": str(src.resolve()),
        "frames": len(names),
        "frames_used": kept_names,
        "frames_dropped": det_rec["dropped"],
        "notes": det_rec["notes"] + _notes(cfg),
        "detector": det_rec["source"] or str(det_id),
        "camera": "static (one camera for every frame; a moving camera is not supported)",
        "focal_px": focal,
        "focal_guessed": cfg.focal_px is None,
        "image_size": [int(width), int(height)],
        "body_model": cfg.body_model,
        "fit_reprojection_error_px": float(np.mean(rep)),
        "fit_reprojection_error_px_max": float(np.max(rep)),
        "train_frames": [kept_names[i] for i in scene_rec["train"]],
        "heldout_frames": [kept_names[i] for i in scene_rec["heldout"]],
        "train_steps": train_rec["steps"],
        "train_psnr": train_rec.get("train_psnr"),
        "heldout_person_psnr": render_rec.get("heldout_person_psnr"),
        "heldout_psnr": render_rec.get("heldout_psnr"),
        "renders": {k: render_rec[k] for k in ("input", "orbit", "new_pose") if k in render_rec},
        "stages": {k: stages.done[k]["seconds"] for k in STAGES if k in stages.done},
    }
    atomic_write_json(out / SUMMARY, summary, default=str)
    log(f"human capture: {out / SUMMARY}")
    write_fit_overlays(out, body, fit, camera, frames, kept_names)  # no-op after a render
    log(f"human capture: report {write_capture_report(out)}")
    return summary


def _detector_name(detector) -> str:
    """What identifies a detector in the stage keys: its ``name`` attribute, else its
    qualified name (a different detector under the same name is not noticed)."""
    return str(getattr(detector, "name", None) or getattr(detector, "__qualname__", "detector"))


def _read_base(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("base")
    except (OSError, ValueError, AttributeError):
        return None


def _notes(cfg: HumanCaptureConfig) -> list[str]:
    notes = ["static camera assumed: a moving camera is not supported"]
    if cfg.focal_px is None:
        notes.append(f"focal length guessed from a {cfg.default_fov_deg:g} degree field of view")
    return notes


def _fit_record(out: Path, body: BodyModel, camera: Cameras, kept: list[int], cfg) -> dict:
    res = _fit(out, body, camera, kept, cfg)
    err = res.reprojection_error_px
    return {"reprojection_error_px": float(err.mean()), "max_error_px": float(err.max())}


def _scene_record(out: Path, names, train, heldout, box, focal) -> dict:
    rec = {"train": train, "heldout": heldout, "aabb": box.tolist(), "focal_px": focal}
    atomic_write_json(out / SCENE, {**rec, "frames": names})
    return rec


def config_dict_without(cfg, keys: tuple[str, ...]) -> dict:
    """``cfg`` as a dict without the top-level ``keys`` (settings that do not change a run)."""
    d = dataclasses.asdict(cfg)
    return {k: v for k, v in d.items() if k not in keys}


__all__ = [
    "HumanCaptureConfig",
    "HumanCaptureError",
    "HumanTrainConfig",
    "build_scene",
    "capture_human",
    "load_trainer",
    "scene_box",
    "split_frames",
    "static_camera",
    "trainer_config",
    "usable_frames",
]
