"""Stable Diffusion inpainting with the joint multi-view grid prior (NeRFiller).

:class:`SDInpainter` loads a diffusers Stable Diffusion **inpainting** pipeline (9-channel
UNet) from a local folder only, and inpaints many views jointly: the views' latents are tiled
``rows x cols`` into grid latents and denoised together; with more views than grid cells the
views are re-grouped at random at every denoising step (each view keeps its own latent; see
:class:`~sceneforge.core.diffusion.JointGridDenoiser`). The noise strength can be annealed
across dataset-update rounds with :func:`~sceneforge.core.diffusion.annealed_strength`.

:meth:`SDInpainter.joint_inpaint` at the working resolution with a 1x1 grid and no shuffling
reproduces diffusers' ``StableDiffusionInpaintPipeline`` (same scheduler, seed, guidance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.diffusion import (
    GridConfig,
    JointGridDenoiser,
    encode_prompt,
    load_local_pipeline,
    pick_dtype,
    timesteps_for_strength,
    vae_decode,
    vae_encode,
)
from sceneforge.inpaint.inpainters import Inpainter, InpaintResult, _check_inputs, composite


@dataclass
class SDInpaintConfig:
    """Stable Diffusion inpainting backend settings."""

    model: str = ""
    """Local folder of a diffusers SD inpainting pipeline (``save_pretrained`` layout)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    precision: str = "auto"
    """``auto`` (bf16/fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``."""
    prompt: str = ""
    """Text prompt (NeRFiller uses an empty prompt or a short scene description)."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""
    num_steps: int = 20
    """Denoising steps at strength 1 (fewer run at lower strength)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale (<= 1 disables guidance)."""
    resolution: int = 512
    """Working size of the longer image side (rounded to the latent granularity)."""
    grid: GridConfig = field(default_factory=GridConfig)
    """Views per grid, shuffling and grids per UNet call."""
    vae_batch: int = 4
    """Images per VAE encode/decode call (bounds memory)."""
    seed: int = 0
    """Seed of the noise and of the view grouping."""


def _granularity(pipe) -> int:
    """Pixel multiple for the working size: VAE factor times the UNet's total downsampling."""
    vsf = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    down = 2 ** (len(pipe.unet.config.down_block_types) - 1)
    return vsf * down


class SDInpainter(Inpainter):
    """Joint multi-view Stable Diffusion inpainting from a local model folder."""

    name = "sd"
    uses_strength = True

    def __init__(self, config: SDInpaintConfig, pipe=None) -> None:
        self.cfg = config
        dev = config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        self.dtype = pick_dtype(self.device, config.precision)
        if pipe is None:
            if not config.model:
                raise ValueError("the sd inpainter needs --model PATH (a local diffusers folder)")
            pipe = load_local_pipeline(config.model, device=self.device, dtype=self.dtype)
        elif pipe.unet.config.in_channels != 9:
            raise ValueError(
                f"the UNet takes {pipe.unet.config.in_channels} input channels; an inpainting "
                "UNet (9 channels) is needed"
            )
        self.pipe = pipe
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.round = 0
        self._group_gen = torch.Generator().manual_seed(config.seed + 1)
        self._noise_gen = torch.Generator().manual_seed(config.seed)
        self.denoiser = JointGridDenoiser(
            pipe.unet, pipe.scheduler, config.grid, config.guidance_scale
        )

    def joint_inpaint(
        self,
        images: Float[Tensor, "N 3 H W"],
        masks: Float[Tensor, "N 1 H W"],
        prompt: str | None = None,
        strength: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "N 3 H W"]:
        """Jointly inpaint images in [0, 1] (mask 1 = fill) at a size the model accepts.

        Random draws follow diffusers' inpainting pipeline: (image posterior sample when
        strength < 1), initial noise, masked-image posterior sample, then scheduler noise.
        Returns the decoded images in [0, 1] (not composited)."""
        pipe, cfg = self.pipe, self.cfg
        n, _, h, w = images.shape
        if h % self.vae_scale or w % self.vae_scale:
            raise ValueError(f"image size {w}x{h} must be a multiple of {self.vae_scale}")
        dev, dt = self.device, self.dtype
        gen = generator if generator is not None else self._noise_gen
        from diffusers.utils.torch_utils import randn_tensor

        prompt = cfg.prompt if prompt is None else prompt
        emb, neg = encode_prompt(pipe, prompt, cfg.negative_prompt, dev)
        timesteps, _ = timesteps_for_strength(pipe.scheduler, cfg.num_steps, strength, dev)
        init = (images.to(dev, torch.float32) * 2 - 1).to(dt)
        mask = (masks.to(dev, torch.float32) >= 0.5).to(torch.float32)
        lh, lw = h // self.vae_scale, w // self.vae_scale
        shape = (n, pipe.vae.config.latent_channels, lh, lw)
        if strength < 1.0:
            image_lat = vae_encode(pipe.vae, init, gen, cfg.vae_batch)
            noise = randn_tensor(shape, generator=gen, device=dev, dtype=dt)
            latents = pipe.scheduler.add_noise(image_lat, noise, timesteps[:1].repeat(n))
        else:
            noise = randn_tensor(shape, generator=gen, device=dev, dtype=dt)
            latents = noise * pipe.scheduler.init_noise_sigma
        mask_lat = F.interpolate(mask, size=(lh, lw)).to(dt)
        masked = (init.float() * (mask < 0.5)).to(dt)
        masked_lat = vae_encode(pipe.vae, masked, gen, cfg.vae_batch)
        cond = torch.cat([mask_lat, masked_lat], dim=1)
        latents = self.denoiser(
            latents, timesteps, emb, neg, cond, generator=gen, group_generator=self._group_gen
        )
        return vae_decode(pipe.vae, latents, cfg.vae_batch).float()

    def working_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) with the longer side ~ ``resolution``, multiples of the granularity."""
        g = _granularity(self.pipe)
        s = self.cfg.resolution / max(h, w)
        return max(g, round(h * s / g) * g), max(g, round(w * s / g) * g)

    def inpaint(
        self,
        images,
        fill,
        depths=None,
        cameras: Cameras | None = None,
        prompt=None,
        strength=1.0,
    ) -> InpaintResult:
        _check_inputs(images, fill, depths)
        n, h, w, _ = images.shape
        wh, ww = self.working_size(h, w)
        x = images.permute(0, 3, 1, 2).float()
        m = fill[:, None].float()
        if (wh, ww) != (h, w):
            x = F.interpolate(
                x, size=(wh, ww), mode="bilinear", antialias=True, align_corners=False
            )
            m = F.interpolate(m, size=(wh, ww), mode="bilinear", align_corners=False)
            m = (m > 0).float()  # any overlap with the hole is regenerated
        out = self.joint_inpaint(x.clamp(0, 1), m, prompt, strength)
        if (wh, ww) != (h, w):
            out = F.interpolate(
                out, size=(h, w), mode="bilinear", antialias=True, align_corners=False
            )
        out = out.permute(0, 2, 3, 1).cpu().clamp(0, 1)
        self.round += 1
        return InpaintResult(composite(images, out, fill), None)


__all__ = ["SDInpaintConfig", "SDInpainter"]
