"""The one trainer: any :class:`~sceneforge.fields.scene_model.SceneModel` on a live-updatable
training set, with hooks, loss hooks, exact resume, evaluation, logging and progress.

All randomness (batches, stratified jitter, occupancy-grid updates, ...) comes from one CPU
``torch.Generator`` whose state is checkpointed together with the model, the optimiser, the
trainer's own global-RNG state and the dataset (version, plus its pixels once updated), so that
on CPU with deterministic algorithms ``N`` steps straight and ``N/2`` + resume + ``N/2`` give
identical parameters. The learning-rate schedule depends on the step only (never the clock) for
the same reason. Process-global torch settings (threads, deterministic algorithms, the global
RNG) are the trainer's only while it works (:class:`~sceneforge.core.torch_state.
TorchStateScope`): constructing, training, rendering or evaluating leaves them as found.

Editors (dataset updates, completion, the viewer, ``fields.api``) use only the attributes named
in :attr:`Trainer.EDITING_INTERFACE` (a test scans them).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.progress import rich_bar
from sceneforge.core.run_files import CHECKPOINT, TENSORBOARD_DIR
from sceneforge.core.scene import SceneData, undistorted_scene
from sceneforge.core.torch_state import TorchStateScope
from sceneforge.fields import camera_opt as camopt
from sceneforge.fields import distributed
from sceneforge.fields.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    TrainingDivergedError,
    config_from_dict,
    config_to_dict,
    read_checkpoint,
    write_checkpoint,
)
from sceneforge.fields.datasets import (
    RayBatch,
    RayDataset,
    dataset_budget,
    downscale_image,
    scale_cameras,
    split_indices,
    working_downscale,
)
from sceneforge.fields.evaluation import bar_callback, evaluate_heldout
from sceneforge.fields.field import SceneBox
from sceneforge.fields.losses import photometric_loss
from sceneforge.fields.masks import mask_loss, object_scene, require_masks, scene_hull_box
from sceneforge.fields.rendering import background_color
from sceneforge.fields.scene_box import auto_scene_box
from sceneforge.fields.scene_model import ModelContext, SceneModel, model_class
from sceneforge.fields.trainer_config import TrainerConfig, checkpoint_config


def lr_decay_factor(step: int, max_steps: int, final_factor: float) -> float:
    """The learning-rate schedule of every model: ``final_factor ** (step / max_steps)``,
    constant after ``max_steps`` (a Python float: it may end up in checkpoints)."""
    return float(final_factor ** min(step / max(max_steps, 1), 1.0))


Hook = Callable[["Trainer"], None]
LossHook = Callable[["Trainer", RayBatch, dict], Tensor]


class Trainer:
    """Trains a scene model (``cfg.model``) on a scene's training images.

    The training views may change while it trains (:meth:`update_views`); hooks registered
    with :meth:`add_hook` run after every ``every``-th step and loss hooks added with
    :meth:`add_loss` contribute extra loss terms (e.g. depth supervision).
    """

    EDITING_INTERFACE: tuple[str, ...] = tuple(
        """
        step scene train_indices eval_indices downscale device config model_name renders_rays
        num_views
        view_shape view_image view_pixel_range view_cameras dataset_version scene_box
        render_view render_camera render_rays update_views add_loss add_hook generator train
        set_max_steps evaluate save_checkpoint history wall_s describe from_checkpoint dist
        """.split()
    )
    """What editors (dataset updates, completion, stylization, the viewer, ``fields.api``) may
    use: views in and out, rendering at any resolution, losses, hooks, the step counter, and
    ``dist`` (under torchrun editors run on every rank; only ``dist.is_main`` writes files)."""

    def __init__(
        self,
        scene: SceneData,
        config: TrainerConfig | None = None,
        out_dir: str | Path | None = None,
    ) -> None:
        cfg = config or TrainerConfig()
        if cfg.schedule == "time" and not (cfg.max_seconds and cfg.max_seconds > 0):
            raise ValueError("trainer.schedule 'time' needs a positive trainer.max_seconds")
        self._model_cls = model_class(cfg.model)
        cfg = camopt.real_capture_config(cfg, self._model_cls.renders_rays)
        if cfg.object_masks:
            cfg = self._object_config(cfg, self._model_cls)
            scene = object_scene(scene, background_color(cfg.render.background, None))
        if self._model_cls.needs_pinhole:
            scene = undistorted_scene(scene)
        self.cfg, self.scene = cfg, scene
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.dist = distributed.from_env(cfg.device, cfg.dist_timeout_s)
        """This process's place in a data-parallel (torchrun) run: see ``fields.distributed``."""
        self.device = self.dist.device
        self._torch = TorchStateScope(
            cfg.num_threads, cfg.deterministic, self.device.type == "cuda", cfg.seed
        )
        self.train_indices, self.eval_indices = split_indices(len(scene), cfg.holdout_every)
        self._coverage: tuple[int, Tensor] | None = None
        use_masks = cfg.use_masks and not cfg.object_masks
        ds = working_downscale(scene.cameras, cfg.downscale, cfg.max_long_side, log=True)
        self.cfg = cfg = dataclasses.replace(cfg, downscale=ds)
        budget = dataset_budget(cfg.dataset_memory_gb)
        self.dataset = RayDataset(scene, self.train_indices, ds, use_masks, budget)
        if cfg.scene_box == "masks":
            rough = auto_scene_box(scene, "unbounded", 0.35).aabb
            self.box = SceneBox(scene_hull_box(scene, rough), contract=False)
        else:
            self.box = auto_scene_box(scene, cfg.scene_box, cfg.inner_scale)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        ctx = ModelContext(
            scene,
            self.dataset,
            self.box,
            len(self.train_indices),
            self.device,
            cfg.render,
            self.view_cameras(),
            cfg.seed,
            cfg.object_masks,
        )
        with self._torch():
            self.model: SceneModel = self._model_cls(getattr(cfg, cfg.model), ctx)
        resolved = self.model.resolved_config(getattr(cfg, cfg.model))
        self.cfg = cfg = dataclasses.replace(cfg, **{cfg.model: resolved})
        self.photometric = cfg.photometric
        if cfg.photometric == "auto":
            self.photometric = "l1-ssim" if self.model.batch_kind == "images" else "mse"
        self.camera_opt = camopt.camera_optimizer(cfg, scene, self.train_indices, self.device)
        self.optimizer = self._make_optimizer()
        self.dist.check_model(cfg.model, self._batch_kind(), cfg.views_per_step)
        self.model.dist = self.dist  # Gaussians gather their densification statistics
        self.step = 0
        self.wall_s = 0.0
        self.hooks: list[tuple[int, Hook]] = []
        self.loss_hooks: list[LossHook] = []
        self.history: list[dict] = []
        self._writer = None
        self.last_checkpoint: tuple[Path, int] | None = None
        """``(path, step)`` of the last checkpoint this trainer wrote or loaded."""

    # -- setup helpers -----------------------------------------------------------------------

    @staticmethod
    def _object_config(cfg: TrainerConfig, model_cls: type[SceneModel]) -> TrainerConfig:
        """The effective settings of ``object_masks`` (see :class:`TrainerConfig`)."""
        render = cfg.render
        if render.background not in ("black", "white"):
            render = dataclasses.replace(render, background="black")
        box = "masks" if cfg.scene_box == "auto" else cfg.scene_box
        cfg = dataclasses.replace(cfg, render=render, scene_box=box)
        model_cfg = model_cls.object_defaults(getattr(cfg, cfg.model))
        return dataclasses.replace(cfg, **{cfg.model: model_cfg})

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = []
        for g in [*self.model.param_groups(), *camopt.param_groups(self.camera_opt)]:
            g = dict(g)
            g["base_lr"] = g["lr"]
            g.setdefault("final_factor", self.cfg.lr_final_factor)
            groups.append(g)
        return torch.optim.Adam(groups, eps=1e-15)

    def mask_coverage(self) -> Float[Tensor, " P"]:
        """Foreground fraction of every dataset pixel (area-averaged like the images), from
        the masks of the dataset's scene; recomputed when the dataset version changes."""
        ds = self.dataset
        if self._coverage is None or self._coverage[0] != ds.version:
            require_masks(ds.scene, "the mask loss")
            cov = [
                downscale_image(ds.scene.load_mask(i)[..., None].float(), ds.downscale)
                .reshape(-1)
                .float()
                for i in ds.indices
            ]
            self._coverage = (ds.version, torch.cat(cov))
        return self._coverage[1]

    # -- the editing interface ---------------------------------------------------------------

    @property
    def downscale(self) -> int:
        """Training (dataset) downscale of the full-resolution images."""
        return self.cfg.downscale

    @property
    def config(self) -> TrainerConfig:
        """A copy of the effective settings (changing it changes nothing)."""
        return copy.deepcopy(self.cfg)

    @property
    def model_name(self) -> str:
        return self.cfg.model

    @property
    def renders_rays(self) -> bool:
        """Whether :meth:`render_rays` works (ray-marched models; rasterised ones render whole
        cameras only)."""
        return self.model.renders_rays

    @property
    def num_views(self) -> int:
        """Training views (local indices ``0 .. num_views - 1``)."""
        return len(self.dataset)

    def view_shape(self, j: int) -> tuple[int, int]:
        """``(h, w)`` of training view ``j`` at dataset resolution."""
        return tuple(self.dataset.shapes[j])

    def view_image(self, j: int) -> Float[Tensor, "h w 3"]:
        """Current pixels of training view ``j`` (after any update), a copy."""
        return self.dataset.image(j).clone()

    def view_pixel_range(self, j: int) -> slice:
        """``RayBatch.pixel_idx`` values of training view ``j`` (for per-pixel loss targets)."""
        return self.dataset.pixel_range(j)

    def view_cameras(self) -> Cameras:
        """Cameras of the training views at dataset resolution."""
        return scale_cameras(self.scene.cameras[self.train_indices], self.downscale)

    @property
    def dataset_version(self) -> int:
        return self.dataset.version

    @property
    def scene_box(self) -> SceneBox:
        return self.model.scene_box

    def describe(self) -> dict:
        """Model, device and representation facts for eval.json (compare like with like)."""
        d = {"model": self.cfg.model, "device": str(self.device), **self.model.describe()}
        return {**d, **camopt.describe(self)}

    def update_views(
        self,
        views: list[int],
        images: list[Float[Tensor, "h w 3"]],
        masks: list[Bool[Tensor, "h w"] | None] | None = None,
    ) -> int:
        """Replace the pixels (and optionally the usable-pixel masks) of training views; the
        next step trains on them. Returns the new dataset version."""
        return self.dataset.update_images(views, images, masks)

    def add_hook(self, fn: Hook, every: int = 1) -> None:
        """Call ``fn(trainer)`` after every ``every``-th training step."""
        if every <= 0:
            raise ValueError("hook interval must be positive")
        self.hooks.append((every, fn))

    def add_loss(self, fn: LossHook) -> None:
        """Add ``fn(trainer, batch, outputs) -> scalar`` to the training loss (outputs per batch
        element: ``rgb``, ``depth``, ``accumulation``; ``batch.pixel_idx`` indexes the views'
        pixels, see :meth:`view_pixel_range`)."""
        self.loss_hooks.append(fn)

    def set_max_steps(self, max_steps: int) -> None:
        """Extend (or shorten) the run; the learning-rate schedule follows the new length."""
        self.cfg.max_steps = int(max_steps)

    def schedule_fraction(self, step: int | None = None) -> float:
        """The fraction of the run done, which the learning-rate decay follows: ``step /
        max_steps`` (``step`` default: the current one), or with ``schedule time`` the training
        time used, ``wall_s / max_seconds`` (restored with a checkpoint); at most 1."""
        cfg = self.cfg
        if cfg.schedule == "time":
            return min(self.wall_s / cfg.max_seconds, 1.0)
        return min((self.step if step is None else step) / max(cfg.max_steps, 1), 1.0)

    def lr_factor(self, step: int | None = None, final_factor: float | None = None) -> float:
        """Exponential learning-rate decay factor ``final_factor ** schedule_fraction(step)``."""
        f = self.cfg.lr_final_factor if final_factor is None else final_factor
        return float(f ** self.schedule_fraction(step))

    # -- training ----------------------------------------------------------------------------

    def _batch_kind(self) -> str:
        return self.model.batch_kind if self.cfg.batch == "auto" else self.cfg.batch

    def _sample_batch(self) -> RayBatch:
        cfg, kind = self.cfg, self._batch_kind()
        if kind == "patches":
            n = max(1, cfg.batch_rays // (cfg.patch_size * cfg.patch_size))
            return self.dataset.sample_patches(n, cfg.patch_size, self.generator)
        if kind == "images":
            views = cfg.views_per_step or self.dist.world_size
            return self.dataset.sample_views(views, self.generator)
        return self.dataset.sample(cfg.batch_rays, self.generator)

    def train_step(self) -> dict[str, float]:
        """One optimisation step on a fresh batch of the current training set."""
        with self._torch():
            return self._train_step()

    def _train_step(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        model.before_step(self.step, self.generator)
        # data parallel (fields.distributed): this rank's slice of the global batch, each loss
        # term weighted by its share, gradients summed over the ranks; one process: unchanged
        dp = self.dist
        part = dp.shard(camopt.refine_batch(self.camera_opt, self._sample_batch()))
        batch = part.batch
        with dp.shard_draws(self.generator, part, cfg.model):
            out = model.train_outputs(batch, self.generator)
        target = batch.rgb.to(out["rgb"].device)
        loss, mse = photometric_loss(
            self.photometric, out["rgb"], target, batch.valid, batch.patches, cfg.ssim_lambda
        )
        loss, mse = dp.weigh(loss, part.photometric), dp.weigh(mse, part.photometric)
        for term in model.regularizers(batch, out, self.step).values():
            loss = loss + dp.weigh(term, part.once)
        loss = loss + dp.weigh(camopt.regularizer(self.camera_opt), part.once)
        if cfg.object_masks and cfg.mask_loss_weight > 0:
            cov = self.mask_coverage()[batch.pixel_idx].to(out["accumulation"])
            term = cfg.mask_loss_weight * mask_loss(out["accumulation"], cov)
            loss = loss + dp.weigh(term, part.per_row)
        for fn in self.loss_hooks:
            loss = loss + dp.weigh(fn(self, batch, out), part.per_row)
        total, mse, samples = dp.global_stats(loss, mse, out["num_samples"])
        if not bool(torch.isfinite(total)):
            raise TrainingDivergedError(self._diverged(f"the loss is {float(total)}"))
        frac = self.schedule_fraction()
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * self.lr_factor(final_factor=g["final_factor"])
            g["lr"] *= camopt.group_lr_factor(g, frac)  # camera corrections' warm-up
        self.optimizer.zero_grad(set_to_none=True)
        if dp.backward(loss, self.optimizer):
            self.optimizer.step()
        # else: nothing in the batch reached a trainable parameter (e.g. no ray met an
        # occupied cell and the background is fixed); the step still counts
        model.after_step(self.step, self.optimizer, self.generator)
        self.step += 1
        return {
            "loss": float(total),
            "psnr": float(-10 * torch.log10(mse.detach().clamp(min=1e-10))),
            "samples_per_ray": float(samples) / part.total_rows,
            **model.stats(),
            "dataset_version": self.dataset.version,
        }

    def train(self, max_steps: int | None = None, max_seconds: float | None = None) -> dict:
        """Train until ``max_steps`` (total) or ``max_seconds`` (this call; by default the
        config's, which with ``schedule time`` is the whole run's training time); returns the
        last step's stats."""
        with self._torch():
            return self._train(max_steps, max_seconds)

    def _train(self, max_steps: int | None, max_seconds: float | None) -> dict:
        cfg = self.cfg
        max_steps = cfg.max_steps if max_steps is None else max_steps
        timed = cfg.schedule == "time"
        if max_seconds is None and not timed:
            max_seconds = cfg.max_seconds
        start = time.perf_counter()
        stats: dict = {}
        progress = self._progress(int(math.ceil(cfg.max_seconds)) if timed else max_steps)
        facts, cams = {"step": self.step, "dataset_version": self.dataset.version}, self.camera_opt
        self.dist.sync(facts, self.model, *([] if cams is None else [cams]))
        try:
            while self.step < max_steps:
                # several ranks: rank 0's clock decides (same stop step, same time schedule)
                self.wall_s, elapsed = self.dist.from_main(self.wall_s, time.perf_counter() - start)
                if max_seconds is not None and elapsed >= max_seconds:
                    break
                if timed and self.wall_s >= cfg.max_seconds:
                    break
                t0 = time.perf_counter()
                stats = self._train_step()
                self.wall_s += time.perf_counter() - t0
                stats["rays_per_s"] = cfg.batch_rays / max(time.perf_counter() - t0, 1e-9)
                for every, fn in self.hooks:
                    if self.step % every == 0:
                        fn(self)
                due = cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_indices
                if due and self.dist.is_main:  # other ranks go on and wait in the next step
                    ev = self.evaluate(
                        max_images=cfg.eval_max_images or None,
                        progress=None if progress is None else bar_callback(*progress, "eval"),
                    )
                    self._log_scalars("eval", ev)
                    stats["eval_psnr"] = ev["psnr"]
                # after the evaluation: the history row of an evaluated step has its eval_psnr
                if cfg.log_every and (self.step % cfg.log_every == 0 or "eval_psnr" in stats):
                    self.history.append({"step": self.step, **stats})
                    self._log_scalars("train", {k: v for k, v in stats.items() if k != "eval_psnr"})
                if (
                    self.out_dir is not None
                    and cfg.checkpoint_every
                    and self.step % cfg.checkpoint_every == 0
                ):
                    self.save_checkpoint(self.out_dir / CHECKPOINT)
                if progress is not None:
                    progress[0].update(
                        progress[1],
                        completed=int(self.wall_s) if timed else self.step,
                        description=f"train{f' step {self.step} s' if timed else ''}  loss "
                        f"{stats['loss']:.4f}  psnr {stats['psnr']:.2f}",
                    )
        finally:
            if progress is not None:
                progress[0].stop()
        return stats

    def _progress(self, total: int, description: str = "train", completed: int | None = None):
        if not self.cfg.progress or not self.dist.is_main:
            return None
        if completed is None:
            completed = int(self.wall_s) if self.cfg.schedule == "time" else self.step
        return rich_bar(description, total, completed, False)

    def _log_scalars(self, prefix: str, values: dict) -> None:
        if not self.cfg.tensorboard or self.out_dir is None or not self.dist.is_main:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.cfg.tensorboard = False
                return
            self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR))
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._writer.add_scalar(f"{prefix}/{k}", v, self.step)
        self._writer.flush()

    # -- rendering / evaluation ----------------------------------------------------------------

    @torch.no_grad()
    def render_camera(
        self,
        cameras: Cameras,
        index: int,
        image_idx: int = -1,
        downscale: int | None = None,
        **model_options,
    ) -> dict[str, Tensor]:
        """Render camera ``index`` as ``H W C`` images (rgb, depth, accumulation, optional
        features) at ``1 / downscale`` of its full resolution (default: the training
        downscale); ``image_idx`` = a training view's appearance (-1 = the mean);
        ``model_options`` go to the model's ``render_camera`` (e.g. ``human4d``'s ``frame``,
        ``pose``, ``transl``)."""
        ds = self.downscale if downscale is None else max(int(downscale), 1)
        with self._torch():
            self.model.eval()
            return self.model.render_camera(cameras, index, ds, image_idx, **model_options)

    @torch.no_grad()
    def render_rays(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        z_per_t: Float[Tensor, " R"] | None = None,
        image_idx: int = -1,
        num_samples: int | None = None,
    ) -> dict[str, Tensor]:
        """Render arbitrary rays (models that ray-march, e.g. NeRF; ``num_samples`` caps the
        samples per ray for fast previews); rgb, depth, accumulation on CPU."""
        if not self.model.renders_rays:
            raise ValueError(
                f"the {self.cfg.model!r} model renders whole cameras, not rays: use render_camera"
            )
        with self._torch():
            self.model.eval()
            return self.model.render_rays(origins, directions, z_per_t, image_idx, num_samples)

    def render_view(self, j: int, downscale: int | None = None) -> dict[str, Tensor]:
        """Render training view ``j`` with its own appearance, at dataset resolution or at
        ``1 / downscale`` of full resolution."""
        return self.render_camera(self.scene.cameras, self.train_indices[j], j, downscale)

    def evaluate(
        self,
        max_images: int | None = None,
        save_dir: Path | None = None,
        color_correct: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict:
        """Held-out metrics (see :func:`~sceneforge.fields.evaluation.evaluate_heldout`), at
        most ``eval_max_pixels`` per image; ``progress(done, total)`` after every image (default:
        a progress bar when ``progress`` is on)."""
        cc = self.cfg.eval_color_correct if color_correct is None else color_correct
        n = len(self.eval_indices[:max_images] if max_images else self.eval_indices)
        bar = self._progress(n, "eval", 0) if progress is None else None
        cb, fit = bar_callback(*bar) if bar else progress, self.cfg.eval_appearance_fit_steps
        try:
            with self._torch():
                mp = self.cfg.eval_max_pixels
                return evaluate_heldout(self, max_images, save_dir, cc, fit, mp, cb)
        finally:
            if bar is not None:
                bar[0].stop()

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "wall_s": self.wall_s,
            "config": config_to_dict(self.cfg),
            "model_name": self.cfg.model,
            "model": self.model.state_dict(),
            "box": self.box.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": self._torch.rng_state},
            "dataset": self.dataset.state_dict(),
            "camera_opt": camopt.state(self.camera_opt),
            "train_indices": list(self.train_indices),
            "eval_indices": list(self.eval_indices),
            "image_names": list(self.scene.image_names),
            "world_size": self.dist.world_size,
        }

    def _diverged(self, what: str) -> str:
        last = self.last_checkpoint
        kept = (
            f"the last good checkpoint is {last[0]} (step {last[1]})"
            if last is not None
            else "no checkpoint was written yet"
        )
        return (
            f"training diverged at step {self.step + 1}: {what}; stopped, {kept}. "
            "Lower the learning rates or check the inputs for NaN/inf values."
        )

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the full training state atomically (see
        :func:`~sceneforge.fields.checkpoints.write_checkpoint`).

        Non-finite parameters are refused (:class:`TrainingDivergedError`) and a failed write
        (disk full) raises an OSError naming the file: either way the previous checkpoint at
        ``path`` is left as it was and no temporary file remains.
        """
        path = Path(path)
        bad = self.model.nonfinite_parameters()
        if bad:
            raise TrainingDivergedError(
                self._diverged(f"non-finite parameters ({', '.join(bad)})")
                + f" {path} was not overwritten."
            )
        if self.dist.is_main:  # data parallel: rank 0 writes, the other ranks hold the same
            write_checkpoint(path, self.state_dict())
            camopt.write_refined_cameras(self, path.parent)
        self.last_checkpoint = (path, self.step)
        return path

    def load_state_dict(self, s: dict, where: str = "checkpoint") -> None:
        if s.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{where}: unsupported checkpoint format {s.get('format')!r}")
        if s.get("model_name", "nerf") != self.cfg.model:
            raise CheckpointError(
                f"{where}: holds a {s.get('model_name')!r} model, this trainer trains "
                f"{self.cfg.model!r}"
            )
        if list(s["image_names"]) != list(self.scene.image_names):
            raise CheckpointError(f"{where}: was trained on a different scene (image names differ)")
        self.box.load_state(s["box"])
        self.model.load_state_dict(s["model"])
        camopt.load_state(self.camera_opt, s.get("camera_opt"))
        self.optimizer = self._make_optimizer()  # the model may have changed its parameters
        self.optimizer.load_state_dict(s["optimizer"])
        self.generator.set_state(s["rng"]["generator"])
        self._torch.rng_state = s["rng"]["torch"]
        self.dataset.load_state_dict(s["dataset"])
        self.step = int(s["step"])
        self.wall_s = float(s["wall_s"])

    def _restore(self, s: dict, path: str | Path) -> None:
        """:meth:`load_state_dict` of checkpoint ``path`` (an error naming the file when it does
        not fit this trainer)."""
        try:
            self.load_state_dict(s, str(path))
        except (KeyError, RuntimeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: checkpoint does not match this trainer ({e})") from e
        self.last_checkpoint = (Path(path), self.step)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (exact resume)."""
        self._restore(read_checkpoint(path), path)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, scene: SceneData, out_dir: str | Path | None = None, **overrides
    ) -> Trainer:
        """A trainer rebuilt from the config stored in ``path`` and restored to its state."""
        s = read_checkpoint(path)
        cfg = checkpoint_config(s, path)
        tr = cls(scene, dataclasses.replace(cfg, **overrides) if overrides else cfg, out_dir)
        tr._restore(s, path)
        return tr


__all__ = [
    "CheckpointError",
    "Trainer",
    "TrainingDivergedError",
    "TrainerConfig",
    "auto_scene_box",
    "checkpoint_config",
    "config_from_dict",
    "config_to_dict",
    "lr_decay_factor",
    "read_checkpoint",
    "scale_cameras",
    "split_indices",
]
