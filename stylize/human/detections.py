"""2D person detections of a video (issue 20): the 33 MediaPipe Pose landmarks in pixels, their
confidences and a person mask per frame, as the body fit (:func:`~.fit.fit_body`) and the
capture pipeline consume them, whatever produced them (MediaPipe, ground truth in tests and
benchmarks). Stored as one ``.npz`` written atomically.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.atomic import atomic_write_bytes

from .body_model import MEDIAPIPE_POSE_LANDMARKS

NUM_LANDMARKS = len(MEDIAPIPE_POSE_LANDMARKS)
_FORMAT = "sceneforge.pose_detections/1"


@dataclass
class PoseDetections:
    """One person per frame. ``keypoints`` are pixel coordinates (x right, y down, pixel
    centres at +0.5) in :data:`~.body_model.MEDIAPIPE_POSE_LANDMARKS` order; ``confidence`` in
    [0, 1] (0 where a landmark or the whole frame has no detection); ``found[f]`` is False for a
    frame without a person; ``masks`` (optional) is the person's segmentation; ``notes`` are
    user-facing remarks (e.g. several people visible, frames without a person)."""

    keypoints: Float[Tensor, "F 33 2"]
    confidence: Float[Tensor, "F 33"]
    found: Bool[Tensor, " F"]
    image_size: tuple[int, int]
    """(width, height) of the frames the pixels refer to."""
    masks: Bool[Tensor, "F H W"] | None = None
    source: str = ""
    """What produced them (e.g. ``mediapipe-0.10.21 complexity 1``, ``ground truth``)."""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.keypoints.shape[0]
        if self.keypoints.shape != (n, NUM_LANDMARKS, 2):
            raise ValueError(
                f"keypoints must be [F, {NUM_LANDMARKS}, 2], got {tuple(self.keypoints.shape)}"
            )
        if self.confidence.shape != (n, NUM_LANDMARKS):
            raise ValueError(
                f"confidence must be [F, {NUM_LANDMARKS}], got {tuple(self.confidence.shape)}"
            )
        if self.found.shape != (n,):
            raise ValueError(f"found must be [F], got {tuple(self.found.shape)}")
        w, h = self.image_size
        if self.masks is not None and self.masks.shape != (n, h, w):
            raise ValueError(f"masks must be [F, {h}, {w}], got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return self.keypoints.shape[0]

    def subset(self, frames: list[int]) -> PoseDetections:
        """The detections of ``frames`` (in that order)."""
        idx = torch.as_tensor(frames, dtype=torch.long)
        return PoseDetections(
            keypoints=self.keypoints[idx],
            confidence=self.confidence[idx],
            found=self.found[idx],
            image_size=self.image_size,
            masks=None if self.masks is None else self.masks[idx],
            source=self.source,
            notes=list(self.notes),
        )


def write_detections(path: str | Path, det: PoseDetections) -> Path:
    """Write ``det`` as one ``.npz``, atomically."""
    arrays = {
        "format": np.array(_FORMAT),
        "keypoints": det.keypoints.float().numpy(),
        "confidence": det.confidence.float().numpy(),
        "found": det.found.numpy(),
        "image_size": np.array(det.image_size, dtype=np.int64),
        "source": np.array(det.source),
        "notes": np.array(det.notes if det.notes else [], dtype=str),
    }
    if det.masks is not None:
        arrays["masks"] = np.packbits(det.masks.numpy(), axis=-1)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def read_detections(path: str | Path) -> PoseDetections:
    """Read a file written by :func:`write_detections` (a clear error naming ``path`` when it
    is not one)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable detections file ({e})") from e
    with data:
        if "format" not in data or str(data["format"]) != _FORMAT:
            raise ValueError(f"{path}: not a {_FORMAT} file")
        w, h = (int(v) for v in data["image_size"])
        masks = None
        if "masks" in data:
            masks = torch.from_numpy(np.unpackbits(data["masks"], axis=-1, count=w).astype(bool))
        return PoseDetections(
            keypoints=torch.from_numpy(data["keypoints"]),
            confidence=torch.from_numpy(data["confidence"]),
            found=torch.from_numpy(data["found"]),
            image_size=(w, h),
            masks=masks,
            source=str(data["source"]),
            notes=[str(s) for s in data["notes"]],
        )
