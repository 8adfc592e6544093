"""AdaAttN (Liu et al., ICCV 2021): attention-weighted mean and standard deviation of spatial
style features, per content position.

For content features ``F_c`` and style features ``F_s`` at one level, with ``F^{1:x}`` the
concatenation of that level and all shallower ones (bilinearly resized to its size):

    Q = f(Norm(F_c^{1:x}))    K = g(Norm(F_s^{1:x}))    V = h(F_s)      (f, g, h: 1x1 convs)
    A = softmax_s(Q^T K)                                                 (content x style)
    M = A V     S = sqrt(relu(A V² - M²) + eps)
    out = S * Norm(F_c) + M,   blended: alpha * out + (1 - alpha) * F_c

``Norm`` is the per-channel (instance) mean-variance normalization. With uniform attention
(``f`` or ``g`` outputting zeros: weights and bias zero) ``M`` and ``S`` are the style's
per-channel mean and standard deviation of ``h(F_s)``: AdaAttN reduces to AdaIN.
The scores are plain dot products (no ``1/sqrt(D)``), as in the paper. As in the paper's training, the style positions may be
capped (``max_style_positions``) by a seeded random subset, the same on every call, for memory;
content positions are processed in chunks (``query_chunk``), which changes nothing but memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

Projection = Callable[[Tensor], Tensor]


def instance_norm(x: Float[Tensor, "B C H W"], eps: float = 1e-5) -> Float[Tensor, "B C H W"]:
    """Per-sample, per-channel mean-variance normalization over the spatial positions."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


def style_subset(num_positions: int, cap: int | None, seed: int) -> Tensor | None:
    """Sorted indices of a seeded random subset of ``cap`` style positions (None: keep all)."""
    if cap is None or num_positions <= cap:
        return None
    if cap < 1:
        raise ValueError(f"max_style_positions must be >= 1, got {cap}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_positions, generator=gen)[:cap].sort().values


def adaattn(
    content: Float[Tensor, "B C Hc Wc"],
    style: Float[Tensor, "B C Hs Ws"],
    content_key: Float[Tensor, "B K Hc Wc"],
    style_key: Float[Tensor, "B K Hs Ws"],
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    *,
    alpha: float = 1.0,
    max_style_positions: int | None = None,
    seed: int = 0,
    query_chunk: int = 4096,
    eps: float = 1e-5,
) -> Float[Tensor, "B C Hc Wc"]:
    """One AdaAttN level (see the module doc).

    ``content_key``/``style_key`` are the (un-normalized) multi-level features ``F^{1:x}``
    that queries and keys are computed from (pass ``content``/``style`` for a single level);
    ``q_proj``/``k_proj`` map ``B K H W`` -> ``B D H W`` and ``v_proj`` ``B C H W`` ->
    ``B C H W`` (1x1 convolutions). ``alpha`` in [0, 1] blends with ``content``. A style
    batch of 1 serves every content sample.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if content.shape[1] != style.shape[1] or style.shape[0] not in (1, content.shape[0]):
        raise ValueError(
            f"content {tuple(content.shape)} and style {tuple(style.shape)}: channels must match "
            "and the style batch be 1 or the content's"
        )
    if alpha == 0.0:
        return content
    b, c, hc, wc = content.shape
    q = q_proj(instance_norm(content_key, eps)).flatten(2).transpose(1, 2)  # B Nc D
    k = k_proj(instance_norm(style_key, eps)).flatten(2)  # B D Ns
    v = v_proj(style).flatten(2).transpose(1, 2)  # B Ns C
    keep = style_subset(k.shape[-1], max_style_positions, seed)
    if keep is not None:
        keep = keep.to(k.device)
        k, v = k[:, :, keep], v[:, keep]
    if k.shape[0] != b:  # one style for the whole batch
        k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)
    v2 = v * v
    means, stds = [], []
    for start in range(0, q.shape[1], max(1, query_chunk)):
        attn = torch.softmax(torch.bmm(q[:, start : start + query_chunk], k), dim=-1)  # B n Ns
        mean = torch.bmm(attn, v)
        var = torch.bmm(attn, v2) - mean * mean
        means.append(mean)
        stds.append((torch.relu(var) + eps).sqrt())
    mean = torch.cat(means, 1).transpose(1, 2).reshape(b, c, hc, wc)
    std = torch.cat(stds, 1).transpose(1, 2).reshape(b, c, hc, wc)
    out = std * instance_norm(content, eps) + mean
    return out if alpha == 1.0 else alpha * out + (1.0 - alpha) * content


def adain(
    content: Float[Tensor, "B C Hc Wc"], style: Float[Tensor, "B C Hs Ws"], eps: float = 1e-5
) -> Float[Tensor, "B C Hc Wc"]:
    """AdaIN (Huang & Belongie 2017): the content normalized, then the style's per-channel
    standard deviation and mean (``sqrt(var + eps)``, as :func:`adaattn` uses)."""
    mean = style.mean(dim=(2, 3), keepdim=True)
    std = (style.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    return std * instance_norm(content, eps) + mean


def concat_levels(
    feats: Sequence[Float[Tensor, "B C h w"]], level: int
) -> Float[Tensor, "B K H W"]:
    """``F^{1:level}``: levels ``0..level`` concatenated along channels, the shallower ones
    bilinearly resized to ``feats[level]``'s size (the paper's multi-level queries/keys)."""
    size = feats[level].shape[-2:]
    parts = [
        f
        if f.shape[-2:] == size
        else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in feats[: level + 1]
    ]
    return torch.cat(parts, dim=1)


@dataclass
class AdaAttNConfig:
    """AdaAttN's attention settings."""

    key_dim: int = 64
    """Channels of the queries and keys (outputs of f and g)."""
    max_style_positions: int | None = 4096
    """Cap on the style positions attended per level (seeded random subset); None: all."""
    query_chunk: int = 4096
    """Content positions per attention chunk (memory only)."""
    seed: int = 0
    """Seed of the style-position subset (level ``l`` uses ``seed + l``)."""
    eps: float = 1e-5
    """Variance epsilon of the normalizations and of the attention std."""


class AdaAttN(nn.Module):
    """One AdaAttN level: 1x1 convs f, g (``key_channels`` -> ``key_dim``) and h
    (``channels`` -> ``channels``) around :func:`adaattn`."""

    def __init__(
        self, channels: int, key_channels: int, config: AdaAttNConfig | None = None, level: int = 0
    ) -> None:
        super().__init__()
        self.config = config or AdaAttNConfig()
        self.level = level
        self.f = nn.Conv2d(key_channels, self.config.key_dim, 1)
        self.g = nn.Conv2d(key_channels, self.config.key_dim, 1)
        self.h = nn.Conv2d(channels, channels, 1)

    def forward(
        self,
        content: Float[Tensor, "B C Hc Wc"],
        style: Float[Tensor, "B C Hs Ws"],
        content_key: Float[Tensor, "B K Hc Wc"],
        style_key: Float[Tensor, "B K Hs Ws"],
        alpha: float = 1.0,
    ) -> Float[Tensor, "B C Hc Wc"]:
        cfg = self.config
        return adaattn(
            content, style, content_key, style_key, self.f, self.g, self.h,
            alpha=alpha, max_style_positions=cfg.max_style_positions, seed=cfg.seed + self.level,
            query_chunk=cfg.query_chunk, eps=cfg.eps,
        )  # fmt: skip


class MultiLevelAdaAttN(nn.Module):
    """AdaAttN at every encoder level, the queries and keys of level ``l`` from levels
    ``0..l`` (:func:`concat_levels`)."""

    def __init__(self, channels: Sequence[int], config: AdaAttNConfig | None = None) -> None:
        super().__init__()
        self.config = config or AdaAttNConfig()
        self.levels = nn.ModuleList(
            AdaAttN(c, sum(channels[: i + 1]), self.config, level=i) for i, c in enumerate(channels)
        )

    def forward(
        self,
        content: Sequence[Float[Tensor, "B C h w"]],
        style: Sequence[Float[Tensor, "B C h w"]],
        alpha: float = 1.0,
    ) -> list[Float[Tensor, "B C h w"]]:
        if len(content) != len(self.levels) or len(style) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} feature levels")
        return [
            layer(content[i], style[i], concat_levels(content, i), concat_levels(style, i), alpha)
            for i, layer in enumerate(self.levels)
        ]
