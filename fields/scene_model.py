"""The scene-model seam: what the one :class:`~sceneforge.fields.trainer.Trainer` drives.

A scene model is an ``nn.Module`` that turns a training batch (rays, or whole patches for models
that rasterise) and a camera into images. The trainer owns everything else: the dataset and its
updates, the optimiser and learning-rate schedule, the loss (photometric + mask + the model's
regularisers + editors' loss hooks), hooks, checkpoints, evaluation, logging and the process's
torch state. A model contributes:

- ``param_groups()``: optimiser groups (``params``, ``lr``, optional ``final_factor`` of the
  exponential decay, default the trainer's);
- ``train_outputs(batch, generator)``: per batch element ``rgb`` (B, 3), ``depth`` (B,),
  ``accumulation`` (B,), optional ``features`` (B, C), plus ``num_samples`` (model work);
- ``render_camera(cameras, index, downscale, image_idx)``: ``H W C`` images (rgb, depth,
  accumulation, optional features) of any camera, no grad, no change to any config;
- ``regularizers(batch, out, step)``: the model's own loss terms by name;
- ``before_step`` / ``after_step``: the model's schedules (occupancy-grid updates, Gaussian
  densification after the backward pass, with the optimiser to resize);
- ``state_dict`` / ``load_state_dict`` (``nn.Module``'s, which a model with a changing number
  of parameters overrides), ``nonfinite_parameters()`` for the divergence check, ``stats()``
  for the progress log, ``export(out_dir, config)``.

Models are built by name from one explicit registry (:data:`MODELS`) with a
:class:`ModelContext` the trainer fills in.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData
from sceneforge.fields.datasets import RayBatch, RayDataset
from sceneforge.fields.field import SceneBox
from sceneforge.fields.rendering import RenderConfig


@dataclass
class ModelContext:
    """What a model is built from (filled in by the trainer)."""

    scene: SceneData
    """The (possibly object-composited) scene being trained on."""
    dataset: RayDataset
    """The training set (image sizes, border colour for the background)."""
    box: SceneBox
    """The scene box (bounded, or contracted for unbounded scenes)."""
    num_train_images: int
    """Training images (per-image appearance)."""
    device: torch.device
    """Where the model lives."""
    render: RenderConfig
    """Compositing / background settings shared by every model."""
    train_cameras: Cameras
    """Cameras of the training views at dataset resolution (index = training view)."""
    seed: int
    """The trainer's seed (for a model's own random initialisation)."""
    object_masks: bool = False
    """The scene's masks mark the foreground of an object capture (``object_masks``)."""


class SceneModel(nn.Module, metaclass=abc.ABCMeta):
    """Base class of the trainer's scene models (see the module docstring)."""

    name: ClassVar[str]
    """Registry name (``nerf``, ...)."""
    batch_kind: ClassVar[Literal["rays", "patches", "images"]] = "rays"
    """What ``train_outputs`` needs by default: independent rays, patches or whole views."""
    needs_pinhole: ClassVar[bool] = False
    """Whether the model projects with a pinhole camera only: the trainer then trains it on
    the undistorted scene (:func:`~sceneforge.core.scene.undistorted_scene`)."""
    renders_rays: ClassVar[bool] = False
    """Whether the model also renders arbitrary rays (``render_rays``; ray-marched models)."""

    @abc.abstractmethod
    def param_groups(self) -> list[dict]:
        """Optimiser groups: dicts with ``params``, ``lr`` and optionally ``final_factor``."""

    @abc.abstractmethod
    def train_outputs(
        self, batch: RayBatch, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        """Per batch element ``rgb``, ``depth``, ``accumulation`` (+ ``features``) with grad, and
        ``num_samples``; ``generator`` drives any sampling randomness (None = deterministic)."""

    @abc.abstractmethod
    def render_camera(
        self, cameras: Cameras, index: int, downscale: int = 1, image_idx: int = -1
    ) -> dict[str, Tensor]:
        """Camera ``index`` of ``cameras`` at ``1 / downscale`` resolution as ``H W C`` images
        (see :func:`reshape_image`); ``image_idx`` picks a training view's appearance (-1 =
        the mean)."""

    def regularizers(self, batch: RayBatch, out: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The model's own loss terms (already weighted); none by default."""
        return {}

    def view_options(self, scene_index: int) -> dict:
        """Keyword options of :meth:`render_camera` that render scene image ``scene_index`` as
        it was captured, for held-out evaluation (e.g. ``human4d``'s ``frame``); none by
        default."""
        return {}

    def before_step(self, step: int, generator: torch.Generator) -> None:
        """Called before drawing the batch of step ``step`` (e.g. occupancy-grid updates)."""

    def after_step(
        self, step: int, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> None:
        """Called after the optimiser step of step ``step`` (e.g. densification, which changes
        the parameters and their optimiser state in place; randomness from ``generator``)."""

    @classmethod
    def object_defaults(cls, cfg):
        """The model's settings for object captures (``object_masks``); unchanged by default."""
        return cfg

    def resolved_config(self, cfg):
        """The model's settings with every ``auto`` choice made at build time written out (the
        trainer stores these, so a checkpoint rebuilds the same model on any device)."""
        return cfg

    def describe(self) -> dict:
        """Representation facts for eval.json (e.g. the encoding, the number of primitives)."""
        return {}

    def stats(self) -> dict[str, float]:
        """Scalars for the training log (e.g. occupancy, number of primitives)."""
        return {}

    def nonfinite_parameters(self) -> list[str]:
        """Names of parameters holding NaN/inf (checked before a checkpoint is written)."""
        return [n for n, p in self.named_parameters() if not bool(torch.isfinite(p).all())]

    @property
    @abc.abstractmethod
    def scene_box(self) -> SceneBox:
        """The scene box the model was built in."""

    @abc.abstractmethod
    def export(self, out_dir: Path, config, trainer, progress=None) -> dict:
        """Write the model's exports (``config``: the model's export settings) for the run of
        ``trainer`` to ``out_dir``; returns what was written. ``progress(stage, done, total)``
        is called as each stage starts and after each unit (see ``fields.export.Progress``)."""


MODELS: dict[str, str] = {
    "nerf": "sceneforge.fields.nerf_model:NerfModel",
    "gaussians": "sceneforge.fields.gaussian_model:GaussianModel",
}
"""The one model registry: name -> ``module:class`` (imported when used)."""


def model_class(name: str) -> type[SceneModel]:
    """The registered model class called ``name`` (clear error for an unknown name)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    mod, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def learned_background(ctx: ModelContext) -> nn.Parameter:
    """The learned background colour's parameter (logit), started at the median border colour
    of the training images (as every model starts it)."""
    bg0 = ctx.dataset.border_color().clamp(0.02, 0.98)
    return nn.Parameter(torch.logit(bg0).to(ctx.device))


def reshape_image(
    flat: dict[str, Tensor], h: int, w: int
) -> dict[str, Float[Tensor, "H W C"] | Tensor]:
    """Flat per-pixel outputs (``H*W`` rows) as ``H W C`` images; rgb clamped to [0, 1]."""
    out: dict[str, Tensor] = {
        "rgb": flat["rgb"].view(h, w, 3).clamp(0, 1),
        "depth": flat["depth"].view(h, w),
        "accumulation": flat["accumulation"].view(h, w),
    }
    if "features" in flat:
        out["features"] = flat["features"].view(h, w, -1)
    if "num_samples" in flat:
        out["num_samples"] = flat["num_samples"]
    return out


__all__ = [
    "MODELS",
    "ModelContext",
    "SceneModel",
    "learned_background",
    "model_class",
    "reshape_image",
]
