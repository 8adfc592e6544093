"""Settings of ``sceneforge human VIDEO OUT`` (:func:`~.capture.capture_human`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .detect import DetectConfig
from .field import HumanTrainerConfig
from .fit import FitConfig


def _default_trainer() -> HumanTrainerConfig:
    return HumanTrainerConfig(
        holdout_every=0,  # the capture holds out frames itself (heldout_every)
        checkpoint_every=200,
        progress=False,
        tensorboard=False,
        log_every=50,
    )


@dataclass
class HumanTrainConfig:
    """Training of the ``human4d`` field of a capture."""

    steps: int = 3000
    """Training steps (wins over trainer.max_steps); more steps on a re-run continue training;
    0 with max_seconds: train for max_seconds (the learning rate follows time)."""
    max_seconds: float | None = None
    """Training time budget in seconds, counted over resumed runs (None: no limit)."""
    trainer: HumanTrainerConfig = field(default_factory=_default_trainer)
    """Trainer and human4d model settings (its holdout_every is not used)."""
    heldout_every: int = 8
    """Every this-many-th kept frame is held out of training and evaluated (0: none)."""
    background_depth: float = 2.5
    """Depth of the scene box behind the camera's view, as a multiple of the person's distance."""


@dataclass
class HumanCaptureConfig:
    """``sceneforge human VIDEO OUT``: frames, 2D pose, body fit, a 4D human field, renders."""

    max_frames: int = 48
    """Frames to use: the sharpest of each of this many windows of a video, or this many
    evenly spaced images of a folder."""
    max_image_size: int = 512
    """Longest side of the frames written to OUT/frames (pixels)."""
    min_frames: int = 3
    """Fewer frames with a usable person than this is an error."""
    body_model: Literal["anny", "smpl"] = "anny"
    """Body model: anny (optional package, pip install 'sceneforge[human]') or smpl."""
    body_model_path: str = ""
    """Folder or file of your SMPL/SMPL-X model (body_model smpl; not shipped)."""
    focal_px: float | None = None
    """Focal length in pixels of the frames in OUT/frames (None: guessed from
    default_fov_deg; the summary says which)."""
    default_fov_deg: float = 60.0
    """Field of view (degrees) over the longer image side assumed when focal_px is None (a
    guess: phone main cameras are ~65-70 degrees, webcams ~55-65)."""
    detect: DetectConfig = field(default_factory=DetectConfig)
    """MediaPipe person detection (person_box picks the person when several are visible)."""
    fit: FitConfig = field(default_factory=FitConfig)
    """Body fit to the 2D keypoints."""
    fit_masks: bool = True
    """Also fit to the detector's person masks when it gives them (slower)."""
    train: HumanTrainConfig = field(default_factory=HumanTrainConfig)
    """Training of the human4d field (steps, held-out frames, scene box, trainer)."""
    render_frame: int | None = None
    """Kept-frame index the orbit and the new poses use (None: the middle training frame)."""
    orbit_views: int = 24
    """Views of the orbit around the person."""
    motion: str = "wave"
    """New-pose motion (walk, turn, wave, or joined by +) on the fitted subject, in place."""
    motion_frames: int = 24
    """Frames of the new-pose sequence."""
    fps: int = 12
    """Frame rate of the rendered videos (and of the new-pose motion)."""
    render_downscale: int = 2
    """Image downscale of the rendered frames (the field renders slowly on a CPU: ~30 s for a
    512 x 288 frame on 2 cores at 1)."""
    render: bool = True
    """Render the input frames, the orbit and the new poses after training (False: stop after
    training, e.g. to evaluate the capture yourself)."""


__all__ = ["HumanCaptureConfig", "HumanTrainConfig"]
