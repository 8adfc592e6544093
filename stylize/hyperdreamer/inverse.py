"""Inverse rendering on a known mesh: per-vertex materials (albedo, roughness, specular) and
an unknown environment map fitted jointly to posed images with the split-sum shader.

The mesh is fixed, so visibility is not optimised: :mod:`sceneforge.core.raster` gives every
pixel its face and barycentrics once (:func:`surface_buffers`); shading then runs on the hit
pixels only. Targets in tests and benchmarks come from :func:`render_reference` (Monte Carlo
shading with many samples), never from the split-sum shader being fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh
from sceneforge.core.metrics import psnr
from sceneforge.core.raster import Shading, render_view, vertex_normals
from sceneforge.stylize.hyperdreamer.brdf import BRDFInputs, normalize
from sceneforge.stylize.hyperdreamer.envlight import (
    EnvironmentMap,
    SplitSumConfig,
    prefilter_env,
    shade_monte_carlo,
    shade_split_sum,
)

# ----------------------------------------------------------------------------- surfaces


@dataclass
class SurfacePixels:
    """The hit pixels of posed views of a mesh, concatenated over views.

    Attributes:
        view_index: ``(P,)`` view of each pixel.
        pixel: ``(P,)`` row-major pixel index inside its view.
        corners: ``(P, 3)`` vertex ids of the hit face.
        bary: ``(P, 3)`` barycentrics of the hit (at the pixel centre).
        normal: ``(P, 3)`` unit world normal (interpolated vertex normals).
        view: ``(P, 3)`` unit world direction from the surface point towards the camera.
        masks: ``(N, H, W)`` hit masks of the views.
    """

    view_index: Int[Tensor, " P"]
    pixel: Int[Tensor, " P"]
    corners: Int[Tensor, "P 3"]
    bary: Float[Tensor, "P 3"]
    normal: Float[Tensor, "P 3"]
    view: Float[Tensor, "P 3"]
    masks: Bool[Tensor, "N H W"]

    def select(self, views: list[int]) -> SurfacePixels:
        """The pixels of the given views only (view ids keep their original numbering)."""
        keep = torch.isin(self.view_index, torch.as_tensor(views))
        return SurfacePixels(
            self.view_index[keep],
            self.pixel[keep],
            self.corners[keep],
            self.bary[keep],
            self.normal[keep],
            self.view[keep],
            self.masks,
        )

    def to_images(self, values: Float[Tensor, "P C"], background: float = 0.0) -> Tensor:
        """Scatter per-pixel values into ``(N, H, W, C)`` images."""
        n, h, w = self.masks.shape
        out = torch.full((n * h * w, values.shape[-1]), background, dtype=values.dtype)
        out[self.view_index * (h * w) + self.pixel] = values
        return out.reshape(n, h, w, -1)

    def from_images(self, images: Float[Tensor, "N H W C"]) -> Float[Tensor, "P C"]:
        """The hit pixels' values of ``(N, H, W, C)`` images."""
        n, h, w = self.masks.shape
        return images.reshape(n * h * w, -1)[self.view_index * (h * w) + self.pixel]


def surface_buffers(mesh: Mesh, cameras: Cameras) -> SurfacePixels:
    """Rasterize every view of ``cameras`` (all of one size) with the project's exact ray
    caster and keep the hit pixels' faces, barycentrics, normals and view directions."""
    sizes = {(int(w), int(h)) for w, h in zip(cameras.width, cameras.height)}
    if len(sizes) != 1:
        raise ValueError(f"surface_buffers needs views of one size, got {sorted(sizes)}")
    plain = Mesh(mesh.vertices, mesh.faces)  # faces and barycentrics only: no textures
    vn = vertex_normals(mesh.vertices, mesh.faces)
    centers = cameras.centers.to(torch.float64)
    parts, masks = [], []
    for i in range(len(cameras)):
        out = render_view(plain, cameras, i, shading=Shading(mode="albedo"))
        hit = out.face >= 0
        masks.append(hit)
        pix = hit.reshape(-1).nonzero()[:, 0]
        face = out.face.reshape(-1)[pix]
        bary = out.bary.reshape(-1, 3)[pix]
        corners = mesh.faces[face]
        pos = (mesh.vertices[corners] * bary[..., None]).sum(1)
        normal = normalize((vn[corners] * bary[..., None]).sum(1))
        view = normalize(centers[i] - pos)
        parts.append((torch.full_like(pix, i), pix, corners, bary, normal, view))
    cols = [torch.cat(c) for c in zip(*parts)]
    return SurfacePixels(*cols, masks=torch.stack(masks))


# ----------------------------------------------------------------------------- materials


def interpolate_materials(vertex: BRDFInputs, corners: Tensor, bary: Tensor) -> BRDFInputs:
    """Per-vertex materials at surface points (barycentric blend of the face's corners)."""

    def blend(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        return (x[corners] * bary.to(x.dtype)[..., None]).sum(1)

    return BRDFInputs(
        blend(vertex.albedo),
        blend(vertex.roughness),
        blend(vertex.specular),
        blend(vertex.metallic),
    )


def _logit(x: float) -> float:
    return math.log(x / (1.0 - x))


class VertexMaterialField(nn.Module):
    """Per-vertex albedo in (0, 1), roughness in (``min_roughness``, 1) and specular in
    (0, ``max_specular``), each a sigmoid of a free parameter."""

    def __init__(
        self,
        num_vertices: int,
        albedo: float = 0.5,
        roughness: float = 0.6,
        specular: float = 0.2,
        min_roughness: float = 0.05,
        max_specular: float = 1.0,
    ) -> None:
        super().__init__()
        self.min_roughness = min_roughness
        self.max_specular = max_specular
        r = (roughness - min_roughness) / (1.0 - min_roughness)
        self.albedo_logit = nn.Parameter(torch.full((num_vertices, 3), _logit(albedo)))
        self.roughness_logit = nn.Parameter(torch.full((num_vertices, 1), _logit(r)))
        self.specular_logit = nn.Parameter(
            torch.full((num_vertices, 1), _logit(specular / max_specular))
        )

    def vertex_materials(self) -> BRDFInputs:
        return BRDFInputs(
            torch.sigmoid(self.albedo_logit),
            self.min_roughness + (1.0 - self.min_roughness) * torch.sigmoid(self.roughness_logit),
            self.max_specular * torch.sigmoid(self.specular_logit),
        )

    def forward(self, corners: Int[Tensor, "P 3"], bary: Float[Tensor, "P 3"]) -> BRDFInputs:
        return interpolate_materials(self.vertex_materials(), corners, bary)


def mesh_edges(faces: Int[Tensor, "F 3"]) -> Int[Tensor, "E 2"]:
    """Unique undirected edges of a triangle mesh."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return torch.unique(e.sort(dim=1).values, dim=0)


# ----------------------------------------------------------------------------- rendering


def render_reference(
    surface: SurfacePixels,
    vertex: BRDFInputs,
    env: Float[Tensor, "H W 3"],
    num_samples: int = 256,
    seed: int = 0,
) -> Float[Tensor, "P 3"]:
    """Ground-truth radiance of the hit pixels by Monte Carlo environment lighting."""
    mat = interpolate_materials(vertex, surface.corners, surface.bary)
    return shade_monte_carlo(env, surface.normal, surface.view, mat, num_samples, seed)


def render_split_sum(
    surface: SurfacePixels,
    vertex: BRDFInputs,
    env: Float[Tensor, "H W 3"],
    config: SplitSumConfig | None = None,
) -> Float[Tensor, "P 3"]:
    """Differentiable radiance of the hit pixels with the split-sum shader."""
    mat = interpolate_materials(vertex, surface.corners, surface.bary)
    normal, view = surface.normal.to(env.dtype), surface.view.to(env.dtype)
    return shade_split_sum(prefilter_env(env, config or SplitSumConfig()), normal, view, mat)


def radiance_psnr(pred: Float[Tensor, "P C"], target: Float[Tensor, "P C"]) -> float:
    """PSNR in dB of linear radiance, both scaled by the target's maximum (peak = 1) and
    scored by :func:`sceneforge.core.metrics.psnr`."""
    peak = target.detach().max().clamp_min(1e-12)
    return psnr(pred.detach()[None] / peak, target.detach()[None] / peak)


# ----------------------------------------------------------------------------- fitting


@dataclass
class InverseRenderingConfig:
    """Joint fit of per-vertex materials and an environment map."""

    #: Adam steps.
    steps: int = 300
    #: Learning rate of the material logits.
    lr_materials: float = 0.05
    #: Learning rate of the map's log radiance.
    lr_light: float = 0.05
    #: Height of the estimated lat-long map (width = 2 x height).
    env_height: int = 8
    #: Initial guess: uniform grey radiance of the map.
    init_radiance: float = 0.5
    #: Initial guess: albedo, roughness and specular of every vertex.
    init_albedo: float = 0.5
    init_roughness: float = 0.6
    init_specular: float = 0.2
    #: Weight of the squared material differences along mesh edges (smoothness prior).
    smoothness: float = 1e-3
    #: Weight of the squared log-radiance differences between neighbouring texels.
    light_smoothness: float = 1e-3
    #: Prefiltering of the estimated map.
    split_sum: SplitSumConfig = field(
        default_factory=lambda: SplitSumConfig(min_height=4, diffuse_height=8)
    )


@dataclass
class InverseRenderingResult:
    """Fitted field and map, and the photometric loss per step."""

    materials: VertexMaterialField
    light: EnvironmentMap
    losses: list[float]


def _light_smoothness(log_radiance: Tensor) -> Tensor:
    dv = (log_radiance[1:] - log_radiance[:-1]).square().mean()
    du = (log_radiance - torch.roll(log_radiance, 1, dims=1)).square().mean()
    return dv + du


def fit_materials_and_light(
    mesh: Mesh,
    surface: SurfacePixels,
    targets: Float[Tensor, "P 3"],
    config: InverseRenderingConfig | None = None,
    init_albedo: Float[Tensor, "V 3"] | None = None,
) -> InverseRenderingResult:
    """Fit per-vertex materials and an unknown map so that the split-sum render of the hit
    pixels matches ``targets`` (linear radiance, e.g. ``surface.from_images(images)``);
    ``init_albedo`` (per-vertex, in [0, 1], clamped to [0.01, 0.99]) replaces the uniform
    ``config.init_albedo`` start."""
    config = config or InverseRenderingConfig()
    field_ = VertexMaterialField(
        mesh.vertices.shape[0], config.init_albedo, config.init_roughness, config.init_specular
    )
    if init_albedo is not None:
        if tuple(init_albedo.shape) != tuple(field_.albedo_logit.shape):
            raise ValueError(
                f"init_albedo must be {tuple(field_.albedo_logit.shape)}, "
                f"got {tuple(init_albedo.shape)}"
            )
        with torch.no_grad():
            field_.albedo_logit.copy_(torch.logit(init_albedo.float().clamp(0.01, 0.99)))
    light = EnvironmentMap(config.env_height, config.init_radiance)
    opt = torch.optim.Adam(
        [
            {"params": field_.parameters(), "lr": config.lr_materials},
            {"params": light.parameters(), "lr": config.lr_light},
        ]
    )
    edges = mesh_edges(mesh.faces)
    normal, view = surface.normal.float(), surface.view.float()
    targets = targets.float()
    losses = []
    for _ in range(config.steps):
        opt.zero_grad()
        vertex = field_.vertex_materials()
        mat = interpolate_materials(vertex, surface.corners, surface.bary)
        pre = prefilter_env(light(), config.split_sum)
        pred = shade_split_sum(pre, normal, view, mat)
        photo = (pred - targets).square().mean()
        smooth = sum(
            (x[edges[:, 0]] - x[edges[:, 1]]).square().mean()
            for x in (vertex.albedo, vertex.roughness, vertex.specular)
        )
        loss = (
            photo
            + config.smoothness * smooth
            + config.light_smoothness * _light_smoothness(light.log_radiance)
        )
        loss.backward()
        opt.step()
        losses.append(float(photo.detach()))
    return InverseRenderingResult(field_, light, losses)
