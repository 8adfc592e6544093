"""Shared latent-diffusion helpers for the editing engines (inpainting, stylization).

Everything here is model-agnostic plumbing around a diffusers UNet + scheduler + VAE + CLIP
text encoder loaded from a **local folder** (never the hub):

- :func:`load_local_pipeline`: load a diffusers pipeline folder with ``local_files_only`` and
  clear errors (missing folder, not a diffusers pipeline, wrong UNet input channels).
- :func:`tile_latents` / :func:`untile_latents`: put ``rows x cols`` per-view latents into one
  grid latent and back (the "grid prior" of NeRFiller: views denoised jointly in one image).
- :func:`random_groups`: split views into grid-sized groups, re-drawn at every step.
- :class:`JointGridDenoiser`: the denoising loop where every view keeps its own latent; at each
  step the views are grouped, tiled, denoised as grids (classifier-free guidance, a bounded
  number of grids per UNet call), and the predictions are written back per view before one
  scheduler step over all views.

With one view per group and no shuffling the loop performs the same operations, in the same
order and with the same random draws, as diffusers' ``StableDiffusionInpaintPipeline``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor


class DiffusionModelError(ValueError):
    """A local diffusion model folder is missing or unusable; the message names the path."""


def _require_diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - diffusers is a core dependency here
        raise ImportError(
            "the diffusion backends need `diffusers` and `transformers` (pip install diffusers "
            "transformers)"
        ) from e
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the diffusion backends need `transformers` for the CLIP text encoder "
            "(pip install transformers)"
        ) from e
    return diffusers


def pick_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """Compute dtype: fp32 on CPU; on CUDA ``auto`` = bf16 when supported, else fp16."""
    device = torch.device(device)
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision != "auto":
        if precision not in table:
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        if device.type == "cpu" and precision != "fp32":
            raise ValueError(f"{precision} is not supported on the CPU; use fp32")
        return table[precision]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_local_pipeline(
    path: str | Path,
    pipeline_class: str = "StableDiffusionInpaintPipeline",
    unet_in_channels: int | None = 9,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
):
    """Load a diffusers pipeline saved with ``save_pretrained`` from a local folder only.

    Args:
        path: folder with ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ...
        pipeline_class: diffusers pipeline class name to instantiate.
        unet_in_channels: required UNet input channels (9 = inpainting), or None for any.
        device: where to put the models.
        dtype: model dtype (default: :func:`pick_dtype`).

    Raises:
        DiffusionModelError: the folder is missing, is not a diffusers pipeline, or its UNet
            has the wrong number of input channels (e.g. a text-to-image model given where an
            inpainting model is needed).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DiffusionModelError(
            f"{path}: diffusion model folder not found (models are never downloaded; "
            "give the folder of a pipeline saved with diffusers' save_pretrained)"
        )
    if not path.is_dir() or not (path / "model_index.json").is_file():
        raise DiffusionModelError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    unet_cfg = path / "unet" / "config.json"
    if not unet_cfg.is_file():
        raise DiffusionModelError(f"{path}: no unet/config.json in the pipeline folder")
    try:
        in_ch = int(json.loads(unet_cfg.read_text())["in_channels"])
    except (ValueError, KeyError, TypeError) as e:
        raise DiffusionModelError(f"{unet_cfg}: unreadable UNet config ({e})") from e
    if unet_in_channels is not None and in_ch != unet_in_channels:
        kind = "an inpainting" if unet_in_channels == 9 else f"a {unet_in_channels}-channel"
        raise DiffusionModelError(
            f"{path}: the UNet takes {in_ch} input channels but {kind} model "
            f"({unet_in_channels} channels: latents + mask + masked-image latents) is needed; "
            "use a Stable Diffusion inpainting checkpoint"
        )
    diffusers = _require_diffusers()
    cls = getattr(diffusers, pipeline_class, None)
    if cls is None:
        raise ValueError(f"diffusers has no pipeline class {pipeline_class!r}")
    dtype = dtype or pick_dtype(device)
    # diffusers >= 0.36 takes ``dtype`` (``torch_dtype`` is deprecated there)
    from packaging.version import Version

    new_api = Version(diffusers.__version__.split(".dev")[0]) >= Version("0.36")
    kwargs = {"local_files_only": True, ("dtype" if new_api else "torch_dtype"): dtype}
    if "StableDiffusion" in pipeline_class:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DiffusionModelError(f"{path}: cannot load the diffusers pipeline ({e})") from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- grids


def tile_latents(x: Float[Tensor, "B C h w"], rows: int, cols: int) -> Float[Tensor, "G C rh cw"]:
    """Tile consecutive runs of ``rows * cols`` views into grids, row-major within a grid."""
    b, c, h, w = x.shape
    g = rows * cols
    if b % g:
        raise ValueError(f"tile_latents: {b} views is not a multiple of {rows}x{cols}")
    x = x.reshape(b // g, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b // g, c, rows * h, cols * w)


def untile_latents(
    grid: Float[Tensor, "G C rh cw"], rows: int, cols: int
) -> Float[Tensor, "B C h w"]:
    """Inverse of :func:`tile_latents`."""
    n, c, hh, ww = grid.shape
    if hh % rows or ww % cols:
        raise ValueError(f"untile_latents: grid {hh}x{ww} does not split into {rows}x{cols}")
    h, w = hh // rows, ww // cols
    x = grid.reshape(n, c, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n * rows * cols, c, h, w)


def random_groups(
    n: int, group_size: int, generator: torch.Generator | None = None, shuffle: bool = True
) -> list[list[int]]:
    """Split views ``0..n-1`` into groups of ``group_size`` (a random permutation when
    ``shuffle``). The last group is padded with other views so every grid is full; a padded
    entry is marked by a negative index ``-(v + 1)`` (its prediction is discarded), so each
    view is denoised (written back) exactly once."""
    if n <= 0:
        raise ValueError("random_groups needs at least one view")
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    groups = [order[i : i + group_size] for i in range(0, n, group_size)]
    last = groups[-1]
    k = 0
    while len(last) < group_size:
        last.append(-(order[k % n] + 1))
        k += 1
    return groups


# ----------------------------------------------------------------------------- pipeline parts


def encode_prompt(pipe, prompt: str, negative_prompt: str, device) -> tuple[Tensor, Tensor]:
    """CLIP embeddings ``(1, L, D)`` of the prompt and the negative prompt, as diffusers'
    ``encode_prompt`` computes them (``max_length`` padding, last hidden state)."""

    def enc(text: str) -> Tensor:
        tok = pipe.tokenizer(
            [text],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        cfg = pipe.text_encoder.config
        att = tok.attention_mask.to(device) if getattr(cfg, "use_attention_mask", False) else None
        out = pipe.text_encoder(tok.input_ids.to(device), attention_mask=att)[0]
        return out.to(dtype=pipe.text_encoder.dtype, device=device)

    with torch.no_grad():
        return enc(prompt), enc(negative_prompt)


def vae_encode(
    vae,
    images: Float[Tensor, "B 3 H W"],
    generator: torch.Generator | None,
    batch: int,
    sample: bool = True,
) -> Float[Tensor, "B C h w"]:
    """Scaled VAE latents of images in [-1, 1], encoded ``batch`` at a time.

    ``sample`` draws the posterior noise with **one** ``randn`` over all images (so the draws
    do not depend on ``batch`` and equal diffusers' single-call ``latent_dist.sample``).
    """
    from diffusers.utils.torch_utils import randn_tensor

    means, stds = [], []
    with torch.no_grad():
        for s in range(0, images.shape[0], batch):
            dist = vae.encode(images[s : s + batch]).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    mean = torch.cat(means)
    if sample:
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        lat = mean + torch.cat(stds) * noise
    else:
        lat = mean
    return vae.config.scaling_factor * lat


def vae_decode(vae, latents: Float[Tensor, "B C h w"], batch: int) -> Float[Tensor, "B 3 H W"]:
    """Images in [0, 1] from scaled latents, ``batch`` at a time (diffusers' denormalisation)."""
    out = []
    with torch.no_grad():
        for s in range(0, latents.shape[0], batch):
            x = vae.decode(latents[s : s + batch] / vae.config.scaling_factor, return_dict=False)[0]
            out.append((x / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


def timesteps_for_strength(
    scheduler, num_steps: int, strength: float, device
) -> tuple[Tensor, int]:
    """The scheduler's timesteps truncated by ``strength`` (as diffusers img2img/inpaint)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    scheduler.set_timesteps(num_steps, device=device)
    init = min(int(num_steps * strength), num_steps)
    t_start = max(num_steps - init, 0)
    ts = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    if len(ts) < 1:
        raise ValueError(f"strength {strength} with {num_steps} steps leaves no denoising step")
    return ts, num_steps - t_start


def annealed_strength(
    round_idx: int, num_rounds: int, start: float = 1.0, end: float = 0.4
) -> float:
    """Noise strength of update round ``round_idx``: linear from ``start`` to ``end``."""
    if num_rounds <= 1:
        return start
    f = min(max(round_idx / (num_rounds - 1), 0.0), 1.0)
    return start + (end - start) * f


# ----------------------------------------------------------------------------- joint loop


@dataclass
class GridConfig:
    """How views are grouped into grids during joint denoising."""

    rows: int = 2
    """Grid rows (views per grid = rows * cols)."""
    cols: int = 2
    """Grid columns."""
    shuffle: bool = True
    """Re-draw random groups at every denoising step (only matters with more views than cells)."""
    grids_per_batch: int = 1
    """Grids per UNet call (with CFG each call runs 2x this); bounds memory."""


class JointGridDenoiser:
    """Denoise many views jointly: each view keeps its own latent; at every step the views
    are grouped (randomly when ``shuffle``), tiled into grids, denoised with classifier-free
    guidance, and the predictions are untiled and written back per view. One scheduler step
    then advances all views (each view is denoised exactly once per step).

    ``cond`` are extra per-view channels concatenated after the (scaled) latents, e.g. the
    inpainting mask and masked-image latents; they are tiled exactly like the latents.
    """

    def __init__(self, unet, scheduler, grid: GridConfig, guidance_scale: float) -> None:
        self.unet, self.scheduler, self.grid = unet, scheduler, grid
        self.guidance_scale = guidance_scale
        self.on_step: Callable[[int, list[list[int]]], None] | None = None
        """Optional observer called with (step, groups) (tests, logging)."""

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def _predict(
        self,
        latents: Tensor,
        cond: Tensor | None,
        t: Tensor,
        emb: Tensor,
        neg: Tensor,
        groups: list[list[int]],
    ) -> Tensor:
        g = self.grid
        rows, cols = g.rows, g.cols
        pred = torch.full_like(latents, float("nan"))  # every view must be written back
        scaled = self.scheduler.scale_model_input(latents, t)
        x = scaled if cond is None else torch.cat([scaled, cond], dim=1)
        for s in range(0, len(groups), g.grids_per_batch):
            chunk = groups[s : s + g.grids_per_batch]
            flat = [abs(v) - 1 if v < 0 else v for grp in chunk for v in grp]
            inp = tile_latents(x[flat], rows, cols)
            n = inp.shape[0]
            if self.do_cfg:
                inp = torch.cat([inp, inp])
                hid = torch.cat([neg.expand(n, -1, -1), emb.expand(n, -1, -1)])
            else:
                hid = emb.expand(n, -1, -1)
            with torch.no_grad():
                out = self.unet(inp, t, encoder_hidden_states=hid, return_dict=False)[0]
            if self.do_cfg:
                u, c = out.chunk(2)
                out = u + self.guidance_scale * (c - u)
            views = untile_latents(out, rows, cols)
            entries = [v for grp in chunk for v in grp]
            keep = [k for k, v in enumerate(entries) if v >= 0]
            pred[[entries[k] for k in keep]] = views[keep]
        return pred

    def __call__(
        self,
        latents: Float[Tensor, "N C h w"],
        timesteps: Tensor,
        emb: Tensor,
        neg: Tensor,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        group_generator: torch.Generator | None = None,
        eta: float = 0.0,
    ) -> Float[Tensor, "N C h w"]:
        """Run the loop from ``latents`` over ``timesteps``; returns the final latents."""
        import inspect

        n = latents.shape[0]
        size = self.grid.rows * self.grid.cols
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        for i, t in enumerate(timesteps):
            shuffle = self.grid.shuffle and n > size
            groups = random_groups(n, size, group_generator, shuffle)
            if self.on_step is not None:
                self.on_step(i, groups)
            pred = self._predict(latents, cond, t, emb, neg, groups)
            if bool(torch.isnan(pred).flatten(1).all(1).any()):
                raise RuntimeError(f"step {i}: a view was not denoised (groups {groups})")
            latents = self.scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
        return latents


__all__ = [
    "DiffusionModelError",
    "GridConfig",
    "JointGridDenoiser",
    "annealed_strength",
    "encode_prompt",
    "load_local_pipeline",
    "pick_dtype",
    "random_groups",
    "tile_latents",
    "timesteps_for_strength",
    "untile_latents",
    "vae_decode",
    "vae_encode",
]
