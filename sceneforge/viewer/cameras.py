"""Browser cameras as sceneforge :class:`~sceneforge.core.cameras.Cameras` and back, and the
framing (centre, size, up direction) the viewer starts from.

The viser camera convention is OpenCV (x right, y down, z forward), as ours, so poses go
across unchanged. torch is imported where used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sceneforge.core.cameras import Cameras
    from sceneforge.core.scene import SceneData


def render_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """``(w, h)`` with the aspect of ``width x height`` and ``max(w, h) == long_side``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    s = long_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


@dataclass(frozen=True)
class ViewCamera:
    """A browser camera: OpenCV ``world_from_cam`` rotation (``wxyz``) and centre, vertical
    field of view in radians and the canvas size in pixels."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov_y: float
    width: int
    height: int

    @classmethod
    def from_viser(cls, camera) -> ViewCamera:
        """Snapshot of a ``viser.CameraHandle``."""
        return cls(
            tuple(float(v) for v in camera.wxyz),
            tuple(float(v) for v in camera.position),
            float(camera.fov),
            int(camera.image_width),
            int(camera.image_height),
        )

    def cameras(self, long_side: int | None = None) -> Cameras:
        """A PINHOLE :class:`Cameras` of this view, resized to ``long_side`` (float64)."""
        w, h = (
            (self.width, self.height)
            if long_side is None
            else render_size(self.width, self.height, long_side)
        )
        f = 0.5 * h / math.tan(0.5 * self.fov_y)
        import torch

        from sceneforge.core.cameras import Cameras, invert_rigid, make_rigid
        from sceneforge.core.rotations import quat_wxyz_to_matrix

        R = quat_wxyz_to_matrix(torch.tensor(self.wxyz, dtype=torch.float64))
        t = torch.tensor(self.position, dtype=torch.float64)
        cam_from_world = invert_rigid(make_rigid(R, t))
        params = torch.tensor([[f, f, w / 2, h / 2]], dtype=torch.float64)
        return Cameras(
            "PINHOLE", params, torch.tensor([w]), torch.tensor([h]), cam_from_world[None]
        )


def frustum_pose(cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 4)`` wxyz and ``(N, 3)`` positions of the cameras' ``world_from_cam``."""
    from sceneforge.core.rotations import matrix_to_quat_wxyz

    T = cameras.world_from_cam.double()
    return matrix_to_quat_wxyz(T[:, :, :3]).numpy(), T[:, :, 3].numpy()


def vertical_fov(cameras: Cameras) -> np.ndarray:
    """``(N,)`` vertical field of view (radians) of the pinhole part of each camera."""
    import torch

    fy = cameras.K[:, 1, 1].double()
    return (2.0 * torch.atan(0.5 * cameras.height.double() / fy)).numpy()


def scene_extent(scene: SceneData) -> tuple[np.ndarray, float]:
    """A robust centre and size of the scene (camera centres and sparse points)."""
    import torch

    pts = [scene.cameras.centers.double()]
    if scene.points is not None and scene.points.shape[0] > 0:
        pts.append(scene.points.double())
    p = torch.cat(pts)
    lo, hi = torch.quantile(p, 0.02, dim=0), torch.quantile(p, 0.98, dim=0)
    size = float((hi - lo).norm())
    if scene.points is not None and scene.points.shape[0] > 0:
        center = scene.points.double().median(dim=0).values
    else:
        center = (lo + hi) / 2
    return center.numpy(), max(size, 1e-3)


def scene_up(cameras: Cameras) -> np.ndarray:
    """Mean camera up vector (OpenCV -y), the viewer's up direction."""
    up = -cameras.world_from_cam[:, :, 1].double().mean(0)
    n = float(up.norm())
    return (up / n).numpy() if n > 1e-6 else np.array([0.0, 0.0, 1.0])


__all__ = [
    "ViewCamera",
    "frustum_pose",
    "render_size",
    "scene_extent",
    "scene_up",
    "vertical_fov",
]
