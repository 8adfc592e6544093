"""Load and save scenes in any supported format: the one entry point for scene data I/O.

Formats: COLMAP sparse models (``colmap`` binary, ``colmap-text``), nerfstudio /
instant-ngp ``transforms.json`` (``nerfstudio``) and LLFF ``poses_bounds.npy`` (``llff``).
``load_scene`` detects the format; ``save_scene`` writes a self-contained folder
atomically. ``validate_scene`` opens every image (and mask) and names each bad file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sceneforge.core.image_io import ImageReadError, list_images, read_image, read_mask
from sceneforge.core.io_colmap import find_model_dir, read_colmap, write_colmap
from sceneforge.core.io_common import (
    atomic_output_dir,
    atomic_write_bytes,
    image_size,
    per_image_metadata,
    write_images,
    write_masks,
)
from sceneforge.core.io_llff import read_llff, write_poses_bounds
from sceneforge.core.io_nerfstudio import (
    read_depth,
    read_transforms,
    transforms_dict,
    write_ply_points,
)
from sceneforge.core.scene import SceneData, SceneDataError

#: Format names accepted by :func:`load_scene` and :func:`save_scene`.
FORMATS = ("colmap", "colmap-text", "nerfstudio", "llff")

__all__ = [
    "FORMATS",
    "SceneDataError",
    "detect_format",
    "list_images",
    "load_depth",
    "load_scene",
    "read_colmap",
    "read_llff",
    "read_transforms",
    "save_scene",
    "validate_scene",
]


def detect_format(path: str | Path) -> str:
    """The format of the scene at ``path`` (file or folder), or a SceneDataError saying
    that no poses were found there."""
    path = Path(path)
    if not path.exists():
        raise SceneDataError(f"{path}: scene folder does not exist")
    if path.is_file():
        if path.suffix == ".json":
            return "nerfstudio"
        if path.name.endswith(".npy"):
            return "llff"
        if path.name in ("cameras.bin", "cameras.txt"):
            return "colmap"
        raise SceneDataError(
            f"{path}: not a scene file (transforms.json, poses_bounds.npy, cameras.bin)"
        )
    if (path / "transforms.json").is_file():
        return "nerfstudio"
    if (path / "poses_bounds.npy").is_file():
        return "llff"
    if find_model_dir(path) is not None:
        return "colmap"
    hint = ""
    for sub in ("images", ""):
        folder = path / sub if sub else path
        try:
            n = len(list_images(folder))
        except ImageReadError:
            continue
        hint = f" ({n} images in {folder} but no poses for them: reconstruct them first)"
        break
    raise SceneDataError(
        f"{path}: no poses found: expected transforms.json, poses_bounds.npy or a COLMAP "
        f"model (sparse/0/cameras.bin or .txt){hint}"
    )


def load_scene(
    path: str | Path,
    format: str | None = None,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
    check_images: bool = False,
) -> SceneData:
    """Read a posed scene, detecting its format unless ``format`` is given.

    Args:
        path: scene folder (or its transforms.json / poses_bounds.npy / model folder).
        format: one of :data:`FORMATS` (``colmap-text`` reads like ``colmap``).
        images_dir: image folder for COLMAP and LLFF scenes (default ``<path>/images``).
        masks_dir: mask folder for COLMAP and LLFF scenes (default ``<path>/masks``).
        check_images: open every image and mask header now (see :func:`validate_scene`).
    """
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown scene format {fmt!r}; supported: {FORMATS}")
    if fmt in ("colmap", "colmap-text"):
        folder = path.parent if path.is_file() else path
        scene = read_colmap(folder, images_dir=images_dir, masks_dir=masks_dir)
    elif fmt == "nerfstudio":
        if images_dir is not None or masks_dir is not None:
            raise ValueError("transforms.json names its own image and mask files")
        scene = read_transforms(path)
    else:
        scene = read_llff(path, images_dir=images_dir, masks_dir=masks_dir)
    if check_images:
        validate_scene(scene)
    return scene


def validate_scene(scene: SceneData, decode: bool = False) -> None:
    """Check every image and mask of ``scene``: the file opens and has its camera's size.

    ``decode=True`` also decodes every pixel (finds truncated files; slower). Raises one
    SceneDataError listing each bad file and its problem.
    """
    problems = []
    for i, name in enumerate(scene.image_names):
        want = (int(scene.cameras.width[i]), int(scene.cameras.height[i]))
        if scene.image_paths is not None:
            path = Path(scene.image_paths[i])
            try:
                got = image_size(path)
                if decode:
                    got = tuple(read_image(path).shape[1::-1])
            except SceneDataError as e:  # ImageReadError is a SceneDataError too
                problems.append(str(e))
                continue
        else:
            got = tuple(scene.images[i].shape[1::-1])
            path = name
        if got != want:
            problems.append(
                f"{path}: image is {got[0]}x{got[1]} but its camera says {want[0]}x{want[1]}"
            )
        mask_path = scene.mask_paths[i] if scene.mask_paths is not None else None
        if mask_path is not None:
            try:
                mgot = image_size(Path(mask_path))
                if decode:
                    mgot = tuple(read_mask(mask_path).shape[::-1])
            except SceneDataError as e:
                problems.append(str(e))
                continue
            if mgot != want:
                problems.append(
                    f"{mask_path}: mask is {mgot[0]}x{mgot[1]} but its image is {want[0]}x{want[1]}"
                )
    if problems:
        where = f" in {scene.root}" if scene.root else ""
        raise SceneDataError(f"{len(problems)} bad image file(s){where}:\n" + "\n".join(problems))


def load_depth(scene: SceneData, i: int) -> torch.Tensor | None:
    """Depth map of image ``i``: in-memory ``scene.depths`` or the file named in
    ``metadata["depth_paths"]`` (nerfstudio ``depth_file_path``), else None."""
    if scene.depths is not None:
        return scene.depths[i]
    path = (scene.metadata.get("depth_paths") or {}).get(scene.image_names[i])
    if path is None:
        return None
    depth = read_depth(path, float(scene.metadata.get("depth_unit_scale_factor", 1e-3)))
    want = (int(scene.cameras.height[i]), int(scene.cameras.width[i]))
    if tuple(depth.shape) != want:
        raise SceneDataError(
            f"{path}: depth is {depth.shape[1]}x{depth.shape[0]} but the image is {want[1]}x{want[0]}"
        )
    return depth


def _mask_name(name: str) -> str:
    """Mask file name for an image: its path with a ``.png`` suffix."""
    return Path(name).with_suffix(".png").as_posix()


def save_scene(
    scene: SceneData,
    path: str | Path,
    format: str = "colmap",
    overwrite: bool = False,
    copy_images: bool = True,
) -> Path:
    """Write ``scene`` as a folder in ``format`` atomically; returns the folder.

    Layouts: ``colmap``/``colmap-text``: ``images/``, ``masks/<name>.png``, ``sparse/0/``;
    ``nerfstudio``: ``transforms.json``, ``images/``, ``masks/``, ``depths/``,
    ``sparse_pc.ply``; ``llff``: ``poses_bounds.npy`` (rows sorted by image name),
    ``images/``, ``masks/<stem>.png``. With ``copy_images=False`` disk-backed images are
    referenced, not copied (COLMAP then needs ``images_dir`` when loading; LLFF cannot).
    An existing non-empty folder is replaced only with ``overwrite=True``, never the
    folder the scene was read from.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown scene format {format!r}; supported: {FORMATS}")
    path = Path(path)
    if not copy_images and scene.image_paths is None:
        copy_images = True  # in-memory images must be written somewhere
    if format == "llff":
        if not copy_images:
            raise SceneDataError(f"{path}: LLFF needs its images in images/ (copy_images=True)")
        if any("/" in n for n in scene.image_names):
            raise SceneDataError(f"{path}: LLFF images/ is flat; image names may not hold folders")
        order = sorted(range(len(scene)), key=lambda i: scene.image_names[i])
        scene = scene.subset(order)
    with atomic_output_dir(path, scene, overwrite) as tmp:
        if copy_images:
            write_images(scene, tmp / "images")
        if format in ("colmap", "colmap-text"):
            write_colmap(scene, tmp / "sparse" / "0", binary=format == "colmap")
            write_masks(scene, [tmp / "masks" / f"{n}.png" for n in scene.image_names])
        elif format == "llff":
            write_poses_bounds(scene, tmp / "poses_bounds.npy")
            write_masks(scene, [tmp / "masks" / _mask_name(n) for n in scene.image_names])
        else:
            _write_nerfstudio(scene, tmp, path, copy_images)
    return path


def _write_nerfstudio(scene: SceneData, tmp: Path, final: Path, copy_images: bool) -> None:
    """Fill ``tmp`` (to become ``final``) with transforms.json and its files."""
    import json

    import numpy as np

    def rel(p: Path) -> str:
        return Path(os.path.relpath(os.path.abspath(p), os.path.abspath(final))).as_posix()

    if copy_images:
        file_paths = [f"images/{n}" for n in scene.image_names]
    else:
        file_paths = [rel(p) for p in scene.image_paths]
    mask_names = [f"masks/{_mask_name(n)}" for n in scene.image_names]
    written = write_masks(scene, [tmp / m for m in mask_names])
    mask_paths = [m if ok else None for m, ok in zip(mask_names, written)]

    depth_paths: list[str | None] = [None] * len(scene)
    if scene.depths is not None:
        for i, (name, depth) in enumerate(zip(scene.image_names, scene.depths)):
            rel_name = f"depths/{Path(name).with_suffix('.npy').as_posix()}"
            (tmp / rel_name).parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp / rel_name, depth.float().cpu().numpy())
            depth_paths[i] = rel_name
    else:
        import shutil

        for i, src in enumerate(per_image_metadata(scene, "depth_paths")):
            if src is None:
                continue
            rel_name = (
                f"depths/{Path(scene.image_names[i]).with_suffix(Path(src).suffix).as_posix()}"
            )
            (tmp / rel_name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel_name)
            depth_paths[i] = rel_name

    ply = None
    if scene.points is not None:
        ply = "sparse_pc.ply"
        write_ply_points(tmp / ply, scene.points, scene.point_colors)
    content = transforms_dict(scene, file_paths, mask_paths, depth_paths, ply)
    content = json.loads(json.dumps(content, default=_json_default))
    atomic_write_bytes(tmp / "transforms.json", json.dumps(content, indent=2).encode())


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in transforms.json")
