"""Torch devices: the ``--device`` names (``auto``, ``cpu``, ``cuda``, ``cuda:N``) and random
draws that let one CPU ``torch.Generator`` drive tensors on any device.

PyTorch refuses ``torch.rand(..., generator=cpu_generator, device="cuda")``. The trainer keeps
a CPU generator (its state is checkpointed for exact resume), so every draw that takes a
generator goes through :func:`draw`: it draws on the generator's own device and moves the
result to the target device. On CPU the result is bit-identical to a direct draw, and the
same seed gives the same numbers on every device.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


class DeviceError(ValueError):
    """A device name that is unknown or not usable on this machine (the message says which)."""


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device for a ``--device`` value.

    ``auto`` is ``cuda`` when ``torch.cuda.is_available()`` else ``cpu``; ``cuda`` and
    ``cuda:N`` need CUDA (a :class:`DeviceError`, a ValueError, says so and suggests
    ``--device cpu`` otherwise); any other name is a :class:`DeviceError` naming it.
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m is None:
        raise DeviceError(f"unknown device {name!r}; use {DEVICE_NAMES}")
    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = f"torch {torch.__version__} " + (
            f"is built for CUDA {built} but finds no CUDA device"
            if built
            else "is a CPU-only build"
        )
        raise DeviceError(
            f"device {name!r} needs CUDA, which is not available here ({why}); "
            "use --device cpu (or --device auto, which picks CUDA only when it is available)"
        )
    if m.group(1) is not None:
        index, count = int(m.group(1)), torch.cuda.device_count()
        if index >= count:
            raise DeviceError(
                f"device {name!r}: this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1}); use one of those or --device cpu"
            )
        return torch.device("cuda", index)
    return torch.device("cuda")


def draw(
    fn: Callable[..., Tensor],
    *args,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    **kwargs,
) -> Tensor:
    """``fn(*args, generator=generator, **kwargs)`` (``torch.rand``, ``randn``, ``randint``,
    ``randperm``, ...) drawn on the generator's device and moved to ``device``.

    Without a generator the draw happens on ``device`` directly (torch's default RNG of that
    device). ``device=None`` means the generator's device (or torch's default device).
    """
    if generator is None:
        return fn(*args, device=device, **kwargs)
    out = fn(*args, generator=generator, device=generator.device, **kwargs)
    return out if device is None else out.to(device)


__all__ = ["DEVICE_NAMES", "DeviceError", "draw", "resolve_device"]
