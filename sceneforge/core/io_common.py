"""Helpers shared by the scene readers and writers (COLMAP, nerfstudio, LLFF).

Masks are looked up the COLMAP way (``masks/<image name>.png``) or by the image's stem;
output folders are written atomically (built in a temporary sibling folder, then renamed)
and never replace the folder a scene's inputs live in.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.atomic import atomic_dir
from sceneforge.core.atomic import atomic_write_bytes as atomic_write_bytes  # re-exported
from sceneforge.core.cameras import Cameras, convert_params, most_general_model
from sceneforge.core.image_io import IMAGE_EXTENSIONS, ImageReadError, write_image_atomic
from sceneforge.core.scene import SceneData, SceneDataError

#: The camera models the scene formats can hold (BAL has no image and is not one of them).
IMAGE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def require_folder(path: Path, what: str = "scene folder") -> Path:
    """``path`` as an existing folder, else a :class:`SceneDataError` naming it."""
    path = Path(path)
    if not path.exists():
        raise SceneDataError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise SceneDataError(f"{path}: {what} is not a folder")
    return path


def find_mask(masks_dir: Path | None, image_name: str) -> Path | None:
    """The mask of ``image_name`` in ``masks_dir``: ``<name>.png`` (COLMAP) or same stem."""
    if masks_dir is None:
        return None
    colmap = masks_dir / f"{image_name}.png"
    if colmap.is_file():
        return colmap
    rel = Path(image_name)
    same = masks_dir / rel
    if same.is_file():
        return same
    for ext in IMAGE_EXTENSIONS:
        for cand in (masks_dir / rel.with_suffix(ext), masks_dir / rel.with_suffix(ext.upper())):
            if cand.is_file():
                return cand
    return None


def find_masks(
    masks_dir: Path | None, image_names: list[str], required: bool = False
) -> list[Path | None] | None:
    """One mask path (or None) per image; None when the folder is absent or holds none.

    A folder holding no mask for any image is an error when ``required`` (the user named
    it), else a warning (a default ``masks/`` folder that is empty): every pixel is used.
    """
    if masks_dir is None or not masks_dir.is_dir():
        return None
    paths = [find_mask(masks_dir, n) for n in image_names]
    if any(p is not None for p in paths):
        return paths
    msg = (
        f"{masks_dir}: masks folder holds no mask for any of the {len(image_names)} images "
        f"(expected e.g. {image_names[0]}.png)"
        if image_names
        else f"{masks_dir}: no images to match masks to"
    )
    if required:
        raise SceneDataError(msg)
    warnings.warn(f"{msg}; every pixel is used", stacklevel=3)
    return None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (EXIF rotation applied)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise SceneDataError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SceneDataError(f"{path}: not a readable image ({e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def unify_models(models: list[str], params: list[Tensor], where: str) -> tuple[str, Tensor]:
    """Express per-image ``params`` of possibly different models in one model.

    The target is :func:`most_general_model`; when that cannot hold a camera exactly
    (a PINHOLE with fx != fy next to a SIMPLE_RADIAL), OPENCV is used.
    """
    for m in models:
        if m not in IMAGE_MODELS:
            raise SceneDataError(
                f"{where}: camera model {m} is not supported (supported: {', '.join(IMAGE_MODELS)})"
            )
    target = most_general_model(models)
    try:
        out = [convert_params(m, p, target) for m, p in zip(models, params)]
    except ValueError:
        target = "OPENCV"
        out = [convert_params(m, p, target) for m, p in zip(models, params)]
    return target, torch.stack(out)


def check_pose(T: Tensor, where: str) -> None:
    """A :class:`SceneDataError` naming ``where`` if ``T`` (3x4) is non-finite or not rigid."""
    if not bool(torch.isfinite(T).all()):
        raise SceneDataError(f"{where}: non-finite pose {T.tolist()}")
    R = T[:, :3].double()
    err = (R @ R.T - torch.eye(3, dtype=R.dtype)).abs().max().item()
    det = torch.linalg.det(R).item()
    if err > 1e-3 or abs(det - 1.0) > 1e-3:
        raise SceneDataError(
            f"{where}: rotation is not orthonormal (|R R^T - I| = {err:.2g}, det = {det:.4g})"
        )


def make_cameras(
    model: str,
    params: Tensor,
    sizes: list[tuple[int, int]],
    cam_from_world: Tensor,
    where: str,
) -> Cameras:
    """Build float64 :class:`Cameras`, turning their ValueErrors into SceneDataErrors."""
    try:
        return Cameras(
            model,
            params.double(),
            torch.tensor([s[0] for s in sizes], dtype=torch.long),
            torch.tensor([s[1] for s in sizes], dtype=torch.long),
            cam_from_world.double(),
        )
    except ValueError as e:
        raise SceneDataError(f"{where}: {e}") from e


def per_image_metadata(scene: SceneData, key: str) -> list:
    """``scene.metadata[key]`` (a dict keyed by image name) as a list in image order."""
    table = scene.metadata.get(key) or {}
    return [table.get(n) for n in scene.image_names]


# ----------------------------------------------------------------------------- writing


def _inside(child: Path, parent: Path) -> bool:
    try:
        Path(os.path.abspath(child)).relative_to(os.path.abspath(parent))
    except ValueError:
        return False
    return True


def scene_sources(scene: SceneData) -> list[Path]:
    """Every file or folder a disk-backed scene reads from (to protect them from writers)."""
    out: list[Path] = []
    if scene.root is not None:
        out.append(Path(scene.root))
    out += [Path(p) for p in scene.image_paths or []]
    out += [Path(p) for p in scene.mask_paths or [] if p is not None]
    return out


@contextmanager
def atomic_output_dir(path: Path, scene: SceneData, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder next to ``path`` that replaces ``path`` on success
    (:func:`sceneforge.core.atomic.atomic_dir`).

    ``path`` may not exist yet or be empty; a non-empty one is replaced only with
    ``overwrite=True``, and never when the scene was read from inside it.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise SceneDataError(f"{path}: exists and is not a folder")
        if any(path.iterdir()):
            if not overwrite:
                raise SceneDataError(
                    f"{path}: folder exists and is not empty (pass overwrite=True)"
                )
            for src in scene_sources(scene):
                if _inside(src, path) or _inside(path, src):
                    raise SceneDataError(
                        f"{path}: refusing to overwrite the folder the scene was read from ({src})"
                    )
    with atomic_dir(path) as tmp:
        yield tmp


def write_images(scene: SceneData, images_dir: Path, names: list[str] | None = None) -> None:
    """Copy (disk-backed) or encode (in-memory) every image into ``images_dir/<name>``."""
    names = scene.image_names if names is None else names
    for i, name in enumerate(names):
        dst = images_dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if scene.image_paths is not None:
            src = Path(scene.image_paths[i])
            if not src.is_file():
                raise SceneDataError(f"{src}: no such image file")
            shutil.copyfile(src, dst)
        else:
            img = scene.images[i]
            arr = img.cpu().numpy() if img.dtype == torch.uint8 else img.float().cpu().numpy()
            try:
                write_image_atomic(dst, arr)
            except (ValueError, KeyError, OSError) as e:
                raise SceneDataError(f"{dst}: cannot write image ({e})") from e


def write_masks(scene: SceneData, dsts: list[Path]) -> list[bool]:
    """Write each image's mask (if any) to ``dsts[i]`` as 0/255 PNG; returns which exist."""
    written = []
    for i, dst in enumerate(dsts):
        if scene.masks is not None:
            m = scene.masks[i]
            if m is None:
                written.append(False)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image_atomic(dst, m.cpu().numpy().astype(np.uint8) * 255)
        elif scene.mask_paths is not None and scene.mask_paths[i] is not None:
            src = Path(scene.mask_paths[i])
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix.lower() == ".png":
                shutil.copyfile(src, dst)
            else:
                try:
                    from sceneforge.core.image_io import read_mask

                    mask = read_mask(src)
                except ImageReadError as e:
                    raise SceneDataError(str(e)) from e
                write_image_atomic(dst, mask.numpy().astype(np.uint8) * 255)
        else:
            written.append(False)
            continue
        written.append(True)
    return written


def focal_from_fov(fov_rad: float, size: float) -> float:
    """Focal length in pixels from a full field of view (radians) across ``size`` pixels."""
    return 0.5 * size / math.tan(0.5 * fov_rad)


def as_4x4(T: Float[Tensor, "3 4"]) -> list[list[float]]:
    """A 3x4 rigid transform as nested lists of a 4x4 matrix (for JSON)."""
    rows = T.double().tolist()
    return [*rows, [0.0, 0.0, 0.0, 1.0]]
