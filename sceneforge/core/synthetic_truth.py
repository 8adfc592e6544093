"""Exact ground truth of a rendered synthetic scene: every view rendered with its masks,
depths and face / object ids, surface points and their exact observations, image names in
capture order (shared by :func:`sceneforge.core.synthetic.make_scene` and the street walk of
:mod:`sceneforge.core.synthetic_street`)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core import synthetic_handheld as _handheld
from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh
from sceneforge.core.raster import Shading, cast_points, render_view, shade, vertex_normals
from sceneforge.core.scene import Observations, SceneData

#: Relative depth slack when deciding that nothing lies in front of a point.
VISIBILITY_RTOL = 1e-7


def view_names(n: int) -> list[str]:
    """``view_000.png`` ...: zero-padded to the count (at least 3 digits), so that the names
    sort in capture order (1,000+ views of a walk are matched as a sequence by name)."""
    width = max(3, len(str(n - 1)))
    return [f"view_{i:0{width}d}.png" for i in range(n)]


def sample_surface(
    mesh: Mesh, num: int, gen: torch.Generator
) -> tuple[Float[Tensor, "M 3"], Tensor, Float[Tensor, "M 3"]]:
    """``num`` points uniform by area: world points, their faces and barycentrics."""
    a, b, c = mesh.vertices[mesh.faces].unbind(1)
    area = torch.cross(b - a, c - a, dim=-1).norm(dim=-1)
    face = torch.multinomial(area, num, replacement=True, generator=gen)
    r = torch.rand(num, 2, generator=gen, dtype=torch.float64)
    s = r[:, 0].sqrt()
    bary = torch.stack([1 - s, s * (1 - r[:, 1]), s * r[:, 1]], -1)
    pts = (mesh.vertices[mesh.faces[face]] * bary[..., None]).sum(1)
    return pts, face, bary


def observe_points(
    mesh: Mesh, cameras: Cameras, points: Float[Tensor, "M 3"], near: float
) -> Observations:
    """Exact observations: point k is seen in view j where the ray to it hits nothing closer."""
    img, pid, xys = [], [], []
    for j in range(len(cameras)):
        pix, z, hits = cast_points(mesh, cameras, j, points, near)
        vis = (hits.face >= 0) & (hits.depth >= z * (1 - VISIBILITY_RTOL))
        k = vis.nonzero()[:, 0]
        img.append(torch.full_like(k, j))
        pid.append(k)
        xys.append(pix[k])
    return Observations(torch.cat(img), torch.cat(pid), torch.cat(xys))


def render_ground_truth(
    mesh: Mesh,
    cameras: Cameras,
    near: float,
    shading: Shading,
    background,
    num_points: int,
    seed: int,
    metadata: dict,
    ssaa: int = 1,
    blur: list | None = None,
) -> SceneData:
    """Every view of ``cameras`` rendered (``blur``: per-view motion-blur arguments) with its
    masks, depths, face and object ids, plus ``num_points`` surface points and their exact
    observations: the :class:`SceneData` of :func:`make_scene` and the street walk
    (``metadata`` adds the generator's own keys)."""
    normals = vertex_normals(mesh.vertices, mesh.faces)
    images, masks, depths, face_ids, object_ids = [], [], [], [], []
    for i in range(len(cameras)):
        out = render_view(
            mesh, cameras, i, ssaa=ssaa, near=near, shading=shading, background=background,
            normals=normals,
        )  # fmt: skip
        color = _handheld.motion_blur(out.color, *blur[i]) if blur else out.color
        images.append((color * 255 + 0.5).clamp(0, 255).to(torch.uint8))
        obj = torch.where(out.face >= 0, mesh.face_object[out.face.clamp_min(0)], -2)
        masks.append(obj >= 0)
        depths.append(out.depth.float())
        face_ids.append(out.face.to(torch.int32))
        object_ids.append(obj.to(torch.int16))
    gen = torch.Generator().manual_seed(seed * 7919 + 13)
    points, pfaces, pbary = sample_surface(mesh, num_points, gen)
    colors = shade(mesh, pfaces, pbary, shading, normals)
    return SceneData(
        cameras=cameras,
        image_names=view_names(len(cameras)),
        images=images,
        masks=masks,
        depths=depths,
        points=points,
        point_colors=(colors * 255 + 0.5).clamp(0, 255).to(torch.uint8),
        observations=observe_points(mesh, cameras, points, near),
        metadata={
            "synthetic": True,
            "mesh": mesh,
            "face_ids": face_ids,
            "object_ids": object_ids,
            "point_faces": pfaces,
            "point_bary": pbary,
            "near": near,
            **metadata,
        },
    )


__all__ = [
    "VISIBILITY_RTOL",
    "observe_points",
    "render_ground_truth",
    "sample_surface",
    "view_names",
]
