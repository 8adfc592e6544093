"""A light convolutional decoder from multi-level (stylized) feature maps to RGB.

Coarse to fine: the coarsest map goes through a 3x3 conv block, is upsampled (nearest, as in
AdaAttN's decoder) to the next finer level's size, concatenated with that level's map (a skip
connection) and convolved again; from the finest level, ``log2(stride)`` more x2 upsamplings
with conv blocks reach the image resolution, and a 3x3 conv + sigmoid gives RGB in [0, 1].
Convolutions pad by replicating the border (no dark image borders, and unlike reflection
padding it works on the 1-pixel-wide maps of small images' coarsest levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


@dataclass
class DecoderConfig:
    """Widths of the decoder's conv blocks."""

    level_width: int = 64
    """Channels of the blocks at the encoder levels."""
    image_width: int = 32
    """Channels of the blocks of the final upsampling steps (halved per step, at least 8)."""


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (replicate padding) + ReLU."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="replicate")
    return nn.Sequential(conv, nn.ReLU(inplace=True))


def upsample_to(x: Float[Tensor, "B C h w"], size: Sequence[int]) -> Float[Tensor, "B C H W"]:
    """Nearest-neighbour resize to ``size`` (``H W``)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size))


class FeatureDecoder(nn.Module):
    """Multi-level feature maps (fine to coarse, ``channels``/``strides`` as the encoder's) ->
    ``B 3 H W`` RGB in [0, 1]."""

    def __init__(
        self, channels: Sequence[int], strides: Sequence[int], config: DecoderConfig | None = None
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"channels {channels} and strides {strides} must match")
        finest = strides[0]
        if finest < 1 or 2 ** round(math.log2(finest)) != finest:
            raise ValueError(f"the finest stride must be a power of two, got {finest}")
        self.config = config or DecoderConfig()
        w = self.config.level_width
        self.coarsest = conv_block(channels[-1], w)
        self.merges = nn.ModuleList(conv_block(w + c, w) for c in reversed(channels[:-1]))
        ups, cin, cout = [], w, self.config.image_width
        for _ in range(round(math.log2(finest))):
            ups.append(conv_block(cin, cout))
            cin, cout = cout, max(8, cout // 2)
        self.ups = nn.ModuleList(ups)
        self.to_rgb = nn.Conv2d(cin, 3, 3, padding=1, padding_mode="replicate")

    def forward(
        self, feats: Sequence[Float[Tensor, "B C h w"]], size: Sequence[int] | None = None
    ) -> Float[Tensor, "B 3 H W"]:
        """RGB of ``size`` (``H W``; default: the finest map's size times its stride). Encoder
        maps align at the top-left corner, so a larger decoded image is cropped there."""
        if len(feats) != len(self.merges) + 1:
            raise ValueError(f"expected {len(self.merges) + 1} feature levels, got {len(feats)}")
        x = self.coarsest(feats[-1])
        for merge, skip in zip(self.merges, reversed(feats[:-1])):
            x = merge(torch.cat([upsample_to(x, skip.shape[-2:]), skip], dim=1))
        for up in self.ups:
            x = up(F.interpolate(x, scale_factor=2.0))
        rgb = torch.sigmoid(self.to_rgb(x))
        if size is None:
            return rgb
        h, w = int(size[0]), int(size[1])
        if rgb.shape[-2] >= h and rgb.shape[-1] >= w:
            return rgb[..., :h, :w]
        return F.interpolate(rgb, size=(h, w), mode="bilinear", align_corners=False)
