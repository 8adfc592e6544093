"""Synthetic scenes with exact ground truth: cameras, images, z-depth, object masks and
2D-3D correspondences, rendered on the CPU by :mod:`sceneforge.core.raster`.

World frame: +z up, metres-ish units (objects about 1 unit across, a room 6 x 5 x 2.8).
Cameras are OpenCV ``cam_from_world`` (float64) with COLMAP pixel centres, so everything
here can be checked with :class:`~sceneforge.core.cameras.Cameras` directly.

Ground truth in the returned :class:`~sceneforge.core.scene.SceneData`:

- ``images``: uint8 renders; ``depths``: float32 camera-z at each pixel centre (0 where the
  pixel centre's ray hits nothing).
- ``masks``: True where the pixel centre's ray hits an *object of interest* (the loaded mesh,
  or the boxes/spheres of procedural scenes); False on background and on scene structure
  (ground plane, backdrop, room walls/floor/ceiling).
- ``points`` / ``point_colors``: surface points sampled uniformly by area on all geometry;
  ``observations``: their exact projections (:meth:`Cameras.project`) in every view where
  the ray to the point hits nothing closer (exact ray cast, not a depth-map lookup).
- ``metadata``: ``mesh`` (the world-space :class:`~sceneforge.core.meshes.Mesh`),
  ``face_ids`` (per view int32 face index at pixel centres, -1 = none), ``object_ids``
  (int16, -1 structure, -2 nothing), ``point_faces``/``point_bary``, ``near``, ``config``.

:func:`pixel_correspondences` gives, for any pixels of view i, their 3D points and exact
projections into view j with visibility: the ground truth for tracking and matching.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core import synthetic_handheld as _handheld
from sceneforge.core.cameras import MODEL_PARAMS, Cameras, make_rigid, transform_points
from sceneforge.core.meshes import Material as _Material
from sceneforge.core.meshes import (
    Mesh,
    box_mesh,
    grid_patch,
    limit_threads,
    load_mesh,
    merge_meshes,
    plane_mesh,
    room_mesh,
    sphere_mesh,
)
from sceneforge.core.raster import (
    Shading,
    cast_pixels,
    cast_points,
)
from sceneforge.core.scene import SceneData
from sceneforge.core.synthetic_truth import (
    VISIBILITY_RTOL,
    observe_points,
    render_ground_truth,
    sample_surface,
    view_names,
)


@dataclass
class SyntheticSceneConfig:
    """What to render. All randomness comes from ``seed``."""

    scene: str = "objects"
    """"objects" (boxes + spheres), "boxes", "room" (walls + objects) or "mesh:<path>"."""
    rig: str = "auto"
    """"orbit", "forward", "walk", "handheld" (rooms) or "auto" (walk for rooms, else orbit)."""
    num_views: int = 20
    """Number of cameras."""
    width: int = 128
    """Image width in pixels."""
    height: int = 128
    """Image height in pixels."""
    fov_deg: float = 50.0
    """Horizontal field of view of the (undistorted) pinhole part."""
    camera_model: str = "PINHOLE"
    """COLMAP model: PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL or OPENCV."""
    distortion: tuple[float, ...] = ()
    """Distortion parameters of the model (k | k1 k2 | k1 k2 p1 p2); empty = zeros."""
    seed: int = 0
    """Seed for layout, textures and sampled points."""
    num_objects: int = 4
    """Objects in procedural scenes."""
    ground_plane: bool | None = None
    """Add a textured ground plane (None: yes for forward rigs, no otherwise)."""
    ground_size: float = 6.0
    """Side of the square ground plane (world units)."""
    ground_frequency: float = 4.0
    """Coarsest noise frequency of the ground texture (cells per unit; 8x at the finest)."""
    object_frequency: float = 10.0
    """Coarsest noise frequency of procedural objects' textures (cells per unit)."""
    backdrop: bool | None = None
    """Add a textured wall behind the objects (None: yes for forward rigs)."""
    orbit_distance: float = 0.0
    """Orbit radius; <= 0 frames the objects automatically."""
    elevation_deg: tuple[float, float] = (10.0, 40.0)
    """Orbit elevation range above the horizon (degrees)."""
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    """Orbit azimuth range (degrees); a full turn spaces views evenly."""
    forward_radius: float = 0.12
    """Forward rig: spiral radius of the camera centres, as a fraction of the distance."""
    walk_radius: float = 0.6
    """Walk rig: radius of the camera path around the room centre."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """RGB in [0, 1] where no geometry is hit."""
    ssaa: int = 1
    """Supersampling factor per axis (odd; 3 = 9 samples per pixel)."""
    shading: str = "lambert"
    """"lambert" (fixed world light, view independent) or "albedo"."""
    num_points: int = 2000
    """Surface points sampled for 2D-3D correspondences."""
    mesh_up_axis: str = "y"
    """Up axis of mesh files ("y" is rotated to +z)."""
    near: float = 0.0
    """Near plane; <= 0 picks 1e-3 of the scene size."""
    room_layout: str = "auto"
    """Room objects: "ring" (furniture ring), "scatter" (varied sizes off the path) or "auto"."""
    handheld_shake_deg: float = 1.5
    """Handheld rig: std of the per-frame yaw / pitch / roll hand shake (degrees)."""
    handheld_jitter: float = 0.015
    """Handheld rig: std of the per-frame camera position jitter (world units)."""
    handheld_bob: float = 0.03
    """Handheld rig: amplitude of the vertical walking bob (world units)."""
    handheld_step_jitter: float = 0.4
    """Handheld rig: step lengths are uniform in 1 +- this times the mean step."""
    tiled_surfaces: tuple[str, ...] = ()
    """Room surfaces with an exactly periodic tile texture (floor, ceiling, wall_x-, ...)."""
    tile_size: float = 0.4
    """Side of one texture tile on ``tiled_surfaces`` (world units, rounded to fit)."""
    motion_blur_px: tuple[float, float] = (0.0, 0.0)
    """Per-frame motion blur: line-kernel length range (px), seeded direction; 0 = none."""


@dataclass
class PixelCorrespondences:
    """Ground truth for pixels of view i seen from view j.

    Attributes:
        points: ``(N, 3)`` world points hit by the pixels' rays (zeros where ``valid`` is False).
        valid: ``(N,)`` the pixel's ray hits geometry in view i.
        xy: ``(N, 2)`` exact projections of ``points`` into view j.
        depth: ``(N,)`` their camera-z in view j.
        visible: ``(N,)`` valid, in front of camera j, inside image j and not occluded there.
    """

    points: Float[Tensor, "N 3"]
    valid: Bool[Tensor, " N"]
    xy: Float[Tensor, "N 2"]
    depth: Float[Tensor, " N"]
    visible: Bool[Tensor, " N"]


# ----------------------------------------------------------------------------- cameras


def look_at(
    eye: Float[Tensor, "N 3"], target: Float[Tensor, "N 3"], up=(0.0, 0.0, 1.0)
) -> Float[Tensor, "N 3 4"]:
    """OpenCV ``cam_from_world`` of cameras at ``eye`` looking at ``target`` (image up ~ ``up``)."""
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64).expand_as(eye)
    up_t = torch.as_tensor(up, dtype=torch.float64).expand_as(eye)
    fwd = target - eye
    fwd = fwd / fwd.norm(dim=-1, keepdim=True)
    right = torch.cross(fwd, up_t, dim=-1)
    norm = right.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-9).any()):
        raise ValueError("look_at: viewing direction parallel to the up vector")
    right = right / norm
    down = torch.cross(fwd, right, dim=-1)
    R_wc = torch.stack([right, down, fwd], -1)  # columns: camera axes in world
    R = R_wc.transpose(-1, -2)
    return make_rigid(R, -(R @ eye[..., None])[..., 0])


def orbit_rig(
    num_views: int,
    target,
    distance: float,
    elevation_deg=(10.0, 40.0),
    azimuth_deg=(0.0, 360.0),
) -> Float[Tensor, "N 3 4"]:
    """Cameras on a sphere around ``target`` looking at it; elevation oscillates twice per
    turn between the range's ends, azimuth sweeps the range (evenly around a full turn)."""
    k = torch.arange(num_views, dtype=torch.float64)
    a0, a1 = azimuth_deg
    full = abs(abs(a1 - a0) - 360.0) < 1e-9
    steps = num_views if full else max(num_views - 1, 1)
    az = torch.deg2rad(a0 + (a1 - a0) * k / steps)
    e0, e1 = elevation_deg
    el = torch.deg2rad(
        (e0 + e1) / 2 + (e1 - e0) / 2 * torch.sin(4 * math.pi * k / max(num_views, 1))
    )
    t = torch.as_tensor(target, dtype=torch.float64)
    eye = t + distance * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1
    )
    return look_at(eye, t.expand_as(eye))


def forward_rig(
    num_views: int, target, distance: float, radius_frac: float = 0.12, direction=(0.0, 1.0, -0.25)
) -> Float[Tensor, "N 3 4"]:
    """LLFF-like: centres on a small spiral in the plane facing ``direction``, all looking
    at ``target`` from about ``distance`` (so view directions differ by a few degrees)."""
    t = torch.as_tensor(target, dtype=torch.float64)
    d = torch.as_tensor(direction, dtype=torch.float64)
    d = d / d.norm()
    right = torch.cross(d, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), dim=-1)
    right = right / right.norm()
    up = torch.cross(right, d, dim=-1)
    k = torch.arange(num_views, dtype=torch.float64)
    ang = 2 * math.pi * 2 * k / max(num_views, 1)
    r = radius_frac * distance * (0.35 + 0.65 * (k + 1) / max(num_views, 1))
    eye = (
        t
        - distance * d
        + r[:, None] * (torch.cos(ang)[:, None] * right + torch.sin(ang)[:, None] * up)
        + (0.1 * radius_frac * distance * torch.sin(3 * ang))[:, None] * d
    )
    return look_at(eye, t.expand_as(eye))


def walk_rig(
    num_views: int,
    center=(0.0, 0.0, 1.4),
    radius: float = 0.6,
    pitch_deg: float = 8.0,
    tilt_deg: float = -15.0,
) -> Float[Tensor, "N 3 4"]:
    """Indoor walk: the camera moves on a circle around ``center`` looking outwards (a full
    turn), tilted by ``tilt_deg`` (down) with a gentle ``pitch_deg`` oscillation."""
    c = torch.as_tensor(center, dtype=torch.float64)
    k = torch.arange(num_views, dtype=torch.float64)
    th = 2 * math.pi * k / max(num_views, 1)
    eye = c + radius * torch.stack([torch.cos(th), torch.sin(th), torch.zeros_like(th)], -1)
    pitch = torch.deg2rad(tilt_deg + pitch_deg * torch.sin(3 * th))
    yaw = th + math.radians(20.0)
    look = torch.stack(
        [torch.cos(pitch) * torch.cos(yaw), torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch)], -1
    )
    return look_at(eye, eye + look)


def make_cameras(
    cam_from_world: Float[Tensor, "N 3 4"],
    width: int,
    height: int,
    fov_deg: float,
    model: str = "PINHOLE",
    distortion: tuple[float, ...] = (),
) -> Cameras:
    """Cameras with the principal point at the image centre and square pixels."""
    if model not in MODEL_PARAMS or model == "BAL":
        raise ValueError(f"unsupported synthetic camera model {model!r}")
    n = cam_from_world.shape[0]
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    cx, cy = width / 2, height / 2
    n_dist = {"SIMPLE_PINHOLE": 0, "PINHOLE": 0, "SIMPLE_RADIAL": 1, "RADIAL": 2, "OPENCV": 4}[
        model
    ]
    dist = list(distortion) or [0.0] * n_dist
    if len(dist) != n_dist:
        raise ValueError(f"{model} takes {n_dist} distortion parameters, got {len(dist)}")
    base = {
        "SIMPLE_PINHOLE": [f, cx, cy],
        "PINHOLE": [f, f, cx, cy],
        "SIMPLE_RADIAL": [f, cx, cy],
        "RADIAL": [f, cx, cy],
        "OPENCV": [f, f, cx, cy],
    }[model]
    params = torch.tensor(base + dist, dtype=torch.float64).expand(n, -1).clone()
    size = torch.full((n,), 1, dtype=torch.long)
    return Cameras(model, params, size * width, size * height, cam_from_world.to(torch.float64))


# ----------------------------------------------------------------------------- scenes


def _procedural_objects(
    num: int, gen: torch.Generator, seed: int, boxes_only: bool, frequency: float = 10.0
) -> list[Mesh]:
    out = []
    for i in range(num):
        u = torch.rand(6, generator=gen, dtype=torch.float64)
        ang = 2 * math.pi * (i + 0.3 * u[0]) / max(num, 1)
        rad = 0.0 if num == 1 else 0.45 + 0.15 * float(u[1])
        size = 0.3 + 0.25 * float(u[2])
        tint = (0.75 + 0.25 * torch.rand(3, generator=gen)).tolist()
        oseed = seed * 1000 + 17 * i + 1
        if boxes_only or i % 2 == 0:
            dims = (size, size * (0.7 + 0.6 * float(u[3])), size * (0.8 + 0.8 * float(u[4])))
            m = box_mesh(dims, seed=oseed, frequency=frequency, tint=tint)
            yaw = 2 * math.pi * float(u[5])
            R = torch.tensor(
                [
                    [math.cos(yaw), -math.sin(yaw), 0.0],
                    [math.sin(yaw), math.cos(yaw), 0.0],
                    [0, 0, 1],
                ],
                dtype=torch.float64,
            )
            z = dims[2] / 2
        else:
            m = sphere_mesh(size / 2, seed=oseed, frequency=frequency, tint=tint)
            R, z = None, size / 2
        pos = (rad * math.cos(ang), rad * math.sin(ang), z)
        out.append(m.transformed(R, pos).with_object_id(i))
    return out


def _backdrop(seed: int, y: float, width: float = 5.0, height: float = 3.0) -> Mesh:
    mat = _Material(color=torch.tensor([0.9, 0.85, 0.8]), noise_seed=seed, noise_frequency=4.0)
    return grid_patch((-width / 2, y, 0.0), (width, 0, 0), (0, 0, height), 16, 10, mat)


def build_scene_mesh(cfg: SyntheticSceneConfig) -> tuple[Mesh, str]:
    """The world-space mesh of ``cfg.scene`` and the rig "auto" resolves to."""
    gen = torch.Generator().manual_seed(cfg.seed)
    rig = cfg.rig
    kind = cfg.scene
    if rig == "auto":
        rig = "walk" if kind == "room" else "orbit"
    if rig not in ("orbit", "forward", "walk", "handheld"):
        raise ValueError(f"unknown rig {cfg.rig!r}; use orbit, forward, walk, handheld or auto")
    _handheld.check_options(cfg, rig)
    ground = cfg.ground_plane if cfg.ground_plane is not None else rig == "forward"
    backdrop = cfg.backdrop if cfg.backdrop is not None else rig == "forward"
    parts: list[Mesh]
    if kind.startswith("mesh:"):
        mesh = load_mesh(Path(kind[5:]), up_axis=cfg.mesh_up_axis, seed=cfg.seed)
        lo, _ = mesh.bounds()
        parts = [mesh.transformed(translation=(0.0, 0.0, -float(lo[2])))]
    elif kind in ("objects", "boxes"):
        parts = _procedural_objects(
            cfg.num_objects, gen, cfg.seed, kind == "boxes", cfg.object_frequency
        )
    elif kind == "room":
        parts, ring = _handheld.dress_room(cfg, rig, room_mesh(seed=cfg.seed * 1000 + 991))
        objs = _procedural_objects(cfg.num_objects, gen, cfg.seed, False, cfg.object_frequency)
        for m in objs if ring else []:  # push the ring out towards the walls, off the walk path
            m = m.transformed(scale=2.0)  # furniture-sized
            lo, hi = m.bounds()
            c = (lo + hi) / 2
            d = c[:2] / c[:2].norm().clamp_min(1e-9)
            shift = d * 1.9 - c[:2]
            parts.append(m.transformed(translation=(float(shift[0]), float(shift[1]), 0.0)))
    else:
        raise ValueError(
            f"unknown synthetic scene {kind!r}; use objects, boxes, room or mesh:<path>"
        )
    if kind != "room":
        if ground:
            plane = plane_mesh(
                size=cfg.ground_size,
                z=0.0,
                seed=cfg.seed * 1000 + 501,
                frequency=cfg.ground_frequency,
            )
            parts.append(plane)
        if backdrop:
            parts.append(_backdrop(cfg.seed * 1000 + 777, y=1.6))
    return merge_meshes(parts), rig


def _object_bounds(mesh: Mesh) -> tuple[Tensor, Tensor]:
    faces = mesh.faces[mesh.face_object >= 0]
    v = mesh.vertices[faces.reshape(-1)] if faces.numel() else mesh.vertices
    return v.min(0).values, v.max(0).values


def scene_cameras(cfg: SyntheticSceneConfig, mesh: Mesh, rig: str) -> Cameras:
    """Cameras of ``cfg``'s rig around/inside ``mesh``."""
    lo, hi = _object_bounds(mesh)
    target = (lo + hi) / 2
    radius = float((hi - lo).norm()) / 2
    half_fov = math.radians(min(cfg.fov_deg, cfg.fov_deg * cfg.height / cfg.width)) / 2
    dist = cfg.orbit_distance if cfg.orbit_distance > 0 else 1.15 * radius / math.sin(half_fov)
    if rig == "orbit":
        T = orbit_rig(cfg.num_views, target, dist, cfg.elevation_deg, cfg.azimuth_deg)
    elif rig == "forward":
        T = forward_rig(cfg.num_views, target, dist, cfg.forward_radius)
    else:
        if cfg.scene != "room":
            raise ValueError(f"the {rig} rig needs scene='room'")
        T = walk_rig(cfg.num_views, (0.0, 0.0, 1.4), cfg.walk_radius)
        T = _handheld.handheld_cameras(cfg) if rig == "handheld" else T
    return make_cameras(T, cfg.width, cfg.height, cfg.fov_deg, cfg.camera_model, cfg.distortion)


@limit_threads
def make_scene(cfg: SyntheticSceneConfig) -> SceneData:
    """Render ``cfg`` into an in-memory :class:`SceneData` with exact ground truth."""
    mesh, rig = build_scene_mesh(cfg)
    cameras = scene_cameras(cfg, mesh, rig)
    lo, hi = mesh.bounds()
    near = cfg.near if cfg.near > 0 else 1e-3 * float((hi - lo).norm())
    shading = Shading(mode=cfg.shading)
    blur = _handheld.blur_schedule(len(cameras), cfg.seed, tuple(cfg.motion_blur_px))
    extra = {"rig": rig, "config": asdict(cfg)}
    extra["mask_semantics"] = "True where the pixel-centre ray hits an object of interest"
    return render_ground_truth(
        mesh, cameras, near, shading, cfg.background, cfg.num_points, cfg.seed, extra,
        ssaa=cfg.ssaa, blur=blur,
    )  # fmt: skip


def _scene_mesh(scene: SceneData) -> Mesh:
    mesh = scene.metadata.get("mesh")
    if not isinstance(mesh, Mesh):
        raise ValueError("scene has no ground-truth mesh (metadata['mesh']): not synthetic")
    return mesh


def pixel_correspondences(
    scene: SceneData, i: int, j: int, pixels: Float[Tensor, "N 2"] | None = None
) -> PixelCorrespondences:
    """Exact ground truth for ``pixels`` of view ``i`` (default: every pixel centre,
    row-major): their 3D points, projections into view ``j`` and visibility there."""
    mesh = _scene_mesh(scene)
    near = float(scene.metadata.get("near", 1e-3))
    cams = scene.cameras.to(dtype=torch.float64)
    if pixels is None:
        h, w = int(cams.height[i]), int(cams.width[i])
        v, u = torch.meshgrid(
            torch.arange(h, dtype=torch.float64) + 0.5,
            torch.arange(w, dtype=torch.float64) + 0.5,
            indexing="ij",
        )
        pixels = torch.stack([u, v], -1).reshape(-1, 2)
    hits = cast_pixels(mesh, cams, i, pixels, near)
    valid = hits.face >= 0
    tri = mesh.vertices[mesh.faces[hits.face.clamp_min(0)]]
    points = torch.where(valid[:, None], (tri * hits.bary[..., None]).sum(1), 0.0)
    pix, z, hits_j = cast_points(mesh, cams, j, points, near)
    visible = valid & (hits_j.face >= 0) & (hits_j.depth >= z * (1 - VISIBILITY_RTOL))
    return PixelCorrespondences(points, valid, pix, z, visible)


def depth_to_points(scene: SceneData, i: int) -> tuple[Float[Tensor, "H W 3"], Bool[Tensor, "H W"]]:
    """World points of view ``i``'s pixel centres from its depth map (valid where depth > 0)."""
    from sceneforge.core.cameras import pixel_centers, unproject

    cams = scene.cameras.to(dtype=torch.float64)
    d = scene.depths[i].to(torch.float64)
    h, w = d.shape
    rays = unproject(pixel_centers(h, w, dtype=torch.float64), cams.model, cams.params[i])
    pc = rays * d[..., None]
    return transform_points(cams.world_from_cam[i], pc), d > 0


# ----------------------------------------------------------------------------- presets


def turntable_scene(
    num_views: int = 8,
    size: int = 64,
    seed: int = 0,
    mesh: str | Path | None = None,
    ssaa: int = 1,
    num_points: int = 500,
) -> SceneData:
    """Object-centric orbit (full turn) around procedural objects or a mesh file, black
    background, no ground: the small scene the field tests train on."""
    cfg = SyntheticSceneConfig(
        scene=f"mesh:{mesh}" if mesh is not None else "objects",
        rig="orbit",
        num_views=num_views,
        width=size,
        height=size,
        seed=seed,
        ssaa=ssaa,
        num_points=num_points,
        elevation_deg=(15.0, 45.0),
    )
    return make_scene(cfg)


def forward_scene(num_views: int = 12, size: int = 64, seed: int = 0, **kw) -> SceneData:
    """Forward-facing (LLFF-like) views of objects on a ground plane before a backdrop."""
    cfg = SyntheticSceneConfig(
        scene="objects",
        rig="forward",
        num_views=num_views,
        width=size,
        height=size * 3 // 4,
        seed=seed,
        **kw,
    )
    return make_scene(cfg)


def room_scene(num_views: int = 16, size: int = 64, seed: int = 0, **kw) -> SceneData:
    """Indoor walk: a textured room with objects, camera circling inside and looking out."""
    cfg = SyntheticSceneConfig(
        scene="room",
        rig="walk",
        num_views=num_views,
        width=size,
        height=size * 3 // 4,
        fov_deg=70.0,
        seed=seed,
        **kw,
    )
    return make_scene(cfg)


__all__ = [
    "PixelCorrespondences",
    "SyntheticSceneConfig",
    "build_scene_mesh",
    "depth_to_points",
    "forward_rig",
    "forward_scene",
    "look_at",
    "make_cameras",
    "make_scene",
    "observe_points",
    "orbit_rig",
    "pixel_correspondences",
    "render_ground_truth",
    "room_scene",
    "sample_surface",
    "scene_cameras",
    "turntable_scene",
    "view_names",
    "walk_rig",
]
