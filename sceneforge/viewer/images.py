"""Images for the panel and the frustums: thumbnails and mask / fill-mask previews."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sceneforge.viewer.cameras import render_size

if TYPE_CHECKING:
    from torch import Tensor


def resize_long_side(img: np.ndarray, long_side: int) -> np.ndarray:
    """``img`` shrunk (area interpolation) to ``long_side`` on its long side; never enlarged."""
    import cv2

    h, w = img.shape[:2]
    nw, nh = render_size(w, h, min(long_side, max(w, h)))
    if (nw, nh) == (w, h):
        return img
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)


def to_uint8(img: Tensor) -> np.ndarray:
    """A float image in [0, 1] as uint8."""
    import torch

    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def mask_preview(mask: Tensor) -> np.ndarray:
    """A boolean mask (True = usable) as a uint8 RGB image: usable white, ignored red."""
    m = mask.numpy().astype(bool)
    out = np.empty((*m.shape, 3), np.uint8)
    out[m] = (255, 255, 255)
    out[~m] = (220, 30, 30)
    return out


def fill_preview(image: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``image`` with the pixels a completion fills (``fill`` True) tinted magenta."""
    import cv2

    if fill.shape != image.shape[:2]:
        fill = cv2.resize(
            fill.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    out = image.copy()
    out[fill] = (0.4 * out[fill] + 0.6 * np.array([255, 0, 255])).astype(np.uint8)
    return out


__all__ = ["fill_preview", "mask_preview", "resize_long_side", "to_uint8"]
