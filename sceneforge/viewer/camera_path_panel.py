"""The viewer's "Camera path" panel: viser widgets around a :class:`CameraPathRecorder`.

"Add keyframe" snapshots the browser camera of the client that pressed it; the keyframes are
shown as orange frustums joined by a spline; "Save camera path" writes
``camera_paths/NAME.json`` (never replacing a file) and shows the ``sceneforge render``
command that renders it. The logic lives in :mod:`.camera_path`; the callbacks here are
public methods (``add_keyframe(client)``, ``save()``, ...) so they can be driven without a
browser.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sceneforge.viewer.camera_path import (
    CameraPathRecorder,
    CameraPathRecordError,
    CameraPathSettings,
    SavedPath,
)
from sceneforge.viewer.cameras import ViewCamera

#: Colour of the keyframe frustums and the path spline.
KEYFRAME_COLOR = (255, 120, 0)


class CameraPathPanel:
    """GUI folder and scene nodes of camera path recording on ``server`` (a ``viser.ViserServer``).

    ``folder`` is where paths are saved, ``run_dir`` the folder the render command names,
    ``frustum_scale`` the size of the keyframe frustums in world units.
    """

    def __init__(
        self,
        server,
        folder: Path,
        run_dir: Path,
        default_long_side: int,
        frustum_scale: float,
        has_field: bool,
        settings: CameraPathSettings | None = None,
    ) -> None:
        self.server = server
        self.recorder = CameraPathRecorder(folder, run_dir, default_long_side)
        self.frustum_scale = frustum_scale
        self.has_field = has_field
        self.last_saved: SavedPath | None = None
        self._nodes: list = []
        self._lock = threading.RLock()  # callbacks of several clients run in a thread pool
        s = settings or CameraPathSettings()
        gui = server.gui
        with gui.add_folder("Camera path (sceneforge render)", expand_by_default=False):
            self.count_text = gui.add_text("Keyframes", "0", disabled=True)
            self.add_button = gui.add_button("Add keyframe (current view)", icon="camera-plus")
            self.remove_button = gui.add_button("Remove last keyframe", disabled=True)
            self.clear_button = gui.add_button("Clear keyframes", disabled=True)
            self.smooth_box = gui.add_checkbox(
                "Smooth path", s.smooth, hint="Off: one frame per keyframe"
            )
            self.frames_number = gui.add_number("Frames", s.num_frames, min=2, step=1)
            self.fps_number = gui.add_number("FPS", s.fps, min=1, max=240, step=1)
            self.long_side_number = gui.add_number(
                "Long side (px)",
                s.long_side or default_long_side,
                min=1,
                max=8192,
                step=1,
                hint="Long side of the rendered frames; the aspect is the first keyframe's view",
            )
            self.name_text = gui.add_text("Name", s.name)
            self.save_button = gui.add_button(
                "Save camera path", disabled=True, icon="device-floppy"
            )
            self.status_text = gui.add_text("Status", "add at least 2 keyframes", disabled=True)
            self.saved_text = gui.add_text("Saved to", "", disabled=True, visible=False)
            self.command_text = gui.add_text(
                "Render with", "", multiline=True, disabled=True, visible=False
            )
        self.add_button.on_click(lambda event: self.add_keyframe(event.client))
        self.remove_button.on_click(lambda _: self.remove_last())
        self.clear_button.on_click(lambda _: self.clear())
        self.save_button.on_click(lambda _: self.save())

    # -- state ---------------------------------------------------------------------------------

    def settings(self) -> CameraPathSettings:
        """The settings the widgets hold now."""
        return CameraPathSettings(
            name=str(self.name_text.value),
            num_frames=int(self.frames_number.value),
            fps=int(self.fps_number.value),
            long_side=int(self.long_side_number.value),
            smooth=bool(self.smooth_box.value),
        )

    def _refresh(self, status: str) -> None:
        with self._lock:
            n = len(self.recorder)
            self.count_text.value = str(n)
            self.remove_button.disabled = self.clear_button.disabled = n == 0
            self.save_button.disabled = n < 2
            self.status_text.value = status
            self._draw()

    def _draw(self) -> None:
        import numpy as np

        for node in self._nodes:
            node.remove()
        self._nodes = []
        keys = list(self.recorder.keyframes)
        scene = self.server.scene
        for i, k in enumerate(keys):
            self._nodes.append(
                scene.add_camera_frustum(
                    f"/camera_path/key_{i:03d}",
                    fov=k.fov_y,
                    aspect=k.width / k.height,
                    scale=self.frustum_scale,
                    thickness=0.03 * self.frustum_scale,
                    color=KEYFRAME_COLOR,
                    wxyz=k.wxyz,
                    position=k.position,
                )
            )
        if len(keys) >= 2:
            pts = np.array([k.position for k in keys], dtype=np.float64)
            self._nodes.append(
                scene.add_spline_catmull_rom(
                    "/camera_path/spline",
                    pts,
                    curve_type="catmullrom",
                    tension=0.5,
                    thickness=2.0,
                    thickness_units="screen",
                    color=KEYFRAME_COLOR,
                )
            )

    # -- callbacks -----------------------------------------------------------------------------

    def add_keyframe(self, client) -> int | None:
        """Add ``client``'s current camera (a ``viser.ClientHandle``) as the last keyframe;
        returns the number of keyframes (None when it could not be added: see the status)."""
        if client is None:
            self._refresh("no browser camera to add")
            return None
        try:
            n = self.recorder.add(ViewCamera.from_viser(client.camera))
        except CameraPathRecordError as e:
            self._refresh(str(e))
            return None
        self._refresh(f"keyframe {n} added" + ("; add one more to save" if n < 2 else ""))
        return n

    def remove_last(self) -> None:
        gone = self.recorder.remove_last()
        self._refresh("removed the last keyframe" if gone is not None else "no keyframes")

    def clear(self) -> None:
        self.recorder.clear()
        self._refresh("keyframes cleared")

    def save(self) -> SavedPath | None:
        """Write the path (see :meth:`CameraPathRecorder.save`) and show where and how to
        render it; None when it could not be written (the status says why)."""
        try:
            saved = self.recorder.save(self.settings())
        except (CameraPathRecordError, OSError) as e:
            self.status_text.value = f"not saved: {e}"
            return None
        self.last_saved = saved
        note = "" if self.has_field else " (needs a run trained on this scene)"
        self.status_text.value = (
            f"saved {saved.num_frames} frames of {saved.width}x{saved.height}; "
            f"render it with the command below{note}"
        )
        self.saved_text.value = str(saved.path)
        self.command_text.value = saved.command
        self.saved_text.visible = self.command_text.visible = True
        print(f"camera path saved: {saved.path}\nrender it with: {saved.command}", flush=True)
        return saved


__all__ = ["KEYFRAME_COLOR", "CameraPathPanel"]
