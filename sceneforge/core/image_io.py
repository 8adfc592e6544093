"""Reading and writing images and masks with errors that name the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from sceneforge.core.scene import SceneDataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


class ImageReadError(SceneDataError):
    """An image or mask file that cannot be used; the message names it.

    A :class:`SceneDataError` (hence a ValueError), so one ``except`` catches all bad input.
    """


def _open(path: Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # honour EXIF rotation like every viewer does
            im.load()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e
    return arr


def read_image(path: str | os.PathLike) -> Float[Tensor, "H W 3"]:
    """RGB float32 in [0, 1]; grayscale is repeated, alpha dropped, 16-bit scaled."""
    arr = _open(Path(path))
    if arr.dtype == np.uint16 or arr.dtype == np.int32:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype == bool:
        arr = arr.astype(np.float32)
    else:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] == 2:
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageReadError(f"{path}: unsupported image layout {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def read_mask(path: str | os.PathLike) -> Bool[Tensor, "H W"]:
    """A mask image as booleans (nonzero = True), from any channel count."""
    arr = _open(Path(path))
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    return torch.from_numpy(arr > 0)


def write_image_atomic(path: str | os.PathLike, image: Float[Tensor, "H W C"] | np.ndarray) -> None:
    """Write an image (float [0, 1] or uint8) so that readers never see a partial file."""
    path = Path(path)
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` (sorted by name); clear errors for missing or empty folders."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not files:
        raise ImageReadError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files
