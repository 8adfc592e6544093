"""The one trainer's settings (``sceneforge train --trainer.*``): schedule, batches, held-out
evaluation, checkpoints, object captures, device, and the scene model's own section."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sceneforge.fields.checkpoints import CheckpointError, config_from_dict
from sceneforge.fields.gaussian_model import GaussiansConfig
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.rendering import RenderConfig


@dataclass
class TrainerConfig:
    """Training settings shared by every scene model (``sceneforge train`` exposes these)."""

    max_steps: int = 3000
    """Number of optimisation steps (also sets the learning-rate schedule)."""
    max_seconds: float | None = None
    """Stop earlier after this much training time (seconds; with ``schedule time`` counted over
    the whole run, resumes included); None = no time limit."""
    schedule: Literal["steps", "time"] = "steps"
    """What the learning-rate decay follows: the fraction of ``max_steps`` done, or (``time``,
    needs ``max_seconds``) the fraction of ``max_seconds`` of training time used
    (``sceneforge train --max-seconds S`` without ``--max-steps`` sets it)."""
    model: Literal["nerf", "gaussians"] = "nerf"
    """Scene model (its settings: the section of the same name, e.g. ``nerf``)."""
    batch_rays: int = 2048
    """Rays (pixels) per step."""
    batch: Literal["auto", "rays", "patches", "images"] = "auto"
    """Independent rays, whole ``patch_size`` patches, or one whole training view per step;
    ``auto`` = what the model needs (rays for NeRF, images for Gaussians)."""
    views_per_step: int = 0
    """Whole views per step with ``batch images`` (distinct views of one size); 0 = one per
    process: 1, or N under ``torchrun`` with N ranks (each rank renders one view)."""
    photometric: Literal["auto", "mse", "l1-ssim"] = "auto"
    """Photometric loss: squared error, or 3DGS's ``(1 - ssim_lambda) L1 + ssim_lambda
    (1 - SSIM)`` on patch / view batches; ``auto``: l1-ssim for models trained on whole views
    (gaussians, as 3DGS / gsplat / splatfacto), mse otherwise."""
    ssim_lambda: float = 0.2
    """Weight of the D-SSIM term of the l1-ssim loss."""
    patch_size: int = 32
    """Side of a patch (``batch_rays / patch_size^2`` patches per step, at least one)."""
    lr_final_factor: float = 0.1
    """Exponential decay of every learning rate to ``lr * lr_final_factor`` at ``max_steps``
    (a model may give a group its own factor)."""
    holdout_every: int = 8
    """Every N-th image (0, N, 2N, ...) is held out for evaluation (0 = none)."""
    eval_every: int = 0
    """Held-out evaluation every N steps during training (0 = only at the end)."""
    eval_max_images: int = 0
    """Evaluate at most this many held-out images during training (0 = all)."""
    eval_max_pixels: int = 1_000_000
    """Held-out images larger than this many pixels at the working resolution are evaluated at
    the smallest integer extra downscale that fits (eval.json: ``eval_downscale``; 0 = no
    limit; ``sceneforge eval`` renders any size)."""
    eval_appearance_fit_steps: int = 0
    """NeRF-W evaluation when > 0 (and the field has per-image appearance): per held-out
    image, the appearance is optimised for this many steps on the image's left half (field
    frozen) and ``psnr_right_fit`` / ``psnr_right_mean`` compare the right half rendered with
    the fitted and with the mean appearance."""
    eval_color_correct: bool = True
    """Also report colour-corrected held-out metrics (``psnr_cc``, ...): each render mapped by
    its least-squares affine colour transform onto the ground truth (removes per-photo
    exposure / white balance that the mean appearance cannot know); raw metrics are kept."""
    real_capture: bool = False
    """Real photos (``sceneforge run`` sets it; synthetic scenes leave it off): ``camera_opt
    auto`` refines the training cameras and NeRF gets per-image colour transforms
    (``nerf.field.color_affine``); eval.json labels the held-out protocol."""
    camera_opt: Literal["auto", "off", "SO3xR3", "SE3"] = "auto"
    """Per-training-image pose refinement while training (nerfstudio's camera optimizer; ray
    models only): ``auto`` = ``SO3xR3`` with ``real_capture`` (NeRF), else off. Held-out views
    are mapped into the refined cameras' frame (Sim(3) of the input training cameras onto the
    refined ones); the refined ones go to ``refined_cameras.json``."""
    camera_opt_lr: float = 1e-2
    """Learning rate of the camera corrections (decays like the others; benchmarks/camera_opt.py:
    1e-2 recovered more held-out PSNR of perturbed training poses than 1e-3 or 3e-3)."""
    camera_opt_weight: float = 1e-2
    """Weight of the L2 regulariser ``mean |correction|^2`` of the camera corrections."""
    camera_opt_focal: bool = False
    """Also refine a per-image focal-length scale (with ``camera_opt``)."""
    camera_opt_warmup: float = 0.0
    """Fraction of the run (of the lr schedule) with the camera corrections frozen; their lr
    then ramps up linearly over the same fraction again (0 = from the first step)."""
    camera_opt_units: Literal["params", "pixels"] = "params"
    """Units of the optimised corrections, hence of ``camera_opt_lr`` (Adam moves ~lr per
    step) and of the regulariser: ``params`` = radians and scene units; ``pixels`` = the image
    motion they cause at the training resolution (focal length, scene depth)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every N steps (0 = only at the end)."""
    log_every: int = 25
    """Scalars to tensorboard every N steps."""
    seed: int = 0
    """Seed of the trainer's random generator."""
    downscale: int = 1
    """Integer image downscale factor for training and evaluation (1: see ``max_long_side``)."""
    max_long_side: int = 1600
    """With ``downscale`` 1: train at the smallest power-of-two downscale whose longest image
    side is at most this many pixels (nerfstudio's rule; 0 = full size)."""
    dataset_memory_gb: float = 0.0
    """Most memory the training images may take (3 bytes per pixel at the working resolution);
    larger sets are refused before loading, naming a downscale that fits (0 = half of this
    machine's physical memory, negative = no check)."""
    use_masks: bool = True
    """Train only on usable pixels (mask True) when the scene has masks (ignored with
    ``object_masks``, whose masks are foreground masks)."""
    object_masks: bool = False
    """Object capture whose masks mark the foreground (every image needs one): photos are
    composited onto the render background outside the masks (``learned`` / ``none`` become
    black), all pixels are trained on, a mask loss (``mask_loss_weight``) pulls each ray's
    opacity to its pixel's mask coverage, ``scene_box`` ``auto`` becomes ``masks`` and an
    automatic ``nerf.field.density_grid_init`` becomes 0.01 (0.05 fills the mostly-background
    box with fog that drives the colours to the background and never recovers)."""
    mask_loss_weight: float = 0.05
    """Weight of ``mean((accumulation - mask coverage)^2)`` with ``object_masks``."""
    scene_box: Literal["auto", "bounded", "unbounded", "masks", "forward"] = "auto"
    """``auto``: bounded when the scene metadata has an ``aabb``, else ``forward`` for a
    forward-facing capture (cameras looking one way at the sparse points, as LLFF), else
    unbounded (contracted); ``forward``: the cameras' frustum, spaced in disparity as NDC;
    ``masks``: bounded by the visual hull of the foreground masks (default with
    ``object_masks``)."""
    inner_scale: float = 1.0
    """Unbounded scenes: half-size of the uncontracted box relative to the camera radius."""
    progress: bool = True
    """Show a rich progress bar."""
    tensorboard: bool = True
    """Write tensorboard scalars when tensorboard is installed."""
    deterministic: bool = True
    """Use deterministic torch algorithms (exact resume on CPU)."""
    device: str = "auto"
    """Torch device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. With
    ``nerf.field.encoding auto`` CPU and CUDA runs train different encodings (eval.json says
    which)."""
    num_threads: int = 0
    """CPU threads for torch (0 = torch's default; 1 is much faster on an oversubscribed CPU)."""
    dist_timeout_s: float = 1800.0
    """Data-parallel runs (``torchrun``): most seconds a rank waits for the others (a rank that
    died, or rank 0 evaluating / writing a checkpoint) before it stops with an error."""
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    """Compositing and background (every model)."""
    nerf: NerfConfig = dataclasses.field(default_factory=NerfConfig)
    """NeRF model settings (``model nerf``)."""
    gaussians: GaussiansConfig = dataclasses.field(default_factory=GaussiansConfig)
    """3D Gaussian model settings (``model gaussians``)."""


_BUILTIN_MODELS = ("nerf", "gaussians")

CONFIG_CLASSES: dict[str, str] = {}
"""Models whose settings live in a section of a :class:`TrainerConfig` subclass: model name ->
``module:class`` (added by the module that registers the model in ``scene_model.MODELS``, e.g.
``human4d``), so that a checkpoint's config is rebuilt with its model's section."""


def config_class(model: str) -> type[TrainerConfig]:
    """The trainer-config class of ``model`` (:class:`TrainerConfig` unless registered in
    :data:`CONFIG_CLASSES`)."""
    if model not in CONFIG_CLASSES:
        return TrainerConfig
    mod, cls = CONFIG_CLASSES[model].split(":")
    return getattr(importlib.import_module(mod), cls)


def checkpoint_config(s: dict, path: str | Path) -> TrainerConfig:
    """The trainer config stored in checkpoint ``s`` (read from ``path``), of its model's
    config class (:func:`config_class`)."""
    try:
        model = s["config"].get("model", "nerf")
        if model not in _BUILTIN_MODELS and model not in CONFIG_CLASSES:
            from sceneforge.fields.scene_model import MODELS

            if model not in MODELS:
                raise CheckpointError(
                    f"{path}: the checkpoint's model {model!r} is not registered (import the "
                    "module that registers it first)"
                )
        cfg = config_from_dict(config_class(model), s["config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: bad config in checkpoint ({e})") from e
    if "max_long_side" not in s["config"]:  # written before the cap: its downscale as given
        cfg = dataclasses.replace(cfg, max_long_side=0)
    return cfg


__all__ = ["CONFIG_CLASSES", "TrainerConfig", "checkpoint_config", "config_class"]
