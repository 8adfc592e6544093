"""Export a trained field: coloured point cloud, marching-cubes mesh, TSDF mesh, depth maps.

``export(run_dir, out_dir, ExportConfig(what=...))`` behind ``sceneforge export``:

- ``pointcloud``: every training view is rendered; pixels whose accumulation passes
  ``min_accumulation`` are lifted to 3D with their (accumulation-normalised) depth and written
  with their rendered colour to ``pointcloud.ply``.
- ``mesh``: the density is sampled on a ``mesh_resolution^3`` lattice over the scene box (the
  inner, uncontracted box of unbounded scenes) and triangulated by marching cubes
  (scikit-image) at ``mesh_level`` (default: the density found at the rendered depth);
  vertices are coloured by the field seen along the inward normal. ``mesh.ply``.
- ``tsdf``: rendered depth of the training views fused by open3d's ``VoxelBlockGrid``
  (extra ``[open3d]``), ``tsdf_mesh.ply``.
- ``depth``: ``depth/NAME.npy`` (float32 z-depth, 0 = empty) and ``depth/NAME.png`` (uint16,
  ``depth * depth_png_scale``, 0 = empty).

Every file is written atomically (:mod:`sceneforge.core.atomic`). Progress: an optional
``progress(stage, done, total)`` callback (:data:`Progress`, stages and units in
:data:`PROGRESS_UNITS`) is called once with ``done = 0`` when a stage starts and once after
each unit (view rendered, lattice chunk queried, view fused); the app shows it with an ETA.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core import run_files
from sceneforge.core.atomic import atomic_write_bytes, atomic_write_json
from sceneforge.core.scene import SceneData

What = Literal["auto", "pointcloud", "mesh", "tsdf", "depth", "gaussians", "all"]
ALL_EXPORTS = ("pointcloud", "mesh", "tsdf", "depth", "gaussians")

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``done = 0`` when ``stage`` starts, then once per unit."""

PROGRESS_UNITS: dict[str, str] = {
    "pointcloud": "view",
    "mesh level": "view",
    "mesh density": "chunk",
    "mesh colours": "chunk",
    "tsdf render": "view",
    "tsdf fuse": "view",
    "depth": "view",
}
"""The stages reported to a :data:`Progress` callback and the unit each counts."""


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[], None]:
    """Report the start of ``stage`` (``total`` units); returns a call that reports one unit."""
    if progress is None:
        return lambda: None
    done = 0
    progress(stage, 0, total)

    def unit() -> None:
        nonlocal done
        done += 1
        progress(stage, done, total)

    return unit


@dataclass
class ExportConfig:
    """``sceneforge export RUN_DIR OUT_DIR``: geometry from a trained field."""

    what: What = "auto"
    """What to export: ``pointcloud``, ``mesh`` (marching cubes, NeRF), ``tsdf`` (open3d),
    ``depth``, ``gaussians`` (the 3DGS PLY), ``all`` (everything the model exports; TSDF only
    where open3d is installed and the cameras are pinhole) or ``auto``
    (the model's own: mesh for NeRF, the PLY for Gaussians)."""
    views: Literal["train", "all"] = "train"
    """Views rendered for point cloud / TSDF / depth: the training views or every view."""
    downscale: int | None = None
    """Image downscale for rendered views (default: the training downscale)."""
    min_accumulation: float = 0.5
    """Pixels with rendered opacity below this are empty (point cloud, TSDF, depth maps)."""
    max_points: int = 2_000_000
    """Point cloud size cap (uniformly subsampled, deterministic)."""
    mesh_resolution: int = 192
    """Marching-cubes lattice points per side of the box."""
    mesh_level: float = 0.0
    """Density iso level (per world unit); 0 = auto: the median field density at the rendered
    (expected) depth of up to ``level_views`` training views, robust to soft, half-transparent
    fields."""
    level_views: int = 8
    """Training views rendered to pick the automatic iso level."""
    mesh_colors: bool = True
    """Colour mesh vertices by the field (view direction = inward normal)."""
    tsdf_voxel_size: float = 0.0
    """TSDF voxel size in world units (0 = 1.5 x the median pixel footprint of the views)."""
    tsdf_weight_threshold: float = 1.0
    """Voxels seen by fewer views (summed integration weight) than this are left out."""
    tsdf_trunc_voxels: float = 4.0
    """TSDF truncation distance in voxels."""
    depth_png_scale: float = 1000.0
    """16-bit depth PNG value per world unit (values beyond 65535 saturate)."""
    chunk_points: int = 262_144
    """Points per chunk when querying the field."""


# ----------------------------------------------------------------------------- file writers


def ply_bytes(
    vertices: Float[np.ndarray, "V 3"],
    colors: np.ndarray | None = None,
    faces: np.ndarray | None = None,
) -> bytes:
    """Binary little-endian PLY: float32 xyz, optional uint8 rgb, optional triangle faces."""
    v = np.ascontiguousarray(vertices, dtype="<f4")
    n = v.shape[0]
    props = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {c}" for c in "xyz"]
    if colors is not None:
        props += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += [f"property uchar {c}" for c in ("red", "green", "blue")]
    rec = np.empty(n, dtype=props)
    rec["x"], rec["y"], rec["z"] = v[:, 0], v[:, 1], v[:, 2]
    if colors is not None:
        c = np.asarray(colors)
        if c.dtype != np.uint8:
            c = (np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8)
        rec["red"], rec["green"], rec["blue"] = c[:, 0], c[:, 1], c[:, 2]
    body = [rec.tobytes()]
    if faces is not None:
        f = np.asarray(faces, dtype="<i4")
        header += [f"element face {f.shape[0]}", "property list uchar int vertex_indices"]
        frec = np.empty(f.shape[0], dtype=[("n", "u1"), ("i", "<i4", (3,))])
        frec["n"], frec["i"] = 3, f
        body.append(frec.tobytes())
    header.append("end_header")
    return ("\n".join(header) + "\n").encode() + b"".join(body)


def write_ply(path: str | Path, vertices, colors=None, faces=None) -> Path:
    """Write a point cloud (no ``faces``) or triangle mesh as binary PLY, atomically."""
    return atomic_write_bytes(Path(path), ply_bytes(vertices, colors, faces))


def _write_npy(path: Path, arr: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, arr)
    return atomic_write_bytes(path, buf.getvalue())


def _write_png16(path: Path, arr: np.ndarray) -> Path:
    import cv2

    ok, enc = cv2.imencode(".png", np.ascontiguousarray(arr, dtype=np.uint16))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    return atomic_write_bytes(path, enc.tobytes())


# ----------------------------------------------------------------------------- rendering


def _view_indices(trainer, views: str) -> list[int]:
    if views == "train":
        return list(trainer.train_indices)
    if views == "all":
        return list(range(len(trainer.scene)))
    raise ValueError(f"unknown views {views!r}; use train or all")


def render_depth(
    trainer, index: int, min_accumulation: float, downscale: int | None = None
) -> dict[str, Tensor]:
    """Render scene camera ``index`` (at ``downscale``, default the trainer's): ``rgb``,
    normalised z-``depth`` (0 where empty), ``valid``.

    The rendered expected depth is weighted by the accumulation; it is divided by it here so
    that half-transparent edge pixels are not pulled toward the camera.
    """
    j = trainer.train_indices.index(index) if index in trainer.train_indices else -1
    r = trainer.render_camera(trainer.scene.cameras, index, image_idx=j, downscale=downscale)
    acc = r["accumulation"]
    valid = acc >= min_accumulation
    depth = torch.where(valid, r["depth"] / acc.clamp(min=1e-6), torch.zeros_like(acc))
    return {"rgb": r["rgb"], "depth": depth, "valid": valid, "accumulation": acc}


def depth_to_world(
    trainer, index: int, depth: Float[Tensor, "H W"], downscale: int | None = None
) -> Float[Tensor, "H W 3"]:
    """World points of the pixel centres of camera ``index`` (at ``downscale``, default the
    trainer's)."""
    ds = trainer.downscale if downscale is None else downscale
    o, d, z = trainer.scene.cameras.rays(index, downscale=ds)
    t = depth.reshape(-1).double() / z.double()
    return (o.double() + t[:, None] * d.double()).reshape(*depth.shape, 3)


# ----------------------------------------------------------------------------- exporters


def export_pointcloud(
    trainer, cfg: ExportConfig, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Coloured points ``(N, 3)`` float64 and ``(N, 3)`` uint8 from rendered training depth."""
    pts, cols = [], []
    indices = _view_indices(trainer, cfg.views)
    unit = _stage(progress, "pointcloud", len(indices))
    for i in indices:
        r = render_depth(trainer, i, cfg.min_accumulation, cfg.downscale)
        p = depth_to_world(trainer, i, r["depth"], cfg.downscale)
        pts.append(p[r["valid"]].numpy())
        cols.append((r["rgb"][r["valid"]].numpy() * 255 + 0.5).astype(np.uint8))
        unit()
    points = np.concatenate(pts) if pts else np.zeros((0, 3))
    colors = np.concatenate(cols) if cols else np.zeros((0, 3), np.uint8)
    if points.shape[0] > cfg.max_points:
        keep = np.random.default_rng(0).choice(points.shape[0], cfg.max_points, replace=False)
        keep.sort()
        points, colors = points[keep], colors[keep]
    return points, colors


def mesh_box(trainer) -> Float[Tensor, "2 3"]:
    """The world box marching cubes runs over: the scene box (inner box when contracted)."""
    return trainer.scene_box.aabb.detach().double().cpu()


@torch.no_grad()
def density_lattice(
    trainer, resolution: int, chunk: int = 262_144, progress: Progress | None = None
) -> tuple[Float[Tensor, "N N N"], Float[Tensor, "2 3"]]:
    """Field density on a ``resolution^3`` lattice (index order x, y, z) over :func:`mesh_box`."""
    box = mesh_box(trainer)
    axes = [torch.linspace(float(box[0, k]), float(box[1, k]), resolution) for k in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    field = trainer.model.field
    field.eval()
    dev = trainer.device
    out = torch.empty(grid.shape[0])
    unit = _stage(progress, "mesh density", math.ceil(grid.shape[0] / chunk))
    for s in range(0, grid.shape[0], chunk):
        sigma, _ = field.density(grid[s : s + chunk].to(dev))
        out[s : s + chunk] = sigma.float().cpu()
        unit()
    return out.view(resolution, resolution, resolution), box


def marching_cubes_mesh(
    trainer, cfg: ExportConfig, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices ``(V, 3)``, faces ``(F, 3)`` and optional uint8 colours of the density surface."""
    try:
        from skimage.measure import marching_cubes
    except ImportError as e:
        raise ImportError("mesh export needs scikit-image: pip install scikit-image") from e
    n = cfg.mesh_resolution
    if n < 8:
        raise ValueError(f"mesh_resolution must be >= 8, got {n}")
    if cfg.mesh_level < 0:
        raise ValueError(f"mesh_level must be >= 0, got {cfg.mesh_level}")
    sigma, box = density_lattice(trainer, n, cfg.chunk_points, progress)
    spacing = ((box[1] - box[0]) / (n - 1)).numpy()
    level = cfg.mesh_level if cfg.mesh_level > 0 else auto_level(trainer, cfg, progress)
    vol = sigma.numpy()
    if not (vol.max() > level > vol.min()):
        raise ValueError(
            f"the density never crosses the iso level {level:.3g} (range "
            f"{vol.min():.3g}..{vol.max():.3g}); set mesh_level inside it or train longer"
        )
    verts, faces, normals, _ = marching_cubes(vol, level=level, spacing=tuple(spacing))
    verts = verts + box[0].numpy()
    # skimage orients faces for increasing values; our inside is the high-density side
    faces = faces[:, ::-1].copy()
    colors = None
    if cfg.mesh_colors and verts.shape[0]:
        colors = vertex_colors(trainer, verts, normals, cfg.chunk_points, progress)
    return verts, faces, colors


@torch.no_grad()
def auto_level(trainer, cfg: ExportConfig, progress: Progress | None = None) -> float:
    """Median density at the expected ray termination points of a few training views.

    Rendered depth sits inside the density ramp of a surface, so this level puts the
    iso-surface where the renderings place it, whatever the field's overall sharpness.
    """
    idx = list(trainer.train_indices)
    if not idx:
        raise ValueError("the run has no training views to pick a mesh level from")
    step = max(1, math.ceil(len(idx) / max(cfg.level_views, 1)))
    vals = []
    unit = _stage(progress, "mesh level", len(idx[::step]))
    for i in idx[::step]:
        r = render_depth(trainer, i, cfg.min_accumulation, cfg.downscale)
        p = depth_to_world(trainer, i, r["depth"], cfg.downscale)[r["valid"]]
        if p.shape[0]:
            sigma, _ = trainer.model.field.density(p.float().to(trainer.device))
            vals.append(sigma.float().cpu())
        unit()
    if not vals:
        raise ValueError(
            "no rendered pixel reaches min_accumulation: cannot pick a mesh level "
            "(lower min_accumulation or set mesh_level)"
        )
    return float(torch.cat(vals).median())


@torch.no_grad()
def vertex_colors(
    trainer,
    verts: np.ndarray,
    normals: np.ndarray,
    chunk: int = 262_144,
    progress: Progress | None = None,
) -> np.ndarray:
    """Field colour at each vertex, seen from outside along the surface normal."""
    field = trainer.model.field
    dev = trainer.device
    x = torch.from_numpy(np.ascontiguousarray(verts)).float()
    # skimage normals point toward increasing density (inside): looking along them = from outside
    d = torch.nn.functional.normalize(
        torch.from_numpy(np.ascontiguousarray(normals)).float(), dim=-1
    )
    out = []
    unit = _stage(progress, "mesh colours", math.ceil(x.shape[0] / chunk))
    for s in range(0, x.shape[0], chunk):
        o = field(x[s : s + chunk].to(dev), d[s : s + chunk].to(dev))
        out.append(o["rgb"].float().cpu())
        unit()
    rgb = torch.cat(out).clamp(0, 1).numpy()
    return (rgb * 255 + 0.5).astype(np.uint8)


def tsdf_mesh(
    trainer, cfg: ExportConfig, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse rendered depth with open3d's ``VoxelBlockGrid``; vertices, faces, uint8 colours."""
    try:
        import open3d as o3d
        import open3d.core as o3c
    except ImportError as e:
        raise ImportError(
            "TSDF export needs open3d: pip install 'sceneforge[open3d]' "
            "(on Debian/Ubuntu it also needs the system library libusb-1.0-0)"
        ) from e
    cams = trainer.scene.cameras
    ds = cfg.downscale or trainer.downscale
    if cams.model not in ("PINHOLE", "SIMPLE_PINHOLE"):
        raise ValueError(
            f"TSDF export needs pinhole cameras (got {cams.model}); undistort the scene first"
        )
    views = []
    indices = _view_indices(trainer, cfg.views)
    unit = _stage(progress, "tsdf render", len(indices))
    for i in indices:
        r = render_depth(trainer, i, cfg.min_accumulation, cfg.downscale)
        if bool(r["valid"].any()):
            views.append((i, r))
        unit()
    if not views:
        raise ValueError("no rendered view has pixels above min_accumulation: nothing to fuse")
    voxel = cfg.tsdf_voxel_size
    if voxel <= 0:  # a voxel a bit larger than a pixel's footprint keeps the surface watertight
        foot = [
            r["depth"][r["valid"]].median() * ds / cams.K[i][:2, :2].diagonal().mean()
            for i, r in views
        ]
        voxel = 1.5 * float(torch.stack(foot).median())
    dev = o3c.Device("CPU:0")
    vbg = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=voxel,
        block_resolution=8,
        block_count=50_000,
        device=dev,
    )
    unit = _stage(progress, "tsdf fuse", len(views))
    for i, r in views:
        K = cams.K[i].double().clone()
        K[:2] /= ds
        ext = torch.eye(4, dtype=torch.float64)
        ext[:3] = cams.cam_from_world[i].double()
        depth = o3d.t.geometry.Image(o3c.Tensor(r["depth"].numpy().astype(np.float32)))
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(r["rgb"].numpy(), np.float32)))
        intr = o3c.Tensor(K.numpy())
        extr = o3c.Tensor(ext.numpy())
        dmax = float(r["depth"].max()) * 1.01
        blocks = vbg.compute_unique_block_coordinates(depth, intr, extr, 1.0, dmax)
        vbg.integrate(blocks, depth, color, intr, intr, extr, 1.0, dmax, cfg.tsdf_trunc_voxels)
        unit()
    mesh = vbg.extract_triangle_mesh(weight_threshold=cfg.tsdf_weight_threshold).to_legacy()
    verts = np.asarray(mesh.vertices)
    faces = np.asarray(mesh.triangles)
    cols = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else None
    colors = (
        (np.clip(cols, 0, 1) * 255 + 0.5).astype(np.uint8)
        if cols is not None and len(cols) == len(verts)
        else None
    )
    return verts, faces, colors


def _tsdf_unavailable(trainer) -> str | None:
    """Why :func:`tsdf_mesh` cannot run for ``trainer`` (None: it can)."""
    try:
        import open3d  # noqa: F401
    except ImportError:
        return "needs open3d: pip install 'sceneforge[open3d]'"
    model = trainer.scene.cameras.model
    if model not in ("PINHOLE", "SIMPLE_PINHOLE"):
        return f"needs pinhole cameras, not {model}"
    return None


def export_depth(
    trainer, out: Path, cfg: ExportConfig, progress: Progress | None = None
) -> list[str]:
    """Write ``depth/NAME.npy`` (float32) and ``depth/NAME.png`` (uint16) for each view."""
    written = []
    indices = _view_indices(trainer, cfg.views)
    unit = _stage(progress, "depth", len(indices))
    for i in indices:
        r = render_depth(trainer, i, cfg.min_accumulation, cfg.downscale)
        d = r["depth"].numpy().astype(np.float32)
        stem = Path(trainer.scene.image_names[i]).stem
        _write_npy(out / run_files.DEPTH_DIR / f"{stem}.npy", d)
        png = np.clip(np.round(d * cfg.depth_png_scale), 0, 65535).astype(np.uint16)
        _write_png16(out / run_files.DEPTH_DIR / f"{stem}.png", png)
        written.append(stem)
        unit()
    return written


def export_trainer(
    trainer,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    progress: Progress | None = None,
) -> dict:
    """Export from an in-memory :class:`~sceneforge.fields.trainer.Trainer` into ``out_dir``
    (what can be exported is the scene model's: :meth:`SceneModel.export`); ``progress``: see
    :data:`Progress`."""
    return trainer.model.export(Path(out_dir), config or ExportConfig(), trainer, progress)


def export_nerf(
    trainer, out_dir: Path, cfg: ExportConfig, progress: Progress | None = None
) -> dict:
    """The NeRF model's exports: point cloud, marching-cubes mesh, TSDF mesh, depth maps."""
    supported = ("mesh", "pointcloud", "tsdf", "depth")
    return _export(trainer, out_dir, cfg, supported, progress)


def export_gaussians(
    trainer, out_dir: Path, cfg: ExportConfig, progress: Progress | None = None
) -> dict:
    """The Gaussian model's exports: the 3DGS PLY, and the rendered point cloud, TSDF mesh and
    depth maps (no marching cubes: there is no density field)."""
    supported = ("gaussians", "pointcloud", "tsdf", "depth")
    return _export(trainer, out_dir, cfg, supported, progress)


def _export(
    trainer,
    out_dir: Path,
    cfg: ExportConfig,
    supported: tuple[str, ...],
    progress: Progress | None = None,
) -> dict:
    what = supported[0] if cfg.what == "auto" else cfg.what
    kinds = list(supported) if what == "all" else [what]
    for k in kinds:
        if k not in ALL_EXPORTS:
            raise ValueError(f"unknown export {k!r}; use {', '.join(ALL_EXPORTS)} or all")
        if k not in supported:
            raise ValueError(
                f"the {trainer.model_name} model cannot export {k!r}; it exports "
                f"{', '.join(supported)} or all"
            )
    if cfg.downscale is not None:
        if cfg.downscale < 1:
            raise ValueError(f"downscale must be >= 1, got {cfg.downscale}")
    skipped = _tsdf_unavailable(trainer) if what == "all" and "tsdf" in kinds else None
    if skipped:  # "all" is what can be made here, not an error after the other exports
        kinds.remove("tsdf")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"steps": trainer.step}
    if skipped:
        res["skipped"] = f"tsdf ({skipped})"
    t0 = time.perf_counter()
    if "pointcloud" in kinds:
        p, c = export_pointcloud(trainer, cfg, progress)
        res["pointcloud"] = str(write_ply(out / run_files.POINTCLOUD, p, c))
        res["num_points"] = int(p.shape[0])
    if "mesh" in kinds:
        v, f, c = marching_cubes_mesh(trainer, cfg, progress)
        res["mesh"] = str(write_ply(out / run_files.MESH, v, c, f))
        res["mesh_vertices"], res["mesh_faces"] = int(v.shape[0]), int(f.shape[0])
    if "tsdf" in kinds:
        v, f, c = tsdf_mesh(trainer, cfg, progress)
        res["tsdf_mesh"] = str(write_ply(out / run_files.TSDF_MESH, v, c, f))
        res["tsdf_vertices"], res["tsdf_faces"] = int(v.shape[0]), int(f.shape[0])
    if "gaussians" in kinds:
        from sceneforge.fields.gaussian_ply import write_gaussian_ply

        p = trainer.model.params
        path = out / run_files.GAUSSIANS_PLY
        args = [
            p[k].detach().cpu() for k in ("means", "quats", "scales", "opacities", "sh0", "shN")
        ]
        res["gaussians"] = str(write_gaussian_ply(path, *args))
        res["num_gaussians"] = int(p["means"].shape[0])
    if "depth" in kinds:
        res["depth"] = str(out / run_files.DEPTH_DIR)
        res["num_depth_maps"] = len(export_depth(trainer, out, cfg, progress))
    res["wall_s"] = time.perf_counter() - t0
    atomic_write_json(out / run_files.EXPORT_INFO, res)
    return res


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    scene: SceneData | None = None,
    progress: Progress | None = None,
) -> dict:
    """Export geometry from the trained run ``RUN_DIR`` into ``OUT_DIR`` (see module doc;
    ``progress``: :data:`Progress`).

    Returns (and writes as ``OUT_DIR/export.json``) the written paths and counts.
    """
    from sceneforge.fields.api import load_trained

    trainer = load_trained(run_dir, scene)
    return export_trainer(trainer, out_dir, config, progress)


__all__ = [
    "PROGRESS_UNITS",
    "ExportConfig",
    "Progress",
    "density_lattice",
    "depth_to_world",
    "export",
    "export_depth",
    "export_gaussians",
    "export_nerf",
    "export_pointcloud",
    "export_trainer",
    "marching_cubes_mesh",
    "ply_bytes",
    "render_depth",
    "tsdf_mesh",
    "write_ply",
]
