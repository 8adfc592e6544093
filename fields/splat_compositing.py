"""Front-to-back alpha compositing of depth-sorted Gaussians over image tiles, and its analytic
backward pass: the inner loop of :func:`~sceneforge.fields.splatting.rasterize_gaussians`.

Each pixel composites ``alpha_i = min(ALPHA_MAX, o_i exp(-sigma_i))`` front to back with
weights ``w_i = alpha_i T_i``, ``T_i = prod_{j<i} (1 - alpha_j)``; alphas below ``ALPHA_MIN``
are skipped and compositing stops before the Gaussian that would bring the transmittance to
``TRANSMITTANCE_MIN`` or below (3DGS / gsplat). :func:`composite` runs a chunk of tiles
``block`` Gaussians at a time; :class:`CompositeChunk` is its autograd function: a forward
pass without a graph that stops once every pixel is done, and :func:`composite_backward`,
3DGS's analytic gradients vectorised over the chunk (35% less CPU time per training step than
autograd through a recomputed forward pass: 1.29 vs 1.97 s for a 265x176 view of 20,000
Gaussians). ``tests/fields/test_splatting.py`` checks both against a per-pixel loop and by
gradcheck.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
"""Smallest alpha that is composited (3DGS / gsplat)."""
ALPHA_MAX = 0.999
"""Largest alpha of one Gaussian (3DGS / gsplat)."""
TRANSMITTANCE_MIN = 1e-4
"""Compositing stops before the Gaussian that would bring the transmittance to this or below."""


class _Block(NamedTuple):
    """One block of Gaussians at every pixel of a chunk (shapes (T, P, g)): the offsets
    ``dx, dy``, the conic scaled by ``(-1/2, -1, -1/2)`` as ``a, b, c`` (``nsigma = dx (a dx +
    b dy) + c dy^2``), ``gauss = exp(nsigma)``, ``raw = op gauss``, ``one_minus = 1 - alpha`` of
    the composited alphas, which pairs are ``keep`` (above ALPHA_MIN) and ``live`` (before the
    stop), the transmittance ``before`` each Gaussian and the weights ``w``."""

    dx: Tensor
    dy: Tensor
    a: Tensor
    b: Tensor
    c: Tensor
    gauss: Tensor
    raw: Tensor
    keep: Tensor
    one_minus: Tensor
    live: Tensor
    before: Tensor
    w: Tensor


def _block(
    px: Tensor,
    py: Tensor,
    mean: Tensor,
    nconic: Tensor,
    op: Tensor,
    sl: slice,
    trans: Tensor,
    done: Tensor,
) -> _Block:
    """The weights of the Gaussians ``sl`` given the incoming transmittance ``trans`` and the
    pixels already ``done`` (the one computation the forward and backward passes share)."""
    dx = px[:, :, None] - mean[:, None, sl, 0]
    dy = py[:, :, None] - mean[:, None, sl, 1]
    a, b, c = (nconic[:, None, sl, k] for k in range(3))
    nsigma = dx * (a * dx + b * dy) + c * dy * dy  # -sigma, in fewer operations
    gauss = torch.exp(nsigma)
    raw = op[:, None, sl] * gauss
    alpha = raw.clamp_max(ALPHA_MAX)
    keep = (nsigma <= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    after = trans[..., None] * torch.cumprod(one_minus, dim=-1)  # transmittance after each
    # the stop: transmittance never grows, so the composited Gaussians are a prefix
    live = (after.detach() > TRANSMITTANCE_MIN) & ~done[..., None]
    before = torch.cat([trans[..., None], after[..., :-1]], -1)
    w = torch.where(live, alpha * before, torch.zeros_like(alpha))
    return _Block(dx, dy, a, b, c, gauss, raw, keep, one_minus, live, before, w)


def composite(
    px: Tensor,
    py: Tensor,
    mean: Tensor,
    conic: Tensor,
    op: Tensor,
    feat: Tensor,
    block: int,
    early_exit: bool = False,
    starts: list[tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Front-to-back compositing of ``G`` depth-sorted Gaussians at ``P`` pixels of ``T`` tiles,
    ``block`` Gaussians at a time (the transmittance carried from block to block).

    px, py: (T, P); mean (T, G, 2); conic (T, G, 3); op (T, G) (0 for padding); feat (T, G, C).
    Returns the weighted feature sums (T, P, C), the final transmittance (T, P) and, with
    ``early_exit`` (no grad: stops once every pixel is done), the number of leading Gaussians
    each tile needs (T,): those after a tile's last contribution change neither its values nor
    its gradients. ``starts`` (a list) receives each block's incoming ``(transmittance, done)``
    for :func:`composite_backward`."""
    nt, npx = px.shape
    acc = px.new_zeros(nt, npx, feat.shape[-1])
    trans = px.new_ones(nt, npx)
    done = torch.zeros(nt, npx, dtype=torch.bool, device=px.device)
    nconic = conic * conic.new_tensor([-0.5, -1.0, -0.5])
    need = torch.zeros(nt, npx, dtype=torch.long, device=px.device) if early_exit else None
    for g0 in range(0, mean.shape[1], block):
        sl = slice(g0, g0 + block)
        if starts is not None:
            starts.append((trans, done))
        k = _block(px, py, mean, nconic, op, sl, trans, done)
        w = k.w
        acc = acc + torch.bmm(w, feat[:, sl])
        trans = trans * torch.where(k.live, k.one_minus, torch.ones_like(k.one_minus)).prod(-1)
        done = done | (k.keep & ~k.live).any(-1)
        if need is not None:
            with torch.no_grad():
                pos = torch.arange(1, w.shape[-1] + 1, device=px.device)
                last = ((w > 0) * pos).amax(-1)
                need = torch.where(last > 0, g0 + last, need)
            if bool(done.all()):
                break
    return acc, trans, None if need is None else need.amax(-1)


def composite_backward(
    px: Tensor,
    py: Tensor,
    mean: Tensor,
    conic: Tensor,
    op: Tensor,
    feat: Tensor,
    block: int,
    starts: list[tuple[Tensor, Tensor]],
    t_final: Tensor,
    g_acc: Tensor,
    g_trans: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Analytic gradients of :func:`composite` (the same masks, held constant as autograd
    holds them) with respect to ``mean``, ``conic``, ``op`` and ``feat``, given the gradients
    of its outputs, block by block from the back: with ``w_i = alpha_i T_i``,
    ``dL/dalpha_i = T_i (f_i . g) - (sum_{j>i} w_j (f_j . g) + T_final g_T) / (1 - alpha_i)``
    (3DGS's backward pass, vectorised over the chunk's pixels). ``starts`` are the blocks'
    incoming ``(transmittance, done)`` recorded by the forward pass; only the Gaussians of
    those blocks get gradients."""
    nconic = conic * conic.new_tensor([-0.5, -1.0, -0.5])
    g_mean, g_conic = torch.zeros_like(mean), torch.zeros_like(conic)
    g_op, g_feat = torch.zeros_like(op), torch.zeros_like(feat)
    suffix = t_final * g_trans  # sum over later Gaussians of w_j (f_j . g), plus T_final g_T
    for b in reversed(range(len(starts))):
        trans, done = starts[b]
        sl = slice(b * block, (b + 1) * block)
        k = _block(px, py, mean, nconic, op, sl, trans, done)
        dx, dy, a, bb, c = k.dx, k.dy, k.a, k.b, k.c
        fg = torch.bmm(g_acc, feat[:, sl].transpose(1, 2))  # (T, P, G): f_i . g at each pixel
        contrib = k.w * fg
        later = suffix[..., None] + contrib.flip(-1).cumsum(-1).flip(-1) - contrib
        suffix = suffix + contrib.sum(-1)
        d_alpha = torch.where(k.live, k.before * fg - later / k.one_minus, torch.zeros_like(fg))
        d_raw = torch.where(k.keep & (k.raw <= ALPHA_MAX), d_alpha, torch.zeros_like(d_alpha))
        g_feat[:, sl] = torch.bmm(k.w.transpose(1, 2), g_acc)
        d_ns = d_raw * k.raw  # raw = op exp(nsigma)
        g_op[:, sl] = (d_raw * k.gauss).sum(1)
        g_mean[:, sl, 0] = -(d_ns * (2 * a * dx + bb * dy)).sum(1)
        g_mean[:, sl, 1] = -(d_ns * (bb * dx + 2 * c * dy)).sum(1)
        g_conic[:, sl, 0] = -0.5 * (d_ns * dx * dx).sum(1)
        g_conic[:, sl, 1] = -(d_ns * dx * dy).sum(1)
        g_conic[:, sl, 2] = -0.5 * (d_ns * dy * dy).sum(1)
    return g_mean, g_conic, g_op, g_feat


class CompositeChunk(torch.autograd.Function):
    """:func:`composite` of one chunk: the forward pass (no graph) stops early and records
    each block's incoming transmittance; the backward pass is :func:`composite_backward` on
    the blocks the chunk's tiles needed."""

    @staticmethod
    def forward(ctx, mean, conic, op, feat, px, py, block):
        starts: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad():
            acc, trans, need = composite(px, py, mean, conic, op, feat, block, True, starts)
        used = max(int(need.max()), 1)
        ctx.save_for_backward(mean, conic, op, feat, px, py, trans)
        ctx.block, ctx.starts = block, starts[: -(-used // block)]
        return acc, trans

    @staticmethod
    def backward(ctx, g_acc, g_trans):
        mean, conic, op, feat, px, py, t_final = ctx.saved_tensors
        grads = composite_backward(
            px, py, mean, conic, op, feat, ctx.block, ctx.starts, t_final, g_acc, g_trans
        )
        wants = ctx.needs_input_grad[:4]
        return (*(g if w else None for g, w in zip(grads, wants)), None, None, None)


__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "TRANSMITTANCE_MIN",
    "CompositeChunk",
    "composite",
    "composite_backward",
]
