"""Object-removal ground truth on synthetic scenes (for tests and the completion benchmark).

:func:`object_removal_scene` renders a synthetic scene twice with the same cameras: with all
objects (the capture) and without one object (the true background behind it), and returns
an axis-aligned world box around the removed object for ``mask_box``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from sceneforge.core.meshes import Material, Mesh, box_mesh, grid_patch, merge_meshes
from sceneforge.core.raster import Shading, render_view, vertex_normals
from sceneforge.core.scene import SceneData
from sceneforge.core.synthetic import (
    SyntheticSceneConfig,
    make_cameras,
    make_scene,
    orbit_rig,
)


@dataclass
class RemovalScene:
    """A capture, its ground truth without one object, and the box around that object."""

    scene: SceneData
    """The captured scene (with the object); masks are dropped (all pixels usable)."""
    truth_images: list[Tensor]
    """``H W 3`` float images rendered without the object."""
    truth_depths: list[Tensor]
    """``H W`` z-depth without the object (0 = nothing hit)."""
    box: tuple[float, ...]
    """``(xmin, ymin, zmin, xmax, ymax, zmax)`` around the removed object (padded)."""


def remove_object(mesh: Mesh, object_id: int) -> Mesh:
    """The mesh without the faces of ``object_id``."""
    keep = mesh.face_object != object_id
    return replace(
        mesh,
        faces=mesh.faces[keep],
        face_material=mesh.face_material[keep],
        face_object=mesh.face_object[keep],
    )


def object_removal_scene(
    cfg: SyntheticSceneConfig, object_id: int = 0, pad: float = 0.05
) -> RemovalScene:
    """Render ``cfg`` with and without object ``object_id`` (same cameras)."""
    scene = make_scene(cfg)
    mesh: Mesh = scene.metadata["mesh"]
    sel = mesh.face_object == object_id
    if not bool(sel.any()):
        raise ValueError(f"synthetic scene has no object {object_id}")
    v = mesh.vertices[mesh.faces[sel].reshape(-1)]
    lo, hi = v.min(0).values - pad, v.max(0).values + pad
    bg = remove_object(mesh, object_id)
    normals = vertex_normals(bg.vertices, bg.faces)
    imgs, deps = [], []
    for i in range(len(scene)):
        out = render_view(
            bg,
            scene.cameras,
            i,
            ssaa=cfg.ssaa,
            near=float(scene.metadata["near"]),
            shading=Shading(mode=cfg.shading),
            background=cfg.background,
            normals=normals,
        )
        imgs.append((out.color * 255 + 0.5).clamp(0, 255).to(torch.uint8).float() / 255)
        deps.append(out.depth.float())
    scene = replace(scene, masks=None)
    return RemovalScene(scene, imgs, deps, tuple(lo.tolist() + hi.tolist()))


def _render_all(mesh: Mesh, cameras, near: float) -> tuple[list[Tensor], list[Tensor]]:
    normals = vertex_normals(mesh.vertices, mesh.faces)
    imgs, deps = [], []
    for i in range(len(cameras)):
        out = render_view(mesh, cameras, i, near=near, shading=Shading(), normals=normals)
        imgs.append((out.color * 255 + 0.5).clamp(0, 255).to(torch.uint8))
        deps.append(out.depth.float())
    return imgs, deps


def surface_points(
    cameras, depths: list[Tensor], num_points: int, generator: torch.Generator
) -> Tensor:
    """``num_points`` world points on the visible surfaces (random pixels with depth > 0 of
    random views): the sparse cloud an SfM run would give, for bounded scene boxes."""
    from sceneforge.core.cameras import pixel_centers, transform_points, unproject

    cams = cameras.to(dtype=torch.float64)
    per = -(-num_points // len(depths))
    out = []
    for i, d in enumerate(depths):
        h, w = d.shape
        idx = (d.reshape(-1) > 0).nonzero()[:, 0]
        idx = idx[torch.randperm(idx.numel(), generator=generator)[:per]]
        pix = pixel_centers(h, w, dtype=torch.float64).reshape(-1, 2)[idx]
        rays = unproject(pix, cams.model, cams.params[i].expand(idx.numel(), -1))
        z = d.reshape(-1)[idx].double()[:, None]
        out.append(transform_points(cams.world_from_cam[i], rays * z))
    return torch.cat(out)[:num_points].float()


def tiles_removal_scene(
    num_views: int = 12,
    size: int = 32,
    seed: int = 0,
    fov_deg: float = 50.0,
    num_points: int = 2000,
) -> RemovalScene:
    """Flat-coloured boxes on a floor of big coloured tiles, seen from an orbit; object 0
    (the box in the middle) is removed. Low-frequency content, so that small fields trained
    for a few hundred steps on small images reproduce it (the procedural scenes' noise
    textures alias at such sizes). ``num_points`` sparse surface points (as SfM would
    triangulate, the removed box included) let a trainer use ``scene_box="bounded"``."""
    g = torch.Generator().manual_seed(seed)

    def colour() -> Tensor:
        return 0.25 + 0.7 * torch.rand(3, generator=g)

    parts = []
    for ix in range(4):
        for iy in range(4):
            mat = Material(color=colour())
            parts.append(grid_patch((ix - 2.0, iy - 2.0, 0.0), (1, 0, 0), (0, 1, 0), 2, 2, mat))
    spots = [(0.0, 0.0, 0.6), (1.1, 0.3, 0.5), (-0.5, 1.1, 0.45), (-0.7, -1.0, 0.55)]
    for k, (x, y, h) in enumerate(spots):
        b = box_mesh((0.6, 0.5, h), seed=seed * 10 + k)
        b = replace(b, materials=[Material(color=colour())]).transformed(translation=(x, y, h / 2))
        parts.append(b.with_object_id(k))
    mesh = merge_meshes(parts)
    T = orbit_rig(num_views, (0.0, 0.0, 0.3), 3.4, (25.0, 45.0), (0.0, 360.0))
    cams = make_cameras(T, size, size, fov_deg)
    near = 1e-3
    imgs, deps = _render_all(mesh, cams, near)
    scene = SceneData(
        cameras=cams,
        image_names=[f"view_{i:03d}.png" for i in range(num_views)],
        images=imgs,
        depths=deps,
        points=surface_points(cams, deps, num_points, g) if num_points > 0 else None,
        metadata={"synthetic": True, "mesh": mesh, "near": near},
    )
    bg = remove_object(mesh, 0)
    timgs, tdeps = _render_all(bg, cams, near)
    sel = mesh.face_object == 0
    v = mesh.vertices[mesh.faces[sel].reshape(-1)]
    lo, hi = v.min(0).values - 0.03, v.max(0).values + 0.03
    return RemovalScene(
        scene, [t.float() / 255 for t in timgs], tdeps, tuple(lo.tolist() + hi.tolist())
    )


__all__ = [
    "RemovalScene",
    "object_removal_scene",
    "remove_object",
    "surface_points",
    "tiles_removal_scene",
]
