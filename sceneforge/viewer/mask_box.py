"""The world box of ``sceneforge complete --mask-box``: parsed, formatted and written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sceneforge.core import run_files
from sceneforge.core.atomic import atomic_write_text

#: Default name of the file the box control writes, inside the run (or scene) folder.
MASK_BOX_FILE = run_files.MASK_BOX


@dataclass(frozen=True)
class MaskBox:
    """Axis-aligned world box, as ``sceneforge complete --mask-box`` takes it."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.lo) != 3 or len(self.hi) != 3:
            raise ValueError("a mask box has 3 minima and 3 maxima")
        vals = (*self.lo, *self.hi)
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"mask box values must be finite, got {vals}")
        if any(a >= b for a, b in zip(self.lo, self.hi)):
            raise ValueError(f"mask box needs min < max on every axis, got {self.lo} {self.hi}")

    @classmethod
    def from_center_size(cls, center, size) -> MaskBox:
        c = [float(v) for v in center]
        s = [abs(float(v)) for v in size]
        return cls(
            tuple(ci - si / 2 for ci, si in zip(c, s)), tuple(ci + si / 2 for ci, si in zip(c, s))
        )

    @classmethod
    def parse(cls, text: str, source: str = "mask box") -> MaskBox:
        """Read ``xmin ymin zmin xmax ymax zmax`` (a leading ``--mask-box`` is allowed)."""
        parts = text.replace(",", " ").split()
        if parts and parts[0] == "--mask-box":
            parts = parts[1:]
        if len(parts) != 6:
            raise ValueError(f"{source}: expected 6 numbers xmin ymin zmin xmax ymax zmax")
        try:
            v = [float(p) for p in parts]
        except ValueError as e:
            raise ValueError(f"{source}: not a number ({e})") from e
        try:
            return cls(tuple(v[:3]), tuple(v[3:]))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    @property
    def center(self) -> tuple[float, float, float]:
        return tuple((a + b) / 2 for a, b in zip(self.lo, self.hi))

    @property
    def size(self) -> tuple[float, float, float]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))

    def to_arg(self) -> str:
        """``xmin ymin zmin xmax ymax zmax`` with 6 significant digits."""
        return " ".join(f"{v:.6g}" for v in (*self.lo, *self.hi))

    def write(self, path: str | Path) -> Path:
        """Write ``to_arg()`` plus a newline atomically (:mod:`sceneforge.core.atomic`)."""
        return atomic_write_text(path, self.to_arg() + "\n")


__all__ = ["MASK_BOX_FILE", "MaskBox"]
