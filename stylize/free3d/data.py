"""Posed multi-view training sets for Free3D: object renders with exact cameras.

A :class:`ViewSet` is one object seen from V cameras: images on white with their alpha, the
pinhole ``K`` and OpenCV ``cam_from_world`` (sceneforge's convention,
:mod:`sceneforge.core.cameras`), and the object's centre in that world (+z up).

Where view sets come from:

- :func:`render_view_sets`: rendered on the CPU by sceneforge's rasterizer
  (:mod:`sceneforge.core.raster`) from procedural objects (``procedural:SEED``: a stack of
  one to three textured boxes / spheres, :func:`procedural_object`) and mesh
  files (``mesh:PATH``, e.g. the shared meshes of :func:`shared_mesh_sources`), normalised to
  a unit bounding box at the origin. Cameras sit on a sphere around the object looking at it:
  azimuths evenly spaced with a seeded jitter, random elevations and distances.
- :func:`read_render_folder`: a folder of Objaverse-style renders, one sub-folder per object
  holding its images and a ``cameras.json`` (format below); :func:`write_object_views` writes
  a view set in that format.

``cameras.json`` (one per object folder)::

    {
      "convention": "opencv",          # axes of the poses: "opencv" (x right, y down,
                                       # z forward; default) or "opengl"/"blender" (y up, z back)
      "center": [0, 0, 0],             # object centre in world coordinates (default origin)
      "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],   # shared intrinsics in pixels, or
      "fov_deg": 49.13,                # a shared horizontal field of view (centred pp)
      "frames": [
        {"file": "000.png",            # RGBA image (alpha = object), or RGB with "mask"
         "mask": "000_mask.png",       # optional mask file (nonzero = object)
         "cam_from_world": [[...], [...], [...]],   # 3x4 or 4x4, or instead
         "world_from_cam": [[...], ...],            # its inverse (3x4 or 4x4)
         "K": ..., "fov_deg": ...}     # optional per-frame intrinsics (override shared ones)
      ]
    }

World +z is up. Pixel centres follow COLMAP (top-left pixel centre at 0.5, 0.5).

:class:`ViewTupleDataset` samples ``(source view, V target views)`` tuples deterministically
from a seed, with every camera expressed in the source frame of
:mod:`sceneforge.stylize.free3d.poses`; :func:`split_view_sets` holds whole objects out for
validation.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.utils.data import Dataset

from sceneforge.core.atomic import atomic_dir, atomic_write_json
from sceneforge.core.cameras import Cameras, invert_rigid, to_homogeneous
from sceneforge.core.conventions import opengl_to_opencv_world_from_cam
from sceneforge.core.image_io import read_mask, write_image_atomic
from sceneforge.core.io_common import check_pose, focal_from_fov
from sceneforge.core.meshes import (
    Mesh,
    MeshLoadError,
    box_mesh,
    load_mesh,
    merge_meshes,
    sphere_mesh,
)
from sceneforge.core.raster import Shading, render_view, vertex_normals
from sceneforge.core.scene import SceneDataError
from sceneforge.core.synthetic import make_cameras
from sceneforge.stylize.free3d.foreground import read_rgba
from sceneforge.stylize.free3d.poses import (
    ZERO123_FOV_DEG,
    spherical_cam_from_world,
    to_source_frame,
)
from sceneforge.stylize.free3d.rays import relative_pose

#: The shared meshes (relative to ``../shared/data``) that render as objects.
SHARED_MESHES = (
    "meshes/spider.obj",
    "meshes/boxtextured/BoxTextured.glb",
    "meshes/WusonOBJ.obj",
    "meshes/duck/duck.dae",
    "meshes/glmark2/bunny.obj",
)

CAMERAS_FILE = "cameras.json"


@dataclass
class ViewSet:
    """One object seen from V posed cameras (square or not; all views one size)."""

    images: Float[Tensor, "V 3 H W"]
    """RGB in [0, 1], composited onto white."""
    alpha: Float[Tensor, "V 1 H W"]
    """Object opacity in [0, 1]."""
    K: Float[Tensor, "V 3 3"]
    """Pinhole intrinsics in pixels (COLMAP pixel centres)."""
    cam_from_world: Float[Tensor, "V 3 4"]
    """OpenCV extrinsics (x right, y down, z forward)."""
    center: Float[Tensor, "3"]
    """The object's centre in world coordinates (world +z up)."""
    name: str = ""
    """Object name (for messages and file names)."""

    def __post_init__(self) -> None:
        v = self.images.shape[0]
        h, w = self.images.shape[-2:]
        checks = {
            "images": (self.images.shape, (v, 3, h, w)),
            "alpha": (self.alpha.shape, (v, 1, h, w)),
            "K": (self.K.shape, (v, 3, 3)),
            "cam_from_world": (self.cam_from_world.shape, (v, 3, 4)),
            "center": (self.center.shape, (3,)),
        }
        for key, (got, want) in checks.items():
            if tuple(got) != want:
                raise ValueError(f"view set {self.name!r}: {key} must be {want}, got {tuple(got)}")
        if v < 1:
            raise ValueError(f"view set {self.name!r} has no views")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return int(self.images.shape[-2])

    @property
    def width(self) -> int:
        return int(self.images.shape[-1])

    def cameras(self) -> Cameras:
        """The views' :class:`Cameras` (PINHOLE, float64)."""
        K = self.K.double()
        params = torch.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], -1)
        n = len(self)
        size = torch.ones(n, dtype=torch.long)
        return Cameras(
            "PINHOLE", params, size * self.width, size * self.height, self.cam_from_world.double()
        )


@dataclass
class RenderSetConfig:
    """How :func:`render_view_sets` renders each object."""

    num_views: int = 12
    """Views per object."""
    size: int = 48
    """Image side in pixels (square images)."""
    fov_deg: float = ZERO123_FOV_DEG
    """Horizontal field of view (Zero-1-to-3's renders by default)."""
    radius: tuple[float, float] = (1.8, 2.2)
    """Camera distance range from the object's centre (the object spans a unit box)."""
    elevation_deg: tuple[float, float] = (-10.0, 50.0)
    """Camera elevation range (degrees above the horizon)."""
    azimuth_jitter: float = 0.5
    """Random azimuth offset of each view, as a fraction of the even spacing."""
    ssaa: int = 1
    """Supersampling per axis (odd); above 1 alpha is the exact coverage (two renders)."""
    shading: str = "lambert"
    """``lambert`` (fixed world light) or ``albedo``."""
    seed: int = 0
    """Seed of the cameras (object ``i`` uses ``seed + i``)."""


# ----------------------------------------------------------------------------- objects


def shared_mesh_sources(data_root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``mesh:PATH`` sources of the shared meshes under ``data_root`` (``../shared/data``)
    and the reasons for any left out (missing files)."""
    root = Path(data_root)
    found, skipped = [], []
    for rel in SHARED_MESHES:
        p = root / rel
        if p.is_file():
            found.append(f"mesh:{p}")
        else:
            skipped.append(f"{p}: not found")
    return found, skipped


def procedural_object(seed: int, frequency: float = 6.0) -> Mesh:
    """A compact seeded object: a stack of one to three textured boxes / spheres of random
    sizes, tints and yaws, each resting on the one below (slightly off-centre)."""
    gen = torch.Generator().manual_seed(seed)
    parts, z = [], 0.0
    for i in range(1 + seed % 3):
        u = torch.rand(7, generator=gen, dtype=torch.float64).tolist()
        tint = (0.55 + 0.45 * torch.rand(3, generator=gen)).tolist()
        size = 0.5 + 0.5 * u[0] if i == 0 else (0.3 + 0.4 * u[0]) * parts[0][1]
        oseed = seed * 1000 + 17 * i + 1
        if u[1] < 0.55:
            dims = (size, size * (0.6 + 0.8 * u[2]), size * (0.5 + 0.7 * u[3]))
            m = box_mesh(dims, seed=oseed, frequency=frequency, tint=tint)
            yaw = 2 * math.pi * u[4]
            c, sn = math.cos(yaw), math.sin(yaw)
            R = torch.tensor([[c, -sn, 0.0], [sn, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
            height = dims[2]
        else:
            m = sphere_mesh(size / 2, seed=oseed, frequency=frequency, tint=tint)
            R, height = None, size
        shift = 0.15 * size * (u[5] - 0.5), 0.15 * size * (u[6] - 0.5)
        parts.append((m.transformed(R, (shift[0], shift[1], z + height / 2)), size))
        z += height
    return merge_meshes([m for m, _ in parts]).normalized().with_object_id(0)


def load_object(source: str) -> Mesh:
    """The object mesh of ``procedural:SEED`` (:func:`procedural_object`) or ``mesh:PATH``,
    centred at the origin with its largest bounding-box side 1, +z up."""
    kind, sep, arg = source.partition(":")
    if kind == "procedural" and sep:
        try:
            seed = int(arg)
        except ValueError as e:
            raise ValueError(f"object source {source!r}: procedural needs an integer seed") from e
        return procedural_object(seed)
    if kind == "mesh" and sep:
        try:
            return load_mesh(Path(arg), up_axis="y", seed=0)
        except (MeshLoadError, ImportError) as e:
            raise MeshLoadError(f"object source {source!r}: {e}") from e
    raise ValueError(f"object source {source!r}: use procedural:SEED or mesh:PATH")


def sphere_cameras(
    num_views: int, cfg: RenderSetConfig, gen: torch.Generator
) -> Float[Tensor, "V 3 4"]:
    """Cameras around the origin looking at it: even azimuths with a seeded jitter, random
    elevations and distances within ``cfg``'s ranges."""
    u = torch.rand(3, num_views, generator=gen, dtype=torch.float64)
    step = 360.0 / num_views
    az = step * torch.arange(num_views, dtype=torch.float64) + cfg.azimuth_jitter * step * u[0]
    e0, e1 = cfg.elevation_deg
    r0, r1 = cfg.radius
    return spherical_cam_from_world(az, e0 + (e1 - e0) * u[1], r0 + (r1 - r0) * u[2])


def render_view_set(mesh: Mesh, cfg: RenderSetConfig, seed: int, name: str = "") -> ViewSet:
    """Render ``mesh`` (centred at the origin) from ``cfg.num_views`` sphere cameras."""
    if cfg.num_views < 1 or cfg.size < 1:
        raise ValueError(f"render needs num_views >= 1 and size >= 1, got {cfg}")
    gen = torch.Generator().manual_seed(seed)
    cams = make_cameras(sphere_cameras(cfg.num_views, cfg, gen), cfg.size, cfg.size, cfg.fov_deg)
    shading = Shading(mode=cfg.shading)
    normals = vertex_normals(mesh.vertices, mesh.faces)
    images, alphas = [], []
    for i in range(len(cams)):
        kw = dict(ssaa=cfg.ssaa, near=1e-3, shading=shading, normals=normals)
        white = render_view(mesh, cams, i, background=(1.0, 1.0, 1.0), **kw)
        if cfg.ssaa == 1:
            alpha = (white.face >= 0).float()
        else:  # exact coverage: the colour difference between white and black backgrounds
            black = render_view(mesh, cams, i, background=(0.0, 0.0, 0.0), **kw)
            alpha = (1.0 - (white.color - black.color).mean(-1)).clamp(0, 1)
        images.append(white.color.permute(2, 0, 1).float())
        alphas.append(alpha[None].float())
    return ViewSet(
        images=torch.stack(images),
        alpha=torch.stack(alphas),
        K=cams.K,
        cam_from_world=cams.cam_from_world,
        center=torch.zeros(3, dtype=torch.float64),
        name=name,
    )


def render_view_sets(sources: list[str], cfg: RenderSetConfig | None = None) -> list[ViewSet]:
    """One rendered :class:`ViewSet` per object source (``procedural:SEED``, ``mesh:PATH``);
    object ``i``'s cameras are seeded with ``cfg.seed + i``."""
    cfg = cfg or RenderSetConfig()
    out = []
    for i, src in enumerate(sources):
        name = src.split(":", 1)[1]
        name = Path(name).stem if src.startswith("mesh:") else f"procedural_{name}"
        out.append(render_view_set(load_object(src), cfg, cfg.seed + i, name))
    return out


# ----------------------------------------------------------------------------- folders


def _matrix(value, where: str, key: str) -> Tensor:
    try:
        M = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise SceneDataError(f"{where}: {key} is not a numeric matrix ({e})") from e
    return M


def _pose(frame: dict, convention: str, where: str) -> Tensor:
    if ("cam_from_world" in frame) == ("world_from_cam" in frame):
        raise SceneDataError(f"{where}: give exactly one of cam_from_world or world_from_cam")
    key = "cam_from_world" if "cam_from_world" in frame else "world_from_cam"
    M = _matrix(frame[key], where, key)
    if M.shape not in ((3, 4), (4, 4)):
        raise SceneDataError(f"{where}: {key} must be 3x4 or 4x4, got {tuple(M.shape)}")
    T = M[:3]
    world_from_cam = invert_rigid(T) if key == "cam_from_world" else T
    check_pose(world_from_cam, where)
    if convention in ("opengl", "blender"):
        world_from_cam = opengl_to_opencv_world_from_cam(world_from_cam)
    return invert_rigid(world_from_cam)


def _intrinsics(frame: dict, shared: dict, width: int, height: int, where: str) -> Tensor:
    """Per-frame ``K`` / ``fov_deg`` (else the shared ones); a field of view gives a
    centred principal point and square pixels."""
    src = frame if ("K" in frame or "fov_deg" in frame) else shared
    if "K" in src:
        K = _matrix(src["K"], where, "K")
        if K.shape != (3, 3) or not bool(torch.isfinite(K).all()) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise SceneDataError(f"{where}: K must be a 3x3 matrix with positive focal lengths")
        return K
    if "fov_deg" in src:
        try:
            fov = float(src["fov_deg"])
        except (TypeError, ValueError) as e:
            raise SceneDataError(f"{where}: fov_deg is not a number") from e
        if not 0 < fov < 180:
            raise SceneDataError(f"{where}: fov_deg must lie in (0, 180), got {fov}")
        f = focal_from_fov(math.radians(fov), width)
        return torch.tensor(
            [[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64
        )
    raise SceneDataError(f"{where}: no intrinsics (K or fov_deg, per frame or shared)")


def _resize(x: Tensor, size: int) -> Tensor:
    return F.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)


def read_object_views(folder: str | os.PathLike, size: int | None = None) -> ViewSet:
    """One object folder of Objaverse-style renders (``cameras.json``, see module doc).

    With ``size`` the (square) images are resized to ``size`` and ``K`` scaled with them.
    Errors name the file and the problem.
    """
    folder = Path(folder)
    cam_file = folder / CAMERAS_FILE
    if not cam_file.is_file():
        raise SceneDataError(f"{cam_file}: no such cameras file")
    try:
        data = json.loads(cam_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SceneDataError(f"{cam_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise SceneDataError(f"{cam_file}: needs a non-empty 'frames' list")
    convention = str(data.get("convention", "opencv")).lower()
    if convention not in ("opencv", "opengl", "blender"):
        raise SceneDataError(f"{cam_file}: convention must be opencv, opengl or blender")
    center = _matrix(data.get("center", [0.0, 0.0, 0.0]), str(cam_file), "center")
    if center.shape != (3,):
        raise SceneDataError(f"{cam_file}: center must be 3 numbers")
    images, alphas, Ks, poses = [], [], [], []
    hw = None
    for k, frame in enumerate(data["frames"]):
        where = f"{cam_file}: frame {k}"
        if not isinstance(frame, dict) or not isinstance(frame.get("file"), str):
            raise SceneDataError(f"{where}: needs a 'file' name")
        where = f"{cam_file}: frame {k} ({frame['file']})"
        rgb, alpha = read_rgba(folder / frame["file"])  # ImageReadError names the file
        if frame.get("mask") is not None:
            mpath = folder / str(frame["mask"])
            m = read_mask(mpath)
            if tuple(m.shape) != tuple(rgb.shape[1:]):
                raise SceneDataError(
                    f"{mpath}: mask is {m.shape[1]}x{m.shape[0]} but its image is "
                    f"{rgb.shape[2]}x{rgb.shape[1]}"
                )
            alpha = m.float()[None]
        if alpha is None:
            raise SceneDataError(f"{folder / frame['file']}: no alpha channel and no mask")
        if hw is None:
            hw = tuple(rgb.shape[1:])
        elif tuple(rgb.shape[1:]) != hw:
            raise SceneDataError(
                f"{folder / frame['file']}: image is {rgb.shape[2]}x{rgb.shape[1]} but the "
                f"first view is {hw[1]}x{hw[0]}: all views of an object need one size"
            )
        K = _intrinsics(frame, data, hw[1], hw[0], where)
        images.append(rgb * alpha + (1.0 - alpha))
        alphas.append(alpha)
        Ks.append(K)
        poses.append(_pose(frame, convention, where))
    img, alp, K = torch.stack(images), torch.stack(alphas), torch.stack(Ks)
    if size is not None and (hw[0], hw[1]) != (size, size):
        if hw[0] != hw[1]:
            raise SceneDataError(f"{folder}: only square renders can be resized ({hw[1]}x{hw[0]})")
        s = size / hw[0]
        img, alp = _resize(img, size), _resize(alp, size)
        K = K.clone()
        K[:, :2] *= s
    return ViewSet(img, alp, K, torch.stack(poses), center, name=folder.name)


def read_render_folder(root: str | os.PathLike, size: int | None = None) -> list[ViewSet]:
    """Every object sub-folder of ``root`` holding a ``cameras.json`` (sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise SceneDataError(f"{root}: render folder does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / CAMERAS_FILE).is_file())
    if not folders:
        raise SceneDataError(f"{root}: no object folders with a {CAMERAS_FILE}")
    return [read_object_views(f, size) for f in folders]


def write_object_views(views: ViewSet, folder: str | os.PathLike) -> Path:
    """Write ``views`` as an object folder (RGBA PNGs + ``cameras.json``, OpenCV 4x4
    ``cam_from_world``, per-frame ``K``); atomic, and an existing non-empty folder is refused."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SceneDataError(f"{folder}: exists and is not an empty folder; not overwriting it")
    frames = []
    with atomic_dir(folder) as tmp:
        for i in range(len(views)):
            name = f"{i:03d}.png"
            a = views.alpha[i]
            # straight (not premultiplied) colour: recover it from the white composite
            rgb = ((views.images[i] - (1.0 - a)) / a.clamp_min(1e-6)).clamp(0, 1)
            rgba = torch.cat([torch.where(a > 0, rgb, torch.ones_like(rgb)), a], 0)
            arr = (rgba.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            write_image_atomic(tmp / name, arr)
            frames.append(
                {
                    "file": name,
                    "cam_from_world": to_homogeneous(views.cam_from_world[i].double()).tolist(),
                    "K": views.K[i].double().tolist(),
                }
            )
        content = {"convention": "opencv", "center": views.center.double().tolist()}
        atomic_write_json(tmp / CAMERAS_FILE, {**content, "frames": frames})
    return folder


# ----------------------------------------------------------------------------- sampling


def split_view_sets(
    view_sets: list[ViewSet], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[ViewSet], list[ViewSet]]:
    """Training and validation sets holding whole objects out (at least one each when there
    are two or more objects and ``val_fraction > 0``), chosen by ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    n = len(view_sets)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val = set(perm[:n_val])
    return [v for i, v in enumerate(view_sets) if i not in val], [
        v for i, v in enumerate(view_sets) if i in val
    ]


class ViewTupleDataset(Dataset):
    """``(source view, num_targets target views)`` tuples of view sets, item ``i`` drawn
    from object ``i % len(view_sets)`` by a generator seeded with ``(seed, i)``.

    Each item is a dict of float32 tensors: ``source_image`` (3 H W), ``source_alpha``
    (1 H W), ``source_K`` (3 3), ``source_cam_from_world`` (3 4), ``target_images``
    (T 3 H W), ``target_alpha`` (T 1 H W), ``target_K`` (T 3 3), ``target_cam_from_world``
    (T 3 4), ``target_from_source`` (T 3 4), plus ``view_indices`` (1 + T, source first) and
    ``object_index``. Cameras are in the source frame
    (:func:`sceneforge.stylize.free3d.poses.to_source_frame`).
    """

    def __init__(
        self,
        view_sets: list[ViewSet],
        num_targets: int,
        seed: int = 0,
        samples_per_set: int = 1,
    ) -> None:
        if not view_sets:
            raise ValueError("ViewTupleDataset needs at least one view set")
        if num_targets < 1 or samples_per_set < 1:
            raise ValueError("num_targets and samples_per_set must be at least 1")
        for vs in view_sets:
            if len(vs) < num_targets + 1:
                raise ValueError(
                    f"view set {vs.name!r} has {len(vs)} views: {num_targets} targets and a "
                    "source need more"
                )
        self.view_sets = view_sets
        self.num_targets = num_targets
        self.seed = seed
        self.samples_per_set = samples_per_set

    def __len__(self) -> int:
        return len(self.view_sets) * self.samples_per_set

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} tuples")
        obj = index % len(self.view_sets)
        vs = self.view_sets[obj]
        key = zlib.crc32(f"{self.seed}:{index}".encode())
        perm = torch.randperm(len(vs), generator=torch.Generator().manual_seed(key))
        idx = perm[: self.num_targets + 1]
        cfw = to_source_frame(vs.cam_from_world[idx].double(), 0, vs.center)
        src, tgt = idx[0], idx[1:]
        return {
            "source_image": vs.images[src].float(),
            "source_alpha": vs.alpha[src].float(),
            "source_K": vs.K[src].float(),
            "source_cam_from_world": cfw[0].float(),
            "target_images": vs.images[tgt].float(),
            "target_alpha": vs.alpha[tgt].float(),
            "target_K": vs.K[tgt].float(),
            "target_cam_from_world": cfw[1:].float(),
            "target_from_source": relative_pose(cfw[0].expand_as(cfw[1:]), cfw[1:]).float(),
            "view_indices": idx.clone(),
            "object_index": obj,
        }


__all__ = [
    "CAMERAS_FILE",
    "SHARED_MESHES",
    "RenderSetConfig",
    "ViewSet",
    "ViewTupleDataset",
    "load_object",
    "procedural_object",
    "read_object_views",
    "read_render_folder",
    "render_view_set",
    "render_view_sets",
    "shared_mesh_sources",
    "sphere_cameras",
    "split_view_sets",
    "write_object_views",
]
