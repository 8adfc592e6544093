"""The NeRF scene model: :class:`RadianceField` + :class:`OccupancyGrid` + a background colour,
rendered by :func:`~sceneforge.fields.rendering.render_rays` (the first :class:`SceneModel`).

The same pieces build the nerfstudio model (``sceneforge.nerfstudio.plugin``) through
:func:`build_nerf_parts` and :func:`nerf_param_groups`, so both train the same thing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sceneforge.core.cameras import Cameras
from sceneforge.fields.datasets import RayBatch
from sceneforge.fields.field import FieldConfig, RadianceField, SceneBox
from sceneforge.fields.losses import distortion_loss, plane_tv
from sceneforge.fields.rendering import background_color, render_rays
from sceneforge.fields.sampling import OccupancyGrid, SamplerConfig, normalized_edges
from sceneforge.fields.scene_model import (
    ModelContext,
    SceneModel,
    learned_background,
    reshape_image,
)


@dataclass
class NerfConfig:
    """NeRF model settings (``--trainer.nerf.*``)."""

    lr: float = 1e-2
    """Initial Adam learning rate of the encoding and the MLPs."""
    grid_lr: float = 0.1
    """Adam learning rate of the explicit density grid and the learned background colour."""
    color_affine_weight: float = 1e-3
    """Weight of the squared distance of the per-image colour transforms (``field.color_affine``)
    from identity."""
    density_tv_weight: float = 0.0
    """Total-variation weight on the explicit density grid (smoother geometry from few views)."""
    triplane_tv_weight: float = 0.0
    """Total-variation weight on the tri-plane features (summed over levels; smoother colour
    features from few views)."""
    distortion_weight: float = 0.0
    """Weight of mip-NeRF 360's distortion loss on each training ray's weights (normalised ray
    coordinate of ``sampling.normalized_edges``; nerfacto uses 0.002): compact weights, fewer
    floaters (2 CPU minutes with 0.002: blowtorch 16.95 -> 17.44 dB, synthetic 27.33 ->
    27.55, fern 18.37 -> 18.51), but off by default: with ``field.color_affine`` (as
    ``real_capture`` sets) blowtorch collapsed (16.65 -> 14.65 dB), and with 0.01 too."""
    chunk_rays: int = 8192
    """Rays per chunk when rendering full images."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    """Field architecture."""
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    """Ray sampling / occupancy grid."""


def density_tv(grid: Float[Tensor, "1 1 D H W"]) -> Tensor:
    """Mean squared difference between neighbouring voxels of a raw density grid."""
    g = grid[0, 0]
    return (
        (g[1:] - g[:-1]).pow(2).mean()
        + (g[:, 1:] - g[:, :-1]).pow(2).mean()
        + (g[:, :, 1:] - g[:, :, :-1]).pow(2).mean()
    )


def auto_grid_resolution(max_image_side: int | None, forward: bool = False) -> int:
    """Explicit density-grid cells per side from the longest training image side (a multiple
    of 16, clamped to 64..256; 128 when the image size is unknown). A forward-facing frustum
    caps it at 128: its cells follow the pixels' footprint, so 256 makes cells of ~1.4 pixels
    (fern at 353 px, 2 CPU minutes: 256 cells 18.67 dB at 2,370 rays/s, 128 cells 18.52 dB at
    4,650 rays/s)."""
    if not max_image_side:
        return 128
    return int(min(128 if forward else 256, max(64, round(max_image_side / 16) * 16)))


def reference_step(box: SceneBox, sampler: SamplerConfig) -> float:
    """Typical world-space step between samples, for the occupancy threshold."""
    if box.forward is not None:
        return box.forward.reference_step(sampler.num_samples)
    extent = float((box.aabb[1] - box.aabb[0]).norm())
    return extent / (sampler.num_samples / 2 if box.contract else sampler.num_samples)


def build_nerf_parts(
    cfg: NerfConfig,
    box: SceneBox,
    num_images: int,
    device: torch.device | str,
    max_image_side: int | None = None,
) -> tuple[RadianceField, OccupancyGrid]:
    """The field (its density-grid resolution resolved; its encoding chosen for ``device``) and
    the occupancy grid of a box, both still on the CPU where they are built."""
    fcfg = cfg.field
    if fcfg.density_grid_resolution <= 0:
        n = auto_grid_resolution(max_image_side, box.forward is not None)
        fcfg = dataclasses.replace(fcfg, density_grid_resolution=n)
    field = RadianceField(fcfg, box, num_images, device)
    return field, OccupancyGrid(cfg.sampler, reference_step(box, cfg.sampler))


def nerf_param_groups(cfg: NerfConfig, field: RadianceField, background: nn.Parameter | None):
    """Adam groups: encoding + MLPs at ``lr``; density grid (+ learned background) at
    ``grid_lr``."""
    grid_params = [p for n, p in field.named_parameters() if n == "density_grid"]
    params = [p for n, p in field.named_parameters() if n != "density_grid"]
    if background is not None:
        grid_params.append(background)
    groups = [{"name": "fields", "params": params, "lr": cfg.lr}]
    if grid_params:
        groups.append({"name": "density_grid", "params": grid_params, "lr": cfg.grid_lr})
    return groups


def nerf_regularizers(
    cfg: NerfConfig, field: RadianceField, out: dict | None = None
) -> dict[str, Tensor]:
    """Density-grid total variation, tri-plane total variation, the colour transforms'
    distance from identity and, with the batch's render ``out``, the distortion loss."""
    reg: dict[str, Tensor] = {}
    if cfg.triplane_tv_weight > 0 and field.encoding_kind == "triplane":
        tv = sum(plane_tv(p) for p in field.encoding.planes)
        reg["triplane_tv"] = cfg.triplane_tv_weight * tv
    if cfg.distortion_weight > 0 and out is not None:
        edges = normalized_edges(out["t"], out["deltas"], field.box, cfg.sampler)
        reg["distortion"] = cfg.distortion_weight * distortion_loss(out["weights"], edges).mean()
    if cfg.density_tv_weight > 0 and field.density_kind == "grid":
        reg["density_tv"] = cfg.density_tv_weight * density_tv(field.density_grid)
    if field.color_affine is not None and cfg.color_affine_weight > 0:
        reg["color_affine"] = cfg.color_affine_weight * field.color_affine.pow(2).sum(-1).mean()
    return reg


class NerfModel(SceneModel):
    """Radiance field + occupancy-grid sampler + background (see the module docstring)."""

    name = "nerf"
    batch_kind = "rays"
    renders_rays = True

    def __init__(self, cfg: NerfConfig, ctx: ModelContext) -> None:
        super().__init__()
        self.cfg, self.render_cfg = cfg, ctx.render
        side = max(max(hw) for hw in ctx.dataset.shapes)
        field, grid = build_nerf_parts(cfg, ctx.box, ctx.num_train_images, ctx.device, side)
        self.field, self.grid = field.to(ctx.device), grid.to(ctx.device)
        self.bg_param = learned_background(ctx)

    @classmethod
    def object_defaults(cls, cfg: NerfConfig) -> NerfConfig:
        """Object captures: an automatic ``density_grid_init`` becomes 0.01 (0.05 fills the
        mostly-background box with fog that drives the colours to the background)."""
        if cfg.field.density_grid_init > 0:
            return cfg
        return dataclasses.replace(
            cfg, field=dataclasses.replace(cfg.field, density_grid_init=0.01)
        )

    # -- the seam ------------------------------------------------------------------------------

    @property
    def scene_box(self) -> SceneBox:
        return self.field.box

    @property
    def background(self) -> Tensor | None:
        bg = background_color(self.render_cfg.background, self.bg_param)
        return None if bg is None else bg.to(self.bg_param.device)

    def param_groups(self) -> list[dict]:
        learned = self.render_cfg.background == "learned"
        return nerf_param_groups(self.cfg, self.field, self.bg_param if learned else None)

    def before_step(self, step: int, generator: torch.Generator) -> None:
        self.field.train()
        if step % self.cfg.sampler.grid_update_every == 0:
            self.grid.update(self.field.density_normalized, step, generator)

    def train_outputs(self, batch: RayBatch, generator: torch.Generator | None) -> dict:
        dev = self.bg_param.device
        return render_rays(
            self.field,
            self.grid,
            self.cfg.sampler,
            batch.origins.to(dev),
            batch.directions.to(dev),
            batch.image_idx.to(dev),
            self.background,
            generator,
            batch.z_per_t.to(dev),
            num_samples=self.grid.training_samples(),
        )

    def regularizers(self, batch: RayBatch, out: dict, step: int) -> dict[str, Tensor]:
        return nerf_regularizers(self.cfg, self.field, out)

    def stats(self) -> dict[str, float]:
        return {"occupancy": self.grid.occupancy_fraction}

    def resolved_config(self, cfg: NerfConfig) -> NerfConfig:
        """``encoding`` / ``density`` ``auto`` (device-dependent) and the automatic density-grid
        resolution as built: a CPU checkpoint then loads as the same model on CUDA."""
        f = self.field
        fcfg = dataclasses.replace(
            cfg.field,
            encoding=f.encoding_kind,
            density=f.density_kind,
            density_grid_resolution=f.cfg.density_grid_resolution,
        )
        return dataclasses.replace(cfg, field=fcfg)

    def describe(self) -> dict:
        return {"encoding": self.field.encoding_kind, "density": self.field.density_kind}

    @torch.no_grad()
    def render_rays(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        z_per_t: Float[Tensor, " R"] | None = None,
        image_idx: int = -1,
        num_samples: int | None = None,
    ) -> dict[str, Tensor]:
        """Render many rays in chunks (no grad); rgb, depth, accumulation (+ features) on CPU
        and the total ``num_samples`` (field evaluations). ``num_samples`` caps the candidate
        samples per ray (fast previews; default: the sampler's)."""
        self.field.eval()
        dev = self.bg_param.device
        outs: dict[str, list[Tensor]] = {}
        n = origins.shape[0]
        for s in range(0, n, self.cfg.chunk_rays):
            sl = slice(s, min(s + self.cfg.chunk_rays, n))
            o = origins[sl].to(dev)
            idx = torch.full((o.shape[0],), image_idx, dtype=torch.long, device=dev)
            r = render_rays(
                self.field,
                self.grid,
                self.cfg.sampler,
                o,
                directions[sl].to(dev),
                idx,
                self.background,
                None,
                None if z_per_t is None else z_per_t[sl].to(dev),
                num_samples=num_samples,
            )
            for k in ("rgb", "depth", "accumulation", "features"):
                if k in r:
                    outs.setdefault(k, []).append(r[k].cpu())
            outs.setdefault("num_samples", []).append(r["num_samples"].reshape(1))
        res = {k: torch.cat(v) for k, v in outs.items()}
        res["num_samples"] = res["num_samples"].sum()
        return res

    def render_camera(
        self, cameras: Cameras, index: int, downscale: int = 1, image_idx: int = -1
    ) -> dict[str, Tensor]:
        h, w = int(cameras.height[index]) // downscale, int(cameras.width[index]) // downscale
        o, d, z = cameras.rays(index, downscale=downscale)
        return reshape_image(self.render_rays(o.float(), d.float(), z.float(), image_idx), h, w)

    def export(self, out_dir: Path, config, trainer, progress=None) -> dict:
        from sceneforge.fields.export import export_nerf

        return export_nerf(trainer, out_dir, config, progress)

    # -- appearance of unseen images (NeRF-W evaluation) ---------------------------------------

    @property
    def has_appearance(self) -> bool:
        """Whether the field has per-image appearance (embedding or colour transform)."""
        return self.field.embedding is not None or self.field.color_affine is not None

    def fit_unseen_appearance(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        rgb: Float[Tensor, "R 3"],
        steps: int,
        batch_rays: int,
        lr: float = 0.02,
        seed: int = 0,
    ) -> dict[str, Tensor]:
        """Optimise the appearance used for unseen images (``image_idx -1``: embedding and/or
        colour transform, starting from the training mean) to reproduce ``rgb`` along the given
        rays, with every field parameter frozen; returns the fitted tensors and leaves them set
        on the field (``field.unseen_embedding`` / ``unseen_color_affine``; reset to None for
        the mean). Uses its own seeded generator, so training randomness is untouched."""
        f = self.field
        fitted: dict[str, Tensor] = {}
        if f.embedding is not None:
            fitted["unseen_embedding"] = f.embedding.weight.detach().mean(0, keepdim=True).clone()
        if f.color_affine is not None:
            fitted["unseen_color_affine"] = f.color_affine.detach().mean(0, keepdim=True).clone()
        if not fitted:
            raise ValueError(
                "the field has no per-image appearance to fit (appearance_dim 0, no color_affine)"
            )
        for k, v in fitted.items():
            setattr(f, k, v.requires_grad_(True))
        opt = torch.optim.Adam(list(fitted.values()), lr=lr)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        frozen = [q for q in f.parameters() if q.requires_grad]
        was_training = f.training
        dev = self.bg_param.device
        f.eval()
        try:
            for q in frozen:
                q.requires_grad_(False)
            for _ in range(steps):
                k = torch.randint(origins.shape[0], (batch_rays,), generator=gen)
                out = render_rays(
                    f,
                    self.grid,
                    self.cfg.sampler,
                    origins[k].to(dev),
                    directions[k].to(dev),
                    torch.full((k.shape[0],), -1, dtype=torch.long, device=dev),
                    self.background,
                )
                loss = (out["rgb"] - rgb[k].to(dev)).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            for q in frozen:
                q.requires_grad_(True)
            f.train(was_training)
        for k, v in fitted.items():
            setattr(f, k, v.detach())
        return {k: getattr(f, k) for k in fitted}

    def clear_unseen_appearance(self) -> None:
        """Back to the training mean for unseen images."""
        self.field.unseen_embedding = self.field.unseen_color_affine = None


__all__ = [
    "NerfConfig",
    "NerfModel",
    "auto_grid_resolution",
    "build_nerf_parts",
    "density_tv",
    "nerf_param_groups",
    "nerf_regularizers",
    "reference_step",
]
