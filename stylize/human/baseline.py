"""The no-field baseline of the 4D human benchmark (issue 20): the fitted body mesh with
colours back-projected from the training frames — what a user gets from a body fit alone.

:func:`backproject_colors` poses the mesh in every training frame, keeps the vertices that
are visible there (the exact ray to the vertex hits the mesh at the vertex's depth, the
surface is not seen edge-on, and, when given, its pixel is inside the person mask), samples the frame
bilinearly at their pixels and averages over frames with weight ``cos(normal, view)``.
Vertices no frame saw take their neighbours' colours by diffusion over the mesh's edges.
:func:`render_baseline` renders the coloured mesh in any pose from any camera (albedo, no
lighting: the colours already contain the frames' lighting) with its silhouette.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.cameras import Cameras, pixel_to_grid
from sceneforge.core.meshes import Mesh
from sceneforge.core.raster import Shading, cast_points, render_view, vertex_normals


@dataclass
class BackprojectConfig:
    """Options of :func:`backproject_colors`."""

    depth_tolerance: float = 0.01
    """A vertex is visible when the mesh's first hit along its ray is this close (metres)."""
    min_cos: float = 0.1
    """Vertices seen at a grazing angle (cos below this) are not sampled."""
    fill_iterations: int = 200
    """Diffusion steps that give unseen vertices their neighbours' colours."""


@dataclass
class VertexColors:
    """Back-projected colours ``[V, 3]`` in [0, 1] and which vertices a frame saw."""

    colors: Float[Tensor, "V 3"]
    seen: Bool[Tensor, " V"]


def _sample(image: Float[Tensor, "3 H W"], pix: Float[Tensor, "N 2"]) -> Float[Tensor, "N 3"]:
    """Bilinear samples at pixel positions (pixel centres at +0.5)."""
    h, w = image.shape[-2:]
    grid = pixel_to_grid(pix, h, w).float()
    out = F.grid_sample(image[None].float(), grid[None, None], align_corners=False)
    return out[0, :, 0].T


def _edges(faces: Int[Tensor, "F 3"]) -> Int[Tensor, "E 2"]:
    """The mesh's directed vertex edges (both directions, each once)."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return torch.cat([e, e.flip(1)]).unique(dim=0)


def fill_unseen(
    colors: Float[Tensor, "V 3"], seen: Bool[Tensor, " V"], faces: Int[Tensor, "F 3"], steps: int
) -> Float[Tensor, "V 3"]:
    """Give unseen vertices the mean colour of their neighbours, repeated ``steps`` times
    (seen vertices keep theirs); vertices of parts no frame saw at all end at the seen mean."""
    if bool(seen.all()) or not bool(seen.any()):
        return colors if bool(seen.all()) else torch.full_like(colors, 0.5)
    e = _edges(faces)
    deg = torch.bincount(e[:, 0], minlength=colors.shape[0]).clamp_min(1).double()[:, None]
    c = colors.double().clone()
    c[~seen] = c[seen].mean(0)
    for _ in range(steps):
        mean = torch.zeros_like(c).index_add_(0, e[:, 0], c[e[:, 1]]) / deg
        c = torch.where(seen[:, None], c, mean)
    return c.to(colors.dtype)


def backproject_colors(
    vertices: Float[Tensor, "N V 3"],
    faces: Int[Tensor, "F 3"],
    images: Float[Tensor, "N 3 H W"],
    cameras: Cameras,
    masks: Bool[Tensor, "N H W"] | None = None,
    config: BackprojectConfig | None = None,
) -> VertexColors:
    """Per-vertex colours from posed meshes (one per image) and their images (see the module
    docstring)."""
    cfg = config or BackprojectConfig()
    n, v = vertices.shape[:2]
    if images.shape[0] != n or len(cameras) != n:
        raise ValueError(f"{n} meshes but {images.shape[0]} images and {len(cameras)} cameras")
    acc = torch.zeros(v, 3, dtype=torch.float64)
    wsum = torch.zeros(v, dtype=torch.float64)
    for i in range(n):
        verts = vertices[i].double()
        mesh = Mesh(verts, faces)
        pix, z, hits = cast_points(mesh, cameras, i, verts)
        centre = cameras[i].centers[0].double()
        normals = vertex_normals(verts, faces)
        view = F.normalize(centre - verts, dim=-1)
        cos = (normals * view).sum(-1).abs()  # either winding: occlusion is the depth test's
        vis = (
            (hits.face >= 0) & ((hits.depth - z).abs() <= cfg.depth_tolerance) & (cos > cfg.min_cos)
        )
        if masks is not None:
            h, w = masks.shape[-2:]
            px = pix[:, 0].floor().long().clamp(0, w - 1)
            py = pix[:, 1].floor().long().clamp(0, h - 1)
            vis &= masks[i][py, px]
        if not bool(vis.any()):
            continue
        col = _sample(images[i], pix[vis]).double()
        acc[vis] += cos[vis, None] * col
        wsum[vis] += cos[vis]
    seen = wsum > 0
    colors = torch.where(seen[:, None], acc / wsum.clamp_min(1e-12)[:, None], torch.zeros_like(acc))
    colors = fill_unseen(colors, seen, faces, cfg.fill_iterations)
    return VertexColors(colors.float().clamp(0, 1), seen)


def render_baseline(
    vertices: Float[Tensor, "V 3"],
    faces: Int[Tensor, "F 3"],
    colors: Float[Tensor, "V 3"],
    cameras: Cameras,
    index: int,
    ssaa: int = 1,
) -> tuple[Float[Tensor, "H W 3"], Float[Tensor, "H W"]]:
    """Colour ``[H, W, 3]`` (black off the body) and coverage ``[H, W]`` in [0, 1] of the
    coloured mesh in view ``index``; composite as ``color + (1 - coverage) * background``."""
    mesh = Mesh(vertices.double(), faces, vertex_colors=colors)
    out = render_view(mesh, cameras, index, ssaa=ssaa, shading=Shading(mode="albedo"))
    white = Mesh(vertices.double(), faces, vertex_colors=torch.ones_like(colors))
    cover = render_view(white, cameras, index, ssaa=ssaa, shading=Shading(mode="albedo"))
    return out.color, cover.color[..., 0]
