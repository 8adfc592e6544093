"""Camera paths for rendering videos of a trained field (``sceneforge render --path``).

Pure functions of the scene's cameras (OpenCV ``cam_from_world``, see
:mod:`sceneforge.core.conventions`); each returns a :class:`~sceneforge.core.cameras.Cameras`
batch with the intrinsics and image size of the first input camera, unless noted:

- :func:`orbit_cameras`: a circle around a centre at the cameras' mean height and radius
  (object-centred captures);
- :func:`spiral_cameras`: LLFF's ``render_path_spiral`` (also nerfstudio's spiral path) for
  forward-facing captures: the eye spirals around the mean training camera, every frame
  looking at a point at the focus depth in front of it;
- :func:`interpolate_cameras`: a smooth path through the given cameras in order (positions on
  a Catmull-Rom spline, rotations by quaternion slerp), passing exactly through each;
- :func:`read_camera_path` / :func:`write_camera_path`: nerfstudio's ``camera_path.json``
  (what ``ns-viewer`` saves and ``ns-render camera-path`` reads): ``render_width``,
  ``render_height`` and per frame a row-major 4x4 OpenGL ``camera_to_world`` and a vertical
  ``fov`` in degrees. Poses are read in the scene's world frame (a path saved by nerfstudio's
  viewer on the ``sceneforge`` plugin is in nerfstudio's centred and scaled frame instead);
  :func:`write_camera_path_versioned` writes the next free ``NAME.vNNN.json`` instead of
  replacing a file (what ``sceneforge view``'s camera path panel saves);
- :func:`is_forward_facing`: the test ``sceneforge run`` uses to choose spiral over orbit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.atomic import atomic_write_json, write_json_versioned
from sceneforge.core.cameras import Cameras, invert_rigid, make_rigid
from sceneforge.core.conventions import (
    opencv_to_opengl_world_from_cam,
    opengl_to_opencv_world_from_cam,
)
from sceneforge.core.rotations import matrix_to_quat_wxyz, quat_wxyz_to_matrix

#: Names ``RenderConfig.path`` takes besides ``file:PATH``.
PATH_NAMES = ("auto", "orbit", "spiral", "interpolate", "train", "eval")


@dataclass(frozen=True)
class ForwardFacingTest:
    """Thresholds of :func:`is_forward_facing`."""

    max_angle_deg: float = 60.0
    """Every view direction lies within this angle of the mean view direction."""
    min_alignment: float = 0.8
    """Length of the mean of the unit view directions (1 = all parallel; an orbit at
    elevation e gives sin(e), so orbits below ~53 degrees of elevation fail this)."""


def view_directions(cameras: Cameras) -> Float[Tensor, "N 3"]:
    """Unit viewing directions (the OpenCV +z axis) of the cameras in world coordinates."""
    return cameras.cam_from_world[:, 2, :3].double()


def is_forward_facing(cameras: Cameras, test: ForwardFacingTest | None = None) -> bool:
    """True when the cameras all look roughly one way (LLFF-like captures such as fern):
    every view direction within ``max_angle_deg`` of their mean and the directions aligned
    (``min_alignment``); False for orbits, which look at the scene from around it."""
    test = test or ForwardFacingTest()
    d = view_directions(cameras)
    mean = d.mean(0)
    alignment = float(mean.norm())
    if alignment < 1e-9:
        return False
    cos = (d @ (mean / alignment)).clamp(-1, 1)
    max_angle = math.degrees(float(torch.arccos(cos.min())))
    return max_angle <= test.max_angle_deg and alignment >= test.min_alignment


def look_at_pose(
    eye: Float[Tensor, "N 3"], target: Float[Tensor, "N 3"], down: Float[Tensor, "3"]
) -> Float[Tensor, "N 3 4"]:
    """OpenCV ``cam_from_world`` of cameras at ``eye`` looking at ``target`` with the image's
    down axis as close to the world direction ``down`` as possible."""
    fwd = target - eye
    fwd = fwd / fwd.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    right = torch.linalg.cross(down.expand_as(fwd), fwd, dim=-1)
    norm = right.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-9).any()):
        raise ValueError("camera path: viewing direction parallel to the up direction")
    right = right / norm
    dn = torch.linalg.cross(fwd, right, dim=-1)
    R = torch.stack([right, dn, fwd], -2)  # rows: camera axes in world
    return make_rigid(R, -(R @ eye[..., None])[..., 0])


def _with_poses(cameras: Cameras, cam_from_world: Tensor) -> Cameras:
    """``len(cam_from_world)`` cameras with the first camera's intrinsics and image size."""
    n = cam_from_world.shape[0]
    return Cameras(
        cameras.model,
        cameras.params[:1].expand(n, -1).clone(),
        cameras.width[:1].expand(n).clone(),
        cameras.height[:1].expand(n).clone(),
        cam_from_world.to(cameras.dtype),
    )


def mean_down(cameras: Cameras) -> Float[Tensor, "3"]:
    """The cameras' mean image-down direction (OpenCV +y) in world coordinates, unit length."""
    down = cameras.cam_from_world[:, 1, :3].double().mean(0)
    return down / down.norm().clamp(min=1e-12)


def orbit_cameras(cameras: Cameras, center: Tensor, num_frames: int) -> Cameras:
    """A circular path around ``center`` at the cameras' mean radius and height, starting at
    the first camera's azimuth; the orbit axis and the frames' up are the cameras' mean up."""
    c = cameras.centers.double()
    center = center.double().cpu()
    down = mean_down(cameras)
    up = -down
    rel = c - center
    height = (rel @ up).mean()
    flat = rel - (rel @ up)[:, None] * up
    radius = flat.norm(dim=-1).mean()
    e1 = flat[0] / flat[0].norm().clamp(min=1e-9)
    e2 = torch.linalg.cross(up, e1, dim=-1)
    a = 2 * math.pi * torch.arange(num_frames, dtype=torch.float64) / num_frames
    eye = center + height * up + radius * (a.cos()[:, None] * e1 + a.sin()[:, None] * e2)
    return _with_poses(cameras, look_at_pose(eye, center.expand_as(eye), down))


def scene_depth_range(
    cameras: Cameras, points: Tensor | None, aabb: Tensor | None = None
) -> tuple[float, float]:
    """Near and far depth of the scene in front of the cameras: the 1st / 99th percentile of
    the sparse points' depths over all cameras (LLFF's bounds), else of the corners of the
    scene box ``aabb`` (``2 3``)."""
    if points is not None and len(points) > 0:
        p = points.double().cpu()
        if len(p) > 20000:
            p = p[torch.linspace(0, len(p) - 1, 20000).long()]
    elif aabb is not None:
        lo, hi = aabb.double().cpu()
        g = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]).double()
        p = lo + g * (hi - lo)
    else:
        raise ValueError("scene_depth_range needs sparse points or a scene box")
    R, t = cameras.cam_from_world[:, :, :3].double(), cameras.cam_from_world[:, :, 3].double()
    z = (p @ R[:, 2, :].T + t[:, 2]).flatten()
    z = z[z > 0]
    if len(z) == 0:
        raise ValueError("camera path: the scene lies behind every camera")
    near, far = torch.quantile(z, torch.tensor([0.01, 0.99], dtype=z.dtype)).tolist()
    return max(near, 1e-6), max(far, near * 1.01)


def mean_pose(cameras: Cameras) -> Float[Tensor, "3 4"]:
    """LLFF's average pose (``poses_avg``) as ``cam_from_world``: at the mean centre, looking
    along the mean view direction, image down along the mean down direction."""
    c = cameras.centers.double().mean(0)
    fwd = view_directions(cameras).mean(0)
    fwd = fwd / fwd.norm().clamp(min=1e-12)
    return look_at_pose(c[None], (c + fwd)[None], mean_down(cameras))[0]


def spiral_cameras(
    cameras: Cameras,
    num_frames: int,
    near: float,
    far: float,
    rotations: float = 2.0,
    z_rate: float = 0.5,
    radius_percentile: float = 90.0,
) -> Cameras:
    """LLFF's spiral (``render_path_spiral``) for a forward-facing capture.

    The focus depth blends the scene's ``near`` and ``far`` depth harmonically as LLFF does
    (``1 / (0.25 / (0.9 near) + 0.75 / (5 far))``); the eye moves around the mean camera
    (:func:`mean_pose`) by ``(cos a * rx, sin a * ry, sin(z_rate * a) * rz)`` in its frame,
    where ``r`` is the ``radius_percentile``-th percentile of the cameras' offsets from the
    mean camera, ``a`` going ``rotations`` turns; every frame looks at the focus point on the
    mean camera's axis, its up close to the mean camera's.
    """
    pose = mean_pose(cameras)
    world_from_mean = invert_rigid(pose)
    center = world_from_mean[:, 3]
    focus_depth = 1.0 / (0.25 / (0.9 * near) + 0.75 / (5.0 * far))
    offsets = (cameras.centers.double() - center) @ world_from_mean[:, :3]  # in the mean frame
    q = torch.tensor(radius_percentile / 100.0, dtype=torch.float64)
    rads = torch.quantile(offsets.abs(), q, dim=0)
    rads = torch.maximum(rads, torch.full_like(rads, 1e-3 * focus_depth))
    a = torch.linspace(0.0, 2 * math.pi * rotations, num_frames + 1, dtype=torch.float64)[:-1]
    local = torch.stack([a.cos(), a.sin(), (z_rate * a).sin()], -1) * rads
    eye = center + local @ world_from_mean[:, :3].T
    target = center + focus_depth * world_from_mean[:, 2]
    down = world_from_mean[:, 1]
    return _with_poses(cameras, look_at_pose(eye, target.expand_as(eye), down))


def slerp(q0: Float[Tensor, "4"], q1: Float[Tensor, "4"], t: Float[Tensor, " T"]) -> Tensor:
    """Spherical linear interpolation of unit quaternions (``wxyz``) at fractions ``t``, on
    the shorter arc; returns ``T 4``."""
    if float(q0 @ q1) < 0:
        q1 = -q1
    dot = float((q0 @ q1).clamp(-1, 1))
    t = t[:, None]
    if dot > 0.9995:  # nearly equal: normalised linear interpolation
        q = q0 + t * (q1 - q0)
    else:
        theta = math.acos(dot)
        q = (torch.sin((1 - t) * theta) * q0 + torch.sin(t * theta) * q1) / math.sin(theta)
    return q / q.norm(dim=-1, keepdim=True)


def _catmull_rom(p: Tensor, seg: Tensor, t: Tensor) -> Tensor:
    """Uniform Catmull-Rom spline through points ``p`` (``N 3``): the point at fraction ``t``
    of segment ``seg`` (from ``p[seg]`` to ``p[seg + 1]``); the ends repeat their point."""
    n = len(p)
    i0 = (seg - 1).clamp(min=0)
    i2 = (seg + 1).clamp(max=n - 1)
    i3 = (seg + 2).clamp(max=n - 1)
    p0, p1, p2, p3 = p[i0], p[seg], p[i2], p[i3]
    t = t[:, None]
    t2, t3 = t * t, t * t * t
    return 0.5 * (
        2 * p1
        + (p2 - p0) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
        + (3 * p1 - p0 - 3 * p2 + p3) * t3
    )


def interpolate_cameras(cameras: Cameras, num_frames: int) -> Cameras:
    """A smooth path through ``cameras`` in their order: ``num_frames`` frames evenly spaced
    in the path parameter (camera ``k`` at parameter ``k``), positions on a Catmull-Rom spline
    through the centres, rotations slerped between neighbours. With ``num_frames - 1`` a
    multiple of ``len(cameras) - 1`` every camera is a frame exactly."""
    n = len(cameras)
    if n < 2:
        raise ValueError("an interpolated path needs at least 2 cameras")
    if num_frames < 2:
        raise ValueError(f"an interpolated path needs at least 2 frames, got {num_frames}")
    s = torch.linspace(0, n - 1, num_frames, dtype=torch.float64)
    seg = s.floor().long().clamp(max=n - 2)
    t = s - seg
    centers = cameras.centers.double()
    eye = _catmull_rom(centers, seg, t)
    quats = matrix_to_quat_wxyz(cameras.cam_from_world[:, :, :3].double())
    q = torch.empty(num_frames, 4, dtype=torch.float64)
    for k in range(n - 1):
        sel = seg == k
        if bool(sel.any()):
            q[sel] = slerp(quats[k], quats[k + 1], t[sel])
    R = quat_wxyz_to_matrix(q)
    return _with_poses(cameras, make_rigid(R, -(R @ eye[..., None])[..., 0]))


# ----------------------------------------------------------------------------- files


class CameraPathError(ValueError):
    """An unknown camera path, or a path file that cannot be read (the message names it)."""


def read_camera_path(path: str | Path) -> Cameras:
    """Cameras of a nerfstudio ``camera_path.json`` (perspective cameras): PINHOLE cameras of
    ``render_width`` x ``render_height`` with the principal point at the image centre and the
    focal length of each frame's vertical ``fov`` (degrees), posed by its OpenGL
    ``camera_to_world`` (row-major 4x4, flat as nerfstudio writes it, or nested rows)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CameraPathError(f"{p}: not a readable camera path ({e})") from e
    try:
        w, h = int(data["render_width"]), int(data["render_height"])
        frames = data["camera_path"]
        kind = str(data.get("camera_type", "perspective")).lower()
        if kind != "perspective":
            raise CameraPathError(f"{p}: camera_type {kind!r}; only perspective is supported")
        c2w = torch.tensor([f["camera_to_world"] for f in frames], dtype=torch.float64)
        fov = torch.tensor([float(f["fov"]) for f in frames], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CameraPathError):
            raise
        raise CameraPathError(
            f"{p}: not a nerfstudio camera path (render_width, render_height, camera_path "
            f"[{{camera_to_world, fov}}]): {type(e).__name__} {e}"
        ) from e
    if len(frames) == 0 or w <= 0 or h <= 0:
        raise CameraPathError(f"{p}: no frames or an empty image size ({w} x {h})")
    if c2w.shape[1:] == (4, 4):  # nested rows instead of nerfstudio's flat list
        c2w = c2w.reshape(-1, 16)
    if c2w.shape[1:] != (16,) or not bool(torch.isfinite(c2w).all()):
        raise CameraPathError(f"{p}: camera_to_world must be 16 finite numbers per frame")
    if not bool(((fov > 0) & (fov < 180)).all()):
        raise CameraPathError(f"{p}: fov must lie between 0 and 180 degrees")
    world_from_cam = opengl_to_opencv_world_from_cam(c2w.reshape(-1, 4, 4)[:, :3])
    R = world_from_cam[:, :, :3]
    err = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=R.dtype)).abs().amax()
    if float(err) > 1e-3:
        raise CameraPathError(f"{p}: camera_to_world rotations are not orthonormal ({err:.2g})")
    f = 0.5 * h / torch.tan(torch.deg2rad(fov) / 2)
    n = len(frames)
    params = torch.stack([f, f, torch.full_like(f, w / 2), torch.full_like(f, h / 2)], -1)
    return Cameras(
        "PINHOLE",
        params,
        torch.full((n,), w, dtype=torch.long),
        torch.full((n,), h, dtype=torch.long),
        invert_rigid(world_from_cam),
    )


def camera_path_dict(cameras: Cameras, fps: float = 24.0) -> dict:
    """``cameras`` as the content of a nerfstudio ``camera_path.json``: the first camera's
    image size, each camera's vertical field of view (from ``fy``) and OpenGL pose."""
    K = cameras.K.double()
    h = cameras.height.double()
    fov = torch.rad2deg(2 * torch.atan(0.5 * h / K[:, 1, 1]))
    gl = opencv_to_opengl_world_from_cam(cameras.world_from_cam.double())
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).expand(len(cameras), 1, 4)
    c2w = torch.cat([gl, bottom], 1).reshape(len(cameras), 16)
    return {
        "camera_type": "perspective",
        "render_width": int(cameras.width[0]),
        "render_height": int(cameras.height[0]),
        "fps": fps,
        "seconds": len(cameras) / fps,
        "camera_path": [
            {"camera_to_world": c.tolist(), "fov": float(v), "aspect": float(a)}
            for c, v, a in zip(c2w, fov, cameras.width.double() / h)
        ],
    }


def write_camera_path(path: str | Path, cameras: Cameras, fps: float = 24.0) -> Path:
    """Write ``cameras`` as a nerfstudio ``camera_path.json`` (atomically, replacing ``path``;
    content of :func:`camera_path_dict`); returns ``path``."""
    return atomic_write_json(Path(path), camera_path_dict(cameras, fps))


def write_camera_path_versioned(path: str | Path, cameras: Cameras, fps: float = 24.0) -> Path:
    """Like :func:`write_camera_path` but never replaces a file: writes ``path``, or the first
    free ``STEM.vNNN.json`` beside it when ``path`` exists; returns the path written."""
    return write_json_versioned(Path(path), camera_path_dict(cameras, fps))


__all__ = [
    "PATH_NAMES",
    "CameraPathError",
    "ForwardFacingTest",
    "camera_path_dict",
    "interpolate_cameras",
    "is_forward_facing",
    "look_at_pose",
    "mean_down",
    "mean_pose",
    "orbit_cameras",
    "read_camera_path",
    "scene_depth_range",
    "slerp",
    "spiral_cameras",
    "view_directions",
    "write_camera_path",
    "write_camera_path_versioned",
]
