"""COLMAP sparse models (text or binary) through pycolmap, to and from :class:`SceneData`.

COLMAP is OpenCV inside like sceneforge; the only conversion is pycolmap's quaternion
order (x, y, z, w), done in :mod:`sceneforge.core.conventions`. Images are ordered by
COLMAP image id; unregistered images (no pose) are left out with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from sceneforge.core.cameras import make_rigid
from sceneforge.core.conventions import quat_wxyz_to_xyzw, quat_xyzw_to_wxyz
from sceneforge.core.io_common import (
    IMAGE_MODELS,
    check_pose,
    find_masks,
    make_cameras,
    require_folder,
    unify_models,
)
from sceneforge.core.rotations import matrix_to_quat_wxyz, quat_wxyz_to_matrix
from sceneforge.core.scene import Observations, SceneData, SceneDataError

#: Sub-folders (of a scene folder) where a COLMAP model is looked for, in order.
MODEL_SUBDIRS = ("sparse/0", "sparse", "colmap/sparse/0", "")


def _pycolmap():
    try:
        import pycolmap
    except ImportError as e:  # pragma: no cover - pycolmap is a core dependency
        raise ImportError("COLMAP models need pycolmap: pip install pycolmap") from e
    return pycolmap


def model_format(model_dir: Path) -> str | None:
    """``"binary"`` or ``"text"`` if ``model_dir`` holds a COLMAP model, else None."""
    if (model_dir / "cameras.bin").is_file():
        return "binary"
    if (model_dir / "cameras.txt").is_file():
        return "text"
    return None


def find_model_dir(folder: Path) -> Path | None:
    """The COLMAP model folder in a scene folder (``sparse/0``, ``sparse``, ...), or None."""
    for sub in MODEL_SUBDIRS:
        cand = folder / sub if sub else folder
        if model_format(cand) is not None:
            return cand
    return None


def _scene_root(model_dir: Path) -> Path:
    """The scene folder of a model folder: ``X`` for ``X/sparse/0``, ``X/sparse`` or ``X``."""
    if model_dir.parent.name == "sparse":
        return model_dir.parent.parent
    if model_dir.name == "sparse":
        return model_dir.parent
    return model_dir


def read_colmap(
    path: str | Path,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
) -> SceneData:
    """Read a COLMAP sparse model (text or binary) into a float64 :class:`SceneData`.

    Args:
        path: the model folder (holding ``cameras.bin``/``.txt``) or a scene folder
            with the model in ``sparse/0``, ``sparse`` or ``colmap/sparse/0``.
        images_dir: folder the image names are relative to (default ``<scene>/images``).
        masks_dir: optional mask folder (default ``<scene>/masks`` if it exists); a mask is
            ``<image name>.png`` (COLMAP) or a file with the image's stem.
    """
    pycolmap = _pycolmap()
    path = require_folder(Path(path))
    model_dir = find_model_dir(path)
    if model_dir is None:
        raise SceneDataError(f"{path}: no COLMAP model (cameras.bin or cameras.txt) found")
    fmt = model_format(model_dir)
    ext = "bin" if fmt == "binary" else "txt"
    rec = pycolmap.Reconstruction()
    try:
        rec.read_binary(str(model_dir)) if fmt == "binary" else rec.read_text(str(model_dir))
    except (ValueError, RuntimeError, IndexError, OverflowError, MemoryError) as e:
        raise SceneDataError(f"{model_dir}: cannot read the COLMAP {fmt} model ({e})") from e

    root = _scene_root(model_dir)
    if images_dir is None:
        cands = [root / "images", model_dir / "images"]
        images_dir = next((c for c in cands if c.is_dir()), None)
        if images_dir is None:
            raise SceneDataError(
                f"{model_dir}: no images folder found (looked in {', '.join(map(str, cands))}); "
                "pass images_dir"
            )
    images_dir = require_folder(Path(images_dir), "images folder")
    masks_required = masks_dir is not None
    if masks_dir is None:
        masks_dir = root / "masks" if (root / "masks").is_dir() else None
    elif masks_dir is not None:
        masks_dir = require_folder(Path(masks_dir), "masks folder")

    image_ids = sorted(rec.images.keys())
    unposed = [rec.image(i).name for i in image_ids if not rec.image(i).has_pose]
    if unposed:
        warnings.warn(
            f"{model_dir}: skipping {len(unposed)} unregistered image(s) without a pose: "
            f"{', '.join(unposed[:10])}{' ...' if len(unposed) > 10 else ''}",
            stacklevel=2,
        )
    image_ids = [i for i in image_ids if rec.image(i).has_pose]
    if not image_ids:
        raise SceneDataError(f"{model_dir}: the COLMAP model has no registered images")

    names, models, params, sizes, poses = [], [], [], [], []
    for iid in image_ids:
        img = rec.image(iid)
        cam = rec.camera(img.camera_id)
        where = f"{model_dir} (images.{ext} / frames.{ext}): image {img.name!r}"
        model = cam.model.name
        if model not in IMAGE_MODELS:
            raise SceneDataError(
                f"{model_dir / f'cameras.{ext}'}: camera {img.camera_id} has model {model}, "
                f"not supported (supported: {', '.join(IMAGE_MODELS)})"
            )
        pose = img.cam_from_world()
        q_wxyz = quat_xyzw_to_wxyz(
            torch.as_tensor(np.asarray(pose.rotation.quat), dtype=torch.float64)
        )
        t = torch.as_tensor(np.asarray(pose.translation), dtype=torch.float64)
        if not bool(torch.isfinite(q_wxyz).all()) or float(q_wxyz.norm()) == 0.0:
            raise SceneDataError(f"{where}: non-finite or zero quaternion {q_wxyz.tolist()}")
        T = make_rigid(quat_wxyz_to_matrix(q_wxyz), t)
        check_pose(T, where)
        names.append(img.name)
        models.append(model)
        params.append(torch.as_tensor(np.asarray(cam.params), dtype=torch.float64))
        sizes.append((int(cam.width), int(cam.height)))
        poses.append(T)
    model, params_t = unify_models(models, params, str(model_dir / f"cameras.{ext}"))
    cameras = make_cameras(model, params_t, sizes, torch.stack(poses), str(model_dir))

    image_paths = [images_dir / n for n in names]
    missing = [str(p) for p in image_paths if not p.is_file()]
    if missing:
        raise SceneDataError(
            f"{model_dir}: {len(missing)} image file(s) of the model are missing: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )

    # Sparse points, their colours and tracks.
    point_ids = sorted(rec.points3D.keys())
    points = point_colors = observations = None
    if point_ids:
        pts = [rec.point3D(pid) for pid in point_ids]
        points = torch.as_tensor(np.stack([np.asarray(p.xyz) for p in pts]), dtype=torch.float64)
        point_colors = torch.as_tensor(
            np.stack([np.asarray(p.color) for p in pts]).astype(np.uint8)
        )
        sorted_ids = np.asarray(point_ids, dtype=np.uint64)
        img_idx, pt_idx, xy = [], [], []
        for k, iid in enumerate(image_ids):
            p2d = rec.image(iid).points2D
            if len(p2d) == 0:
                continue
            ids = np.fromiter((p.point3D_id for p in p2d), dtype=np.uint64, count=len(p2d))
            idx = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
            keep = sorted_ids[idx] == ids  # unset ids (INVALID_POINT3D_ID) are not points
            if not keep.any():
                continue
            coords = np.array([p.xy for p in p2d], dtype=np.float64).reshape(-1, 2)
            img_idx.append(np.full(int(keep.sum()), k, dtype=np.int64))
            pt_idx.append(idx[keep])
            xy.append(coords[keep])
        observations = Observations(
            torch.from_numpy(np.concatenate(img_idx) if img_idx else np.zeros(0, np.int64)),
            torch.from_numpy(np.concatenate(pt_idx) if pt_idx else np.zeros(0, np.int64)),
            torch.from_numpy(np.concatenate(xy) if xy else np.zeros((0, 2))),
        )
        if not bool(torch.isfinite(points).all()):
            bad = (~torch.isfinite(points).all(1)).nonzero()[:, 0].tolist()
            raise SceneDataError(
                f"{model_dir / f'points3D.{ext}'}: non-finite 3D point(s) with id "
                f"{[point_ids[b] for b in bad[:10]]}"
            )

    return SceneData(
        cameras=cameras,
        image_names=names,
        image_paths=image_paths,
        mask_paths=find_masks(masks_dir, names, required=masks_required),
        points=points,
        point_colors=point_colors,
        observations=observations,
        root=root,
        metadata={"format": "colmap", "colmap_model": model_dir, "images_dir": images_dir},
    )


def write_colmap(scene: SceneData, model_dir: str | Path, binary: bool = True) -> None:
    """Write the cameras, poses and sparse points of ``scene`` as a COLMAP model.

    Images with identical intrinsics and size share one COLMAP camera. ``model_dir`` is
    created if needed; callers wanting atomicity pass a temporary folder (see ``save_scene``).
    """
    pycolmap = _pycolmap()
    cams = scene.cameras.to(dtype=torch.float64)
    if cams.model not in IMAGE_MODELS:
        raise SceneDataError(f"{model_dir}: COLMAP cannot store {cams.model} cameras")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    rec = pycolmap.Reconstruction()

    camera_ids: dict[tuple, int] = {}
    obs = scene.observations
    n = len(scene)
    if obs is not None:
        # Observations grouped by image (stable): each one's index among its image's points2D.
        obs_img = obs.image_idx.cpu().numpy().astype(np.int64)
        order = np.argsort(obs_img, kind="stable")
        counts = np.bincount(obs_img, minlength=n)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        xy_sorted = obs.xy.detach().cpu().double().numpy()[order]
        point2D_idx = np.empty(len(order), dtype=np.int64)
        point2D_idx[order] = np.arange(len(order)) - starts[obs_img[order]]
    R = cams.cam_from_world[:, :, :3]
    q_xyzw = quat_wxyz_to_xyzw(matrix_to_quat_wxyz(R)).numpy()
    for i, name in enumerate(scene.image_names):
        w, h = int(cams.width[i]), int(cams.height[i])
        p = cams.params[i].tolist()
        key = (w, h, *p)
        if key not in camera_ids:
            cid = len(camera_ids) + 1
            camera = pycolmap.Camera(model=cams.model, width=w, height=h, params=p, camera_id=cid)
            rec.add_camera_with_trivial_rig(camera)
            camera_ids[key] = cid
        if obs is not None:
            keypoints = xy_sorted[starts[i] : starts[i] + counts[i]]
        else:
            keypoints = np.zeros((0, 2))
        image = pycolmap.Image(
            name=name, keypoints=keypoints, camera_id=camera_ids[key], image_id=i + 1
        )
        pose = pycolmap.Rigid3d(
            pycolmap.Rotation3d(q_xyzw[i]), cams.cam_from_world[i, :, 3].numpy()
        )
        rec.add_image_with_trivial_frame(image, pose)

    if scene.points is not None:
        points = scene.points.detach().cpu().double().numpy()
        colors = (
            scene.point_colors.cpu().numpy().astype(np.uint8)
            if scene.point_colors is not None
            else np.zeros((len(points), 3), np.uint8)
        )
        empty = pycolmap.Track()
        ids = [rec.add_point3D(xyz, empty, color) for xyz, color in zip(points, colors)]
        if obs is not None:
            TrackElement = pycolmap.TrackElement
            for pid, iid, p2d in zip(
                np.asarray(ids)[obs.point_idx.cpu().numpy()].tolist(),
                (obs_img + 1).tolist(),
                point2D_idx.tolist(),
            ):
                rec.add_observation(pid, TrackElement(iid, p2d))

    if binary:
        rec.write_binary(str(model_dir))
    else:
        rec.write_text(str(model_dir))
