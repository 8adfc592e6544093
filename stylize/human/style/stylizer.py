"""The 2D feature-space stylizer: frozen encoder -> multi-level AdaAttN -> light decoder, and
its training against the 2D teacher.

:class:`Stylizer` stylizes ``B H W 3`` frames in [0, 1] with any style image at test time (no
retraining); :meth:`Stylizer.stylize_features` takes content feature maps from elsewhere (the
4D fields' rendered features, later) with the same levels as the encoder's.

:func:`train_stylizer` fits AdaAttN's projections and the decoder (the encoder stays frozen):
the loss is an L1 (or L2) term to the teacher's stylization of the same content with the same
style image, plus a style term: the squared differences of the per-channel means and standard
deviations of the encoder's features of the output and of the style image, summed over levels.
Teacher targets and style features are computed once before the steps. Checkpoints hold the
config and the trained weights only (not the frozen encoder); :func:`load_stylizer` reads them
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from sceneforge.core.atomic import atomic_open
from sceneforge.core.tagged_checkpoint import load_tagged_checkpoint
from sceneforge.core.torch_state import TorchStateScope

from .adaattn import AdaAttNConfig, MultiLevelAdaAttN
from .decoder import DecoderConfig, FeatureDecoder
from .encoder import EncoderConfig, StyleEncoder, feature_stats

_log = logging.getLogger("sceneforge")

#: Marks a stylizer checkpoint file.
CHECKPOINT_FORMAT = "sceneforge.stylize.human.style.stylizer/1"

Teacher = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StylizerConfig:
    """The stylizer's parts."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Which encoder levels are stylized."""
    adaattn: AdaAttNConfig = field(default_factory=AdaAttNConfig)
    """Attention settings (shared by the levels)."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """Decoder widths."""
    style_size: int = 128
    """Shorter side (pixels) a style image is resized to before encoding."""


def resize_short_side(image: Float[Tensor, "H W 3"], side: int) -> Float[Tensor, "1 3 h w"]:
    """An ``H W 3`` image as ``1 3 h w`` with its shorter side ``side`` (antialiased)."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"a style image must be H W 3, got {tuple(image.shape)}")
    h, w = image.shape[:2]
    scale = side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = image.permute(2, 0, 1)[None].float()
    if size == (h, w):
        return x
    out = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1)


class Stylizer(nn.Module):
    """Encoder -> AdaAttN -> decoder. ``stylizer(frames, style_image, alpha)``: ``B H W 3``
    frames and an ``H W 3`` style image in [0, 1] -> stylized ``B H W 3`` frames."""

    def __init__(self, config: StylizerConfig | None = None, encoder: StyleEncoder | None = None):
        super().__init__()
        self.config = config or StylizerConfig()
        self.encoder = encoder or StyleEncoder(self.config.encoder)
        if self.encoder.config.blocks != self.config.encoder.blocks:
            raise ValueError(
                f"the encoder's blocks {self.encoder.config.blocks} differ from the config's "
                f"{self.config.encoder.blocks}"
            )
        self.attn = MultiLevelAdaAttN(self.encoder.channels, self.config.adaattn)
        self.decoder = FeatureDecoder(
            self.encoder.channels, self.encoder.strides, self.config.decoder
        )

    def encode(self, frames: Float[Tensor, "B H W 3"]) -> list[Float[Tensor, "B C h w"]]:
        """The encoder's feature maps of ``B H W 3`` frames."""
        return self.encoder(frames.permute(0, 3, 1, 2))

    @torch.no_grad()
    def style_features(self, style: Float[Tensor, "H W 3"]) -> list[Float[Tensor, "1 C h w"]]:
        """The encoder's feature maps of a style image resized to :attr:`config.style_size`."""
        return self.encoder(resize_short_side(style, self.config.style_size))

    def stylize_features(
        self,
        content: Sequence[Float[Tensor, "B C h w"]],
        style: Sequence[Float[Tensor, "1 C h w"]],
        size: Sequence[int],
        alpha: float = 1.0,
    ) -> Float[Tensor, "B 3 H W"]:
        """Decode AdaAttN(content features, style features) to ``B 3 H W`` RGB of ``size``."""
        return self.decoder(self.attn(content, style, alpha), size)

    def forward(
        self,
        frames: Float[Tensor, "B H W 3"],
        style: Float[Tensor, "H W 3"] | Sequence[Tensor],
        alpha: float = 1.0,
    ) -> Float[Tensor, "B H W 3"]:
        """Stylize frames with a style image (or its :meth:`style_features`); ``alpha`` in
        [0, 1] is the strength (0: the decoded content features). Frames are padded (border
        replicated) to a multiple of the coarsest stride and the result cropped back."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be B H W 3, got {tuple(frames.shape)}")
        feats = self.style_features(style) if isinstance(style, Tensor) else list(style)
        h, w = frames.shape[1:3]
        m = max(self.encoder.strides)  # pad to a multiple of the coarsest stride: exact levels
        x = frames.permute(0, 3, 1, 2)
        if h % m or w % m:
            x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")
        rgb = self.stylize_features(self.encoder(x), feats, x.shape[-2:], alpha)
        return rgb[..., :h, :w].permute(0, 2, 3, 1)

    def trained_state(self) -> dict[str, dict[str, Tensor]]:
        """The trained weights (AdaAttN and decoder; the encoder is frozen and not saved)."""
        return {"attn": self.attn.state_dict(), "decoder": self.decoder.state_dict()}


def save_stylizer(path: str | os.PathLike, stylizer: Stylizer, **extra: Any) -> None:
    """Write a checkpoint atomically: format tag, config, trained weights, ``extra`` (plain
    values: ints, floats, strings, lists)."""
    data = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(stylizer.config),
        "weights": stylizer.trained_state(),
        "extra": extra,
    }
    with atomic_open(path, "wb") as f:
        torch.save(data, f)


def _config_from_dict(d: dict[str, Any]) -> StylizerConfig:
    return StylizerConfig(
        encoder=EncoderConfig(blocks=tuple(d["encoder"]["blocks"])),
        adaattn=AdaAttNConfig(**d["adaattn"]),
        decoder=DecoderConfig(**d["decoder"]),
        style_size=int(d["style_size"]),
    )


def load_stylizer(
    path: str | os.PathLike, encoder: StyleEncoder | None = None
) -> tuple[Stylizer, dict[str, Any]]:
    """A stylizer from :func:`save_stylizer`'s file (``weights_only`` load) and its extras."""
    data = load_tagged_checkpoint(path, CHECKPOINT_FORMAT, "stylizer checkpoint")
    stylizer = Stylizer(_config_from_dict(data["config"]), encoder)
    stylizer.attn.load_state_dict(data["weights"]["attn"])
    stylizer.decoder.load_state_dict(data["weights"]["decoder"])
    return stylizer, data.get("extra", {})


@dataclass
class StylizerTrainConfig:
    """The stylizer's training against the 2D teacher."""

    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 4
    """Content images per step (one style per step)."""
    lr: float = 1e-3
    """Adam learning rate."""
    teacher_loss: Literal["l1", "l2"] = "l1"
    """Distance of the output to the teacher's stylization."""
    teacher_weight: float = 1.0
    """Weight of the teacher term."""
    style_weight: float = 0.05
    """Weight of the feature mean/std style term."""
    seed: int = 0
    """Seed of the initial weights and of the batch and style sampling."""
    threads: int = 1
    """torch CPU threads while training (1: on a shared 2-core machine more threads contend
    and run several times slower)."""
    log_every: int = 50
    """Steps between log lines (0: none)."""
    checkpoint: str | None = None
    """Checkpoint file (None: no checkpoint)."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: only after the last step)."""


@dataclass
class TrainResult:
    """What :func:`train_stylizer` returns."""

    stylizer: Stylizer
    """The trained stylizer."""
    losses: list[float]
    """Total loss per step."""
    teacher_losses: list[float]
    """Teacher term per step (unweighted)."""
    style_losses: list[float]
    """Style term per step (unweighted)."""
    seconds: float
    """Wall time of the steps (targets and style features excluded)."""


def style_loss(
    output: Sequence[Float[Tensor, "B C h w"]], style: Sequence[Float[Tensor, "1 C h w"]]
) -> Float[Tensor, ""]:
    """Sum over levels of the mean squared differences of per-channel feature means and
    standard deviations (each output sample against the one style)."""
    total = output[0].new_zeros(())
    for o, s in zip(output, style):
        om, osd = feature_stats(o)
        sm, ssd = feature_stats(s)
        total = total + F.mse_loss(om, sm.expand_as(om)) + F.mse_loss(osd, ssd.expand_as(osd))
    return total


def train_stylizer(
    content_images: Float[Tensor, "N H W 3"],
    style_images: Sequence[Float[Tensor, "h w 3"]],
    teacher: Teacher,
    config: StylizerTrainConfig | None = None,
    stylizer: Stylizer | None = None,
) -> TrainResult:
    """Train a stylizer (a new one, or continue ``stylizer``) on every (content, style) pair.

    ``teacher(frames, style_image)`` gives the 2D targets (e.g. a :class:`~.teacher.
    StyleTeacher`); it is called once per style on all contents before the steps.
    """
    cfg = config or StylizerTrainConfig()
    if content_images.ndim != 4 or content_images.shape[-1] != 3:
        raise ValueError(f"content_images must be N H W 3, got {tuple(content_images.shape)}")
    if not style_images:
        raise ValueError("train_stylizer needs at least one style image")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {cfg.steps}, {cfg.batch_size}")
    scope = TorchStateScope(num_threads=cfg.threads, seed=cfg.seed)
    with scope():
        model = stylizer or Stylizer()
        contents = content_images.detach().float().clamp(0, 1)
        with torch.no_grad():
            targets = [teacher(contents, s).float() for s in style_images]
            style_feats = [model.style_features(s) for s in style_images]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        distance = F.l1_loss if cfg.teacher_loss == "l1" else F.mse_loss
        losses, t_losses, s_losses = [], [], []
        start = time.perf_counter()
        model.train()
        for step in range(1, cfg.steps + 1):
            s = int(torch.randint(len(style_images), (1,), generator=gen))
            idx = torch.randint(len(contents), (min(cfg.batch_size, len(contents)),), generator=gen)
            out = model(contents[idx], style_feats[s])
            t_loss = distance(out, targets[s][idx])
            s_loss = style_loss(model.encode(out), style_feats[s])
            loss = cfg.teacher_weight * t_loss + cfg.style_weight * s_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            t_losses.append(float(t_loss.detach()))
            s_losses.append(float(s_loss.detach()))
            if cfg.log_every and step % cfg.log_every == 0:
                _log.info(
                    "stylizer step %d/%d: loss %.4f (teacher %.4f, style %.4f)",
                    step, cfg.steps, losses[-1], t_losses[-1], s_losses[-1],
                )  # fmt: skip
            if cfg.checkpoint and (
                step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            ):
                save_stylizer(cfg.checkpoint, model, step=step, losses=list(losses))
        model.eval()
    return TrainResult(model, losses, t_losses, s_losses, time.perf_counter() - start)
