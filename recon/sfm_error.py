"""The error of every SfM stage: this input cannot be reconstructed, and why."""

from __future__ import annotations


class SfMError(ValueError):
    """Reconstruction impossible with this input; the message says why."""
