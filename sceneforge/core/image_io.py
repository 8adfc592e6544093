"""Reading and writing images and masks with errors that name the file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sceneforge.core.atomic import atomic_open
from sceneforge.core.scene import SceneDataError

_log = logging.getLogger("sceneforge")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


class ImageReadError(SceneDataError):
    """An image or mask file that cannot be used; the message names it.

    A :class:`SceneDataError` (hence a ValueError), so one ``except`` catches all bad input.
    """


#: PIL modes decoded as they are; any other mode (palette, CMYK, YCbCr, LAB, HSV) is
#: converted to RGB(A) first, so that colours (not palette indices or ink) are returned.
_DIRECT_MODES = ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an ``H W [C]`` array like ``ImageOps.exif_transpose``."""
    if orientation in (2, 4, 5, 7):  # mirrored variants
        arr = arr[:, ::-1]
    turns = {3: 2, 4: 2, 5: 1, 6: -1, 7: -1, 8: 1}.get(orientation, 0)
    return np.ascontiguousarray(np.rot90(arr, turns))


def _open(path: Path) -> np.ndarray:
    """Decoded pixels (EXIF orientation applied) as uint8/uint16/int32/float32/bool."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            raw = str(im.tile[0].args) if im.tile else ""  # before getexif(), which may load
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            if im.mode in ("RGB", "RGBA") and ";16" in raw:
                # 16-bit colour: PIL would keep only 8 bits; OpenCV decodes all 16.
                arr = _decode_16bit_color(path)
                return _orient(arr, orientation)
            im.load()
            if im.mode not in _DIRECT_MODES:
                has_alpha = im.mode in ("PA", "RGBa") or "transparency" in im.info
                im = im.convert("RGBA" if has_alpha else "RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e
    return _orient(arr, orientation)


def _decode_16bit_color(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ImageReadError(f"{path}: not a readable 16-bit colour image")
    return arr[..., [2, 1, 0, 3][: arr.shape[-1]]]  # BGR(A) -> RGB(A)


def read_image(path: str | os.PathLike, keep_8bit: bool = False) -> Float[Tensor, "H W 3"]:
    """RGB float32 in [0, 1] from any file PIL reads.

    EXIF orientation is applied; 16-bit files are scaled by 1/65535 (all 16 bits kept),
    8-bit by 1/255; grayscale is repeated into 3 channels; alpha is dropped; palette and
    CMYK images are converted to RGB. Raises :class:`ImageReadError` naming the file.
    ``keep_8bit``: an 8-bit file comes back as its uint8 RGB values (a quarter of the memory;
    ``x.float() / 255`` gives exactly the float image), other files as float32.
    """
    arr = _open(Path(path))
    if arr.ndim == 2:  # layout first: it commutes with the value conversion below
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] == 2:
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageReadError(f"{path}: unsupported image layout {arr.shape}")
    if keep_8bit and arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr))
    if arr.dtype == np.uint16 or arr.dtype.kind in "iu" and arr.dtype.itemsize > 1:
        arr = arr.astype(np.float32) / 65535.0  # PIL mode "I" / "I;16*": 16-bit grayscale
    elif arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32)  # mode "F": floating-point data taken as [0, 1]
    else:
        arr = arr.astype(np.float32) / 255.0
    if not np.isfinite(arr).all():
        raise ImageReadError(f"{path}: image holds non-finite values")
    return torch.from_numpy(np.ascontiguousarray(np.clip(arr, 0.0, 1.0)))


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
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:  # PIL's own error for a file name without a known image extension
        raise ValueError(f"unknown file extension: {path.suffix.lower()}")
    with atomic_open(path, "wb") as f:
        Image.fromarray(image).save(f, format=fmt)


def scan_folder(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """``(images, others)`` in ``folder`` (sorted): image files by extension, and the other
    files that will be ignored (hidden files and sub-folders are not listed)."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    images, others = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    return images, others


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` (sorted by name); clear errors for missing or empty folders.

    Other files (a ``notes.txt``, a ``.mov``) are skipped with a logged note naming them.
    """
    folder = Path(folder)
    files, others = scan_folder(folder)
    if others:
        _log.info(
            "%s: skipping %d non-image file(s): %s",
            folder,
            len(others),
            ", ".join(p.name for p in others[:10]) + (" ..." if len(others) > 10 else ""),
        )
    if not files:
        raise ImageReadError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files
