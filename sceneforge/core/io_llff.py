"""LLFF ``poses_bounds.npy`` to and from :class:`SceneData`.

Each row is a 3x5 ``[R | t | (h, w, f)]`` (``world_from_cam`` with columns down, right,
back; converted in :mod:`sceneforge.core.conventions`) followed by the near and far
bounds. Rows follow the sorted image names in ``images/``. The principal point is the
image centre. When the images on disk differ in size from ``(h, w)`` (e.g. ``images_4/``),
the focal length is scaled per axis. Bounds are kept in ``metadata["llff_bounds"]``
(``{image name: (near, far)}``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from sceneforge.core.cameras import split_params, transform_points
from sceneforge.core.conventions import llff_to_opencv, opencv_to_llff
from sceneforge.core.image_io import ImageReadError, list_images
from sceneforge.core.io_common import (
    atomic_write_bytes,
    check_pose,
    find_masks,
    image_size,
    make_cameras,
    per_image_metadata,
    require_folder,
)
from sceneforge.core.scene import SceneData, SceneDataError

#: Relative size mismatch between ``hwf`` and the image file tolerated per axis after
#: scaling (downsampled LLFF folders round sizes to whole pixels).
_ASPECT_TOL = 0.02


def read_llff(
    path: str | Path,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
) -> SceneData:
    """Read an LLFF scene: ``poses_bounds.npy`` plus the images it describes.

    Args:
        path: scene folder holding ``poses_bounds.npy``, or the file itself.
        images_dir: image folder (default ``<scene>/images``; ``images_4`` etc. also work,
            the focal length is rescaled to the actual image size).
        masks_dir: optional mask folder (default ``<scene>/masks`` if present), matched by
            image stem.
    """
    path = Path(path)
    pb = path if path.name.endswith(".npy") else path / "poses_bounds.npy"
    if not path.exists():
        raise SceneDataError(f"{path}: scene folder does not exist")
    if not pb.is_file():
        raise SceneDataError(f"{pb}: no such file")
    root = pb.parent
    try:
        arr = np.load(pb, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SceneDataError(f"{pb}: not a readable .npy file ({e})") from e
    if arr.ndim != 2 or arr.shape[1] not in (15, 17) or arr.shape[0] == 0:
        raise SceneDataError(
            f"{pb}: expected an N x 17 array (3x5 pose + near/far), got {arr.shape}"
        )
    arr = arr.astype(np.float64)

    images_dir = require_folder(
        Path(images_dir) if images_dir is not None else root / "images", "images folder"
    )
    try:
        files = list_images(images_dir)
    except ImageReadError as e:
        raise SceneDataError(str(e)) from e
    if len(files) != len(arr):
        raise SceneDataError(
            f"{pb}: {len(arr)} poses but {len(files)} images in {images_dir}: "
            "poses_bounds.npy rows must match the sorted images one to one"
        )
    names = [f.name for f in files]
    for k, row in enumerate(arr):
        if not np.isfinite(row).all():
            raise SceneDataError(
                f"{pb}: row {k} (image {names[k]}) has a non-finite value: {row.tolist()}"
            )

    poses = torch.as_tensor(arr[:, :15]).reshape(-1, 3, 5)
    cam_from_world, hwf = llff_to_opencv(poses)
    for k in range(len(arr)):
        down, right, back = poses[k, :, 0], poses[k, :, 1], poses[k, :, 2]
        R_wfc = torch.stack([right, down, -back], dim=-1)
        check_pose(
            torch.cat([R_wfc, poses[k, :, 3:4]], dim=-1), f"{pb}: row {k} (image {names[k]})"
        )

    params, sizes = [], []
    for k, f in enumerate(files):
        w, h = image_size(f)
        h0, w0, focal = hwf[k].tolist()
        if min(h0, w0, focal) <= 0:
            raise SceneDataError(f"{pb}: row {k} (image {names[k]}) has a non-positive h, w or f")
        sx, sy = w / w0, h / h0
        if abs(sx / sy - 1.0) > _ASPECT_TOL:
            raise SceneDataError(
                f"{f}: image is {w}x{h} but {pb.name} row {k} says {w0:g}x{h0:g} "
                "(aspect ratios differ: wrong image folder or rotated image?)"
            )
        params.append([focal * sx, focal * sy, w / 2.0, h / 2.0])
        sizes.append((w, h))
    p = torch.tensor(params, dtype=torch.float64)
    if torch.equal(p[:, 0], p[:, 1]):
        model, p = "SIMPLE_PINHOLE", p[:, [0, 2, 3]]
    else:
        model = "PINHOLE"
    cameras = make_cameras(model, p, sizes, cam_from_world, str(pb))

    masks_required = masks_dir is not None
    if masks_dir is None:
        masks_dir = root / "masks" if (root / "masks").is_dir() else None
    else:
        masks_dir = require_folder(Path(masks_dir), "masks folder")
    metadata: dict = {"format": "llff", "poses_bounds": pb, "images_dir": images_dir}
    if arr.shape[1] == 17:
        metadata["llff_bounds"] = {
            n: (float(b[0]), float(b[1])) for n, b in zip(names, arr[:, 15:])
        }
    return SceneData(
        cameras=cameras,
        image_names=names,
        image_paths=files,
        mask_paths=find_masks(masks_dir, names, required=masks_required),
        root=root,
        metadata=metadata,
    )


def llff_hwf(scene: SceneData) -> torch.Tensor:
    """``(N, 3)`` LLFF ``(h, w, f)``; a SceneDataError naming the image if a camera has
    distortion, two focal lengths or an off-centre principal point (LLFF has none)."""
    cams = scene.cameras.to(dtype=torch.float64)
    if cams.model == "BAL":
        raise SceneDataError("LLFF cannot store BAL cameras")
    fx, fy, cx, cy, dist = split_params(cams.model, cams.params)
    w, h = cams.width.double(), cams.height.double()
    for i, name in enumerate(scene.image_names):
        problems = []
        if bool((dist[i] != 0).any()):
            problems.append(f"distortion {dist[i].tolist()}")
        if abs(fx[i] - fy[i]) > 1e-9 * abs(fx[i]):
            problems.append(f"fx {fx[i]:.6g} != fy {fy[i]:.6g}")
        if abs(cx[i] - w[i] / 2) > 1e-6 or abs(cy[i] - h[i] / 2) > 1e-6:
            problems.append(f"principal point ({cx[i]:.6g}, {cy[i]:.6g}) is not the image centre")
        if problems:
            raise SceneDataError(
                f"image {name}: LLFF poses_bounds.npy cannot store this camera ({'; '.join(problems)}); "
                "undistort / crop to a centred pinhole camera first"
            )
    return torch.stack([h, w, fx], dim=-1)


def llff_bounds(scene: SceneData) -> torch.Tensor:
    """``(N, 2)`` near/far per image: kept bounds, else the 0.1 / 99.9 percentiles of the
    depths of the sparse points (as LLFF's imgs2poses), else a guess from the camera spread."""
    kept = per_image_metadata(scene, "llff_bounds")
    if all(b is not None for b in kept):
        return torch.tensor(kept, dtype=torch.float64)
    cams = scene.cameras.to(dtype=torch.float64)
    out = []
    for i in range(len(scene)):
        z = None
        if scene.points is not None and len(scene.points):
            pts = scene.points.double()
            if scene.observations is not None:
                sel = scene.observations.point_idx[scene.observations.image_idx == i]
                pts = pts[sel] if len(sel) else pts
            z = transform_points(cams.cam_from_world[i], pts)[:, 2]
            z = z[z > 0]
        if z is not None and len(z):
            out.append(
                [float(np.percentile(z.numpy(), 0.1)), float(np.percentile(z.numpy(), 99.9))]
            )
        else:
            centers = cams.centers
            d = (centers[i] - centers.mean(0)).norm().item()
            d = d if d > 0 else 1.0
            out.append([0.1 * d, 2.0 * d])
    return torch.tensor(out, dtype=torch.float64)


def write_poses_bounds(scene: SceneData, path: Path) -> None:
    """Write ``poses_bounds.npy`` for ``scene`` (its images must already be sorted by name)."""
    if list(scene.image_names) != sorted(scene.image_names):
        raise SceneDataError("LLFF rows follow sorted image names: sort the scene first")
    hwf = llff_hwf(scene)
    poses = opencv_to_llff(scene.cameras.cam_from_world.double(), hwf)
    arr = torch.cat([poses.reshape(-1, 15), llff_bounds(scene)], dim=-1).numpy()
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(Path(path), buf.getvalue())
