"""The one field trainer: hooks, a live-updatable training set, exact resume, eval, rendering.

All randomness (ray batches, stratified jitter, occupancy-grid updates) comes from one
``torch.Generator`` whose state is checkpointed together with the field, the optimiser, the
occupancy grid, the torch global RNG and the dataset (version, plus its pixels once updated),
so that on CPU with deterministic algorithms ``N`` steps straight and ``N/2`` + resume + ``N/2``
give identical parameters. The learning-rate schedule depends on the step only (never the
clock) for the same reason.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import pickle
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData
from sceneforge.fields.datasets import RayBatch, RayDataset, downscale_image, downscale_mask
from sceneforge.fields.field import FieldConfig, RadianceField, SceneBox
from sceneforge.fields.masks import mask_loss, object_scene, require_masks, scene_hull_box
from sceneforge.fields.rendering import RenderConfig, background_color, render_rays
from sceneforge.fields.sampling import OccupancyGrid, SamplerConfig

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt or incompatible; the message names the file."""


class TrainingDivergedError(RuntimeError):
    """The loss (or a parameter) became NaN/inf: training stopped; the message names the last
    good checkpoint, which is never overwritten with non-finite parameters."""


@dataclass
class TrainerConfig:
    """Field training settings (``sceneforge train`` exposes these)."""

    max_steps: int = 3000
    """Number of optimisation steps (also sets the learning-rate schedule)."""
    max_seconds: float | None = None
    """Stop earlier after this much training time (seconds); None = no time limit."""
    batch_rays: int = 2048
    """Rays per step."""
    lr: float = 1e-2
    """Initial Adam learning rate."""
    grid_lr: float = 0.1
    """Adam learning rate of the explicit density grid and the learned background colour."""
    lr_final_factor: float = 0.1
    """Exponential decay to ``lr * lr_final_factor`` at ``max_steps``."""
    color_affine_weight: float = 1e-3
    """Weight of the squared distance of the per-image colour transforms (``field.color_affine``)
    from identity."""
    density_tv_weight: float = 0.0
    """Total-variation weight on the explicit density grid (smoother geometry from few views)."""
    holdout_every: int = 8
    """Every N-th image (0, N, 2N, ...) is held out for evaluation (0 = none)."""
    eval_every: int = 0
    """Held-out evaluation every N steps during training (0 = only at the end)."""
    eval_max_images: int = 0
    """Evaluate at most this many held-out images during training (0 = all)."""
    eval_appearance_fit_steps: int = 0
    """NeRF-W evaluation when > 0 (and the field has per-image appearance): per held-out
    image, the appearance is optimised for this many steps on the image's left half (field
    frozen) and ``psnr_right_fit`` / ``psnr_right_mean`` compare the right half rendered with
    the fitted and with the mean appearance."""
    eval_color_correct: bool = True
    """Also report colour-corrected held-out metrics (``psnr_cc``, ...): each render mapped by
    its least-squares affine colour transform onto the ground truth (removes per-photo
    exposure / white balance that the mean appearance cannot know); raw metrics are kept."""
    checkpoint_every: int = 1000
    """Write a checkpoint every N steps (0 = only at the end)."""
    log_every: int = 25
    """Scalars to tensorboard every N steps."""
    seed: int = 0
    """Seed of the trainer's random generator."""
    downscale: int = 1
    """Integer image downscale factor for training and evaluation."""
    use_masks: bool = True
    """Train only on usable pixels (mask True) when the scene has masks (ignored with
    ``object_masks``, whose masks are foreground masks)."""
    object_masks: bool = False
    """Object capture whose masks mark the foreground (every image needs one): photos are
    composited onto the render background outside the masks (``learned`` / ``none`` become
    black), all pixels are trained on, a mask loss (``mask_loss_weight``) pulls each ray's
    opacity to its pixel's mask coverage, ``scene_box`` ``auto`` becomes ``masks`` and an
    automatic ``field.density_grid_init`` becomes 0.01 (0.05 fills the mostly-background box
    with fog that drives the colours to the background and never recovers)."""
    mask_loss_weight: float = 0.05
    """Weight of ``mean((accumulation - mask coverage)^2)`` with ``object_masks``."""
    scene_box: Literal["auto", "bounded", "unbounded", "masks"] = "auto"
    """``auto``: bounded when the scene metadata has an ``aabb``, else unbounded (contracted);
    ``masks``: bounded by the visual hull of the foreground masks (default with
    ``object_masks``)."""
    inner_scale: float = 1.0
    """Unbounded scenes: half-size of the uncontracted box relative to the camera radius."""
    chunk_rays: int = 8192
    """Rays per chunk when rendering full images."""
    progress: bool = True
    """Show a rich progress bar."""
    tensorboard: bool = True
    """Write tensorboard scalars when tensorboard is installed."""
    deterministic: bool = True
    """Use deterministic torch algorithms (exact resume on CPU)."""
    device: str = "cpu"
    """Torch device (``cpu`` or ``cuda``)."""
    num_threads: int = 0
    """CPU threads for torch (0 = torch's default; 1 is much faster on an oversubscribed CPU)."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    """Field architecture."""
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    """Ray sampling / occupancy grid."""
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    """Compositing and background."""


def config_to_dict(cfg) -> dict:
    """A dataclass config as plain JSON/``weights_only``-safe types."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls, d: dict):
    """Rebuild a (nested) dataclass config from :func:`config_to_dict` output."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and isinstance(v, dict):
            kwargs[f.name] = config_from_dict(sub, v)
        elif isinstance(v, list):
            kwargs[f.name] = tuple(v)
        else:
            kwargs[f.name] = v
    return cls(**kwargs)


def split_indices(n: int, holdout_every: int) -> tuple[list[int], list[int]]:
    """Training and held-out image indices (every ``holdout_every``-th image held out)."""
    if holdout_every <= 0 or n < 2:
        return list(range(n)), []
    ev = [i for i in range(n) if i % holdout_every == 0]
    return [i for i in range(n) if i % holdout_every != 0], ev


def auto_scene_box(scene: SceneData, mode: str, inner_scale: float = 1.0) -> SceneBox:
    """Bounded box from ``metadata['aabb']``, else a contracted box around the cameras' focus."""
    aabb = scene.metadata.get("aabb") if scene.metadata else None
    if mode in ("auto", "bounded") and aabb is not None:
        return SceneBox(torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3), contract=False)
    cams = scene.cameras
    centers = cams.centers.double()
    # point closest (least squares) to all optical axes; falls back to the camera centroid
    axes = cams.world_from_cam[:, :, 2].double()
    eye = torch.eye(3, dtype=torch.float64)
    P = eye[None] - axes[:, :, None] * axes[:, None, :]
    A, b = P.sum(0), (P @ centers[:, :, None]).sum(0)[:, 0]
    focus = torch.linalg.lstsq(A, b).solution if len(cams) > 1 else centers.mean(0)
    if not torch.isfinite(focus).all() or torch.linalg.cond(A) > 1e6:
        focus = centers.mean(0)
    radius = (centers - focus).norm(dim=-1).median().clamp(min=1e-3)
    if mode == "bounded":
        if scene.points is not None and scene.points.shape[0] > 10:
            pts = scene.points.double()
            lo, hi = pts.quantile(0.01, dim=0), pts.quantile(0.99, dim=0)
            pad = (hi - lo) * 0.1
            return SceneBox(torch.stack([lo - pad, hi + pad]).float(), contract=False)
        half = radius * inner_scale
        return SceneBox(torch.stack([focus - half, focus + half]).float(), contract=False)
    half = radius * inner_scale
    return SceneBox(torch.stack([focus - half, focus + half]).float(), contract=True)


def density_tv(grid: Float[Tensor, "1 1 D H W"]) -> Tensor:
    """Mean squared difference between neighbouring voxels of a raw density grid."""
    g = grid[0, 0]
    return (
        (g[1:] - g[:-1]).pow(2).mean()
        + (g[:, 1:] - g[:, :-1]).pow(2).mean()
        + (g[:, :, 1:] - g[:, :, :-1]).pow(2).mean()
    )


Hook = Callable[["Trainer"], None]
LossHook = Callable[["Trainer", RayBatch, dict], Tensor]


class Trainer:
    """Trains a :class:`RadianceField` on a scene's training images.

    ``trainer.dataset`` may be updated or replaced at any time (see :class:`RayDataset`);
    hooks registered with :meth:`add_hook` run after every ``every``-th step and loss hooks
    added with :meth:`add_loss` contribute extra loss terms (e.g. depth supervision).
    """

    def __init__(
        self,
        scene: SceneData,
        config: TrainerConfig | None = None,
        out_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg = config or TrainerConfig()
        self.scene = scene
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = torch.device(cfg.device)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        self.train_indices, self.eval_indices = split_indices(len(scene), cfg.holdout_every)
        fcfg = cfg.field
        if cfg.object_masks:
            cfg = self.cfg = self._object_config(cfg)
            fcfg = cfg.field
            bg = background_color(cfg.render.background, None)
            self.scene = scene = object_scene(scene, bg)
        self._coverage: tuple[int, Tensor] | None = None
        use_masks = cfg.use_masks and not cfg.object_masks
        self.dataset = RayDataset(scene, self.train_indices, cfg.downscale, use_masks)
        if cfg.scene_box == "masks":
            rough = auto_scene_box(scene, "unbounded", 0.35).aabb
            aabb = scene_hull_box(scene, rough)
            self.box = SceneBox(aabb, contract=False)
        else:
            self.box = auto_scene_box(scene, cfg.scene_box, cfg.inner_scale)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        if fcfg.density_grid_resolution <= 0:
            side = max(max(hw) for hw in self.dataset.shapes)
            n = int(min(256, max(64, round(side / 16) * 16)))
            fcfg = dataclasses.replace(fcfg, density_grid_resolution=n)
        self.field = RadianceField(fcfg, self.box, len(self.train_indices), self.device).to(
            self.device
        )
        ref_step = self._reference_step()
        self.grid = OccupancyGrid(cfg.sampler, ref_step).to(self.device)
        bg0 = self.dataset.border_color().clamp(0.02, 0.98)
        self.bg_param = torch.nn.Parameter(torch.logit(bg0).to(self.device))
        grid_params = [p for n, p in self.field.named_parameters() if n == "density_grid"]
        params = [p for n, p in self.field.named_parameters() if n != "density_grid"]
        if cfg.render.background == "learned":
            grid_params.append(self.bg_param)
        groups = [{"params": params, "lr": cfg.lr, "base_lr": cfg.lr}]
        if grid_params:
            groups.append({"params": grid_params, "lr": cfg.grid_lr, "base_lr": cfg.grid_lr})
        self.optimizer = torch.optim.Adam(groups, eps=1e-15)
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
    def _object_config(cfg: TrainerConfig) -> TrainerConfig:
        """The effective settings of ``object_masks`` (see :class:`TrainerConfig`)."""
        render, fcfg = cfg.render, cfg.field
        if render.background not in ("black", "white"):
            render = dataclasses.replace(render, background="black")
        if fcfg.density_grid_init <= 0:
            fcfg = dataclasses.replace(fcfg, density_grid_init=0.01)
        box = "masks" if cfg.scene_box == "auto" else cfg.scene_box
        return dataclasses.replace(cfg, render=render, field=fcfg, scene_box=box)

    def mask_coverage(self) -> Float[Tensor, " P"]:
        """Foreground fraction of every dataset pixel (area-averaged like the images), from
        the masks of the dataset's scene; recomputed when the dataset version changes."""
        ds = self.dataset
        if self._coverage is None or self._coverage[0] != ds.version:
            require_masks(ds.scene, "the mask loss")
            cov = [
                downscale_image(ds.scene.load_mask(i)[..., None].float(), ds.downscale)
                .reshape(-1)
                .to(ds.rgb)
                for i in ds.indices
            ]
            self._coverage = (ds.version, torch.cat(cov))
        return self._coverage[1]

    def _reference_step(self) -> float:
        """Typical world-space step between samples, for the occupancy threshold."""
        extent = float((self.box.aabb[1] - self.box.aabb[0]).norm())
        if self.box.contract:
            return extent / (self.cfg.sampler.num_samples / 2)
        return extent / self.cfg.sampler.num_samples

    def add_hook(self, fn: Hook, every: int = 1) -> None:
        """Call ``fn(trainer)`` after every ``every``-th training step."""
        if every <= 0:
            raise ValueError("hook interval must be positive")
        self.hooks.append((every, fn))

    def add_loss(self, fn: LossHook) -> None:
        """Add ``fn(trainer, batch, render_output) -> scalar`` to the training loss."""
        self.loss_hooks.append(fn)

    @property
    def background(self) -> Tensor | None:
        bg = background_color(self.cfg.render.background, self.bg_param)
        return None if bg is None else bg.to(self.device)

    def lr_factor(self, step: int) -> float:
        """Exponential learning-rate decay factor at ``step`` (depends on the step only)."""
        frac = min(step / max(self.cfg.max_steps, 1), 1.0)
        return self.cfg.lr_final_factor**frac

    # -- training ----------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One optimisation step on a fresh batch of the current training set."""
        cfg = self.cfg
        self.field.train()
        if self.step % cfg.sampler.grid_update_every == 0:
            self.grid.update(self.field.density_normalized, self.step, self.generator)
        batch = self.dataset.sample(cfg.batch_rays, self.generator)
        dev = self.device
        out = render_rays(
            self.field,
            self.grid,
            cfg.sampler,
            batch.origins.to(dev),
            batch.directions.to(dev),
            batch.image_idx.to(dev),
            self.background,
            self.generator,
            batch.z_per_t.to(dev),
            num_samples=self.grid.training_samples(),
        )
        target = batch.rgb.to(dev)
        mse = (out["rgb"] - target).pow(2).mean()
        loss = mse
        if cfg.density_tv_weight > 0 and self.field.density_kind == "grid":
            loss = loss + cfg.density_tv_weight * density_tv(self.field.density_grid)
        if self.field.color_affine is not None and cfg.color_affine_weight > 0:
            loss = loss + cfg.color_affine_weight * self.field.color_affine.pow(2).sum(-1).mean()
        if cfg.object_masks and cfg.mask_loss_weight > 0:
            cov = self.mask_coverage()[batch.pixel_idx].to(out["accumulation"])
            loss = loss + cfg.mask_loss_weight * mask_loss(out["accumulation"], cov)
        for fn in self.loss_hooks:
            loss = loss + fn(self, batch, out)
        if not bool(torch.isfinite(loss.detach())):
            raise TrainingDivergedError(self._diverged(f"the loss is {float(loss.detach())}"))
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * self.lr_factor(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            self.optimizer.step()
        # else: no ray of the batch met an occupied cell and the background is fixed — nothing
        # to learn from this batch; the step still counts (the next grid update re-opens cells)
        self.step += 1
        stats = {
            "loss": float(loss.detach()),
            "psnr": float(-10 * torch.log10(mse.detach().clamp(min=1e-10))),
            "samples_per_ray": float(out["num_samples"]) / cfg.batch_rays,
            "occupancy": self.grid.occupancy_fraction,
            "dataset_version": self.dataset.version,
        }
        return stats

    def train(self, max_steps: int | None = None, max_seconds: float | None = None) -> dict:
        """Train until ``max_steps`` (total) or ``max_seconds`` (this call); returns last stats."""
        cfg = self.cfg
        max_steps = cfg.max_steps if max_steps is None else max_steps
        max_seconds = cfg.max_seconds if max_seconds is None else max_seconds
        start = time.perf_counter()
        stats: dict = {}
        progress = self._progress(max_steps)
        try:
            while self.step < max_steps:
                if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                    break
                t0 = time.perf_counter()
                stats = self.train_step()
                self.wall_s += time.perf_counter() - t0
                stats["rays_per_s"] = cfg.batch_rays / max(time.perf_counter() - t0, 1e-9)
                for every, fn in self.hooks:
                    if self.step % every == 0:
                        fn(self)
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self.history.append({"step": self.step, **stats})
                    self._log_scalars("train", stats)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_indices:
                    ev = self.evaluate(max_images=cfg.eval_max_images or None)
                    self._log_scalars("eval", ev)
                    stats["eval_psnr"] = ev["psnr"]
                if (
                    self.out_dir is not None
                    and cfg.checkpoint_every
                    and self.step % cfg.checkpoint_every == 0
                ):
                    self.save_checkpoint(self.out_dir / "checkpoint.pt")
                if progress is not None:
                    progress[0].update(
                        progress[1],
                        completed=self.step,
                        description=f"train  loss {stats['loss']:.4f}  psnr {stats['psnr']:.2f}",
                    )
        finally:
            if progress is not None:
                progress[0].stop()
        return stats

    def _progress(self, total: int):
        if not self.cfg.progress:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            transient=False,
        )
        task = p.add_task("train", total=total, completed=self.step)
        p.start()
        return p, task

    def _log_scalars(self, prefix: str, values: dict) -> None:
        if not self.cfg.tensorboard or self.out_dir is None:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.cfg.tensorboard = False
                return
            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._writer.add_scalar(f"{prefix}/{k}", v, self.step)
        self._writer.flush()

    # -- rendering / evaluation ----------------------------------------------------------------

    @torch.no_grad()
    def render_rays(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        z_per_t: Float[Tensor, " R"] | None = None,
        image_idx: int = -1,
    ) -> dict[str, Tensor]:
        """Render many rays in chunks (no grad); returns rgb, depth, accumulation (+ features)."""
        self.field.eval()
        outs: dict[str, list[Tensor]] = {}
        n = origins.shape[0]
        for s in range(0, n, self.cfg.chunk_rays):
            sl = slice(s, min(s + self.cfg.chunk_rays, n))
            o = origins[sl].to(self.device)
            idx = torch.full((o.shape[0],), image_idx, dtype=torch.long, device=self.device)
            r = render_rays(
                self.field,
                self.grid,
                self.cfg.sampler,
                o,
                directions[sl].to(self.device),
                idx,
                self.background,
                None,
                None if z_per_t is None else z_per_t[sl].to(self.device),
            )
            for k in ("rgb", "depth", "accumulation", "features"):
                if k in r:
                    outs.setdefault(k, []).append(r[k].cpu())
            outs.setdefault("num_samples", []).append(r["num_samples"].reshape(1))
        res = {k: torch.cat(v) for k, v in outs.items()}
        res["num_samples"] = res["num_samples"].sum()
        return res

    def render_camera(self, cameras: Cameras, index: int, image_idx: int = -1) -> dict[str, Tensor]:
        """Render camera ``index`` at the trainer's downscale as ``H W C`` images."""
        ds = self.cfg.downscale
        h, w = int(cameras.height[index]) // ds, int(cameras.width[index]) // ds
        o, d, z = cameras.rays(index, downscale=ds)
        r = self.render_rays(o.float(), d.float(), z.float(), image_idx)
        out = {"rgb": r["rgb"].view(h, w, 3).clamp(0, 1), "depth": r["depth"].view(h, w)}
        out["accumulation"] = r["accumulation"].view(h, w)
        if "features" in r:
            out["features"] = r["features"].view(h, w, -1)
        out["num_samples"] = r["num_samples"]
        return out

    def render_training_view(self, j: int) -> dict[str, Tensor]:
        """Render training image ``j`` (with its appearance embedding) at dataset resolution."""
        return self.render_camera(self.scene.cameras, self.train_indices[j], image_idx=j)

    def fit_unseen_appearance(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        rgb: Float[Tensor, "R 3"],
        steps: int,
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
        f.eval()
        try:
            for q in frozen:
                q.requires_grad_(False)
            for _ in range(steps):
                k = torch.randint(origins.shape[0], (self.cfg.batch_rays,), generator=gen)
                out = render_rays(
                    f,
                    self.grid,
                    self.cfg.sampler,
                    origins[k].to(self.device),
                    directions[k].to(self.device),
                    torch.full((k.shape[0],), -1, dtype=torch.long, device=self.device),
                    self.background,
                )
                loss = (out["rgb"] - rgb[k].to(self.device)).pow(2).mean()
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

    def evaluate(
        self,
        max_images: int | None = None,
        save_dir: Path | None = None,
        color_correct: bool | None = None,
    ) -> dict:
        """Held-out PSNR / SSIM over whole images, plus ``psnr_masked`` / ``ssim_masked`` over
        the mask's True pixels when the scene has masks (renders use the mean appearance).

        With ``color_correct`` (default ``cfg.eval_color_correct``) the same metrics with a
        ``_cc`` suffix are computed after :func:`~sceneforge.fields.evaluation.color_correct`
        (for the masked ones the transform is fitted on the masked pixels only). With
        ``cfg.eval_appearance_fit_steps`` also NeRF-W's left-half / right-half metrics (see
        :meth:`fit_unseen_appearance`).
        """
        from sceneforge.core.image_io import write_image_atomic
        from sceneforge.core.metrics import psnr, ssim
        from sceneforge.fields.evaluation import color_correct as color_correct_image

        idx = self.eval_indices[:max_images] if max_images else self.eval_indices
        if not idx:
            raise ValueError("no held-out images to evaluate (holdout_every = 0 or too few images)")
        cc = self.cfg.eval_color_correct if color_correct is None else color_correct
        fit_steps = self.cfg.eval_appearance_fit_steps
        if self.field.embedding is None and self.field.color_affine is None:
            fit_steps = 0
        vals: dict[str, list[float]] = {}
        samples, rays = 0, 0
        t0 = time.perf_counter()
        for i in idx:
            gt = downscale_image(self.scene.load_image(i), self.cfg.downscale)
            r = self.render_camera(self.scene.cameras, i)
            pred = r["rgb"]
            m = self.scene.load_mask(i)
            m = downscale_mask(m, self.cfg.downscale) if m is not None else None
            m = m if m is not None and bool(m.any()) else None
            preds = {"": pred}
            if cc:
                preds["_cc"] = color_correct_image(pred, gt)
            for sfx, p in preds.items():
                vals.setdefault("psnr" + sfx, []).append(psnr(p, gt))
                vals.setdefault("ssim" + sfx, []).append(ssim(p, gt))
                if m is not None:
                    pm_ = p if not sfx else color_correct_image(pred, gt, m)
                    vals.setdefault("psnr_masked" + sfx, []).append(psnr(pm_, gt, m))
                    vals.setdefault("ssim_masked" + sfx, []).append(ssim(pm_, gt, m))
            samples += int(r["num_samples"])
            rays += pred.shape[0] * pred.shape[1]
            if fit_steps > 0:
                w = pred.shape[1]
                right = torch.zeros(pred.shape[:2], dtype=torch.bool)
                right[:, w // 2 :] = True
                vals.setdefault("psnr_right_mean", []).append(psnr(pred, gt, right))
                o, d, z = self.scene.cameras.rays(i, downscale=self.cfg.downscale)
                left = ~right.reshape(-1)
                try:
                    self.fit_unseen_appearance(
                        o.float()[left], d.float()[left], gt.reshape(-1, 3)[left], fit_steps, seed=i
                    )
                    sl = right.reshape(-1)
                    rr = self.render_rays(o.float()[sl], d.float()[sl], z.float()[sl])["rgb"]
                finally:
                    self.field.unseen_embedding = self.field.unseen_color_affine = None
                fit = pred.clone()
                fit[right] = rr.clamp(0, 1)
                vals.setdefault("psnr_right_fit", []).append(psnr(fit, gt, right))
            if save_dir is not None:
                name = Path(self.scene.image_names[i]).stem
                write_image_atomic(save_dir / f"{name}_pred.png", pred)
                write_image_atomic(save_dir / f"{name}_gt.png", gt)
        res: dict = {k: sum(v) / len(v) for k, v in vals.items()}
        res.update(
            {
                "num_eval_images": len(idx),
                "steps": self.step,
                "eval_samples_per_ray": samples / max(rays, 1),
                "eval_rays_per_s": rays / max(time.perf_counter() - t0, 1e-9),
            }
        )
        return res

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "wall_s": self.wall_s,
            "config": config_to_dict(self.cfg),
            "field": self.field.state_dict(),
            "grid": self.grid.state_dict(),
            "background": self.bg_param.detach().clone(),
            "box": self.box.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            "dataset": self.dataset.state_dict(),
            "train_indices": list(self.train_indices),
            "eval_indices": list(self.eval_indices),
            "image_names": list(self.scene.image_names),
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
            "Lower the learning rate (lr, grid_lr) or check the inputs for NaN/inf values."
        )

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the full training state atomically (temp file + ``os.replace``).

        Non-finite parameters are refused (:class:`TrainingDivergedError`) and a failed write
        (disk full) raises an OSError naming the file: either way the previous checkpoint at
        ``path`` is left as it was and no temporary file remains.
        """
        path = Path(path)
        bad = [n for n, p in self.field.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad or not bool(torch.isfinite(self.bg_param).all()):
            raise TrainingDivergedError(
                self._diverged(f"non-finite parameters ({', '.join(bad) or 'background'})")
                + f" {path} was not overwritten."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a process killed while writing
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(self.state_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise OSError(
                e.errno,
                f"cannot write checkpoint {path} ({e.strerror or e}); the previous checkpoint "
                "there (if any) is unchanged",
            ) from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.last_checkpoint = (path, self.step)
        return path

    def load_state_dict(self, s: dict, where: str = "checkpoint") -> None:
        if s.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{where}: unsupported checkpoint format {s.get('format')!r}")
        if list(s["image_names"]) != list(self.scene.image_names):
            raise CheckpointError(f"{where}: was trained on a different scene (image names differ)")
        self.box.aabb.copy_(s["box"]["aabb"])
        self.box.contract = bool(s["box"]["contract"])
        self.field.load_state_dict(s["field"])
        self.grid.load_state_dict(s["grid"])
        with torch.no_grad():
            self.bg_param.copy_(s["background"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.generator.set_state(s["rng"]["generator"])
        torch.set_rng_state(s["rng"]["torch"])
        self.dataset.load_state_dict(s["dataset"])
        self.step = int(s["step"])
        self.wall_s = float(s["wall_s"])

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (exact resume)."""
        s = read_checkpoint(path)
        try:
            self.load_state_dict(s, str(path))
        except (KeyError, RuntimeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: checkpoint does not match this trainer ({e})") from e
        self.last_checkpoint = (Path(path), self.step)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, scene: SceneData, out_dir: str | Path | None = None, **overrides
    ) -> Trainer:
        """A trainer rebuilt from the config stored in ``path`` and restored to its state."""
        s = read_checkpoint(path)
        try:
            cfg = config_from_dict(TrainerConfig, s["config"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: bad config in checkpoint ({e})") from e
        cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
        tr = cls(scene, cfg, out_dir)
        tr.load_state_dict(s, str(path))
        tr.last_checkpoint = (Path(path), tr.step)
        return tr


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` with a clear error naming a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(
                f"{path}: refusing to load: the file holds pickled Python objects other than "
                "tensors and plain data (only weights_only=True loading is allowed; the file "
                "may have been tampered with)"
                + "".join(
                    f" [{ln.strip()}]" for ln in str(e).splitlines() if "unsupported" in ln.lower()
                )
            ) from e
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({e})") from e
    except (
        RuntimeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        IndexError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
    ) as e:  # what torch's weights-only unpickler raises on damaged files
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({e})") from e
    if not isinstance(s, dict) or "field" not in s or "step" not in s:
        raise CheckpointError(f"{path}: not a sceneforge field checkpoint")
    return s


__all__ = [
    "CheckpointError",
    "Trainer",
    "TrainingDivergedError",
    "TrainerConfig",
    "auto_scene_box",
    "read_checkpoint",
    "split_indices",
]
