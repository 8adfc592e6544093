"""Pseudo-3D cross-view attention: the views of one set attend to each other per pixel.

After every spatial transformer block of the UNet, the features of the ``V`` views of a set
at the same spatial position form a sequence of ``V`` tokens; a light multi-head attention
over that sequence is added residually (as the temporal attention of video diffusion models,
Free3D's "pseudo-3D" attention). The output projection is zero-initialised, so at start the
UNet computes exactly what it computed before, and no view embedding is used, so permuting
the views permutes the outputs.

As for RCN the diffusers class is not modified: forward hooks on the transformer blocks add
the attention (:meth:`CrossViewAttentions.attach`); the number of views per set of the
current call is set with :meth:`CrossViewAttentions.views` (outside it the hooks do nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


def to_view_tokens(x: Float[Tensor, "BV C H W"], num_views: int) -> Float[Tensor, "BHW V C"]:
    """Group ``[B*V, C, H, W]`` features (view-major within a set) into per-pixel sequences."""
    bv, c, h, w = x.shape
    if bv % num_views:
        raise ValueError(f"cross-view attention: batch {bv} is not a multiple of {num_views} views")
    x = x.reshape(bv // num_views, num_views, c, h, w).permute(0, 3, 4, 1, 2)
    return x.reshape(-1, num_views, c)


def from_view_tokens(
    tokens: Float[Tensor, "BHW V C"], height: int, width: int
) -> Float[Tensor, "BV C H W"]:
    """Inverse of :func:`to_view_tokens`."""
    n, v, c = tokens.shape
    b = n // (height * width)
    x = tokens.reshape(b, height, width, v, c).permute(0, 3, 4, 1, 2)
    return x.reshape(b * v, c, height, width)


def multihead_attention(
    q: Float[Tensor, "N L C"], k: Float[Tensor, "N L C"], v: Float[Tensor, "N L C"], heads: int
) -> Float[Tensor, "N L C"]:
    """Softmax attention over the ``L`` tokens of each of ``N`` sequences, ``heads`` heads."""
    n, length, c = q.shape

    def split(t: Tensor) -> Tensor:
        return t.reshape(n, length, heads, c // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(n, length, c)


class CrossViewAttention(nn.Module):
    """Pre-norm attention across views, zero-initialised output, added residually."""

    def __init__(self, channels: int, head_dim: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = nn.LayerNorm(channels)
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Float[Tensor, "BV C H W"], num_views: int) -> Float[Tensor, "BV C H W"]:
        tok = to_view_tokens(x, num_views)
        q, k, v = self.to_qkv(self.norm(tok)).chunk(3, dim=-1)
        out = self.to_out(multihead_attention(q, k, v, self.heads))
        return x + from_view_tokens(out, x.shape[2], x.shape[3])


class _Context:
    """Views per set of the current UNet call (shared by the hooks; not a module)."""

    def __init__(self) -> None:
        self.num_views: int | None = None


def _key(name: str) -> str:
    return name.replace(".", "__")


class _Hook:
    """Forward hook of one transformer block: adds its cross-view attention to the output."""

    def __init__(self, attn: CrossViewAttention, ctx: _Context) -> None:
        self.attn, self.ctx = attn, ctx

    def __call__(self, module: nn.Module, inputs: tuple, output):
        if self.ctx.num_views is None:  # outside ``views``: the plain UNet
            return output
        if isinstance(output, tuple):
            return (self.attn(output[0], self.ctx.num_views), *output[1:])
        output.sample = self.attn(output.sample, self.ctx.num_views)
        return output


def spatial_transformers(unet: nn.Module) -> dict[str, nn.Module]:
    """The UNet's spatial transformer blocks (diffusers ``Transformer2DModel``), by name."""
    return {
        name: m
        for name, m in unet.named_modules()
        if type(m).__name__ == "Transformer2DModel" and hasattr(m, "transformer_blocks")
    }


class CrossViewAttentions(nn.Module):
    """One :class:`CrossViewAttention` after each spatial transformer block of a UNet."""

    def __init__(self, unet: nn.Module, head_dim: int = 32) -> None:
        super().__init__()
        self._ctx = _Context()
        blocks = spatial_transformers(unet)
        if not blocks:
            raise ValueError("cross-view attention: the UNet has no spatial transformer block")
        self.blocks = nn.ModuleDict(
            {_key(n): CrossViewAttention(_out_channels(m), head_dim) for n, m in blocks.items()}
        )

    def attach(self, unet: nn.Module) -> None:
        """Register the forward hooks on ``unet``'s transformer blocks (replacing ours there)."""
        self.detach(unet)
        modules = dict(unet.named_modules())
        for key, attn in self.blocks.items():
            name = key.replace("__", ".")
            if name not in modules:
                raise ValueError(f"cross-view attention: the UNet has no module {name!r}")
            modules[name].register_forward_hook(_Hook(attn, self._ctx))

    def detach(self, unet: nn.Module) -> None:
        """Remove our hooks from ``unet`` (found on the modules, so deep copies stay apart)."""
        mine = set(map(id, self.blocks.values()))
        for m in unet.modules():
            for hid, hook in list(m._forward_hooks.items()):
                if isinstance(hook, _Hook) and id(hook.attn) in mine:
                    del m._forward_hooks[hid]
                    m._forward_hooks_with_kwargs.pop(hid, None)
                    m._forward_hooks_always_called.pop(hid, None)

    @contextmanager
    def views(self, num_views: int) -> Iterator[None]:
        """Within the block, the attached UNet's batch holds sets of ``num_views`` views."""
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self._ctx.num_views = num_views
        try:
            yield
        finally:
            self._ctx.num_views = None


def _out_channels(block: nn.Module) -> int:
    cfg = getattr(block, "config", None)
    ch = getattr(cfg, "out_channels", None) or getattr(cfg, "in_channels", None)
    if ch is None:
        ch = block.proj_out.out_features if hasattr(block.proj_out, "out_features") else None
    if ch is None:
        ch = block.proj_out.out_channels
    return int(ch)


__all__ = [
    "CrossViewAttention",
    "CrossViewAttentions",
    "from_view_tokens",
    "multihead_attention",
    "spatial_transformers",
    "to_view_tokens",
]
