"""Feature distillation: the 4D capture's feature channels learn the style encoder's features
of the training frames.

Each step renders one random **patch** of one training view at the encoder's finest stride
(:meth:`~.feature_field.HumanFeatureRenderer.render_patch`), maps it to all encoder levels
(adapter + the encoder's frozen tail) and compares every level with the same window of the
encoder's maps of the whole training frame. The loss per level is the mean squared error
divided by the targets' per-channel variance (over all views and positions): 1.0 = as bad as
predicting each channel's mean, 0 = exact. Frames whose size is not a multiple of the coarsest
stride are encoded padded (border replicated) while the renderer sees the scene beyond the
border there; those few cells are trained towards the padded targets. With the encoder's tail computing the deeper levels
(``deep_levels="tail"``) a patch's deeper levels lack the context beyond it (the tail pads
with zeros there), so they are compared only ``margin`` cells inside the patch's sides that
are not the frame's border; pooled levels need no margin.

Geometry and colour stay **frozen**: only the feature heads (the human field's separate feature
MLP, the background's feature field) and the adapter train. The capture's density, colour, body
fits and non-rigid residual are what reconstruction fitted to the pixels; the features must not
move them (a feature loss trained jointly would bend the geometry towards whatever explains the
encoder's maps, and the renderer's depth is what the consistency of the stylization rests on).
It is also cheaper: nothing upstream of the feature heads needs gradients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.torch_state import TorchStateScope

from .encoder import StyleEncoder
from .feature_field import HumanFeatureRenderer, crop_levels, padded_cells

_log = logging.getLogger("sceneforge")


@dataclass
class FeatureViews:
    """Training views of the capture: camera ``indices[i]`` of ``cameras`` shows frame
    ``frames[i]`` as ``images[i]``."""

    cameras: Cameras
    """Cameras of the views (any superset)."""
    indices: list[int]
    """Camera index per view."""
    frames: list[int]
    """Time-line frame per view (the model's frame)."""
    images: Float[Tensor, "N H W 3"]
    """The views' images in [0, 1]."""


@dataclass
class DistillConfig:
    """Feature distillation settings."""

    steps: int = 300
    """Optimizer steps (one patch each)."""
    patch: int = 16
    """Patch side in feature cells (finest stride; rounded down to whole coarsest cells)."""
    lr: float = 5e-3
    """Adam learning rate."""
    level_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    """Loss weight per encoder level (fine to coarse)."""
    margin: int = 1
    """Cells of the deeper levels ignored at a patch's inner sides (``tail`` levels only)."""
    seed: int = 0
    """Seed of the patch sampling."""
    threads: int = 1
    """torch CPU threads while training."""
    log_every: int = 50
    """Steps between log lines (0: none)."""


@dataclass
class DistillTargets:
    """The encoder's levels of every view (padded as the renderer's grid) and their scales."""

    levels: list[list[Float[Tensor, "1 C h w"]]]
    """Per view, per level."""
    scales: list[Float[Tensor, " C"]]
    """Per level: the per-channel standard deviation over all views and positions."""


@dataclass
class DistillResult:
    """What :func:`distill_features` returns."""

    losses: list[float]
    """Weighted total per step."""
    level_losses: list[list[float]] = field(default_factory=list)
    """Normalized error per step and level."""
    seconds: float = 0.0
    """Wall time of the steps."""


@torch.no_grad()
def encoder_targets(encoder: StyleEncoder, images: Float[Tensor, "N H W 3"]) -> DistillTargets:
    """The encoder's maps of each image, padded (border replicated) to a multiple of the
    coarsest stride, so that they cover the renderer's grid (:func:`padded_cells`)."""
    m = max(encoder.strides)
    h, w = images.shape[1:3]
    levels = []
    for img in images:
        x = img.permute(2, 0, 1)[None].float()
        if h % m or w % m:
            x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")
        levels.append([f.detach() for f in encoder(x)])
    scales = []
    for k in range(len(encoder.strides)):
        allk = torch.cat([v[k].flatten(2) for v in levels], dim=2)[0]  # C, positions
        scales.append(allk.std(dim=1).clamp_min(1e-4))
    return DistillTargets(levels, scales)


def level_errors(
    pred: Sequence[Float[Tensor, "1 C h w"]],
    target: Sequence[Float[Tensor, "1 C h w"]],
    scales: Sequence[Float[Tensor, " C"]],
    inner: Sequence[tuple[int, int, int, int]] | None = None,
) -> list[Tensor]:
    """Per level, the mean squared error divided by the channels' variance; ``inner[k]`` =
    cells (top, bottom, left, right) of level ``k`` left out at the sides."""
    out = []
    for k, (p, t, s) in enumerate(zip(pred, target, scales)):
        if inner is not None:
            a, b, c, d = inner[k]
            p = p[..., a : p.shape[-2] - b, c : p.shape[-1] - d]
            t = t[..., a : t.shape[-2] - b, c : t.shape[-1] - d]
        if p.numel() == 0:
            out.append(p.new_zeros(()))
            continue
        out.append((((p - t) / s[:, None, None]) ** 2).mean())
    return out


def _margins(
    strides: Sequence[int], top: int, left: int, rows: int, cols: int, grid: tuple[int, int], m: int
) -> list[tuple[int, int, int, int]]:
    """Per level: the margins of a patch's sides inside the frame (none on the finest level)."""
    out = [(0, 0, 0, 0)]
    for _ in strides[1:]:
        out.append(
            (
                m if top > 0 else 0,
                m if top + rows < grid[0] else 0,
                m if left > 0 else 0,
                m if left + cols < grid[1] else 0,
            )
        )
    return out


@torch.no_grad()
def evaluate_distillation(
    renderer: HumanFeatureRenderer, views: FeatureViews, targets: DistillTargets
) -> list[float]:
    """Per level, the normalized error of whole rendered frames, averaged over the views."""
    sums = [0.0] * len(targets.scales)
    for i, (cam, frame) in enumerate(zip(views.indices, views.frames)):
        pred = renderer.levels(renderer.render_frame(views.cameras, cam, frame).features)
        for k, e in enumerate(level_errors(pred, targets.levels[i], targets.scales)):
            sums[k] += float(e) / len(views.indices)
    return sums


def distill_features(
    renderer: HumanFeatureRenderer,
    encoder: StyleEncoder,
    views: FeatureViews,
    config: DistillConfig | None = None,
    targets: DistillTargets | None = None,
) -> DistillResult:
    """Train the feature heads and the adapter on random patches (see the module doc)."""
    cfg = config or DistillConfig()
    if len(views.indices) != len(views.frames) or len(views.indices) != len(views.images):
        raise ValueError("views: indices, frames and images must have one entry per view")
    if len(cfg.level_weights) != len(encoder.strides):
        raise ValueError(
            f"level_weights {cfg.level_weights}: one per encoder level ({len(encoder.strides)})"
        )
    if encoder.strides != renderer.tail.strides:
        raise ValueError(f"encoder strides {encoder.strides} differ from the renderer's")
    model = renderer.model
    scope = TorchStateScope(num_threads=cfg.threads, seed=cfg.seed)
    with scope():
        targets = targets or encoder_targets(encoder, views.images)
        params = renderer.feature_parameters()
        was = {p: p.requires_grad for p in model.parameters()}
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        cell = max(encoder.strides) // renderer.stride  # coarsest cell in finest cells
        h, w = views.images.shape[1:3]
        grid = padded_cells(h, w, renderer.stride, max(encoder.strides))
        rows = min(max(cfg.patch // cell, 1) * cell, grid[0])
        cols = min(max(cfg.patch // cell, 1) * cell, grid[1])
        result = DistillResult([])
        start = time.perf_counter()
        try:
            model.eval()
            for step in range(1, cfg.steps + 1):
                i = int(torch.randint(len(views.indices), (1,), generator=gen))
                top = int(torch.randint((grid[0] - rows) // cell + 1, (1,), generator=gen)) * cell
                left = int(torch.randint((grid[1] - cols) // cell + 1, (1,), generator=gen)) * cell
                maps = renderer.render_patch(
                    views.cameras, views.indices[i], views.frames[i], top, left, rows, cols
                )
                pred = renderer.levels(maps.features)
                tgt = crop_levels(
                    targets.levels[i], encoder.strides, top, left, rows, cols, renderer.stride
                )
                m = cfg.margin if renderer.deep_levels == "tail" else 0
                inner = _margins(encoder.strides, top, left, rows, cols, grid, m)
                errs = level_errors(pred, tgt, targets.scales, inner)
                loss = sum(wk * e for wk, e in zip(cfg.level_weights, errs))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                result.losses.append(float(loss.detach()))
                result.level_losses.append([float(e.detach()) for e in errs])
                if cfg.log_every and step % cfg.log_every == 0:
                    _log.info(
                        "feature distillation %d/%d: %.4f", step, cfg.steps, result.losses[-1]
                    )
        finally:
            for p, flag in was.items():
                p.requires_grad_(flag)
        result.seconds = time.perf_counter() - start
    return result


__all__ = [
    "DistillConfig",
    "DistillResult",
    "DistillTargets",
    "FeatureViews",
    "distill_features",
    "encoder_targets",
    "evaluate_distillation",
    "level_errors",
]
