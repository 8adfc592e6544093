"""Training a Free3D model: the denoising loss over the target views of posed view sets.

:func:`train_free3d` trains a tiny model from scratch or fine-tunes a saved folder, all of it
or (``freeze_base``) only the modules Free3D adds. Each step draws ``batch_sets`` tuples
(source view + ``views_per_set`` targets, :class:`~.data.ViewTupleDataset`), encodes them
(the pipeline's VAE in latent space, else pixels in [-1, 1]), noises the targets at one
timestep per set (noise shared by the views of a set with ``share_noise``, as the sampler
starts them) and regresses the scheduler's prediction type (epsilon, v or sample). With
probability ``cond_drop_prob`` a set's image embedding and source latent are zeroed (the
sampler's unconditional branch) for classifier-free guidance. Validation: the same loss on
held-out objects with fixed tuples, noise and timesteps (deterministic). Checkpoints
(:mod:`sceneforge.fields.checkpoints`) make ``resume=True`` exact; the model is saved with
:meth:`~.pipeline.Free3DPipeline.save_pretrained` to ``out_dir/model``.

:func:`evaluate_pose_sensitivity`: the loss with the right target poses vs. wrong ones, per
sample with the same noise and timesteps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sceneforge.core.atomic import atomic_dir, atomic_write_json
from sceneforge.core.cameras import compose_rigid, make_rigid
from sceneforge.core.rotations import angle_axis_to_matrix
from sceneforge.core.scene import SceneDataError
from sceneforge.fields.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)

from .data import (
    RenderSetConfig,
    ViewSet,
    ViewTupleDataset,
    read_render_folder,
    render_view_sets,
    shared_mesh_sources,
    split_view_sets,
)
from .pipeline import Free3DPipeline, build_tiny_pipeline, load_free3d
from .rays import rays_for_views, relative_pose, scale_intrinsics

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
MODEL_NAME = "free3d"

#: Config fields that may change between a run and its resumption (nothing else may).
RESUMABLE_CHANGES = ("steps", "val_every", "checkpoint_every", "device")


@dataclass
class Free3DTrainConfig:
    """How :func:`train_free3d` trains a Free3D model."""

    steps: int = 1000
    """Optimiser steps in all (a resumed run continues up to this many)."""
    batch_sets: int = 2
    """View sets (source + targets) per step."""
    views_per_set: int = 3
    """Target views per set (denoised jointly, attending to each other)."""
    lr: float = 1e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up from ``lr / warmup_steps``."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0: none)."""
    val_every: int = 100
    """Validation loss every this many steps (and before the first and after the last)."""
    val_tuples: int = 8
    """Validation tuples (fixed; drawn round-robin from the held-out objects)."""
    val_fraction: float = 0.25
    """Fraction of the objects held out for validation (at least one when >= 2 objects)."""
    checkpoint_every: int = 500
    """Write ``checkpoint.pt`` every this many steps (and at the end); 0: only at the end."""
    seed: int = 0
    """Seed of the model init, the data tuples, the split, the noise and the dropout."""
    device: str = "cpu"
    """Torch device of the training."""
    base_model: Path | None = None
    """A saved Free3D folder to fine-tune; None: a tiny model from scratch (below)."""
    freeze_base: bool = False
    """Train only the modules Free3D adds (RCN, cross-view attention, pose token)."""
    image_size: int = 16
    """From scratch: side of the images the model generates."""
    latent_space: bool = False
    """From scratch: denoise the latents of a tiny 2x VAE instead of pixels."""
    block_out_channels: tuple[int, ...] = (16, 32)
    """From scratch: UNet channels per resolution level."""
    rcn: bool = True
    """From scratch: ray conditioning normalisation."""
    cross_view: bool = True
    """From scratch: cross-view attention."""
    pose_token: bool = True
    """From scratch: the pose token."""
    cond_drop_prob: float = 0.1
    """Probability a set is trained unconditionally (zero image embed and source latent)."""
    share_noise: bool = True
    """One noise draw per set shared by its target views (as the sampler starts them)."""
    procedural_objects: int = 8
    """Procedural objects to render (``procedural:0 ..``); 0: none."""
    render_size: int = 32
    """Side of the rendered images (resized to the model's size when training)."""
    render_views: int = 8
    """Views rendered per object."""
    shared_meshes: Path | None = None
    """A shared data root (``../shared/data``) whose meshes are rendered too; None: none."""
    render_folder: Path | None = None
    """A folder of Objaverse-style renders (:func:`~.data.read_render_folder`); None: none."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_sets", "views_per_set", "val_every", "val_tuples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1), got {self.cond_drop_prob}")
        for name in ("base_model", "shared_meshes", "render_folder"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)


def _config_dict(cfg: Free3DTrainConfig) -> dict:
    """The config as plain data (paths as strings), for checkpoints and metrics."""
    d = dataclasses.asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in d.items()}  # fmt: skip


# ----------------------------------------------------------------------------- data


def build_view_sets(cfg: Free3DTrainConfig) -> list[ViewSet]:
    """The view sets of ``cfg``'s data sources (procedural objects, shared meshes, a render
    folder). Errors name the missing or bad path."""
    rcfg = RenderSetConfig(num_views=cfg.render_views, size=cfg.render_size, seed=cfg.seed)
    folder = []  # read first: a bad path fails before any rendering
    if cfg.render_folder is not None:
        folder = read_render_folder(cfg.render_folder, size=cfg.render_size)
    sources = [f"procedural:{i}" for i in range(cfg.procedural_objects)]
    if cfg.shared_meshes is not None:
        found, skipped = shared_mesh_sources(cfg.shared_meshes)
        if not found:
            raise SceneDataError(f"{cfg.shared_meshes}: no shared meshes ({'; '.join(skipped)})")
        sources += found
    sets = (render_view_sets(sources, rcfg) if sources else []) + folder
    if not sets:
        raise ValueError("no training data: give procedural objects, shared meshes or a folder")
    return sets


def _split(cfg: Free3DTrainConfig, data) -> tuple[list[ViewSet], list[ViewSet]]:
    if data is None:
        data = build_view_sets(cfg)
    if isinstance(data, tuple):
        train, val = data
    else:
        train, val = split_view_sets(list(data), cfg.val_fraction, cfg.seed)
    if not train or not val:
        raise ValueError(
            f"training needs objects for both training and validation (got {len(train)} and "
            f"{len(val)}); give more objects or a larger val_fraction"
        )
    return list(train), list(val)


def _batch(dataset: ViewTupleDataset, start: int, count: int) -> dict[str, Tensor]:
    """Tuples ``start .. start + count`` (wrapping around) stacked into one batch."""
    items = [dataset[(start + i) % len(dataset)] for i in range(count)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "object_index"}


# ----------------------------------------------------------------------------- loss


@dataclass
class EncodedBatch:
    """A batch of tuples in the model's space (:func:`encode_batch`)."""

    source_latent: Tensor
    """``[B, C, h, w]``: the sources' latents (pixel space: images in [-1, 1])."""
    image_embed: Tensor
    """``[B, L, D]``: the sources' image embeddings."""
    target_latent: Tensor
    """``[B*V, C, h, w]``: the targets' latents, view-major within each set."""
    source_K: Tensor
    """``[B, 3, 3]``: source intrinsics at the latent resolution (float64)."""
    target_K: Tensor
    """``[B, V, 3, 3]``: target intrinsics at the latent resolution (float64)."""


def encode_batch(pipe: Free3DPipeline, batch: dict[str, Tensor]) -> EncodedBatch:
    """Encode a batch of :class:`~.data.ViewTupleDataset` items (images resized to the
    model's size, intrinsics scaled to the latent resolution)."""
    size, f = pipe.image_size, pipe.latent_factor
    dev = pipe.device
    b, v, _, h, w = batch["target_images"].shape

    def resize(x: Tensor) -> Tensor:
        x = x.to(dev, torch.float32)
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, (size, size), mode="bilinear", antialias=True).clamp(0, 1)

    src = resize(batch["source_image"])
    tgt = resize(batch["target_images"].reshape(b * v, 3, h, w))
    sx, sy = size / (w * f), size / (h * f)
    return EncodedBatch(
        source_latent=pipe.encode(src),
        image_embed=pipe.image_embed(src),
        target_latent=pipe.encode(tgt),
        source_K=scale_intrinsics(batch["source_K"].to(dev, torch.float64), sx, sy),
        target_K=scale_intrinsics(batch["target_K"].to(dev, torch.float64), sx, sy),
    )


def _draw_noise(
    shape: tuple[int, ...], num_sets: int, num_views: int, share: bool, num_train: int,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Noise ``[B*V, ...]`` and per-view timesteps ``[B*V]`` (one timestep per set)."""
    n = num_sets if share else num_sets * num_views
    noise = torch.randn((n, *shape), generator=gen)
    if share:
        noise = noise.repeat_interleave(num_views, 0)
    t = torch.randint(0, num_train, (num_sets,), generator=gen)
    return noise, t.repeat_interleave(num_views)


def _target(scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"unsupported scheduler prediction_type {kind!r}")
    return (
        noise
        if kind == "epsilon"
        else x0
        if kind == "sample"
        else scheduler.get_velocity(x0, noise, t)
    )


def denoising_losses(
    pipe: Free3DPipeline,
    enc: EncodedBatch,
    target_from_source: Tensor,
    noise: Tensor,
    timesteps: Tensor,
    drop: Tensor | None = None,
) -> Tensor:
    """Per-set mean squared error of the model's prediction (``[B]``) for encoded targets
    noised with ``noise`` at ``timesteps``; ``drop`` (``[B]`` bool) zeroes the condition."""
    b = enc.source_latent.shape[0]
    v = target_from_source.shape[1]
    dev, dt = pipe.device, pipe.dtype
    h, w = enc.target_latent.shape[-2:]
    poses = target_from_source.to(dev, torch.float64)
    rays = rays_for_views(enc.source_K, poses, h, w, enc.target_K).to(dt)
    noise, timesteps = noise.to(dev, dt), timesteps.to(dev)
    noisy = pipe.scheduler.add_noise(enc.target_latent, noise, timesteps)
    src, emb = enc.source_latent, enc.image_embed
    if drop is not None and bool(drop.any()):
        keep = (~drop.to(dev)).to(dt)
        src = src * keep[:, None, None, None]
        emb = emb * keep[:, None, None]
    pred = pipe.model(noisy, timesteps, src, emb, rays, v, poses.reshape(b * v, 3, 4).to(dt))
    target = _target(pipe.scheduler, enc.target_latent, noise, timesteps)
    err = (pred.float() - target.float()) ** 2
    return err.reshape(b, -1).mean(1)


@torch.no_grad()
def validation_loss(
    pipe: Free3DPipeline, dataset: ViewTupleDataset, count: int, batch_sets: int, seed: int,
    share_noise: bool = True,
) -> float:  # fmt: skip
    """Mean denoising loss of the first ``count`` tuples of ``dataset`` with noise and
    timesteps fixed by ``seed`` (deterministic; no condition dropout)."""
    per_set = _paired_losses(pipe, dataset, count, batch_sets, seed, share_noise, None)[0]
    return float(torch.stack(per_set).mean())


def _paired_losses(
    pipe, dataset, count, batch_sets, seed, share_noise, wrong: Callable | None
) -> tuple[list[Tensor], list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    was_training = pipe.model.training
    pipe.model.eval()
    num_train = int(pipe.scheduler.config.num_train_timesteps)
    right, bad = [], []
    try:
        for start in range(0, count, batch_sets):
            n = min(batch_sets, count - start)
            batch = _batch(dataset, start, n)
            enc = encode_batch(pipe, batch)
            v = batch["target_from_source"].shape[1]
            shape = tuple(enc.target_latent.shape[1:])
            noise, t = _draw_noise(shape, n, v, share_noise, num_train, gen)
            right += list(denoising_losses(pipe, enc, batch["target_from_source"], noise, t))
            if wrong is not None:
                poses = wrong(batch)
                bad += list(denoising_losses(pipe, enc, poses, noise, t))
    finally:
        pipe.model.train(was_training)
    return right, bad


# ----------------------------------------------------------------------------- pose test


def shuffled_poses(batch: dict[str, Tensor]) -> Tensor:
    """Wrong ``target_from_source``: each target gets the next target's pose (a cyclic
    shift within its set; needs two or more targets)."""
    poses = batch["target_from_source"]
    if poses.shape[1] < 2:
        raise ValueError("shuffled poses need two or more target views per set")
    return poses.roll(1, dims=1)


def rotated_poses(batch: dict[str, Tensor], degrees: float = 90.0) -> Tensor:
    """Wrong ``target_from_source``: every target camera turned ``degrees`` about the object
    (the source frame's +z axis through the object centre at the origin)."""
    Rz = angle_axis_to_matrix(torch.tensor([0.0, 0.0, math.radians(degrees)], dtype=torch.float64))
    cfw = batch["target_cam_from_world"].double()
    turned = compose_rigid(cfw, make_rigid(Rz, torch.zeros(3, dtype=torch.float64)).expand_as(cfw))
    src = batch["source_cam_from_world"].double()[:, None].expand_as(turned)
    return relative_pose(src, turned).to(batch["target_from_source"].dtype)


@torch.no_grad()
def evaluate_pose_sensitivity(
    pipe: Free3DPipeline,
    dataset: ViewTupleDataset,
    count: int | None = None,
    batch_sets: int = 4,
    seed: int = 0,
    wrong: str = "shuffle",
    degrees: float = 90.0,
    share_noise: bool = True,
) -> dict:
    """Mean denoising loss with the right target poses vs. with wrong ones.

    Args:
        pipe: the model to test.
        dataset: the tuples (the first ``count``, default all) to score.
        count: tuples scored.
        batch_sets: tuples per forward pass.
        seed: seed of the noise and timesteps, shared by both branches of each sample.
        wrong: ``"shuffle"`` (targets' poses cyclically shifted within the set) or
            ``"rotate"`` (targets turned ``degrees`` about the object).
        degrees: rotation of ``"rotate"``.
        share_noise: one noise draw per set (as in training and sampling).

    Returns:
        ``{"correct": mean, "wrong": mean, "pairs": [(correct, wrong) per tuple],
        "wrong_pose": wrong, "count": n, "fraction_correct_lower": share of pairs where the
        right pose has the lower loss}``.
    """
    if wrong == "shuffle":
        fn = shuffled_poses
    elif wrong == "rotate":
        fn = lambda b: rotated_poses(b, degrees)  # noqa: E731
    else:
        raise ValueError(f"wrong must be 'shuffle' or 'rotate', got {wrong!r}")
    n = len(dataset) if count is None else count
    if n < 1:
        raise ValueError("evaluate_pose_sensitivity needs at least one tuple")
    right, bad = _paired_losses(pipe, dataset, n, batch_sets, seed, share_noise, fn)
    pairs = [(float(a), float(b)) for a, b in zip(right, bad, strict=True)]
    return {
        "correct": sum(a for a, _ in pairs) / n,
        "wrong": sum(b for _, b in pairs) / n,
        "pairs": pairs,
        "wrong_pose": wrong,
        "count": n,
        "fraction_correct_lower": sum(a < b for a, b in pairs) / n,
    }


# ----------------------------------------------------------------------------- training


def build_pipeline(cfg: Free3DTrainConfig) -> Free3DPipeline:
    """The pipeline to train: ``cfg.base_model`` loaded in float32, or a tiny one."""
    if cfg.base_model is not None:
        return load_free3d(cfg.base_model, cfg.device, torch.float32)
    extra = {"rcn": cfg.rcn, "cross_view": cfg.cross_view, "pose_token": cfg.pose_token}
    pipe = build_tiny_pipeline(
        cfg.image_size,
        cfg.latent_space,
        cfg.seed,
        block_out_channels=cfg.block_out_channels,
        **extra,
    )
    return pipe.to(cfg.device)


def trainable_parameters(pipe: Free3DPipeline, freeze_base: bool) -> list[torch.nn.Parameter]:
    """Parameters the optimiser updates (the rest get ``requires_grad = False``): the whole
    Free3D model, or only its added modules with ``freeze_base``."""
    for m in [m for m in (pipe.image_encoder, pipe.vae) if m is not None]:
        m.requires_grad_(False).eval()
    model = pipe.model
    model.requires_grad_(True)
    if freeze_base:
        model.unet.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: freeze_base on a model without added modules")
    return params


def _lr(cfg: Free3DTrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr


def _check_resumable(saved: dict, cfg: Free3DTrainConfig, path: Path) -> None:
    now = _config_dict(cfg)
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        raise CheckpointError(
            f"{path}: written with a different config ({', '.join(diff)}); only "
            f"{', '.join(RESUMABLE_CHANGES)} may change when resuming"
        )


def train_free3d(
    cfg: Free3DTrainConfig,
    out_dir: str | Path,
    data: list[ViewSet] | tuple[list[ViewSet], list[ViewSet]] | None = None,
    progress: Callable[[dict], None] | None = None,
    resume: bool = False,
) -> dict:
    """Train a Free3D model (see module doc) into ``out_dir``.

    Args:
        cfg: the training options.
        out_dir: gets ``checkpoint.pt``, ``model/`` (load it with ``load_free3d``) and
            ``metrics.json``.
        data: view sets to split into training / validation objects, or the two lists;
            default: ``cfg``'s data sources.
        progress: called with ``{"step", "loss", "lr"}`` after every step and with
            ``{"step", "val_loss"}`` after every validation.
        resume: continue from ``out_dir/checkpoint.pt`` (exactly: model, optimiser, RNG and
            data position are restored) when it exists.

    Returns:
        The metrics: ``train`` ([step, loss] per step), ``val`` ([step, loss]),
        ``initial_val_loss``, ``final_val_loss``, ``steps``, ``model_dir``, ``checkpoint``.

    Raises:
        SceneDataError / MeshLoadError: a data source is bad (the message names the path).
        CheckpointError: the checkpoint to resume is unreadable or from another config.
        FileExistsError: ``out_dir`` holds a trained run and ``resume`` is off.
    """
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_FILE
    taken = [p for p in (ckpt_path, out / MODEL_DIR) if p.exists()]
    if taken and not resume:  # a trained model is never replaced by a new run
        raise FileExistsError(f"{taken[0]}: exists; resume that run or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    train_sets, val_sets = _split(cfg, data)
    torch.manual_seed(cfg.seed)
    pipe = build_pipeline(cfg)
    params = trainable_parameters(pipe, cfg.freeze_base)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    per_set = math.ceil(cfg.steps * cfg.batch_sets / len(train_sets)) + 1
    train_data = ViewTupleDataset(train_sets, cfg.views_per_set, cfg.seed, per_set)
    val_data = ViewTupleDataset(
        val_sets, cfg.views_per_set, cfg.seed + 7, math.ceil(cfg.val_tuples / len(val_sets))
    )
    val_seed = cfg.seed + 11
    step, position, wall = 0, 0, 0.0
    history: dict[str, list] = {"train": [], "val": []}
    if resume and ckpt_path.is_file():
        s = read_checkpoint(ckpt_path)
        if s.get("model_name") != MODEL_NAME:
            raise CheckpointError(f"{ckpt_path}: not a Free3D checkpoint ({s.get('model_name')})")
        _check_resumable(s["config"], cfg, ckpt_path)
        try:
            pipe.model.load_state_dict(s["model"])
            opt.load_state_dict(s["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt_path}: does not fit the model ({e})") from e
        gen.set_state(s["rng"]["generator"])
        torch.set_rng_state(s["rng"]["torch"])
        step, position, wall = int(s["step"]), int(s["data_position"]), float(s["wall_s"])
        history = {k: [list(x) for x in v] for k, v in s["history"].items()}

    def validate() -> None:
        if history["val"] and history["val"][-1][0] == step:
            return
        loss = validation_loss(
            pipe, val_data, cfg.val_tuples, cfg.batch_sets, val_seed, cfg.share_noise
        )
        history["val"].append([step, loss])
        if progress:
            progress({"step": step, "val_loss": loss})

    def save() -> None:
        write_checkpoint(
            ckpt_path,
            {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "wall_s": wall,
                "config": _config_dict(cfg),
                "model_name": MODEL_NAME,
                "model": {k: v.detach().cpu().clone() for k, v in pipe.model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "rng": {"generator": gen.get_state(), "torch": torch.get_rng_state()},
                "data_position": position,
                "history": history,
            },
        )

    validate()
    num_train = int(pipe.scheduler.config.num_train_timesteps)
    pipe.model.train()
    while step < cfg.steps:
        t0 = time.perf_counter()
        batch = _batch(train_data, position, cfg.batch_sets)
        position += cfg.batch_sets
        enc = encode_batch(pipe, batch)
        shape = tuple(enc.target_latent.shape[1:])
        noise, t = _draw_noise(
            shape, cfg.batch_sets, cfg.views_per_set, cfg.share_noise, num_train, gen
        )
        drop = torch.rand(cfg.batch_sets, generator=gen) < cfg.cond_drop_prob
        lr = _lr(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = denoising_losses(pipe, enc, batch["target_from_source"], noise, t, drop).mean()
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"Free3D training diverged at step {step} (loss {loss.item()}); the last "
                f"checkpoint {ckpt_path} is unchanged"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        wall += time.perf_counter() - t0
        value = loss.item()
        history["train"].append([step, value])
        if progress:
            progress({"step": step, "loss": value, "lr": lr})
        if step % cfg.val_every == 0 or step == cfg.steps:
            validate()
            pipe.model.train()
        if (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            save()
    validate()
    if not ckpt_path.is_file():
        save()
    pipe.model.eval()
    model_dir = out / MODEL_DIR
    with atomic_dir(model_dir) as tmp:
        pipe.save_pretrained(tmp)
    metrics = {
        "train": history["train"],
        "val": history["val"],
        "initial_val_loss": history["val"][0][1],
        "final_val_loss": history["val"][-1][1],
        "steps": step,
        "wall_s": wall,
        "train_objects": [v.name for v in train_sets],
        "val_objects": [v.name for v in val_sets],
        "config": _config_dict(cfg),
    }
    atomic_write_json(out / METRICS_FILE, metrics)
    return {**metrics, "model_dir": str(model_dir), "checkpoint": str(ckpt_path)}


__all__ = [
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "Free3DTrainConfig",
    "build_pipeline",
    "build_view_sets",
    "EncodedBatch",
    "denoising_losses",
    "encode_batch",
    "evaluate_pose_sensitivity",
    "rotated_poses",
    "shuffled_poses",
    "train_free3d",
    "trainable_parameters",
    "validation_loss",
]
