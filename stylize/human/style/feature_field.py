"""Feature maps rendered from the 4D human capture, at the style encoder's levels.

The :class:`~sceneforge.stylize.human.field.Human4DModel` composites ``num_feature_channels``
feature channels from both of its fields along each ray. :class:`HumanFeatureRenderer` renders
them as **patches**: a rectangle of rays of one camera at the stride of the encoder's finest
level (one ray through the centre of each ``s x s`` pixel cell, ``s`` = 4 by default), i.e. a
feature map at the resolution of that level. :meth:`HumanFeatureRenderer.levels` turns it into
all the levels :meth:`~.stylizer.Stylizer.stylize_features` takes, in one of two ways:

- ``deep_levels="pooled"`` (default): a 1x1 ``adapter`` maps the rendered channels to every
  level's channels (24 + 32 + 96; identity when the field renders 152), and each deeper level
  is the average of its cells' rays (2x2, 4x4). Every level is then a 3D quantity composited
  per ray, with no 2D network between the render and AdaAttN.
- ``deep_levels="tail"``: the adapter maps to the finest level's 24 channels (identity for a
  24-channel field) and the encoder's frozen remainder (:class:`EncoderTail`: MobileNetV2 from
  the finest level's tensor on) computes the deeper levels, exactly as the encoder does for
  its own features (measured max |d| 1.2e-5); its stride-2 convolutions alias under sub-cell
  shifts of the view, and a patch's deeper levels lack the context beyond the patch.

Measured on the test capture (48 px, a 24-channel field, 250 distillation steps): normalized
feature errors 0.58-0.61 / 0.54-0.56 / 0.42-0.43 pooled vs 0.78 / 0.62 / 0.43 with the tail.

Full frames are rendered on the stride grid of the image padded to a multiple of the coarsest
stride (rays beyond the bottom/right border see the scene there, not replicated pixels), in
chunks of rays; a decoded image is cropped back to the camera's size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from sceneforge.core.atomic import atomic_open
from sceneforge.core.cameras import Cameras, pixel_centers
from sceneforge.core.tagged_checkpoint import load_tagged_checkpoint

from ..field import Human4DModel
from .encoder import BLOCK_OUTPUTS, EncoderConfig, convert_to_torch, predictor_float_model
from .onnx_models import require


class EncoderTail(nn.Module):
    """The frozen encoder from its finest level's map to its deeper levels' maps."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        blocks = self.config.blocks
        if any(b not in BLOCK_OUTPUTS for b in blocks) or list(blocks) != sorted(set(blocks)):
            raise ValueError(f"encoder blocks {blocks}: distinct, fine to coarse, known")
        self.channels = tuple(BLOCK_OUTPUTS[b][1] for b in blocks)
        """Channels per level (the finest one included)."""
        self.strides = tuple(BLOCK_OUTPUTS[b][2] for b in blocks)
        """Stride per level (the finest one included)."""
        self.net: nn.Module | None = None
        if len(blocks) > 1:
            onnx = require("onnx")
            names = [BLOCK_OUTPUTS[b][0] for b in blocks]
            cut = onnx.utils.Extractor(predictor_float_model()).extract_model(names[:1], names[1:])
            self.net = convert_to_torch(cut)
            self.net.eval()
            self.net.requires_grad_(False)

    def train(self, mode: bool = True) -> EncoderTail:
        """The tail stays in eval mode (frozen)."""
        return super().train(False)

    def forward(self, finest: Float[Tensor, "B C h w"]) -> list[Float[Tensor, "B C h w"]]:
        """All levels: ``[finest, deeper levels...]``."""
        if self.net is None:
            return [finest]
        out = self.net(finest.contiguous())
        deeper = [out] if isinstance(out, Tensor) else list(out)
        return [finest, *(f.contiguous() for f in deeper)]


def cell_pixels(
    rows: int, cols: int, stride: int, top: int = 0, left: int = 0
) -> Float[Tensor, "rows cols 2"]:
    """Pixel positions ``(u, v)`` of the centres of a ``rows x cols`` patch of ``stride x
    stride`` cells whose top-left cell is ``(top, left)`` (in cells)."""
    c = pixel_centers(rows, cols) + torch.tensor([float(left), float(top)])
    return c * stride


def padded_cells(height: int, width: int, stride: int, multiple: int) -> tuple[int, int]:
    """Cells (rows, cols) of stride ``stride`` covering an image padded to ``multiple``."""
    ph, pw = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    return ph // stride, pw // stride


@dataclass
class FeatureMaps:
    """A rendered patch: the finest level's map and the renderer's depth / accumulation."""

    features: Float[Tensor, "1 C h w"]
    """Field features (before the adapter)."""
    depth: Float[Tensor, "h w"]
    """The renderer's depth (sum of weights times camera z; divide by ``accumulation``)."""
    accumulation: Float[Tensor, "h w"]
    """Total weight along each ray."""


class HumanFeatureRenderer(nn.Module):
    """Rendered feature patches of a :class:`Human4DModel` -> the stylizer's feature levels.

    ``model`` is held, not owned (it is not in this module's parameters or state); the trained
    parts here are the ``adapter`` (1x1 conv, or identity) and, through the model, its feature
    heads.
    """

    def __init__(
        self,
        model: Human4DModel,
        encoder: EncoderConfig | None = None,
        chunk_rays: int = 4096,
        tail: EncoderTail | None = None,
        deep_levels: Literal["tail", "pooled"] = "pooled",
    ) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule (not in the state)
        self.tail = tail or EncoderTail(encoder)
        self.chunk_rays = chunk_rays
        if deep_levels not in ("tail", "pooled"):
            raise ValueError(f"deep_levels must be 'tail' or 'pooled', got {deep_levels!r}")
        self.deep_levels = deep_levels
        n_feat = model.cfg.field.num_feature_channels
        if n_feat <= 0:
            raise ValueError("the human4d model renders no features: set num_feature_channels")
        c = self.tail.channels[0] if deep_levels == "tail" else sum(self.tail.channels)
        self.adapter: nn.Module = nn.Identity() if n_feat == c else nn.Conv2d(n_feat, c, 1)

    @property
    def stride(self) -> int:
        """Pixels per rendered feature cell (the finest level's stride)."""
        return self.tail.strides[0]

    def render_pixels(
        self,
        cameras: Cameras,
        index: int,
        pixels: Float[Tensor, "h w 2"],
        frame: int,
        pose: Float[Tensor, "J 3"] | None = None,
        transl: Float[Tensor, "3"] | None = None,
    ) -> FeatureMaps:
        """Render the rays of camera ``index`` through ``pixels`` (a grid) with the body of
        ``frame`` (or the ``pose``/``transl`` override). Differentiable (the caller chooses
        ``torch.no_grad``)."""
        h, w = pixels.shape[:2]
        o, d, z = cameras.rays(index, pixels.reshape(-1, 2).to(cameras.dtype))
        outs: dict[str, list[Tensor]] = {"features": [], "depth": [], "accumulation": []}
        for r in self.model.render_frame_rays(o, d, z, frame, pose, transl, self.chunk_rays):
            for k in outs:
                outs[k].append(r[k])
        feats = torch.cat(outs["features"]).T.reshape(1, -1, h, w)
        return FeatureMaps(
            feats,
            torch.cat(outs["depth"]).reshape(h, w),
            torch.cat(outs["accumulation"]).reshape(h, w),
        )

    def render_patch(
        self,
        cameras: Cameras,
        index: int,
        frame: int,
        top: int,
        left: int,
        rows: int,
        cols: int,
        **body: Tensor | None,
    ) -> FeatureMaps:
        """A ``rows x cols`` patch of feature cells at the finest stride, top-left cell
        ``(top, left)``."""
        pixels = cell_pixels(rows, cols, self.stride, top, left)
        return self.render_pixels(cameras, index, pixels, frame, **body)

    def render_frame(
        self, cameras: Cameras, index: int, frame: int, **body: Tensor | None
    ) -> FeatureMaps:
        """The whole camera on the stride grid of the image padded to a multiple of the
        coarsest stride."""
        rows, cols = padded_cells(
            int(cameras.height[index]),
            int(cameras.width[index]),
            self.stride,
            max(self.tail.strides),
        )
        return self.render_patch(cameras, index, frame, 0, 0, rows, cols, **body)

    def levels(self, features: Float[Tensor, "B D h w"]) -> list[Float[Tensor, "B C h w"]]:
        """Rendered features -> the encoder's levels: the adapter, then the frozen tail
        (``tail``), or (``pooled``) the channels split per level, each average-pooled from the
        finest stride to its own."""
        x = self.adapter(features)
        if self.deep_levels == "tail":
            return self.tail(x)
        out, start = [], 0
        for c, s in zip(self.tail.channels, self.tail.strides):
            k = s // self.stride
            part = x[:, start : start + c]
            out.append(part if k == 1 else F.avg_pool2d(part, k))
            start += c
        return out

    def feature_parameters(self) -> list[nn.Parameter]:
        """What feature distillation trains: the adapter, the human field's separate feature
        MLP and the background's feature field (geometry and colour stay frozen)."""
        model = self.model
        if model.human.feature_mlp is None:
            raise ValueError(
                "the human field's features share its density/colour MLP: set "
                "field.feature_hidden_dim > 0 so that features train with the geometry frozen"
            )
        params = [*self.adapter.parameters(), *model.human.feature_mlp.parameters()]
        if model.background_features is not None:
            params += list(model.background_features.parameters())
        return params


#: Marks a feature-renderer file.
RENDERER_FORMAT = "sceneforge.stylize.human.style.feature_field/1"


def save_feature_renderer(path: str | os.PathLike, renderer: HumanFeatureRenderer) -> None:
    """Write the renderer's own settings and trained adapter atomically (the model's feature
    heads are in the model's state: its trainer checkpoint or export)."""
    data = {
        "format": RENDERER_FORMAT,
        "blocks": list(renderer.tail.config.blocks),
        "deep_levels": renderer.deep_levels,
        "adapter": renderer.adapter.state_dict(),
    }
    with atomic_open(path, "wb") as f:
        torch.save(data, f)


def load_feature_renderer(
    path: str | os.PathLike, model: Human4DModel, tail: EncoderTail | None = None
) -> HumanFeatureRenderer:
    """A renderer of ``model`` from :func:`save_feature_renderer`'s file (``weights_only``)."""
    data = load_tagged_checkpoint(path, RENDERER_FORMAT, "feature-renderer file")
    config = EncoderConfig(blocks=tuple(data["blocks"]))
    if tail is not None and tail.config.blocks != config.blocks:
        raise ValueError(f"{path}: encoder blocks {config.blocks} differ from the tail's")
    renderer = HumanFeatureRenderer(model, config, tail=tail, deep_levels=data["deep_levels"])
    renderer.adapter.load_state_dict(data["adapter"])
    return renderer


def crop_levels(
    levels: Sequence[Float[Tensor, "B C H W"]],
    strides: Sequence[int],
    top: int,
    left: int,
    rows: int,
    cols: int,
    finest: int,
) -> list[Float[Tensor, "B C h w"]]:
    """The windows of full-frame level maps that a patch (in cells of stride ``finest``)
    covers; the patch's origin and size must be multiples of each level's cell."""
    out = []
    for f, s in zip(levels, strides):
        k = s // finest
        out.append(f[..., top // k : (top + rows) // k, left // k : (left + cols) // k])
    return out


__all__ = [
    "EncoderTail",
    "FeatureMaps",
    "HumanFeatureRenderer",
    "cell_pixels",
    "crop_levels",
    "load_feature_renderer",
    "padded_cells",
    "save_feature_renderer",
]
