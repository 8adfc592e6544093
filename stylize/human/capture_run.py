"""A finished (or resumed) ``sceneforge human`` capture loaded back from its folder: the kept
frames, the static camera, the body model and fit, the training scene and the trained
``human4d`` trainer — what renders and evaluations of a capture start from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData

from .body_model import BodyModel
from .capture import (
    DETECTIONS,
    FIT,
    FRAMES_DIR,
    STAGES_FILE,
    TRAIN_DIR,
    HumanCaptureConfig,
    HumanCaptureError,
    build_scene,
    load_frames,
    load_trainer,
    static_camera,
    trainer_config,
)
from .detections import PoseDetections, read_detections
from .field import build_body_model
from .fit import FitResult, read_fit


@dataclass
class CaptureRun:
    """A capture folder's state. Kept-frame indices (the fit's and the model's frames) index
    ``kept_names`` / ``frames``; ``train`` / ``heldout`` are kept-frame indices."""

    out_dir: Path
    kept_names: list[str]
    frames: torch.Tensor  # [F, H, W, 3] uint8
    camera: Cameras
    body: BodyModel
    fit: FitResult
    detections: PoseDetections  # of every extracted frame (kept ones: ``kept``)
    kept: list[int]  # indices of the kept frames among the extracted ones
    train: list[int]
    heldout: list[int]
    scene: SceneData
    trainer: object  # sceneforge.fields.trainer.Trainer


def load_capture(out_dir: str | Path, config: HumanCaptureConfig | None = None) -> CaptureRun:
    """Load the capture in ``out_dir`` (made by :func:`~.capture.capture_human` with
    ``config``); a clear error names what is missing."""
    cfg = config or HumanCaptureConfig()
    out = Path(out_dir)
    try:
        stages = json.loads((out / STAGES_FILE).read_text())
        names = stages["frames"]["files"]
        kept_names = stages["detections"]["kept"]
        scene_rec = stages["scene"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise HumanCaptureError(f"{out}: not a finished human capture ({e})") from e
    kept = [names.index(n) for n in kept_names]
    frames = load_frames(out / FRAMES_DIR, kept_names)
    h, w = frames.shape[1:3]
    camera = static_camera(w, h, float(scene_rec["focal_px"]), cfg.default_fov_deg)
    body = build_body_model(trainer_config(cfg).human4d)
    fit = read_fit(out / FIT)
    box = torch.tensor(scene_rec["aabb"], dtype=torch.float64)
    scene = build_scene(frames, kept_names, camera, fit, box, scene_rec["train"])
    trainer = load_trainer(scene, trainer_config(cfg), out / TRAIN_DIR)
    return CaptureRun(
        out_dir=out,
        kept_names=kept_names,
        frames=frames,
        camera=camera,
        body=body,
        fit=fit,
        detections=read_detections(out / DETECTIONS),
        kept=kept,
        train=list(scene_rec["train"]),
        heldout=list(scene_rec["heldout"]),
        scene=scene,
        trainer=trainer,
    )


__all__ = ["CaptureRun", "load_capture"]
