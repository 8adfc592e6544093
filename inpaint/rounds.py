"""One completion round of the Inpaint Dataset Update, written once for every trainer.

A round renders the training views that have holes, turns the rendered depth into warping
depth (:func:`known_depth`), inpaints the views jointly (:func:`inpaint_views`: the capture
outside the fill masks, the render inside them, the noise strength annealed across rounds),
hands the new images back to the trainer and writes the new dataset version. Both our own
trainer (:class:`~sceneforge.inpaint.dataset_update.InpaintDatasetUpdate`) and the nerfstudio
method (``sceneforge.nerfstudio.complete``) run their rounds through :func:`completion_round`;
what differs between them (how a view is rendered, how images reach the training set) is a
:class:`RoundTarget`.

Under ``torchrun`` (a :class:`~sceneforge.fields.distributed.DistContext` with several ranks)
each rank renders its share of the views and the renders are gathered; every rank then runs the
inpainter on all of them (the ``sd`` backend splits its grids over the ranks, see
:class:`~sceneforge.inpaint.dataset_update.ShardedGridDenoiser`), rank 0's images (and
completed depth) are broadcast so that every rank's training set is identical, and only rank 0
writes the dataset version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.atomic import atomic_dir, atomic_write_json
from sceneforge.core.cameras import Cameras
from sceneforge.core.diffusion import annealed_strength
from sceneforge.core.image_io import write_image_atomic
from sceneforge.core.run_files import DATASET_IMAGES_DIR, DATASET_MANIFEST
from sceneforge.fields.distributed import SINGLE, DistContext
from sceneforge.inpaint.inpainters import Inpainter, InpaintResult, telea_fill


class RoundTarget(Protocol):
    """What a trainer gives the round: views rendered, images taken in."""

    def render(self, j: int) -> dict[str, Tensor]:
        """Training view ``j``: ``rgb`` (h w 3), ``depth`` (z-depth in scene units, weighted by
        the opacity) and ``accumulation`` (h w)."""

    def apply(self, views: list[int], images: Tensor, fill: Tensor) -> int:
        """Put ``images`` (V h w 3) into the training set for ``views``; the pixels inside
        ``fill`` become trainable. Returns the new dataset version."""

    def images(self) -> list[Tensor]:
        """Every training view's current pixels (for the dataset version on disk)."""


@dataclass
class RoundSettings:
    """The parts of a dataset-update schedule a round needs."""

    num_rounds: int
    strength_start: float
    strength_end: float
    accumulation_threshold: float
    empty_threshold: float
    photometric_tolerance: float = 0.0


@dataclass
class RoundResult:
    """What one round did."""

    info: dict
    """Manifest entry: version, step, round, strength, views (names), inpainter."""
    views: list[int]
    fill: Bool[Tensor, "V h w"]
    depth: Float[Tensor, "V h w"]
    """The warping depth the inpainter saw (NaN = unknown, 0 = empty)."""
    completed_depth: Float[Tensor, "V h w"] | None
    """The inpainter's completed depth inside the holes, or Telea on ``depth`` when it gives
    none (computed only when asked for)."""


def known_depth(
    depth: Float[Tensor, "H W"],
    accumulation: Float[Tensor, "H W"],
    accumulation_threshold: float,
    empty_threshold: float,
) -> Float[Tensor, "H W"]:
    """Rendered depth for warping: expected surface depth where the render is opaque, 0 (empty,
    background at infinity) below ``empty_threshold``, NaN (unknown) in between."""
    d = depth / accumulation.clamp(min=1e-6)
    d = torch.where(accumulation > accumulation_threshold, d, float("nan"))
    return torch.where(accumulation < empty_threshold, 0.0, d)


def inpaint_views(
    inpainter: Inpainter,
    render: Float[Tensor, "V H W 3"],
    originals: Float[Tensor, "V H W 3"],
    fill: Bool[Tensor, "V H W"],
    depth: Float[Tensor, "V H W"],
    cameras: Cameras,
    prompt: str | None,
    strength: float,
) -> tuple[Float[Tensor, "V H W 3"], InpaintResult]:
    """One joint inpainting round: the capture outside ``fill``, the render inside it.

    Returns the new images (exactly ``originals`` outside ``fill``) and the inpainter's result.
    Backends without a noise strength keep ``1 - strength`` of the field's current consensus in
    the hole, so later rounds refine rather than replace it.
    """
    current = torch.where(fill[..., None], render, originals)
    res = inpainter.inpaint(current, fill, depth, cameras, prompt=prompt, strength=strength)
    images = res.images
    if not getattr(inpainter, "uses_strength", False) and strength < 1.0:
        images = torch.where(fill[..., None], render + strength * (images - render), images)
    return torch.where(fill[..., None], images, originals), res


def write_dataset_version(
    root: Path, version: int, names: list[str], images: list[Tensor], manifest: dict
) -> Path:
    """Write one dataset version to ``root/vNNN`` (PNG images + ``manifest.json``) atomically
    (:func:`~sceneforge.core.atomic.atomic_dir`): a failure (e.g. a full disk) leaves the
    earlier versions, and an earlier folder of the same version, exactly as they were."""
    final = root / f"v{version:03d}"
    try:
        with atomic_dir(final) as tmp:
            png_names = []
            for name, image in zip(names, images, strict=True):
                png = Path(name).with_suffix(".png").name
                write_image_atomic(tmp / DATASET_IMAGES_DIR / png, image)
                png_names.append(png)
            atomic_write_json(tmp / DATASET_MANIFEST, {**manifest, "images": png_names}, indent=1)
    except OSError as e:
        raise OSError(
            e.errno,
            f"cannot write dataset version {final} ({e.strerror or e}); nothing was written "
            "for it and the earlier versions are unchanged",
        ) from e
    return final


@torch.no_grad()
def completion_round(
    target: RoundTarget,
    inpainter: Inpainter,
    views: list[int],
    fill: list[Bool[Tensor, "h w"]],
    originals: list[Float[Tensor, "h w 3"]],
    cameras: Cameras,
    settings: RoundSettings,
    round_index: int,
    step: int,
    names: list[str],
    prompt: str | None = None,
    scene_depth: Callable[[int], Tensor] | None = None,
    complete_depth: bool = False,
    versions_dir: Path | None = None,
    dist: DistContext = SINGLE,
) -> RoundResult | None:
    """Render, inpaint jointly and hand back the ``views`` (training-set indices) that have
    holes; ``fill``, ``originals`` and ``names`` are per training view, ``cameras`` the training
    views' cameras at their resolution. ``scene_depth(j)`` replaces the rendered depth (RGB-D
    or synthetic captures). With ``versions_dir`` the new dataset version is written there
    (by rank 0 only under ``dist``: every rank gets rank 0's images, see the module docstring).
    Returns None when none of ``views`` has a hole."""
    views = [j for j in views if bool(fill[j].any())]
    if not views:
        return None
    c = settings
    strength = annealed_strength(round_index, c.num_rounds, c.strength_start, c.strength_end)
    renders, depths = [], []
    for r in dist.map_shared(target.render, views):  # each rank renders its share
        renders.append(r["rgb"].clamp(0, 1))
        depths.append(
            known_depth(r["depth"], r["accumulation"], c.accumulation_threshold, c.empty_threshold)
        )
    if any(tuple(x.shape) != tuple(renders[0].shape) for x in renders):
        raise ValueError("scene completion needs training images of one size")
    render, depth = torch.stack(renders), torch.stack(depths)
    holes = torch.stack([fill[j] for j in views])
    orig = torch.stack([originals[j] for j in views])
    if scene_depth is not None:
        depth = torch.stack([scene_depth(j) for j in views])
    elif c.photometric_tolerance > 0:
        # the rendered depth is trusted only where it reproduces the captured colour
        bad = (render - orig).abs().amax(-1) > c.photometric_tolerance
        depth = torch.where(bad & ~holes & (depth > 0), float("nan"), depth)
    images, res = inpaint_views(
        inpainter, render, orig, holes, depth, cameras[views], prompt, strength
    )
    images = dist.share_tensor(images)  # every rank's training set is rank 0's
    version = target.apply(views, images, holes)
    completed = None
    if complete_depth:
        completed = res.depths
        if completed is None:
            completed = torch.stack(
                [
                    torch.where(f, telea_fill(d[..., None], f | d.isnan())[..., 0], d)
                    for d, f in zip(depth, holes)
                ]
            )
        completed = dist.share_tensor(completed.float())
    info = {
        "version": version,
        "step": step,
        "round": round_index + 1,
        "strength": strength,
        "views": [names[j] for j in views],
        "inpainter": inpainter.name,
    }
    if versions_dir is not None and dist.is_main:
        write_dataset_version(
            versions_dir,
            version,
            names,
            target.images(),
            {**info, "fill_pixels": [int(f.sum()) for f in fill]},
        )
    return RoundResult(info, views, holes, depth, completed)


__all__ = [
    "RoundResult",
    "RoundSettings",
    "RoundTarget",
    "completion_round",
    "inpaint_views",
    "known_depth",
    "write_dataset_version",
]
