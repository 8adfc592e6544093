"""Free3D's views -> a posed image set -> a field.

The generated views (from the diffusion model) and the one source view, each with its camera
in the source frame (:mod:`sceneforge.stylize.free3d.poses`), become a :class:`SceneData`
(:func:`assemble_views`), are written as a nerfstudio folder (``transforms.json``,
``images/``, ``masks/``; :func:`write_views`, atomic through
:func:`sceneforge.core.io.save_scene`, refusing to replace an existing non-empty folder), and a
field is trained on that folder through the one public trainer entry point
(:func:`sceneforge.fields.api.train`), which writes ``eval.json`` (held-out PSNR / SSIM on
every ``holdout_every``-th view) beside its checkpoint (:func:`train_views_field`).

Layout of :func:`views_to_field`'s output folder ``OUT``::

    OUT/scene/transforms.json, images/, masks/   the posed views (source = source.png)
    OUT/field/checkpoint.pt, eval.json, ...      the trained field and its evaluation

Masks are the views' foreground (alpha > 0.5); views without alpha (the diffusion model paints
RGB on white) are matted against their white border
(:func:`sceneforge.stylize.free3d.foreground.matte_from_border`).
The field is trained as an object capture (``object_masks``: white background outside the
masks, mask loss, visual-hull scene box).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.io import save_scene
from sceneforge.core.scene import SceneData
from sceneforge.fields.api import TrainConfig, train
from sceneforge.fields.rendering import RenderConfig
from sceneforge.fields.trainer import TrainerConfig
from sceneforge.stylize.free3d.foreground import ForegroundConfig, matte_from_border

#: Where the source view goes among the assembled views: the trainer holds out views
#: 0, N, 2N, ... (``holdout_every``), so index 1 keeps the one real photo in training.
SOURCE_POSITION = 1


@dataclass
class ViewsFieldConfig:
    """How :func:`train_views_field` trains a field on the assembled views."""

    max_steps: int = 2000
    """Training steps."""
    model: Literal["nerf", "gaussians"] = "nerf"
    """Scene model of the one trainer."""
    batch_rays: int = 2048
    """Rays per step."""
    holdout_every: int = 8
    """Every N-th view (0, N, 2N, ...) is held out for eval.json (0 = none)."""
    seed: int = 0
    """Trainer seed."""
    device: str = "auto"
    """Torch device (auto, cpu, cuda, cuda:N)."""
    num_threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    progress: bool = False
    """Show the trainer's progress bar."""
    save_eval_images: bool = True
    """Write held-out predictions under ``field/eval``."""


def _to_uint8_hwc(image: Float[Tensor, "3 H W"]) -> Tensor:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0) * 255 + 0.5).to(torch.uint8)


def views_scene(
    images: Float[Tensor, "N 3 H W"],
    cameras: Cameras,
    alpha: Float[Tensor, "N 1 H W"] | None,
    names: list[str],
) -> SceneData:
    """In-memory scene of posed views (RGB in [0, 1] on white) with foreground masks from
    ``alpha`` (> 0.5), or matted against the white border where ``alpha`` is None."""
    n = images.shape[0]
    if len(cameras) != n or len(names) != n:
        raise ValueError(f"{n} images but {len(cameras)} cameras and {len(names)} names")
    h, w = images.shape[-2:]
    if bool((cameras.width != w).any()) or bool((cameras.height != h).any()):
        raise ValueError(f"cameras do not all match the {w}x{h} images")
    if alpha is None:
        cfg = ForegroundConfig()
        alpha = torch.stack([matte_from_border(images[i].float(), cfg) for i in range(n)])
    masks = [alpha[i, 0] > 0.5 for i in range(n)]
    empty = [names[i] for i in range(n) if not bool(masks[i].any())]
    if empty:
        raise ValueError(f"views with an empty foreground: {', '.join(empty)}")
    return SceneData(
        cameras=cameras,
        image_names=list(names),
        images=[_to_uint8_hwc(images[i]) for i in range(n)],
        masks=masks,
    )


def assemble_views(
    source_image: Float[Tensor, "3 H W"],
    source_camera: Cameras,
    images: Float[Tensor, "N 3 H W"],
    cameras: Cameras,
    source_alpha: Float[Tensor, "1 H W"] | None = None,
    alpha: Float[Tensor, "N 1 H W"] | None = None,
) -> SceneData:
    """The source view (``source.png``, at :data:`SOURCE_POSITION`) and the generated views
    (``view_000.png``, ...) as one scene; cameras in the source frame."""
    if len(source_camera) != 1:
        raise ValueError(f"one source camera expected, got {len(source_camera)}")
    n = images.shape[0]
    if n < 1:
        raise ValueError("no generated views to assemble")
    pos = min(SOURCE_POSITION, n)
    order = list(range(pos)) + [n] + list(range(pos, n))  # index n = the source
    all_images = torch.cat([images.float(), source_image.float()[None]])[order]
    names = [f"view_{i:03d}.png" for i in range(n)] + ["source.png"]
    names = [names[i] for i in order]
    cams = Cameras(
        "PINHOLE",
        torch.cat([cameras.params.double(), source_camera.params.double()])[order],
        torch.cat([cameras.width, source_camera.width])[order],
        torch.cat([cameras.height, source_camera.height])[order],
        torch.cat([cameras.cam_from_world.double(), source_camera.cam_from_world.double()])[order],
    )
    if (alpha is None) != (source_alpha is None):
        cfg = ForegroundConfig()
        if alpha is None:
            alpha = torch.stack([matte_from_border(images[i].float(), cfg) for i in range(n)])
        if source_alpha is None:
            source_alpha = matte_from_border(source_image.float(), cfg)
    all_alpha = None
    if alpha is not None:
        all_alpha = torch.cat([alpha.float(), source_alpha.float()[None]])[order]
    return views_scene(all_images, cams, all_alpha, names)


def write_views(scene: SceneData, out_dir: str | os.PathLike) -> Path:
    """Write the views as a nerfstudio folder (``transforms.json``, ``images/``,
    ``masks/``); atomic, and an existing non-empty folder is never replaced."""
    return save_scene(scene, Path(out_dir), format="nerfstudio", overwrite=False)


def train_config(cfg: ViewsFieldConfig) -> TrainConfig:
    """The :class:`TrainConfig` of an object capture on white for ``cfg``."""
    trainer = TrainerConfig(
        max_steps=cfg.max_steps,
        model=cfg.model,
        batch_rays=cfg.batch_rays,
        holdout_every=cfg.holdout_every,
        object_masks=True,
        render=RenderConfig(background="white"),
        seed=cfg.seed,
        device=cfg.device,
        num_threads=cfg.num_threads,
        progress=cfg.progress,
        tensorboard=False,
        checkpoint_every=0,
    )
    return TrainConfig(trainer=trainer, save_eval_images=cfg.save_eval_images, resume=False)


def train_views_field(
    scene_dir: str | os.PathLike, run_dir: str | os.PathLike, cfg: ViewsFieldConfig | None = None
) -> dict:
    """Train a field on a written views folder (:func:`sceneforge.fields.api.train`); returns
    the eval dict it also writes to ``run_dir/eval.json``."""
    run = Path(run_dir)
    if run.exists() and any(run.iterdir()):
        raise FileExistsError(f"{run}: run folder exists and is not empty; not overwriting it")
    return train(Path(scene_dir), run, train_config(cfg or ViewsFieldConfig()))


def views_to_field(
    scene: SceneData, out_dir: str | os.PathLike, cfg: ViewsFieldConfig | None = None
) -> dict:
    """Write ``scene`` to ``OUT/scene`` and train a field in ``OUT/field`` (module doc);
    returns the eval dict with ``scene_dir`` and ``run_dir`` added."""
    out = Path(out_dir)
    scene_dir = write_views(scene, out / "scene")
    run_dir = out / "field"
    res = train_views_field(scene_dir, run_dir, cfg)
    return {**res, "scene_dir": str(scene_dir), "run_dir": str(run_dir)}


__all__ = [
    "SOURCE_POSITION",
    "ViewsFieldConfig",
    "assemble_views",
    "train_config",
    "train_views_field",
    "views_scene",
    "views_to_field",
    "write_views",
]
