"""Target cameras for Free3D novel views, relative to the one source camera.

Camera convention (sceneforge's, :mod:`sceneforge.core.cameras`): OpenCV ``cam_from_world``
``(N, 3, 4)``, x right / y down / z forward, COLMAP pixel centres, PINHOLE intrinsics.

**The source frame** (what Zero-1-to-3 and Free3D assume of their single input): the object's
centre is the origin, +z is up, and the source camera sits at azimuth 0 (its centre on the +x
side, ``eye = r (cos e, 0, sin e)``) at elevation ``e`` and distance ``r``, looking at the
origin with its image up as close to +z as possible. :func:`source_camera` builds it;
:func:`to_source_frame` re-expresses any posed views of an object centred at ``center`` in it
(a rotation about +z and a shift, so elevations and distances are kept);
:func:`sceneforge.stylize.free3d.rays.relative_pose` gives the ``target_from_source`` transforms a model conditions on.

**Target specs** (:func:`parse_target_spec`, :func:`target_cameras`), ``KIND:ARG[,key=value]...``:

- ``orbit:N`` -- N views on a circle of constant elevation around the object. With the
  default full turn the N targets and the source split the circle into N + 1 equal azimuth
  steps (``360 (k + 1) / (N + 1)`` degrees after the source, k = 0 .. N-1), so none repeats
  the source. Options: ``elevation=DEG`` (absolute, above the horizon; default the source's),
  ``radius=R`` (default the source's distance), ``arc=DEG`` (an arc instead of the full turn:
  targets at ``arc (k + 1) / N``, the last one at ``arc``; negative turns clockwise),
  ``fov=DEG`` (horizontal; default the source's). Example: ``orbit:16,elevation=20``.
- ``file:PATH`` (or just a path ending in ``.json``) -- a nerfstudio ``camera_path.json``
  (:func:`sceneforge.fields.camera_paths.read_camera_path`) or a ``transforms.json`` (only its
  cameras are read; images need not exist). Option ``frame=source`` (default): the poses are
  already in the source frame above; ``frame=first``: the file's first camera is the source
  camera and is dropped, the others are re-anchored rigidly so that it lands on the source
  camera (the object then lies at the source's distance in front of it). Intrinsics are
  rescaled from the file's image size to the source camera's (square) image.

Every error names the spec (and the file) it comes from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import Cameras, compose_rigid, invert_rigid, make_rigid
from sceneforge.core.conventions import opengl_to_opencv_world_from_cam
from sceneforge.core.io_common import check_pose, focal_from_fov
from sceneforge.core.scene import SceneDataError
from sceneforge.core.synthetic import look_at
from sceneforge.fields.camera_paths import CameraPathError, read_camera_path

#: Field of view (degrees) of Zero-1-to-3's Objaverse renders (35 mm lens, 32 mm sensor).
ZERO123_FOV_DEG = 2 * math.degrees(math.atan(16.0 / 35.0))


class TargetSpecError(ValueError):
    """A target camera spec that cannot be used; the message names the spec (and file)."""


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target spec (see the module docstring for the syntax)."""

    kind: str
    """``orbit`` or ``file``."""
    num_views: int = 0
    """Orbit: number of target views."""
    elevation_deg: float | None = None
    """Orbit: absolute elevation of the targets (None: the source's)."""
    radius: float | None = None
    """Orbit: distance of the targets from the object centre (None: the source's)."""
    arc_deg: float = 360.0
    """Orbit: azimuth span after the source (360 = the full turn)."""
    fov_deg: float | None = None
    """Orbit: horizontal field of view (None: the source's)."""
    path: Path | None = None
    """File: the cameras file."""
    frame: str = "source"
    """File: ``source`` (poses in the source frame) or ``first`` (first camera = source)."""


# ----------------------------------------------------------------------------- geometry


def spherical_cam_from_world(
    azimuth_deg: Float[Tensor, " N"],
    elevation_deg: Float[Tensor, " N"],
    radius: Float[Tensor, " N"],
    center: Float[Tensor, "3"] | None = None,
) -> Float[Tensor, "N 3 4"]:
    """Cameras at ``center + r (cos e cos a, cos e sin a, sin e)`` looking at ``center``
    (image up ~ +z); float64. Elevations of +-90 degrees are rejected (no defined azimuth)."""
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64))
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float64))
    r = torch.as_tensor(radius, dtype=torch.float64)
    az, el, r = torch.broadcast_tensors(az, el, r)
    if bool((el.abs() >= math.radians(89.9)).any()):
        raise ValueError("camera elevation must lie strictly between -90 and 90 degrees")
    if bool((r <= 0).any()):
        raise ValueError("camera distance must be positive")
    c = torch.zeros(3, dtype=torch.float64) if center is None else center.double()
    eye = c + r[:, None] * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1
    )
    return look_at(eye, c.expand_as(eye))


def cam_spherical(
    cam_from_world: Float[Tensor, "N 3 4"], center: Float[Tensor, "3"] | None = None
) -> tuple[Float[Tensor, " N"], Float[Tensor, " N"], Float[Tensor, " N"]]:
    """Azimuth and elevation (degrees) and distance of camera centres around ``center``."""
    c = torch.zeros(3, dtype=torch.float64) if center is None else center.double()
    eye = invert_rigid(cam_from_world.double())[..., 3] - c
    r = eye.norm(dim=-1)
    az = torch.rad2deg(torch.atan2(eye[:, 1], eye[:, 0]))
    el = torch.rad2deg(torch.asin((eye[:, 2] / r.clamp_min(1e-12)).clamp(-1, 1)))
    return az, el, r


def source_camera(
    size: int = 256,
    fov_deg: float = ZERO123_FOV_DEG,
    radius: float = 1.5,
    elevation_deg: float = 0.0,
) -> Cameras:
    """The canonical source camera (one PINHOLE camera of ``size`` x ``size`` pixels)."""
    if size <= 0 or not 0.0 < fov_deg < 180.0:
        raise ValueError(f"source camera needs size > 0 and 0 < fov < 180 (got {size}, {fov_deg})")
    T = spherical_cam_from_world(
        torch.zeros(1), torch.tensor([float(elevation_deg)]), torch.tensor([float(radius)])
    )
    f = focal_from_fov(math.radians(fov_deg), size)
    params = torch.tensor([[f, f, size / 2, size / 2]], dtype=torch.float64)
    one = torch.ones(1, dtype=torch.long)
    return Cameras("PINHOLE", params, one * size, one * size, T)


def to_source_frame(
    cam_from_world: Float[Tensor, "V 3 4"],
    source_index: int,
    center: Float[Tensor, "3"] | None = None,
) -> Float[Tensor, "V 3 4"]:
    """The same views in the source frame of view ``source_index``: the object centre
    ``center`` moved to the origin and the world turned about +z so that the source camera
    sits at azimuth 0. World +z must be up (as in every sceneforge synthetic scene)."""
    c = torch.zeros(3, dtype=torch.float64) if center is None else center.double()
    cfw = cam_from_world.double()
    az, _, _ = cam_spherical(cfw[source_index : source_index + 1], c)
    a = math.radians(float(az[0]))
    Rz = torch.tensor(
        [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    world_from_source_frame = make_rigid(Rz, c)
    return compose_rigid(cfw, world_from_source_frame.expand_as(cfw)).to(cam_from_world.dtype)


def reanchor(
    cam_from_world: Float[Tensor, "V 3 4"],
    anchor_index: int,
    source_cam_from_world: Float[Tensor, "3 4"],
) -> Float[Tensor, "V 3 4"]:
    """Rigidly re-express views so that view ``anchor_index`` becomes ``source_cam_from_world``
    (every ``target_from_anchor`` is kept)."""
    cfw = cam_from_world.double()
    world_from_src_frame = compose_rigid(
        invert_rigid(cfw[anchor_index]), source_cam_from_world.double()
    )
    return compose_rigid(cfw, world_from_src_frame.expand_as(cfw))


# ----------------------------------------------------------------------------- specs


def _option(spec: str, key: str, value: str) -> float:
    try:
        out = float(value)
    except ValueError as e:
        raise TargetSpecError(f"target spec {spec!r}: {key}={value!r} is not a number") from e
    if not math.isfinite(out):
        raise TargetSpecError(f"target spec {spec!r}: {key}={value!r} is not finite")
    return out


def parse_target_spec(spec: str) -> TargetSpec:
    """Parse ``orbit:N[,elevation=E][,radius=R][,arc=A][,fov=F]`` or
    ``file:PATH[,frame=source|first]`` (or a bare ``PATH.json``)."""
    s = spec.strip()
    if s.split(",")[0].endswith(".json") and not s.startswith(("orbit:", "file:")):
        s = f"file:{s}"
    kind, sep, rest = s.partition(":")
    if not sep or kind not in ("orbit", "file"):
        raise TargetSpecError(
            f"target spec {spec!r}: expected orbit:N[,elevation=E,radius=R,arc=A,fov=F] "
            "or file:PATH[,frame=source|first]"
        )
    head, *opts = rest.split(",")
    options: dict[str, str] = {}
    for o in opts:
        k, eq, v = o.partition("=")
        if not eq or not k.strip():
            raise TargetSpecError(f"target spec {spec!r}: option {o!r} is not key=value")
        options[k.strip()] = v.strip()
    allowed = {"orbit": {"elevation", "radius", "arc", "fov"}, "file": {"frame"}}[kind]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TargetSpecError(
            f"target spec {spec!r}: unknown option(s) {unknown} for {kind} "
            f"(allowed: {sorted(allowed)})"
        )
    if kind == "file":
        if not head.strip():
            raise TargetSpecError(f"target spec {spec!r}: file: needs a path")
        frame = options.get("frame", "source")
        if frame not in ("source", "first"):
            raise TargetSpecError(f"target spec {spec!r}: frame must be source or first")
        return TargetSpec(kind="file", path=Path(head.strip()), frame=frame)
    try:
        num = int(head)
    except ValueError as e:
        raise TargetSpecError(f"target spec {spec!r}: orbit needs a view count (orbit:16)") from e
    if num < 1:
        raise TargetSpecError(f"target spec {spec!r}: orbit needs at least one view")
    vals = {k: _option(spec, k, v) for k, v in options.items()}
    if "elevation" in vals and abs(vals["elevation"]) >= 89.9:
        raise TargetSpecError(f"target spec {spec!r}: elevation must lie within (-90, 90)")
    if "radius" in vals and vals["radius"] <= 0:
        raise TargetSpecError(f"target spec {spec!r}: radius must be positive")
    if "fov" in vals and not 0 < vals["fov"] < 180:
        raise TargetSpecError(f"target spec {spec!r}: fov must lie within (0, 180)")
    arc = vals.get("arc", 360.0)
    if arc == 0 or abs(arc) > 360:
        raise TargetSpecError(f"target spec {spec!r}: arc must be non-zero, at most 360")
    return TargetSpec(
        kind="orbit",
        num_views=num,
        elevation_deg=vals.get("elevation"),
        radius=vals.get("radius"),
        arc_deg=arc,
        fov_deg=vals.get("fov"),
    )


def orbit_azimuths(num_views: int, arc_deg: float = 360.0) -> Float[Tensor, " N"]:
    """Azimuth offsets (degrees) of an ``orbit`` spec's targets after the source."""
    k = torch.arange(1, num_views + 1, dtype=torch.float64)
    if abs(abs(arc_deg) - 360.0) < 1e-9:
        return arc_deg * k / (num_views + 1)
    return arc_deg * k / num_views


def read_transforms_cameras(path: Path) -> Cameras:
    """The cameras of a ``transforms.json`` (OpenGL ``transform_matrix``, nerfstudio
    intrinsics or ``camera_angle_x``); image files are not needed. Distortion is refused."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SceneDataError(f"{path}: not a readable transforms.json ({e})") from e
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise SceneDataError(f"{path}: no 'frames' list with cameras")
    params, sizes, poses = [], [], []
    for k, frame in enumerate(frames):
        where = f"{path}: frame {k}"

        def get(key, frame=frame):
            return frame.get(key, data.get(key)) if isinstance(frame, dict) else None

        try:
            w, h = int(get("w")), int(get("h"))
            if get("fl_x") is not None:
                fx = float(get("fl_x"))
            else:
                fx = focal_from_fov(float(get("camera_angle_x")), w)
            fy = float(get("fl_y")) if get("fl_y") is not None else fx
            cx = float(get("cx")) if get("cx") is not None else w / 2
            cy = float(get("cy")) if get("cy") is not None else h / 2
            M = torch.tensor(get("transform_matrix"), dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise SceneDataError(
                f"{where}: needs w, h, fl_x (or camera_angle_x) and a 4x4 transform_matrix "
                f"({type(e).__name__}: {e})"
            ) from e
        if any(float(get(d) or 0.0) != 0.0 for d in ("k1", "k2", "k3", "p1", "p2")):
            raise SceneDataError(f"{where}: distorted cameras are not supported as targets")
        if M.shape not in ((4, 4), (3, 4)) or w <= 0 or h <= 0:
            raise SceneDataError(f"{where}: transform_matrix must be 4x4 and w, h positive")
        world_from_cam = opengl_to_opencv_world_from_cam(M[:3, :4])
        check_pose(world_from_cam, where)
        params.append([fx, fy, cx, cy])
        sizes.append((w, h))
        poses.append(invert_rigid(world_from_cam))
    return Cameras(
        "PINHOLE",
        torch.tensor(params, dtype=torch.float64),
        torch.tensor([s[0] for s in sizes], dtype=torch.long),
        torch.tensor([s[1] for s in sizes], dtype=torch.long),
        torch.stack(poses),
    )


def _read_cameras_file(spec: str, path: Path) -> Cameras:
    if not path.is_file():
        raise TargetSpecError(f"target spec {spec!r}: {path}: no such cameras file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TargetSpecError(f"target spec {spec!r}: {path}: not valid JSON ({e})") from e
    try:
        if isinstance(data, dict) and "camera_path" in data:
            return read_camera_path(path)
        if isinstance(data, dict) and "frames" in data:
            return read_transforms_cameras(path)
    except (CameraPathError, SceneDataError) as e:
        raise TargetSpecError(f"target spec {spec!r}: {e}") from e
    raise TargetSpecError(
        f"target spec {spec!r}: {path}: neither a camera_path.json ('camera_path') nor a "
        "transforms.json ('frames')"
    )


def _resized(cams: Cameras, size: int) -> Cameras:
    """``cams`` with intrinsics rescaled to ``size`` x ``size`` images (same field of view)."""
    sx = size / cams.width.double()
    sy = size / cams.height.double()
    scale = torch.stack([sx, sy, sx, sy], -1)
    n = len(cams)
    full = torch.full((n,), size, dtype=torch.long)
    return Cameras("PINHOLE", cams.params.double() * scale, full, full.clone(), cams.cam_from_world)


def target_cameras(spec: str | TargetSpec, source: Cameras) -> Cameras:
    """Target cameras of ``spec`` in the source frame of the one camera ``source`` (usually
    :func:`source_camera`); PINHOLE cameras of the source's (square) image size."""
    if len(source) != 1:
        raise ValueError(f"target_cameras needs exactly one source camera, got {len(source)}")
    text = spec if isinstance(spec, str) else repr(spec)
    ts = parse_target_spec(spec) if isinstance(spec, str) else spec
    size = int(source.width[0])
    if int(source.height[0]) != size:
        raise ValueError(f"the source camera must be square, got {size}x{int(source.height[0])}")
    src_cfw = source.cam_from_world[0].double()
    if ts.kind == "orbit":
        if source.model != "PINHOLE":
            raise ValueError(f"orbit targets need a PINHOLE source camera, got {source.model}")
        az0, el0, r0 = cam_spherical(src_cfw[None])
        n = ts.num_views
        az = az0 + orbit_azimuths(n, ts.arc_deg)
        el = torch.full((n,), ts.elevation_deg if ts.elevation_deg is not None else float(el0[0]))
        r = torch.full((n,), ts.radius if ts.radius is not None else float(r0[0]))
        T = spherical_cam_from_world(az, el, r)
        params = source.params.double().expand(n, -1).clone()
        if ts.fov_deg is not None:
            f = focal_from_fov(math.radians(ts.fov_deg), size)
            params[:, 0] = f
            params[:, 1] = f
        full = torch.full((n,), size, dtype=torch.long)
        return Cameras("PINHOLE", params, full, full.clone(), T)
    assert ts.path is not None
    cams = _resized(_read_cameras_file(text, ts.path), size)
    if ts.frame == "first":
        if len(cams) < 2:
            raise TargetSpecError(
                f"target spec {text!r}: {ts.path}: frame=first needs the source camera and at "
                "least one target"
            )
        T = reanchor(cams.cam_from_world, 0, src_cfw)
        cams = Cameras("PINHOLE", cams.params[1:], cams.width[1:], cams.height[1:], T[1:])
    return cams


__all__ = [
    "ZERO123_FOV_DEG",
    "TargetSpec",
    "TargetSpecError",
    "cam_spherical",
    "orbit_azimuths",
    "parse_target_spec",
    "read_transforms_cameras",
    "reanchor",
    "source_camera",
    "spherical_cam_from_world",
    "target_cameras",
    "to_source_frame",
]
