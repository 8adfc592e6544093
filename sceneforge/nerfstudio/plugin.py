"""nerfstudio plugin: our radiance field as an ``ns-train`` method (dataparser: ``dataparser``).

Needs the ``[nerfstudio]`` extra (nerfstudio 1.1.5, which pins numpy<2: install it into its own
venv). Registered through the ``nerfstudio.method_configs`` (``sceneforge``) and
``nerfstudio.dataparser_configs`` (``sceneforge-data``) entry points, or, without installing,
``NERFSTUDIO_METHOD_CONFIGS=sceneforge=sceneforge.nerfstudio.plugin:sceneforge_method`` and
``NERFSTUDIO_DATAPARSER_CONFIGS=sceneforge-data=sceneforge.nerfstudio.dataparser:
sceneforge_dataparser``.

``ns-train sceneforge --data SCENE_DIR`` reads any scene folder :func:`sceneforge.core.io.
load_scene` reads (COLMAP, transforms.json, LLFF), trains :class:`~sceneforge.fields.field.
RadianceField` with our occupancy-grid sampler and compositing, and needs no download: the model
computes PSNR / SSIM itself and never builds LPIPS (whose constructor downloads AlexNet weights).
Nothing here touches the gsplat / nerfacc CUDA kernels, so it trains on CPU
(``--machine.device-type cpu``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

try:
    from nerfstudio.configs.base_config import ViewerConfig
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.engine.callbacks import (
        TrainingCallback,
        TrainingCallbackAttributes,
        TrainingCallbackLocation,
    )
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
    from nerfstudio.engine.trainer import TrainerConfig as NSTrainerConfig
    from nerfstudio.models.base_model import Model, ModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
    from nerfstudio.plugins.types import MethodSpecification
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sceneforge.nerfstudio.plugin needs nerfstudio: install 'sceneforge[nerfstudio]' into its "
        "own venv (nerfstudio pins numpy<2), e.g. python -m venv .venv-ns && "
        ".venv-ns/bin/pip install -e '.[nerfstudio]'"
    ) from e

from sceneforge.fields.datasets import border_color
from sceneforge.fields.field import SceneBox
from sceneforge.fields.nerf_model import (
    NerfConfig,
    build_nerf_parts,
    nerf_param_groups,
    nerf_regularizers,
)
from sceneforge.fields.rendering import RenderConfig, background_color, render_rays
from sceneforge.fields.trainer import lr_decay_factor
from sceneforge.nerfstudio.dataparser import (
    SceneforgeDataParser,
    SceneforgeDataParserConfig,
    nerfstudio_cameras,
    scene_to_nerfstudio_frame,
    sceneforge_dataparser,
)

# ----------------------------------------------------------------------------- model


@dataclass
class SceneforgeModelConfig(ModelConfig):
    """Our radiance field (tri-plane / hash encoding, explicit density grid on CPU)."""

    _target: type = dataclasses.field(default_factory=lambda: SceneforgeModel)
    nerf: NerfConfig = dataclasses.field(default_factory=NerfConfig)
    """Our NeRF model's settings, as in ``sceneforge train --trainer.nerf.*`` (field
    ``density_grid_resolution`` 0 = from the longest image side when the dataparser reports
    it (``sceneforge-data``), else 128). Its ``lr`` / ``grid_lr`` are our trainer's: ns-train
    takes the optimisers' (``--optimizers.fields.optimizer.lr`` ...), which default to them."""
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    """Compositing and background."""
    contract: bool | None = None
    """Contract space outside ``[-1, 1]^3``; None = from the dataparser (ours says), else
    True."""
    seed: int = 0
    """Seed of the sampler's random generator."""


class SceneforgeModel(Model):
    """nerfstudio wrapper around :class:`RadianceField` + :func:`render_rays`."""

    config: SceneforgeModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        cfg = self.config
        contract = cfg.contract
        if contract is None:
            meta = self.kwargs.get("metadata") or {}
            contract = bool(meta.get("contract", True))
        aabb = self.scene_box.aabb.float().clone()
        box = SceneBox(aabb, contract=contract)
        side = (self.kwargs.get("metadata") or {}).get("max_image_side")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # the same pieces as our trainer's NerfModel (nerfstudio moves the module itself)
        self.field, self.grid = build_nerf_parts(cfg.nerf, box, self.num_train_data, device, side)
        self.bg_param = torch.nn.Parameter(torch.zeros(3))
        self._generator = torch.Generator().manual_seed(cfg.seed)

    def _sync_box(self) -> None:
        self.field.box.aabb = self.field.box.aabb.to(self.device)

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        learned = self.config.render.background == "learned"
        groups = nerf_param_groups(self.config.nerf, self.field, self.bg_param if learned else None)
        out = {g["name"]: g["params"] for g in groups}
        out.setdefault("density_grid", [])  # method_config names both optimisers
        return out

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        def update_grid(step: int) -> None:
            if step % self.config.nerf.sampler.grid_update_every == 0:
                self._sync_box()
                self.grid.update(self.field.density_normalized, step, self._generator)

        datamanager = getattr(training_callback_attributes.pipeline, "datamanager", None)

        def init_background(step: int) -> None:
            # Step 0 only: a run resumed from a checkpoint starts later and keeps its colour.
            if step == 0 and self.config.render.background == "learned":
                dataset = getattr(datamanager, "train_dataset", None)
                if dataset is not None:
                    self.init_background(dataset)

        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=init_background,
            ),
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=update_grid,
            ),
        ]

    @torch.no_grad()
    def init_background(self, dataset, max_images: int = 16) -> Tensor:
        """Start the learned background at the median border colour of the training images.

        As our trainer does (:func:`~sceneforge.fields.datasets.border_color`, on up to
        ``max_images`` evenly spread images). Starting at ``sigmoid(0)`` (grey) instead, the
        first steps on a black-background scene drive the density grid towards empty space and
        the field never recovers (18 dB instead of 25 dB held out). Masked-out and transparent
        pixels are skipped; returns the colour (grey when no border pixel is usable).
        """
        n = len(dataset)

        def views():
            for j in sorted(
                {round(k * (n - 1) / max(max_images - 1, 1)) for k in range(max_images)}
            ):
                if j >= n:
                    continue
                data = dataset[j]
                img = data["image"].float()
                ok = torch.ones(img.shape[:2], dtype=torch.bool)
                if "mask" in data:
                    ok &= data["mask"].reshape(img.shape[:2]).bool().cpu()
                if img.shape[-1] == 4:
                    ok &= img[..., 3].cpu() > 0.5
                yield img[..., :3].cpu(), ok

        color = border_color(views())
        self.bg_param.copy_(torch.logit(color.clamp(0.02, 0.98)).to(self.bg_param))
        return color

    @property
    def background(self) -> Tensor | None:
        bg = background_color(self.config.render.background, self.bg_param)
        return None if bg is None else bg.to(self.device)

    def get_outputs(self, ray_bundle) -> dict[str, Tensor]:
        self._sync_box()
        shape = ray_bundle.origins.shape[:-1]
        o = ray_bundle.origins.reshape(-1, 3)
        d = torch.nn.functional.normalize(ray_bundle.directions.reshape(-1, 3), dim=-1)
        if self.training and ray_bundle.camera_indices is not None:
            idx = ray_bundle.camera_indices.reshape(-1).long()
        else:
            idx = torch.full((o.shape[0],), -1, dtype=torch.long, device=o.device)
        out = render_rays(
            self.field,
            self.grid,
            self.config.nerf.sampler,
            o,
            d,
            idx,
            self.background,
            self._generator if self.training else None,
            num_samples=self.grid.training_samples() if self.training else None,
        )
        return {
            "rgb": out["rgb"].reshape(*shape, 3),
            "accumulation": out["accumulation"].reshape(*shape, 1),
            "depth": out["depth"].reshape(*shape, 1),
        }

    def _target(self, batch: dict, outputs: dict) -> Tensor:
        """Ground-truth RGB; RGBA images are composited over our background."""
        img = batch["image"].to(self.device).float()
        if img.shape[-1] == 4:
            bg = self.background
            bg = torch.zeros(3, device=img.device) if bg is None else bg
            img = img[..., :3] * img[..., 3:] + bg * (1 - img[..., 3:])
        return img

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:
        mse = (outputs["rgb"] - self._target(batch, outputs)).pow(2).mean()
        return {"psnr": -10 * torch.log10(mse.detach().clamp(min=1e-10))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:
        rgb, target = outputs["rgb"], self._target(batch, outputs)
        if "mask" in batch:  # True = usable pixel
            m = batch["mask"].to(self.device).reshape(rgb.shape[:-1]).bool()
            rgb, target = rgb[m], target[m]
        loss = {"rgb_loss": (rgb - target).pow(2).mean()}
        loss.update(nerf_regularizers(self.config.nerf, self.field))
        return loss

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        from sceneforge.core.metrics import psnr, ssim

        gt = self._target(batch, outputs).cpu()
        pred = outputs["rgb"].clamp(0, 1).cpu()
        metrics = {"psnr": float(psnr(pred, gt)), "ssim": float(ssim(pred, gt))}
        return metrics, {
            "img": torch.cat([gt, pred], dim=1),
            "accumulation": outputs["accumulation"].cpu(),
        }


# ----------------------------------------------------------------------------- registration


@dataclass
class DecaySchedulerConfig(SchedulerConfig):
    """Exponential decay to ``lr * final_factor`` at ``max_steps`` (our trainer's schedule)."""

    _target: type = dataclasses.field(default_factory=lambda: DecayScheduler)
    final_factor: float = 0.1
    """Learning-rate factor reached at ``max_steps``."""
    max_steps: int = 3000
    """Steps of the decay."""


class DecayScheduler(Scheduler):
    """Like nerfstudio's ExponentialDecayScheduler but with Python-float factors: its numpy
    factors end up in the checkpoint, which ``torch.load(weights_only=True)`` (the default
    since torch 2.6, used by ``ns-eval`` / ``ns-viewer``) refuses to read."""

    config: DecaySchedulerConfig

    def get_scheduler(self, optimizer, lr_init: float):
        cfg = self.config

        def factor(step: int) -> float:
            return lr_decay_factor(step, cfg.max_steps, cfg.final_factor)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


FIELD_LR = NerfConfig.lr
GRID_LR = NerfConfig.grid_lr


def method_config(max_steps: int = 3000) -> NSTrainerConfig:
    """The ``sceneforge`` ns-train config (same learning rates and decay as our trainer)."""
    return NSTrainerConfig(
        method_name="sceneforge",
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=1000,
        max_num_iterations=max_steps,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=SceneforgeDataParserConfig(),
                train_num_rays_per_batch=2048,
                eval_num_rays_per_batch=2048,
            ),
            model=SceneforgeModelConfig(eval_num_rays_per_chunk=8192),
        ),
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=FIELD_LR, eps=1e-15),
                "scheduler": DecaySchedulerConfig(max_steps=max_steps),
            },
            "density_grid": {
                "optimizer": AdamOptimizerConfig(lr=GRID_LR, eps=1e-15),
                "scheduler": DecaySchedulerConfig(max_steps=max_steps),
            },
        },
        viewer=ViewerConfig(num_rays_per_chunk=8192),
        vis="viewer",
    )


sceneforge_method = MethodSpecification(
    config=method_config(),
    description="sceneforge radiance field (CPU-friendly tri-plane + density grid, no CUDA "
    "kernels needed)",
)


__all__ = [
    "SceneforgeDataParser",
    "SceneforgeDataParserConfig",
    "SceneforgeModel",
    "SceneforgeModelConfig",
    "method_config",
    "nerfstudio_cameras",
    "scene_to_nerfstudio_frame",
    "sceneforge_dataparser",
    "sceneforge_method",
]
