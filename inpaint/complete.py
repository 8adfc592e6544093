"""``sceneforge complete RUN_DIR OUT_DIR``: generative scene completion of a trained run.

Reads a fields run folder (``checkpoint.pt``, ``config.json``, ``source.json`` -> the scene),
builds fill masks (a world box projected into every view, a folder of per-image masks, and/or
regions the trained field left unobserved), trains a fresh field on the unmasked pixels with
the run's trainer settings and runs the Inpaint Dataset Update with the chosen inpainter.

Writes to ``OUT_DIR``: ``checkpoint.pt`` (the completed field; a normal fields run folder,
with ``config.json`` and ``source.json``), ``renders/`` (all views), ``before_after/``
(capture | hole | completed render), ``masks/`` (the fill masks, white = filled),
``datasets/vNNN/`` (every dataset version) and ``complete.json`` (settings, rounds, timings).

Runs unchanged under ``torchrun --nproc_per_node N``: training is data-parallel
(:mod:`sceneforge.fields.distributed`), the dataset updates are shared between the ranks (see
:mod:`sceneforge.inpaint.dataset_update`), and only rank 0 reports progress and writes files.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sceneforge.core.atomic import atomic_write_json
from sceneforge.core.image_io import write_image_atomic
from sceneforge.core.run_files import (
    BEFORE_AFTER_DIR,
    CHECKPOINT,
    COMPLETE_INFO,
    CONFIG,
    MASKS_DIR,
    RENDERS_DIR,
    SOURCE,
)
from sceneforge.core.scene import SceneData
from sceneforge.fields.datasets import downscale_image
from sceneforge.fields.trainer import (
    CheckpointError,
    Trainer,
    TrainerConfig,
    checkpoint_config,
    config_to_dict,
    read_checkpoint,
)
from sceneforge.inpaint.dataset_update import (
    DatasetUpdateConfig,
    InpaintDatasetUpdate,
    fill_at_dataset_resolution,
    masked_training_scene,
)
from sceneforge.inpaint.inpainters import (
    Inpainter,
    MultiViewConfig,
    MultiViewInpainter,
    TeleaInpainter,
)
from sceneforge.inpaint.masks import box_fill_mask, dilate, read_fill_masks, unobserved_mask

Progress = Callable[[int, int, str], None]
"""``progress(done, total, message)``: completion steps done of ``total`` (the dataset update's
schedule), with what is happening; ``done == 0`` before the first step (fill masks built),
``done == total`` after the last step and again once the outputs are written."""


@dataclass
class CompleteConfig:
    """``sceneforge complete RUN_DIR OUT_DIR``: fill holes so that every view agrees."""

    mask_box: tuple[float, float, float, float, float, float] | None = None
    """World box ``xmin ymin zmin xmax ymax zmax`` to remove (projected into every view)."""
    masks: str | None = None
    """Folder of per-image fill masks (same stem as the images; white = fill)."""
    unobserved_threshold: float = 0.0
    """Also fill where the run's field has accumulation below this (0 = off)."""
    mask_render_downscale: int = 1
    """Downscale of the run's renders that decide what lies in front of the box (and what is
    unobserved), upsampled to full resolution (1 = full resolution; 4 = 16x fewer rays)."""
    dilate_px: int = 1
    """Grow the fill masks by this many pixels (covers soft object edges)."""
    inpainter: Literal["multiview", "telea", "sd"] = "multiview"
    """``multiview`` (depth warping + Telea, weight-free), ``telea`` (per image) or ``sd``."""
    model: str | None = None
    """Local Stable Diffusion inpainting folder (``--inpainter sd``)."""
    prompt: str = ""
    """Text prompt for ``sd``."""
    update: DatasetUpdateConfig = field(default_factory=DatasetUpdateConfig)
    """Dataset-update schedule (warm-up, rounds, strength annealing, depth loss)."""
    multiview: MultiViewConfig = field(default_factory=MultiViewConfig)
    """Multi-view backend settings."""
    sd_steps: int = 20
    """Denoising steps of the ``sd`` backend."""
    sd_grid: tuple[int, int] = (2, 2)
    """Views per grid (rows, cols) of the ``sd`` backend."""
    sd_grids_per_batch: int = 1
    """Grids per UNet call (bounds GPU memory)."""
    sd_guidance: float = 7.5
    """Classifier-free guidance scale of ``sd``."""
    sd_resolution: int = 512
    """Working resolution (longer side) of ``sd``."""
    device: str | None = None
    """Torch device: auto (CUDA when available), cpu, cuda or cuda:N (None: the run's)."""
    batch_rays: int | None = None
    """Rays per training step (default: the run's)."""
    progress: bool = True
    """Progress bars."""


def make_inpainter(cfg: CompleteConfig, device: str = "auto") -> Inpainter:
    """The backend named by ``cfg.inpainter`` (``sd`` on ``device``: a data-parallel rank's
    own GPU)."""
    if cfg.inpainter == "multiview":
        return MultiViewInpainter(cfg.multiview)
    if cfg.inpainter == "telea":
        return TeleaInpainter(cfg.multiview.telea_radius)
    if cfg.inpainter == "sd":
        from sceneforge.core.diffusion import GridConfig
        from sceneforge.inpaint.diffusion import SDInpaintConfig, SDInpainter

        if not cfg.model:
            raise ValueError("--inpainter sd needs --model PATH (a local diffusers folder)")
        rows, cols = cfg.sd_grid
        return SDInpainter(
            SDInpaintConfig(
                model=cfg.model,
                device=device,
                prompt=cfg.prompt,
                num_steps=cfg.sd_steps,
                guidance_scale=cfg.sd_guidance,
                resolution=cfg.sd_resolution,
                grid=GridConfig(rows, cols, True, cfg.sd_grids_per_batch),
                seed=cfg.update.seed,
            )
        )
    raise ValueError(f"unknown inpainter {cfg.inpainter!r}; use multiview, telea or sd")


def build_fill_masks(
    scene: SceneData, cfg: CompleteConfig, run_trainer: Trainer | None = None
) -> list[Tensor]:
    """Full-resolution fill masks from the box, the mask folder and unobserved regions."""
    if cfg.mask_box is None and cfg.masks is None and cfg.unobserved_threshold <= 0:
        raise ValueError("give --mask-box, --masks or --unobserved-threshold: nothing to fill")
    n = len(scene)
    fill = [
        torch.zeros(int(scene.cameras.height[i]), int(scene.cameras.width[i]), dtype=torch.bool)
        for i in range(n)
    ]
    if cfg.masks is not None:
        fill = [a | b for a, b in zip(fill, read_fill_masks(cfg.masks, scene))]
    need_render = run_trainer is not None and (
        cfg.unobserved_threshold > 0 or (cfg.mask_box is not None and scene.depths is None)
    )
    for i in range(n):
        depth = scene.depths[i] if scene.depths is not None else None
        acc = None
        if need_render:
            h, w = fill[i].shape
            r = _render_full_res(run_trainer, i, cfg.mask_render_downscale, (h, w))
            acc = r["accumulation"]
            if depth is None:
                depth = torch.where(acc > 0.5, r["depth"] / acc.clamp(min=1e-6), 0.0)
            if acc.shape != (h, w):
                raise ValueError(f"render of view {i} is {tuple(acc.shape)}, image is {(h, w)}")
        if cfg.mask_box is not None:
            fill[i] |= box_fill_mask(scene.cameras, i, cfg.mask_box, depth=depth)
        if cfg.unobserved_threshold > 0 and acc is not None:
            fill[i] |= unobserved_mask(acc, cfg.unobserved_threshold)
        fill[i] = dilate(fill[i], cfg.dilate_px)
    if not any(bool(f.any()) for f in fill):
        raise ValueError("the fill masks select no pixel in any view (box outside every view?)")
    return fill


def _render_full_res(
    trainer: Trainer, i: int, downscale: int = 1, size: tuple[int, int] | None = None
) -> dict:
    """Depth and accumulation of view ``i`` rendered at ``downscale``, resized to ``size``."""
    r = trainer.render_camera(trainer.scene.cameras, i, downscale=max(int(downscale), 1))
    if size is None or tuple(r["depth"].shape) == tuple(size):
        return r
    import torch.nn.functional as F

    def up(x: Tensor) -> Tensor:
        return F.interpolate(x[None, None], size=size, mode="nearest")[0, 0]

    return {"depth": up(r["depth"]), "accumulation": up(r["accumulation"])}


def load_run(
    run_dir: str | Path, scene: SceneData | None = None
) -> tuple[SceneData, TrainerConfig, Path]:
    """The scene, trainer config and checkpoint path of a fields run folder."""
    run = Path(run_dir)
    ckpt = run / CHECKPOINT
    tcfg = checkpoint_config(read_checkpoint(ckpt), ckpt)
    if scene is None:
        src = run / SOURCE
        if not src.is_file():
            raise CheckpointError(f"{src}: missing (the run was trained on an in-memory scene)")
        from sceneforge.core.io import load_scene
        from sceneforge.fields.api import scene_source

        scene = load_scene(scene_source(run))  # also after the run folder was moved
    return scene, tcfg, ckpt


def complete_scene(
    scene: SceneData,
    fill: list[Tensor],
    out_dir: str | Path,
    config: CompleteConfig,
    trainer_config: TrainerConfig,
    inpainter: Inpainter | None = None,
    progress: Progress | None = None,
) -> tuple[Trainer, dict]:
    """Train a fresh field on the unmasked pixels and run the dataset update; write outputs.

    ``progress`` (optional) is called with ``(done, total, message)`` in completion steps,
    see :data:`Progress`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # The update schedule is counted in steps: the run's time budget must not cut it short.
    tcfg = dataclasses.replace(
        trainer_config, progress=config.progress, checkpoint_every=0, max_seconds=None
    )
    if config.device is not None:
        tcfg.device = config.device
    if config.batch_rays is not None:
        tcfg.batch_rays = config.batch_rays
    train_scene = masked_training_scene(scene, fill)
    trainer = Trainer(train_scene, tcfg, out)
    local_fill = fill_at_dataset_resolution(fill, trainer.train_indices, tcfg.downscale)
    main = trainer.dist.is_main  # under torchrun only rank 0 reports and writes
    if not main:
        progress = None
    if inpainter is None:
        dev = "auto" if not trainer.dist.active else str(trainer.device)
        inpainter = make_inpainter(config, dev)
    upd = InpaintDatasetUpdate(
        trainer, local_fill, inpainter, config.update, out, config.prompt or None
    )
    fill_fraction = float(sum(int(f.sum()) for f in fill) / sum(f.numel() for f in fill))
    total = upd.total_steps
    if progress is not None:
        num_rounds = config.update.num_rounds
        progress(
            0,
            total,
            f"{fill_fraction:.1%} of the pixels to fill; {num_rounds} round(s) of "
            f"{inpainter.name} inpainting",
        )
        trainer.add_hook(_progress_hook(upd, trainer.step, total, num_rounds, progress))
    upd.run()
    trainer.save_checkpoint(out / CHECKPOINT)  # rank 0 only (the trainer)
    if main:
        atomic_write_json(out / CONFIG, config_to_dict(trainer.config))
        write_outputs(trainer, scene, fill, out)
    if progress is not None:
        progress(total, total, f"renders of {len(scene)} views written")
    info = {
        "inpainter": inpainter.name,
        "steps": trainer.step,
        "wall_s": time.perf_counter() - t0,
        "rounds": upd.history,
        "fill_fraction": fill_fraction,
        "config": _jsonable(dataclasses.asdict(config)),
    }
    if main:
        atomic_write_json(out / COMPLETE_INFO, info)
    return trainer, trainer.dist.share_object(info)


def _progress_hook(
    upd: InpaintDatasetUpdate, start: int, total: int, num_rounds: int, progress: Progress
) -> Callable[[Trainer], None]:
    """A trainer hook (every step) reporting the completion's steps and its round."""

    def hook(trainer: Trainer) -> None:
        done = min(trainer.step - start, total)
        if upd.round == 0:
            phase = "warm-up on the unmasked pixels"
        else:
            phase = f"after inpainting round {upd.round}/{num_rounds}"
        info = ""
        if trainer.history:
            h = trainer.history[-1]
            info = f"  loss {h.get('loss', float('nan')):.4f}"
        progress(done, total, phase + info)

    return hook


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


def write_outputs(trainer: Trainer, scene: SceneData, fill: list[Tensor], out: Path) -> None:
    """Renders of every view, before/after strips and the fill masks."""
    ds = trainer.downscale
    for i in range(len(scene)):
        name = Path(scene.image_names[i]).stem
        r = trainer.render_camera(scene.cameras, i)
        img = downscale_image(scene.load_image(i), ds)
        f = fill[i] if ds == 1 else downscale_image(fill[i][..., None].float(), ds)[..., 0] > 0
        hole = torch.where(f[..., None], torch.tensor([1.0, 0.0, 1.0]), img)
        write_image_atomic(out / RENDERS_DIR / f"{name}.png", r["rgb"])
        write_image_atomic(
            out / BEFORE_AFTER_DIR / f"{name}.png", torch.cat([img, hole, r["rgb"]], 1)
        )
        write_image_atomic(
            out / MASKS_DIR / f"{name}.png", fill[i][..., None].float().expand(-1, -1, 3)
        )


def complete(
    run_dir: str | Path,
    out_dir: str | Path,
    config: CompleteConfig | None = None,
    scene: SceneData | None = None,
    progress: Progress | None = None,
) -> dict:
    """Complete the scene of a trained run (see the module docstring); returns the summary.

    ``progress`` (optional, default None) is called with ``(done, total, message)``: the
    completion steps done of all of them and what is happening (see :data:`Progress`)."""
    config = config or CompleteConfig()
    scene, tcfg, ckpt = load_run(run_dir, scene)
    run_trainer = None
    if config.unobserved_threshold > 0 or (config.mask_box is not None and scene.depths is None):
        extra = {} if config.device is None else {"device": config.device}
        run_trainer = Trainer.from_checkpoint(
            ckpt, scene, None, progress=False, tensorboard=False, **extra
        )
    fill = build_fill_masks(scene, config, run_trainer)
    del run_trainer
    trainer, info = complete_scene(scene, fill, out_dir, config, tcfg, progress=progress)
    src = Path(run_dir) / SOURCE
    if src.is_file() and trainer.dist.is_main:
        atomic_write_json(Path(out_dir) / SOURCE, json.loads(src.read_text()))
    return info


__all__ = [
    "CompleteConfig",
    "Progress",
    "build_fill_masks",
    "complete",
    "complete_scene",
    "load_run",
    "make_inpainter",
    "write_outputs",
]
