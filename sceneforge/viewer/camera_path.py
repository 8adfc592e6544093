"""Camera paths recorded in the viewer: browser views as keyframes, a smooth path through them
and the nerfstudio ``camera_path.json`` that ``sceneforge render --path file:PATH`` renders.

No viser here (the panel's widgets are in :mod:`.camera_path_panel`): :class:`CameraPathRecorder`
holds the keyframes (:class:`~sceneforge.viewer.cameras.ViewCamera` snapshots of the browser
camera, OpenCV ``world_from_cam`` and vertical field of view), builds their
:class:`~sceneforge.core.cameras.Cameras` at one image size, interpolates them
(:func:`~sceneforge.fields.camera_paths.interpolate_cameras`, the field of view linearly) and
saves the path without replacing a file (``NAME.json``, else ``NAME.vNNN.json``). torch is
imported where used.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sceneforge.viewer.cameras import ViewCamera, render_size

if TYPE_CHECKING:
    from sceneforge.core.cameras import Cameras

#: Folder of a run (or scene) folder the viewer saves camera paths into.
CAMERA_PATHS_DIR = "camera_paths"
#: Folder of a run folder the suggested ``sceneforge render`` command writes frames into.
PATH_RENDERS_DIR = "path_renders"


class CameraPathRecordError(ValueError):
    """A keyframe or a path that cannot be saved; the message says what to do."""


@dataclass
class CameraPathSettings:
    """What the panel's Save writes."""

    name: str = "camera_path"
    """File name (without ``.json``) under ``camera_paths/``; other characters become ``_``."""
    num_frames: int = 120
    """Frames of the smooth path through the keyframes."""
    fps: int = 24
    """Frame rate of the video ``sceneforge render`` makes of it."""
    long_side: int = 0
    """Long side of the rendered frames in pixels (0 = the training images' long side)."""
    smooth: bool = True
    """Save a smooth path through the keyframes (False: the keyframes only, one frame each)."""


@dataclass(frozen=True)
class SavedPath:
    """A camera path file written by :meth:`CameraPathRecorder.save`."""

    path: Path
    """The file written (``NAME.json`` or the next free ``NAME.vNNN.json``)."""
    num_frames: int
    """Frames in the file."""
    width: int
    """Frame width in pixels."""
    height: int
    """Frame height in pixels."""
    command: str
    """The ``sceneforge render`` command line that renders it."""


def safe_name(name: str) -> str:
    """``name`` as a file stem: letters, digits, ``-``, ``_`` and inner dots kept, anything
    else ``_`` (no path separators); ``camera_path`` when nothing is left."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    if stem.lower().endswith(".json"):
        stem = stem[:-5].rstrip("._")
    return stem or "camera_path"


def render_command(run_dir: Path, path_file: Path, fps: int) -> str:
    """``sceneforge render RUN OUT --path file:PATH --fps N`` for a saved camera path; the
    frames go to ``RUN/path_renders/<file stem>``."""
    out = run_dir / PATH_RENDERS_DIR / path_file.stem
    args = ["sceneforge", "render", str(run_dir), str(out), "--path", f"file:{path_file}"]
    return shlex.join([*args, "--fps", str(int(fps))])


def keyframe_cameras(keyframes: list[ViewCamera], width: int, height: int) -> Cameras:
    """PINHOLE :class:`Cameras` (float64) of ``keyframes`` at one image size ``width x
    height``: each keyframe's pose and vertical field of view, the principal point centred."""
    import torch

    from sceneforge.core.cameras import Cameras

    if not keyframes:
        raise CameraPathRecordError("no keyframes")
    cams = [dataclasses.replace(k, width=width, height=height).cameras() for k in keyframes]
    n = len(cams)
    return Cameras(
        "PINHOLE",
        torch.cat([c.params for c in cams]),
        torch.full((n,), width, dtype=torch.long),
        torch.full((n,), height, dtype=torch.long),
        torch.cat([c.cam_from_world for c in cams]),
    )


def smooth_path(keyframes: Cameras, num_frames: int) -> Cameras:
    """``num_frames`` cameras through ``keyframes`` in order: poses of
    :func:`~sceneforge.fields.camera_paths.interpolate_cameras` (keyframe ``k`` at path
    parameter ``k``), vertical field of view interpolated linearly at the same parameter."""
    import torch

    from sceneforge.core.cameras import Cameras
    from sceneforge.fields.camera_paths import interpolate_cameras

    path = interpolate_cameras(keyframes, num_frames)
    n = len(keyframes)
    h = keyframes.height.double()
    fov = 2 * torch.atan(0.5 * h / keyframes.K[:, 1, 1].double())
    s = torch.linspace(0, n - 1, num_frames, dtype=torch.float64)
    seg = s.floor().long().clamp(max=n - 2)
    t = s - seg
    fov_s = (1 - t) * fov[seg] + t * fov[seg + 1]
    f = 0.5 * float(h[0]) / torch.tan(0.5 * fov_s)
    w0, h0 = float(keyframes.width[0]), float(h[0])
    params = torch.stack([f, f, torch.full_like(f, w0 / 2), torch.full_like(f, h0 / 2)], -1)
    return Cameras("PINHOLE", params, path.width, path.height, path.cam_from_world)


class CameraPathRecorder:
    """Keyframes of a camera path and their saving into ``folder`` (thread-safe: viser runs
    every callback in a thread pool).

    ``run_dir`` is the folder the render command names (the folder the viewer was opened on);
    ``default_long_side`` the frame size used when :attr:`CameraPathSettings.long_side` is 0.
    """

    def __init__(self, folder: Path, run_dir: Path, default_long_side: int) -> None:
        self.folder = Path(folder)
        self.run_dir = Path(run_dir)
        self.default_long_side = int(default_long_side)
        self.keyframes: list[ViewCamera] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keyframes)

    def add(self, view: ViewCamera) -> int:
        """Append ``view`` as the last keyframe; returns the number of keyframes."""
        if view.width <= 0 or view.height <= 0:
            raise CameraPathRecordError(
                "the browser has not reported its view size yet: move the view a little and "
                "add the keyframe again"
            )
        if not 0 < view.fov_y < math.pi or not all(map(math.isfinite, view.position)):
            raise CameraPathRecordError(f"not a usable view: {view}")
        with self._lock:
            self.keyframes.append(view)
            return len(self.keyframes)

    def remove_last(self) -> ViewCamera | None:
        """Drop the last keyframe (None when there is none)."""
        with self._lock:
            return self.keyframes.pop() if self.keyframes else None

    def clear(self) -> None:
        with self._lock:
            self.keyframes.clear()

    def frame_size(self, long_side: int = 0) -> tuple[int, int]:
        """``(width, height)`` of the frames: the first keyframe's aspect at ``long_side`` (0 =
        ``default_long_side``)."""
        if not self.keyframes:
            raise CameraPathRecordError("no keyframes: add the current view first")
        first = self.keyframes[0]
        return render_size(first.width, first.height, long_side or self.default_long_side)

    def cameras(self, settings: CameraPathSettings) -> Cameras:
        """The path's cameras: :func:`smooth_path` through the keyframes, or the keyframes."""
        with self._lock:
            keys = list(self.keyframes)
        if len(keys) < 2:
            raise CameraPathRecordError(
                f"a camera path needs at least 2 keyframes, there {_are(len(keys))}: move "
                f"the view and press 'Add keyframe' for each point the path passes"
            )
        if settings.smooth and settings.num_frames < 2:
            raise CameraPathRecordError(f"number of frames must be >= 2, got {settings.num_frames}")
        if settings.fps <= 0:
            raise CameraPathRecordError(f"fps must be positive, got {settings.fps}")
        if settings.long_side < 0:
            raise CameraPathRecordError(f"long side must be >= 0, got {settings.long_side}")
        w, h = render_size(
            keys[0].width, keys[0].height, settings.long_side or self.default_long_side
        )
        cams = keyframe_cameras(keys, w, h)
        return smooth_path(cams, settings.num_frames) if settings.smooth else cams

    def save(self, settings: CameraPathSettings) -> SavedPath:
        """Write the path to ``folder/NAME.json`` (or the next free ``NAME.vNNN.json``: no file
        is replaced); returns what was written and the command that renders it."""
        from sceneforge.fields.camera_paths import write_camera_path_versioned

        cams = self.cameras(settings)
        target = self.folder / f"{safe_name(settings.name)}.json"
        written = write_camera_path_versioned(target, cams, float(settings.fps))
        w, h = int(cams.width[0]), int(cams.height[0])
        cmd = render_command(self.run_dir, written, settings.fps)
        return SavedPath(written, len(cams), w, h, cmd)


def _are(n: int) -> str:
    return "is none" if n == 0 else f"{'is' if n == 1 else 'are'} {n}"


__all__ = [
    "CAMERA_PATHS_DIR",
    "PATH_RENDERS_DIR",
    "CameraPathRecordError",
    "CameraPathRecorder",
    "CameraPathSettings",
    "SavedPath",
    "keyframe_cameras",
    "render_command",
    "safe_name",
    "smooth_path",
]
