"""A Free3D model with what it needs to go from images to images: scheduler, image encoder
and (in latent space) VAE, saved to and loaded from one local folder.

Folder layout (every part written by ``save_pretrained`` of its class)::

    free3d_config.json          Free3DConfig
    unet/                       diffusers UNet2DConditionModel (plain)
    free3d_modules.safetensors  RCN, cross-view attention, pose token
    scheduler/                  diffusers scheduler (DDIM by default)
    image_encoder/              transformers CLIPVisionModelWithProjection
    vae/                        diffusers AutoencoderKL (latent-space models only)

Loading is ``local_files_only``: nothing is downloaded. A folder without an expected
component raises :class:`~sceneforge.core.diffusion.DiffusionModelError` naming all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.diffusion import DiffusionModelError

from .model import Free3DModel, build_tiny, load_free3d_model, missing_components, read_config

#: CLIP's image normalisation (the image encoders of Zero-1-to-3 / Free3D are CLIP ViTs).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: Float[Tensor, "B 3 H W"], size: int) -> Float[Tensor, "B 3 S S"]:
    """Images in [0, 1] resized (bicubic, antialiased) to ``size`` and CLIP-normalised."""
    x = F.interpolate(
        images, size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (x.clamp(0, 1) - mean) / std


@dataclass
class Free3DPipeline:
    """The parts of a Free3D model folder, on one device."""

    model: Free3DModel
    """The denoiser (UNet + RCN + cross-view attention + pose token)."""
    scheduler: object
    """A diffusers scheduler (its timesteps and update rule)."""
    image_encoder: torch.nn.Module
    """CLIP vision model with projection: the source image's embedding for cross-attention."""
    vae: torch.nn.Module | None = None
    """AutoencoderKL of a latent-space model; None in pixel space."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent pixel along each side (1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def image_embed(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 1 D"]:
        """CLIP image embedding (one token) of images in [0, 1]."""
        size = int(self.image_encoder.config.image_size)
        px = clip_preprocess(images.to(self.device, torch.float32), size)
        enc_dtype = next(self.image_encoder.parameters()).dtype
        out = self.image_encoder(pixel_values=px.to(enc_dtype))
        return out.image_embeds[:, None].to(self.dtype)

    @torch.no_grad()
    def encode(self, images: Float[Tensor, "B 3 S S"]) -> Float[Tensor, "B C h w"]:
        """Latents of images in [0, 1] at the model's size (VAE mean x scaling factor, as
        Zero-1-to-3 conditions on it; pixel space: the images in [-1, 1])."""
        x = images.to(self.device, self.dtype) * 2 - 1
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 S S"]:
        """Images in [0, 1] from latents (inverse of :meth:`encode`)."""
        if self.vae is not None:
            latents = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (latents.float() / 2 + 0.5).clamp(0, 1)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the folder :func:`load_free3d` reads."""
        path = Path(path)
        self.model.save_pretrained(path)
        self.scheduler.save_pretrained(str(path / "scheduler"))
        self.image_encoder.save_pretrained(str(path / "image_encoder"))
        if self.vae is not None:
            self.vae.save_pretrained(str(path / "vae"))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Free3DPipeline:
        for m in (self.model, self.image_encoder, self.vae):
            if m is not None:
                m.to(device=device, dtype=dtype)
        return self


def pipeline_missing(path: Path) -> list[str]:
    """Every expected component of a Free3D folder that is absent."""
    latent = None
    if (path / "free3d_config.json").is_file():
        try:
            latent = read_config(path).latent_space
        except DiffusionModelError:
            latent = None
    missing = missing_components(path, latent_space=latent)
    for name in ("scheduler/scheduler_config.json", "image_encoder/config.json"):
        if not (path / name).is_file():
            missing.append(name)
    return missing


def load_free3d(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Free3DPipeline:
    """Load a Free3D folder (``--model PATH``) with ``local_files_only``.

    Raises:
        DiffusionModelError: the folder is missing or lacks components (all are named).
    """
    from sceneforge.core.diffusion import pick_dtype

    path = Path(path).expanduser()
    if not path.is_dir():
        raise DiffusionModelError(
            f"{path}: Free3D model folder not found (models are never downloaded; give a "
            "folder written by Free3DPipeline.save_pretrained)"
        )
    missing = pipeline_missing(path)
    if missing:
        raise DiffusionModelError(
            f"{path}: not a Free3D model folder; missing {', '.join(missing)}"
        )
    dtype = dtype or pick_dtype(device)
    model = load_free3d_model(path, device, dtype)
    from diffusers import AutoencoderKL, DDIMScheduler, SchedulerMixin
    from transformers import CLIPVisionModelWithProjection

    try:
        import diffusers

        sched_cfg = DDIMScheduler.load_config(str(path / "scheduler"), local_files_only=True)
        cls = getattr(diffusers, sched_cfg.get("_class_name", "DDIMScheduler"), DDIMScheduler)
        if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
            cls = DDIMScheduler
        scheduler = cls.from_config(sched_cfg)
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            str(path / "image_encoder"), local_files_only=True
        )
        vae = None
        if model.config.latent_space:
            vae = AutoencoderKL.from_pretrained(str(path / "vae"), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DiffusionModelError(f"{path}: cannot load a Free3D component ({e})") from e
    encoder = encoder.to(device=device, dtype=dtype).eval()
    if vae is not None:
        vae = vae.to(device=device, dtype=dtype).eval()
    return Free3DPipeline(model, scheduler, encoder, vae)


def build_tiny_pipeline(
    image_size: int = 16, latent_space: bool = False, seed: int = 0, **config
) -> Free3DPipeline:
    """A tiny random-weight pipeline of the same classes (tests, CPU demos): pixel space by
    default, or with a tiny 2x VAE; a tiny CLIP vision encoder; a DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    dim = 16
    channels = 4 if latent_space else 3
    model = build_tiny(
        latent_channels=channels,
        cross_attention_dim=dim,
        image_size=image_size,
        latent_space=latent_space,
        seed=seed,
        **config,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_attention_heads=2,
                num_hidden_layers=1,
                image_size=16,
                patch_size=8,
                projection_dim=dim,
            )
        ).eval()
        vae = None
        if latent_space:
            vae = AutoencoderKL(
                block_out_channels=(8, 8),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                latent_channels=channels,
                norm_num_groups=4,
                layers_per_block=1,
            ).eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False
    )
    return Free3DPipeline(model.eval(), scheduler, encoder, vae)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "Free3DPipeline",
    "build_tiny_pipeline",
    "clip_preprocess",
    "load_free3d",
    "pipeline_missing",
]
