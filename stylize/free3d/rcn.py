"""Ray conditioning normalisation (RCN): per-pixel rays modulate the UNet's GroupNorms.

Every ``GroupNorm`` of a diffusers UNet (resnets, spatial transformers, the output norm: all
resolutions) gets a per-pixel scale and shift computed from the Plücker ray map of the target
view (Free3D, Zheng & Vedaldi 2024)::

    y = GroupNorm(x) * (1 + scale(r)) + shift(r)

The ray map is encoded once by a pointwise MLP (with a harmonic embedding), area-pooled to
each feature resolution, and mapped by a per-norm zero-initialised 1x1 convolution to
``(scale, shift)``; at initialisation the UNet computes exactly what it computed before.
Everything is pointwise, so a ray changes the modulation only where its pixel lies.

The diffusers class is not modified: the modulation is applied by forward hooks registered on
the norm modules (:meth:`RayConditionedNorm.attach`), and the rays of the current call are
set with :meth:`RayConditionedNorm.conditioned`; outside that block the hooks pass the norms'
outputs through (the UNet is the plain diffusers model).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .rays import resize_ray_map


def harmonic_embedding(x: Float[Tensor, "B C H W"], num_freqs: int) -> Float[Tensor, "B D H W"]:
    """``[x, sin(2^k x), cos(2^k x)]`` for ``k < num_freqs`` (``D = C (1 + 2 num_freqs)``)."""
    if num_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)
    xf = (x[:, :, None] * freqs[None, None, :, None, None]).flatten(1, 2)
    return torch.cat([x, xf.sin(), xf.cos()], dim=1)


def modulate(
    normed: Float[Tensor, "B C H W"],
    scale: Float[Tensor, "B C H W"],
    shift: Float[Tensor, "B C H W"],
) -> Float[Tensor, "B C H W"]:
    """``normed * (1 + scale) + shift``."""
    return normed * (1.0 + scale) + shift


class RayEncoder(nn.Module):
    """Pointwise MLP from a (harmonically embedded) 6-channel ray map to ray features."""

    def __init__(self, hidden: int, num_freqs: int) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        d_in = 6 * (1 + 2 * num_freqs)
        self.net = nn.Sequential(
            nn.Conv2d(d_in, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1), nn.SiLU()
        )

    def forward(self, rays: Float[Tensor, "B 6 H W"]) -> Float[Tensor, "B F H W"]:
        return self.net(harmonic_embedding(rays, self.num_freqs))


class _Context:
    """Ray features of the current UNet call, shared by the hooks (not a module)."""

    def __init__(self) -> None:
        self.features: Tensor | None = None
        self.pooled: dict[tuple[int, int], Tensor] = {}

    def at(self, h: int, w: int) -> Tensor:
        assert self.features is not None
        if (h, w) not in self.pooled:
            self.pooled[(h, w)] = resize_ray_map(self.features, h, w)
        return self.pooled[(h, w)]


class RCNHead(nn.Module):
    """Zero-initialised 1x1 conv from ray features to one norm's ``(scale, shift)``."""

    def __init__(self, hidden: int, channels: int, ctx: _Context) -> None:
        super().__init__()
        self.proj = nn.Conv2d(hidden, 2 * channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.ctx = ctx

    def scale_shift(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        return self.proj(self.ctx.at(h, w)).chunk(2, dim=1)

    def hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        """Forward hook of the norm: modulate its output in place of the plain one."""
        if self.ctx.features is None or output.ndim != 4:
            return output  # outside ``conditioned``: the plain UNet; or a norm over tokens
        scale, shift = self.scale_shift(*output.shape[-2:])
        if scale.shape[0] != output.shape[0]:
            raise ValueError(
                f"RCN: rays for {scale.shape[0]} views but the UNet batch has {output.shape[0]}"
            )
        return modulate(output, scale.to(output.dtype), shift.to(output.dtype))


def _key(name: str) -> str:
    return name.replace(".", "__")


class RayConditionedNorm(nn.Module):
    """RCN for one UNet: a ray encoder and one zero-init head per ``GroupNorm``.

    Built from the UNet it will modulate (the heads are keyed by the norms' module names, so
    the weights save and load by name) and attached with :meth:`attach`.
    """

    def __init__(self, unet: nn.Module, hidden: int = 64, num_freqs: int = 4) -> None:
        super().__init__()
        self._ctx = _Context()
        self.encoder = RayEncoder(hidden, num_freqs)
        self.heads = nn.ModuleDict(
            {
                _key(name): RCNHead(hidden, m.num_channels, self._ctx)
                for name, m in unet.named_modules()
                if isinstance(m, nn.GroupNorm)
            }
        )
        if not self.heads:
            raise ValueError("RCN: the UNet has no GroupNorm to modulate")

    @property
    def norm_names(self) -> list[str]:
        """Module names (in the UNet) of the modulated norms."""
        return [k.replace("__", ".") for k in self.heads]

    def attach(self, unet: nn.Module) -> None:
        """Register the forward hooks on ``unet``'s norms (replacing any of ours there)."""
        self.detach(unet)
        modules = dict(unet.named_modules())
        for key, head in self.heads.items():
            name = key.replace("__", ".")
            if name not in modules:
                raise ValueError(f"RCN: the UNet has no module {name!r}")
            modules[name].register_forward_hook(head.hook)

    def detach(self, unet: nn.Module) -> None:
        """Remove our hooks from ``unet`` (it is then the plain diffusers model again).

        Hooks are found on the modules, not through stored handles, so a deep copy of a
        model detaches its own hooks only.
        """
        heads = set(map(id, self.heads.values()))
        for m in unet.modules():
            for hid, hook in list(m._forward_hooks.items()):
                if id(getattr(hook, "__self__", None)) in heads:
                    del m._forward_hooks[hid]
                    m._forward_hooks_with_kwargs.pop(hid, None)
                    m._forward_hooks_always_called.pop(hid, None)

    @contextmanager
    def conditioned(self, rays: Float[Tensor, "B 6 H W"]) -> Iterator[None]:
        """Within the block, the attached UNet's norms are modulated by ``rays``."""
        self._ctx.features = self.encoder(rays)
        self._ctx.pooled = {}
        try:
            yield
        finally:
            self._ctx.features = None
            self._ctx.pooled = {}


__all__ = ["RCNHead", "RayConditionedNorm", "RayEncoder", "harmonic_embedding", "modulate"]
