"""The Inpaint Dataset Update (NeRFiller): train on unmasked pixels, and every N steps render a
batch of training views, inpaint them jointly, and replace those images in the training set.

Each update writes the whole current training set to a **new versioned folder**
``datasets/vNNN/`` (temp folder + ``os.replace``; the scene's own files are never touched) with
a ``manifest.json``. Optional depth: the inpainter's completed depth (or Telea on the rendered
depth) becomes a depth target inside the fill masks, with a ranking or L1 loss added to the
trainer through :meth:`Trainer.add_loss`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.diffusion import annealed_strength
from sceneforge.core.image_io import write_image_atomic
from sceneforge.core.scene import SceneData
from sceneforge.fields.datasets import RayBatch, downscale_image, downscale_mask
from sceneforge.fields.trainer import Trainer
from sceneforge.inpaint.inpainters import Inpainter, InpaintResult, telea_fill


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


def scale_cameras(cameras: Cameras, downscale: int) -> Cameras:
    """Cameras of images downscaled by an integer factor (COLMAP pixel convention)."""
    if downscale == 1:
        return cameras
    n_lin = 3 if cameras.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") else 4
    p = cameras.params.clone()
    p[:, :n_lin] = p[:, :n_lin] / downscale
    return Cameras(
        cameras.model,
        p,
        cameras.width // downscale,
        cameras.height // downscale,
        cameras.cam_from_world,
    )


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
    """Write one dataset version to ``root/vNNN`` (PNG images + ``manifest.json``) atomically.

    The folder is built under a temporary name and moved into place with ``os.replace``; an
    existing folder of the same version is moved aside until the new one is in place, so a
    failure (e.g. a full disk) leaves the earlier versions exactly as they were.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"v{version:03d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".v{version:03d}."))
    try:
        (tmp / "images").mkdir()
        png_names = []
        for name, image in zip(names, images, strict=True):
            png = Path(name).with_suffix(".png").name
            write_image_atomic(tmp / "images" / png, image)
            png_names.append(png)
        (tmp / "manifest.json").write_text(json.dumps({**manifest, "images": png_names}, indent=1))
        old = None
        if final.exists():  # moved aside, not deleted, until the new folder is in place
            old = root / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            e.errno,
            f"cannot write dataset version {final} ({e.strerror or e}); nothing was written "
            "for it and the earlier versions are unchanged",
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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
    """Drives a :class:`Trainer` through warm-up, update rounds and final steps.

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
        self.trainer, self.inpainter = trainer, inpainter
        self.cfg = cfg = config or DatasetUpdateConfig()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.prompt = prompt
        ds = trainer.dataset
        if len(fill) != len(ds):
            raise ValueError(f"{len(fill)} fill masks for {len(ds)} training images")
        for j, f in enumerate(fill):
            if tuple(f.shape) != tuple(ds.shapes[j]):
                raise ValueError(
                    f"fill mask {j} is {tuple(f.shape)}, training image is {ds.shapes[j]}"
                )
        self.fill = [f.bool() for f in fill]
        self.cameras = scale_cameras(
            trainer.scene.cameras[trainer.train_indices], trainer.cfg.downscale
        )
        self.round = 0
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.depth_target = torch.zeros(ds.rgb.shape[0])
        self.depth_valid = torch.zeros(ds.rgb.shape[0], dtype=torch.bool)
        self.history: list[dict] = []
        # the capture's pixels (kept outside the fill masks at every update)
        self._originals = [
            downscale_image(trainer.scene.load_image(i), trainer.cfg.downscale)
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
        tr.cfg.max_steps = max(tr.cfg.max_steps, start + self.total_steps)
        tr.train(max_steps=start + c.warmup_steps)
        for r in range(c.num_rounds):
            self.update()
            if r < c.num_rounds - 1:
                tr.train(max_steps=tr.step + c.update_every)
        stats = tr.train(max_steps=tr.step + c.final_steps)
        return stats

    # -- one update ----------------------------------------------------------------------------

    def choose_views(self) -> list[int]:
        n = len(self.trainer.dataset)
        k = self.cfg.views_per_update
        if k <= 0 or k >= n:
            return list(range(n))
        return sorted(torch.randperm(n, generator=self.generator)[:k].tolist())

    @torch.no_grad()
    def update(self) -> int:
        """Render, inpaint jointly and replace a batch of training views; returns the version."""
        tr, c = self.trainer, self.cfg
        ds = tr.dataset
        views = [j for j in self.choose_views() if bool(self.fill[j].any())]
        if not views:
            return ds.version
        strength = annealed_strength(self.round, c.num_rounds, c.strength_start, c.strength_end)
        originals = torch.stack([self._original(j) for j in views])
        fill = torch.stack([self.fill[j] for j in views])
        renders, depths = [], []
        for j in views:
            r = tr.render_training_view(j)
            renders.append(r["rgb"])
            depths.append(
                known_depth(
                    r["depth"], r["accumulation"], c.accumulation_threshold, c.empty_threshold
                )
            )
        render = torch.stack(renders).clamp(0, 1)
        depth = torch.stack(depths)
        scene_depths = tr.scene.depths
        if c.depth_source == "scene" and scene_depths is None:
            raise ValueError("depth_source='scene' but the scene has no depth maps")
        if c.depth_source == "scene" or (c.depth_source == "auto" and scene_depths is not None):
            depth = torch.stack([self._scene_depth(j) for j in views])
        elif c.photometric_tolerance > 0:
            # the field's depth is trusted only where it reproduces the captured colour
            bad = (render - originals).abs().amax(-1) > c.photometric_tolerance
            depth = torch.where(bad & ~fill & (depth > 0), float("nan"), depth)
        images, res = inpaint_views(
            self.inpainter,
            render,
            originals,
            fill,
            depth,
            self.cameras[views],
            self.prompt,
            strength,
        )
        ds.update_images(views, list(images), [torch.ones_like(f) for f in fill])
        if c.depth_loss != "none":
            comp = res.depths
            if comp is None:
                comp = torch.stack(
                    [
                        torch.where(f, telea_fill(d[..., None], f | d.isnan())[..., 0], d)
                        for d, f in zip(depth, fill)
                    ]
                )
            for k, j in enumerate(views):
                sl = slice(int(ds.offsets[j]), int(ds.offsets[j + 1]))
                valid = fill[k] & (comp[k] > 0) & torch.isfinite(comp[k])
                self.depth_target[sl] = comp[k].reshape(-1).float()
                self.depth_valid[sl] = valid.reshape(-1)
        self.round += 1
        info = {
            "version": ds.version,
            "step": tr.step,
            "round": self.round,
            "strength": strength,
            "views": [tr.scene.image_names[tr.train_indices[j]] for j in views],
            "inpainter": self.inpainter.name,
        }
        self.history.append(info)
        if self.out_dir is not None and c.write_versions:
            self.write_version(info)
        return ds.version

    def _scene_depth(self, j: int) -> Tensor:
        """The scene's depth map of training image ``j`` at dataset resolution (0 = none)."""
        tr = self.trainer
        d = tr.scene.depths[tr.train_indices[j]].float()
        ds = tr.cfg.downscale
        if ds == 1:
            return d
        valid = downscale_mask(d > 0, ds)
        return torch.where(valid, downscale_image(d[..., None], ds)[..., 0], 0.0)

    def _original(self, j: int) -> Tensor:
        """Training image ``j`` as loaded from the scene (the capture, at dataset resolution)."""
        return self._originals[j]

    def write_version(self, info: dict) -> Path:
        """Write the current training images to ``datasets/vNNN`` atomically."""
        tr, ds = self.trainer, self.trainer.dataset
        names = [tr.scene.image_names[i] for i in tr.train_indices]
        return write_dataset_version(
            self.out_dir / "datasets",
            ds.version,
            names,
            [ds.image(j) for j in range(len(ds))],
            {**info, "fill_pixels": [int(f.sum()) for f in self.fill]},
        )

    # -- depth loss -----------------------------------------------------------------------------

    def _depth_loss(self, trainer: Trainer, batch: RayBatch, out: dict) -> Tensor:
        c = self.cfg
        sel = self.depth_valid[batch.pixel_idx]
        # expected depth of the surface (the renderer's depth is weighted by the opacity)
        pred = out["depth"] / out["accumulation"].clamp(min=1e-3)
        if not bool(sel.any()):
            return pred.sum() * 0.0
        dev = pred.device
        target = self.depth_target[batch.pixel_idx][sel].to(dev)
        p = pred[sel.to(dev)]
        if c.depth_loss == "l1":
            loss = (p - target).abs().mean()
        else:
            loss = depth_ranking_loss(p, target, trainer.generator, c.ranking_margin)
        return c.depth_loss_weight * loss


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
    "masked_training_scene",
    "scale_cameras",
]
