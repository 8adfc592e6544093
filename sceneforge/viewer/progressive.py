"""Progressive field rendering for one browser: a small preview right after every camera move,
then sharper passes while the camera rests; a newer camera cancels the pass between chunks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from sceneforge.viewer.cameras import ViewCamera

if TYPE_CHECKING:
    from torch import Tensor

    from sceneforge.core.cameras import Cameras

#: ``render_rays(origins, unit directions, z_per_t[, num_samples=n]) -> rgb`` (``R 3``, rgb in
#: [0, 1]); ``num_samples`` (fewer candidate samples per ray) is passed for the preview only.
RaysRenderer = Callable[["Tensor", "Tensor", "Tensor"], "Tensor"]
#: ``render_camera(cameras) -> rgb`` (``H W 3`` in [0, 1]) of camera 0 of a one-camera
#: :class:`~sceneforge.core.cameras.Cameras`: models that rasterise whole views (Gaussians).
CameraRenderer = Callable[["Cameras"], "Tensor"]


def resolution_levels(preview_px: int, max_px: int) -> list[int]:
    """Long sides of the passes: the preview, then doubling up to ``max_px`` (included)."""
    if preview_px <= 0 or max_px <= 0:
        raise ValueError("render sizes must be positive")
    levels = [preview_px]
    while levels[-1] < max_px:
        levels.append(min(levels[-1] * 2, max_px))
    return levels


class ProgressiveRenderer:
    """Renders the newest camera of one browser: a preview at once, sharper passes once the
    camera has rested ``rest_s``; a newer camera cancels the running pass between chunks.

    ``publish(image_uint8_HW3, long_side, seconds)`` receives every finished pass, newest
    camera only. Runs in its own daemon thread (:meth:`start` / :meth:`stop`).
    """

    def __init__(
        self,
        render_rays: RaysRenderer | None,
        publish: Callable[[np.ndarray, int, float], None],
        preview_px: int = 64,
        max_px: int = 512,
        rest_s: float = 0.3,
        chunk_rays: int = 4096,
        on_error: Callable[[BaseException], None] | None = None,
        preview_samples: int = 0,
        render_camera: CameraRenderer | None = None,
    ) -> None:
        if render_rays is None and render_camera is None:
            raise ValueError("ProgressiveRenderer needs render_rays or render_camera")
        self.render_rays, self.render_camera = render_rays, render_camera
        self.publish = publish
        self.levels = resolution_levels(preview_px, max(max_px, preview_px))
        self.rest_s = rest_s
        self.chunk_rays = chunk_rays
        self.on_error = on_error
        self.preview_samples = preview_samples
        self._cond = threading.Condition()
        self._camera: ViewCamera | None = None
        self._version = 0
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="sceneforge-viewer-render", daemon=True
        )
        self.passes: list[tuple[int, float]] = []
        """(long side, seconds) of every published pass, for status and tests."""

    def start(self) -> ProgressiveRenderer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def update_camera(self, camera: ViewCamera) -> None:
        """Queue a new camera (thread-safe); cancels the pass in progress."""
        with self._cond:
            self._camera = camera
            self._version += 1
            self._cond.notify_all()

    def _current(self, version: int) -> bool:
        return not self._stopped and self._version == version

    def render(
        self,
        camera: ViewCamera,
        long_side: int,
        version: int | None = None,
        num_samples: int | None = None,
    ):
        """Render ``camera`` at ``long_side``; None when cancelled by a newer camera."""
        import torch

        cams = camera.cameras(long_side)
        if self.render_rays is None:  # a whole view at once (rasterised models)
            rgb = self.render_camera(cams).float().cpu().clamp(0, 1)
            return (rgb * 255 + 0.5).to(torch.uint8).numpy()
        w, h = int(cams.width[0]), int(cams.height[0])
        o, d, z = cams.rays(0)
        o, d, z = o.float(), d.float(), z.float()
        out = []
        with torch.no_grad():
            for s in range(0, o.shape[0], self.chunk_rays):
                if version is not None and not self._current(version):
                    return None
                sl = slice(s, s + self.chunk_rays)
                kw = {} if not num_samples else {"num_samples": num_samples}
                out.append(self.render_rays(o[sl], d[sl], z[sl], **kw).float().cpu())
        rgb = torch.cat(out).reshape(h, w, 3).clamp(0, 1)
        return (rgb * 255 + 0.5).to(torch.uint8).numpy()

    def _run(self) -> None:
        seen = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda s=seen: self._stopped or self._version != s)
                if self._stopped:
                    return
                camera, version = self._camera, self._version
            seen = version
            try:
                for k, px in enumerate(self.levels):
                    if k == 1:  # sharper passes only once the camera rests
                        with self._cond:
                            self._cond.wait_for(
                                lambda v=version: not self._current(v), timeout=self.rest_s
                            )
                    if not self._current(version):
                        break
                    t0 = time.perf_counter()
                    ns = self.preview_samples if k == 0 else None
                    img = self.render(camera, px, version, ns)
                    if img is None:
                        break
                    dt = time.perf_counter() - t0
                    self.passes.append((px, dt))
                    self.publish(img, px, dt)
            except Exception as e:  # reported to the GUI; the viewer keeps running
                if self.on_error is None:
                    raise
                self.on_error(e)
                return


__all__ = ["CameraRenderer", "ProgressiveRenderer", "RaysRenderer", "resolution_levels"]
