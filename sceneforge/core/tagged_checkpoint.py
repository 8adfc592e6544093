"""Reading a ``torch.save``d dict marked with a ``"format"`` tag, safely and with clear errors.

Small model files (a stylizer, a feature renderer) are dicts holding their own format tag;
:func:`load_tagged_checkpoint` reads one with ``weights_only=True`` and says which file is
missing, unreadable or of another kind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def load_tagged_checkpoint(path: str | os.PathLike, fmt: str, what: str) -> dict[str, Any]:
    """The dict saved at ``path`` whose ``"format"`` is ``fmt`` (``what`` names the kind of
    file in the errors: FileNotFoundError when missing, ValueError when unreadable or not
    one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a readable {what} ({e})") from e
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"{path}: not a {what} (expected {fmt})")
    return data
