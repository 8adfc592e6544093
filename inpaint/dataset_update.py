"""The Inpaint Dataset Update (NeRFiller): train on unmasked pixels, and every N steps render a
batch of training views, inpaint them jointly, and replace those images in the training set.

Each update writes the whole current training set to a **new versioned folder**
``datasets/vNNN/`` (temp folder + ``os.replace``; the scene's own files are never touched) with
a ``manifest.json``. Optional depth: the inpainter's completed depth (or Telea on the rendered
depth) becomes a depth target inside the fill masks, with a ranking or L1 loss added to the
trainer through :meth:`Trainer.add_loss`.

Under ``torchrun`` (``trainer.dist``, see :mod:`sceneforge.fields.distributed`) every rank
runs the same schedule: the views of an update are rendered in shares and gathered, a grid
denoiser's UNet calls are split over the ranks (:class:`ShardedGridDenoiser`: the grid groups
come from the inpainter's one seeded generator, identical on every rank), every rank takes
rank 0's new images, and only rank 0 writes the dataset versions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.diffusion import JointGridDenoiser
from sceneforge.core.run_files import DATASETS_DIR
from sceneforge.core.scene import SceneData
from sceneforge.fields.datasets import RayBatch, downscale_image, downscale_mask
from sceneforge.fields.distributed import DistContext
from sceneforge.fields.trainer import Trainer
from sceneforge.inpaint.inpainters import Inpainter
from sceneforge.inpaint.rounds import RoundSettings, completion_round


@dataclass
class DatasetUpdateConfig:
    """Schedule of the Inpaint Dataset Update."""

    warmup_steps: int = 1000
    """Steps on unmasked pixels before the first update."""
    update_every: int = 500
    """Steps between updates."""
    num_rounds: int = 4
    """Number of updates."""
    final_steps: int = 500
    """Steps after the last update."""
    views_per_update: int = 0
    """Training views rendered and inpainted per update (0 = all; a random batch otherwise)."""
    strength_start: float = 1.0
    """Noise strength of the first round (1 = ignore the rendered content in the hole)."""
    strength_end: float = 0.4
    """Noise strength of the last round (annealed linearly)."""
    depth_loss: Literal["none", "ranking", "l1"] = "ranking"
    """Depth supervision inside the fill masks from the completed depth."""
    depth_loss_weight: float = 0.1
    """Weight of the depth loss."""
    ranking_margin: float = 1e-4
    """Margin of the depth ranking loss (world units)."""
    accumulation_threshold: float = 0.2
    """Rendered depth counts as known where the accumulation exceeds this (the depth is
    normalised by the accumulation, so a still semi-transparent field gives usable depth)."""
    empty_threshold: float = 0.02
    """Below this accumulation a pixel is empty (background at infinity); depth between the
    two thresholds is unknown (not warped)."""
    depth_source: Literal["render", "scene", "auto"] = "render"
    """Geometry for warping: the field's rendered depth, the scene's depth maps (RGB-D
    captures, synthetic scenes), or ``auto`` (scene depth when present)."""
    photometric_tolerance: float = 0.0
    """Rendered depth of an observed pixel is used for warping only where the render matches
    the capture within this (max channel difference; 0 = always). Off by default: the
    multi-view backend's visibility checks reject wrong depth, while an early field misses
    this tolerance on most pixels and would leave nothing to warp from."""
    seed: int = 0
    """Seed for the choice of views per update."""
    write_versions: bool = True
    """Write every dataset version to ``out_dir/datasets/vNNN``."""


class ShardedGridDenoiser(JointGridDenoiser):
    """A :class:`~sceneforge.core.diffusion.JointGridDenoiser` whose UNet calls are split over
    the ranks of a data-parallel run: at every denoising step every rank draws the same groups
    (same seeded group generator), runs the UNet on its contiguous share of the calls
    (``grids_per_batch`` grids each), and the per-view predictions are summed over the ranks
    (each view is predicted on exactly one rank, 0 elsewhere); every rank then takes the same
    scheduler step over all views. A view's prediction is computed as on one process."""

    def __init__(self, base: JointGridDenoiser, dist: DistContext) -> None:
        super().__init__(base.unet, base.scheduler, base.grid, base.guidance_scale)
        self.on_step = base.on_step
        self.dist = dist

    def _predict(self, latents, cond, t, emb, neg, groups):
        per = self.grid.grids_per_batch
        calls = [groups[s : s + per] for s in range(0, len(groups), per)]
        mine = [grp for k in self.dist.owned(len(calls)) for grp in calls[k]]
        own = torch.zeros(latents.shape[0], dtype=torch.bool)
        own[[v for grp in mine for v in grp if v >= 0]] = True
        pred = super()._predict(latents, cond, t, emb, neg, mine)
        pred = torch.where(own.to(pred.device)[:, None, None, None], pred, 0.0)
        return self.dist.sum_tensor(pred)


def shard_inpainter(inpainter: Inpainter, dist: DistContext) -> Inpainter:
    """Under several ranks, a grid-denoising inpainter (``sd``) gets a
    :class:`ShardedGridDenoiser`; others are returned as they are (each rank runs them on every
    view and rank 0's images are kept)."""
    den = getattr(inpainter, "denoiser", None)
    if (
        dist.active
        and isinstance(den, JointGridDenoiser)
        and not isinstance(den, ShardedGridDenoiser)
    ):
        inpainter.denoiser = ShardedGridDenoiser(den, dist)
    return inpainter


def masked_training_scene(scene: SceneData, fill: list[Bool[Tensor, "H W"]]) -> SceneData:
    """The scene with usable masks = (its own masks) and not ``fill`` (train on unmasked only)."""
    masks = []
    for i in range(len(scene)):
        m = scene.load_mask(i)
        keep = ~fill[i] if m is None else m & ~fill[i]
        masks.append(keep)
    return replace(scene, masks=masks, mask_paths=None)


def depth_ranking_loss(
    pred: Float[Tensor, " R"],
    target: Float[Tensor, " R"],
    generator: torch.Generator,
    margin: float,
) -> Tensor:
    """Pairwise ranking: for random ray pairs, the farther target must render farther."""
    r = pred.shape[0]
    if r < 2:
        return pred.sum() * 0.0
    a = torch.randint(r, (r,), generator=generator).to(pred.device)
    b = torch.randint(r, (r,), generator=generator).to(pred.device)
    sign = torch.sign(target[b] - target[a])
    return torch.relu(margin - sign * (pred[b] - pred[a]))[sign != 0].mean().nan_to_num(0.0)


class InpaintDatasetUpdate:
    """Drives a :class:`Trainer` through warm-up, update rounds and final steps, through the
    trainer's editing interface only (:attr:`Trainer.EDITING_INTERFACE`).

    Args:
        trainer: a trainer whose dataset masks exclude the fill pixels
            (see :func:`masked_training_scene`).
        fill: per training image (trainer's local index), fill masks at dataset resolution.
        inpainter: the backend filling the rendered views.
        config: the schedule.
        out_dir: where dataset versions are written (None = not written).
        prompt: text prompt passed to generative backends.
    """

    def __init__(
        self,
        trainer: Trainer,
        fill: list[Bool[Tensor, "h w"]],
        inpainter: Inpainter,
        config: DatasetUpdateConfig | None = None,
        out_dir: str | Path | None = None,
        prompt: str | None = None,
    ) -> None:
        self.trainer, self.inpainter = trainer, shard_inpainter(inpainter, trainer.dist)
        self.cfg = cfg = config or DatasetUpdateConfig()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.prompt = prompt
        n = trainer.num_views
        if len(fill) != n:
            raise ValueError(f"{len(fill)} fill masks for {n} training images")
        for j, f in enumerate(fill):
            if tuple(f.shape) != tuple(trainer.view_shape(j)):
                raise ValueError(
                    f"fill mask {j} is {tuple(f.shape)}, training image is {trainer.view_shape(j)}"
                )
        self.fill = [f.bool() for f in fill]
        self.cameras = trainer.view_cameras()
        self.round = 0
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # depth-ranking pairs under several ranks: a rank's own stream (a rank draws for its
        # share of the batch only, which must not move the trainer's shared generator)
        self._pair_generator = torch.Generator().manual_seed(cfg.seed + 1000 * trainer.dist.rank)
        num_pixels = trainer.view_pixel_range(n - 1).stop
        self.depth_target = torch.zeros(num_pixels)
        self.depth_valid = torch.zeros(num_pixels, dtype=torch.bool)
        self.history: list[dict] = []
        self.names = [trainer.scene.image_names[i] for i in trainer.train_indices]
        # the capture's pixels (kept outside the fill masks at every update)
        self._originals = [
            downscale_image(trainer.scene.load_image(i), trainer.downscale)
            for i in trainer.train_indices
        ]
        if cfg.depth_loss != "none":
            trainer.add_loss(self._depth_loss)

    # -- schedule ------------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        c = self.cfg
        return c.warmup_steps + max(c.num_rounds - 1, 0) * c.update_every + c.final_steps

    def run(self) -> dict:
        """Warm-up, ``num_rounds`` updates ``update_every`` steps apart, then the final steps."""
        c, tr = self.cfg, self.trainer
        start = tr.step
        tr.set_max_steps(max(tr.config.max_steps, start + self.total_steps))
        tr.train(max_steps=start + c.warmup_steps)
        for r in range(c.num_rounds):
            self.update()
            if r < c.num_rounds - 1:
                tr.train(max_steps=tr.step + c.update_every)
        stats = tr.train(max_steps=tr.step + c.final_steps)
        return stats

    # -- one update ----------------------------------------------------------------------------

    def choose_views(self) -> list[int]:
        n = self.trainer.num_views
        k = self.cfg.views_per_update
        if k <= 0 or k >= n:
            return list(range(n))
        return sorted(torch.randperm(n, generator=self.generator)[:k].tolist())

    # the round's view of the trainer (inpaint.rounds.RoundTarget)
    def render(self, j: int) -> dict[str, Tensor]:
        return self.trainer.render_view(j)

    def apply(self, views: list[int], images: Tensor, fill: Tensor) -> int:
        return self.trainer.update_views(views, list(images), [torch.ones_like(f) for f in fill])

    def images(self) -> list[Tensor]:
        return [self.trainer.view_image(j) for j in range(self.trainer.num_views)]

    @torch.no_grad()
    def update(self) -> int:
        """Render, inpaint jointly and replace a batch of training views; returns the version."""
        tr, c = self.trainer, self.cfg
        scene_depths = tr.scene.depths
        if c.depth_source == "scene" and scene_depths is None:
            raise ValueError("depth_source='scene' but the scene has no depth maps")
        use_scene = c.depth_source == "scene" or (
            c.depth_source == "auto" and scene_depths is not None
        )
        settings = RoundSettings(
            c.num_rounds,
            c.strength_start,
            c.strength_end,
            c.accumulation_threshold,
            c.empty_threshold,
            c.photometric_tolerance,
        )
        write = self.out_dir is not None and c.write_versions  # rank 0 only (the round)
        res = completion_round(
            self,
            self.inpainter,
            self.choose_views(),
            self.fill,
            self._originals,
            self.cameras,
            settings,
            self.round,
            tr.step,
            self.names,
            self.prompt,
            scene_depth=self._scene_depth if use_scene else None,
            complete_depth=c.depth_loss != "none",
            versions_dir=self.out_dir / DATASETS_DIR if write else None,
            dist=tr.dist,
        )
        if res is None:
            return tr.dataset_version
        if res.completed_depth is not None:
            comp = res.completed_depth
            for k, j in enumerate(res.views):
                sl = tr.view_pixel_range(j)
                valid = res.fill[k] & (comp[k] > 0) & torch.isfinite(comp[k])
                self.depth_target[sl] = comp[k].reshape(-1).float()
                self.depth_valid[sl] = valid.reshape(-1)
        self.round += 1
        self.history.append(res.info)
        return res.info["version"]

    def _scene_depth(self, j: int) -> Tensor:
        """The scene's depth map of training image ``j`` at dataset resolution (0 = none)."""
        tr = self.trainer
        d = tr.scene.depths[tr.train_indices[j]].float()
        ds = tr.downscale
        if ds == 1:
            return d
        valid = downscale_mask(d > 0, ds)
        return torch.where(valid, downscale_image(d[..., None], ds)[..., 0], 0.0)

    # -- depth loss -----------------------------------------------------------------------------

    def _depth_loss(self, trainer: Trainer, batch: RayBatch, out: dict) -> Tensor:
        c = self.cfg
        sel = self.depth_valid[batch.pixel_idx]
        # expected depth of the surface (the renderer's depth is weighted by the opacity)
        pred = out["depth"] / out["accumulation"].clamp(min=1e-3)
        share = self._rank_share(trainer, sel)
        if not bool(sel.any()):
            return pred.sum() * 0.0
        dev = pred.device
        target = self.depth_target[batch.pixel_idx][sel].to(dev)
        p = pred[sel.to(dev)]
        if c.depth_loss == "l1":
            loss = (p - target).abs().mean()
        else:
            gen = self._pair_generator if trainer.dist.active else trainer.generator
            loss = depth_ranking_loss(p, target, gen, c.ranking_margin)
        return c.depth_loss_weight * loss * share

    @staticmethod
    def _rank_share(trainer: Trainer, sel: Tensor) -> float:
        """Under several ranks, the factor that turns this rank's mean over its ``sel`` rows
        into its part of the global batch's mean (the trainer weighs a loss hook by the rank's
        share of the rows; the global mean weighs it by its share of the selected rows): the
        l1 loss is then the one-process loss. Ranking pairs are drawn within a rank's rows, so
        that loss is a weighted mean of the ranks' ranking losses. 1 on one process."""
        dp = trainer.dist
        if not dp.active:
            return 1.0
        mine = torch.tensor([float(sel.sum()), float(sel.numel())], dtype=torch.float64)
        total = dp.sum_tensor(mine)
        if float(total[0]) == 0 or float(mine[1]) == 0:
            return 0.0
        return float(mine[0] / total[0] * total[1] / mine[1])


def fill_at_dataset_resolution(
    fill: list[Bool[Tensor, "H W"]], train_indices: list[int], downscale: int
) -> list[Bool[Tensor, "h w"]]:
    """Full-resolution fill masks of the training images, downscaled (any covered pixel fills)."""
    out = []
    for i in train_indices:
        f = fill[i]
        out.append(f if downscale == 1 else ~downscale_mask(~f, downscale))
    return out


__all__ = [
    "DatasetUpdateConfig",
    "InpaintDatasetUpdate",
    "depth_ranking_loss",
    "fill_at_dataset_resolution",
    "ShardedGridDenoiser",
    "masked_training_scene",
    "shard_inpainter",
]
