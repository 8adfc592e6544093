"""Sampling novel views with a Free3D model: a diffusers scheduler loop over all the views of
a set at once, with multi-view noise sharing and optional classifier-free guidance.

Multi-view noise sharing (Free3D): every target view of a set starts from the **same**
initial noise, so the views differ only by their conditioning (rays, pose token, cross-view
attention) and come out more consistent. It is on by default.

Classifier-free guidance follows Zero-1-to-3: the unconditional branch sees a zero image
embedding and a zero source latent (the rays and poses are kept).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .model import Free3DModel
from .pipeline import Free3DPipeline
from .rays import as_rigid, rays_for_views, scale_intrinsics


@dataclass
class SamplerConfig:
    """How novel views are sampled."""

    num_steps: int = 50
    """Denoising steps of the scheduler."""
    guidance_scale: float = 3.0
    """Classifier-free guidance weight; <= 1 disables guidance (one UNet pass per step)."""
    share_noise: bool = True
    """Start every target view of a set from the same initial noise (multi-view noise sharing)."""
    eta: float = 0.0
    """DDIM eta (0: deterministic DDIM; ignored by schedulers without it)."""
    seed: int = 0
    """Seed of the initial noise and of any stochastic scheduler step."""

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")


def initial_noise(
    num_sets: int,
    num_views: int,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    share: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "BV C h w"]:
    """Standard-normal initial latents for ``num_sets`` sets of ``num_views`` views.

    With ``share`` one draw per set is repeated to all its views; otherwise every view gets
    its own. Drawn on the generator's device (CPU: the same numbers on every device).
    """
    n = num_sets if share else num_sets * num_views
    x = torch.randn((n, *shape), generator=generator, device=generator.device, dtype=torch.float32)
    if share:
        x = x.repeat_interleave(num_views, dim=0)
    return x.to(device=device, dtype=dtype)


def _step_kwargs(scheduler, generator: torch.Generator, eta: float) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    out = {}
    if "eta" in params:
        out["eta"] = eta
    if "generator" in params:
        out["generator"] = generator
    return out


@torch.no_grad()
def denoise(
    model: Free3DModel,
    scheduler,
    source_latent: Float[Tensor, "B C h w"],
    image_embed: Float[Tensor, "B L D"],
    rays: Float[Tensor, "BV 6 h w"],
    target_from_source: Float[Tensor, "BV R 4"],
    num_views: int,
    config: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "BV C h w"]:
    """The scheduler loop from (shared) noise to the target views' latents."""
    cfg = config or SamplerConfig()
    b = source_latent.shape[0]
    if rays.shape[0] != b * num_views:
        raise ValueError(f"{b} sets x {num_views} views but rays for {rays.shape[0]} views")
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(cfg.seed)
    device, dtype = source_latent.device, source_latent.dtype
    scheduler.set_timesteps(cfg.num_steps, device=device)
    latents = initial_noise(
        b, num_views, tuple(source_latent.shape[1:]), generator, cfg.share_noise, device, dtype
    )
    latents = latents * scheduler.init_noise_sigma
    guided = cfg.guidance_scale > 1.0
    if guided:
        src = torch.cat([torch.zeros_like(source_latent), source_latent])
        emb = torch.cat([torch.zeros_like(image_embed), image_embed])
        rays_in, poses = torch.cat([rays, rays]), torch.cat([target_from_source] * 2)
    else:
        src, emb, rays_in, poses = source_latent, image_embed, rays, target_from_source
    extra = _step_kwargs(scheduler, generator, cfg.eta)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        x = torch.cat([x, x]) if guided else x
        pred = model(x, t, src, emb, rays_in, num_views, poses)
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + cfg.guidance_scale * (cond - uncond)
        latents = scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
    return latents


def sample_views(
    pipe: Free3DPipeline,
    source_images: Float[Tensor, "B 3 H W"],
    source_K: Float[Tensor, "B 3 3"],
    target_from_source: Float[Tensor, "B V R 4"],
    target_K: Float[Tensor, "B V 3 3"] | None = None,
    config: SamplerConfig | None = None,
) -> Float[Tensor, "B V 3 H W"]:
    """Novel views of each source image, in [0, 1] at the source's resolution.

    Args:
        pipe: a loaded (or tiny) Free3D pipeline.
        source_images: images in [0, 1].
        source_K: intrinsics of the source images (for their ``H x W``).
        target_from_source: ``[3, 4]`` or ``[4, 4]`` relative poses of the targets.
        target_K: target intrinsics for ``H x W`` images (default: the source's).
        config: sampling options (steps, guidance, noise sharing, seed).

    The source is resized to the model's square size (the intrinsics with it) and the views
    are resized back, so the given intrinsics describe the returned images.
    """
    cfg = config or SamplerConfig()
    b, _, h, w = source_images.shape
    v = target_from_source.shape[1]
    size, f = pipe.image_size, pipe.latent_factor
    dev, dt = pipe.device, pipe.dtype
    src = F.interpolate(
        source_images.to(dev, torch.float32), (size, size), mode="bilinear", antialias=True
    )
    sx, sy = size / (w * f), size / (h * f)  # source pixels -> latent pixels
    k_src = scale_intrinsics(source_K.to(dev, torch.float64), sx, sy)
    k_tgt = None if target_K is None else scale_intrinsics(target_K.to(dev, torch.float64), sx, sy)
    poses = as_rigid(target_from_source.to(dev, torch.float64))
    rays = rays_for_views(k_src, poses, size // f, size // f, k_tgt).to(dt)
    latent = pipe.encode(src)
    embed = pipe.image_embed(src)
    generator = torch.Generator("cpu").manual_seed(cfg.seed)
    out = denoise(
        pipe.model, pipe.scheduler, latent, embed, rays, poses.reshape(b * v, 3, 4).to(dt), v, cfg,
        generator,
    )  # fmt: skip
    images = pipe.decode(out)
    images = F.interpolate(images, (h, w), mode="bilinear", antialias=True).clamp(0, 1)
    return images.reshape(b, v, 3, h, w)


__all__ = ["SamplerConfig", "denoise", "initial_noise", "sample_views"]
