"""nerfstudio / instant-ngp ``transforms.json`` to and from :class:`SceneData`.

``transform_matrix`` is an OpenGL ``world_from_cam`` (x right, y up, z back), converted in
:mod:`sceneforge.core.conventions`. Intrinsics (``fl_x fl_y cx cy w h k1 k2 p1 p2
camera_model``, or instant-ngp's ``camera_angle_x``) may be global or per frame; per-frame
values win. Pixel centres follow COLMAP (as nerfstudio does), so ``cx, cy`` pass unchanged.
Frames whose image file is missing are skipped with a warning naming them.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from sceneforge.core.cameras import invert_rigid
from sceneforge.core.conventions import (
    opencv_to_opengl_world_from_cam,
    opengl_to_opencv_world_from_cam,
)
from sceneforge.core.image_io import IMAGE_EXTENSIONS
from sceneforge.core.io_common import (
    IMAGE_MODELS,
    as_4x4,
    check_pose,
    focal_from_fov,
    image_size,
    make_cameras,
    unify_models,
)
from sceneforge.core.scene import SceneData, SceneDataError

#: nerfstudio camera models sceneforge cannot represent.
_UNSUPPORTED = ("OPENCV_FISHEYE", "EQUIRECTANGULAR", "FISHEYE624", "OMNIDIRECTIONALSTEREO", "VR180")
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2")


def _fit_model(requested: str | None, p: list[float]) -> tuple[str, list[float]]:
    """The first model from ``requested`` on (in generality order) that holds the OPENCV
    parameters ``p = [fx, fy, cx, cy, k1, k2, p1, p2]`` exactly, and its parameters."""
    fx, fy, cx, cy, k1, k2, p1, p2 = p
    fits = {
        "SIMPLE_PINHOLE": (fx == fy and k1 == k2 == p1 == p2 == 0, [fx, cx, cy]),
        "PINHOLE": (k1 == k2 == p1 == p2 == 0, [fx, fy, cx, cy]),
        "SIMPLE_RADIAL": (fx == fy and k2 == p1 == p2 == 0, [fx, cx, cy, k1]),
        "RADIAL": (fx == fy and p1 == p2 == 0, [fx, cx, cy, k1, k2]),
        "OPENCV": (True, list(p)),
    }
    start = IMAGE_MODELS.index(requested) if requested is not None else 0
    for model in IMAGE_MODELS[start:]:
        ok, params = fits[model]
        if ok:
            return model, params
    raise AssertionError("unreachable: OPENCV holds every parameter set")


def _resolve_image(base: Path, file_path: str) -> Path:
    """``base / file_path``; instant-ngp may leave out the extension (``./train/r_0``)."""
    p = base / file_path
    if p.is_file() or p.suffix.lower() in IMAGE_EXTENSIONS:
        return p
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
        cand = p.with_name(p.name + ext)
        if cand.is_file():
            return cand
    return p


def _number(value, key: str, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise SceneDataError(f"{where}: {key} is not a number ({value!r})") from e
    if not math.isfinite(out):
        raise SceneDataError(f"{where}: {key} is not finite ({value!r})")
    return out


def read_transforms(path: str | Path) -> SceneData:
    """Read a nerfstudio / instant-ngp ``transforms.json`` (a file, or a folder holding it).

    Image names are the frames' paths relative to the folder all images share. Optional
    ``mask_path`` become ``mask_paths``; ``depth_file_path`` go to
    ``metadata["depth_paths"]`` (keyed by image name); a ``ply_file_path`` point cloud is
    loaded into ``points`` / ``point_colors``.
    """
    path = Path(path)
    json_path = path / "transforms.json" if path.is_dir() else path
    if not json_path.is_file():
        raise SceneDataError(f"{json_path}: no such transforms file")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SceneDataError(f"{json_path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise SceneDataError(f"{json_path}: no 'frames' list")
    base = json_path.parent

    kept, missing = [], []
    models, params, sizes, poses = [], [], [], []
    for k, frame in enumerate(data["frames"]):
        where = f"{json_path}: frame {k}"
        if not isinstance(frame, dict) or "file_path" not in frame:
            raise SceneDataError(f"{where} has no file_path")
        where = f"{json_path}: frame {k} ({frame['file_path']})"
        img = _resolve_image(base, str(frame["file_path"]))
        if not img.is_file():
            missing.append(str(frame["file_path"]))
            continue

        def get(key, default=None, frame=frame):
            return frame.get(key, data.get(key, default))

        requested = get("camera_model")
        if requested in _UNSUPPORTED:
            raise SceneDataError(f"{where}: camera_model {requested} is not supported")
        if requested is not None and requested not in IMAGE_MODELS:
            raise SceneDataError(
                f"{where}: unknown camera_model {requested!r} (supported: {', '.join(IMAGE_MODELS)})"
            )
        if get("w") is not None and get("h") is not None:
            w, h = int(_number(get("w"), "w", where)), int(_number(get("h"), "h", where))
        else:
            w, h = image_size(img)
        if get("fl_x") is not None:
            fx = _number(get("fl_x"), "fl_x", where)
        elif get("camera_angle_x") is not None:
            fx = focal_from_fov(_number(get("camera_angle_x"), "camera_angle_x", where), w)
        else:
            raise SceneDataError(f"{where}: no focal length (fl_x or camera_angle_x)")
        if get("fl_y") is not None:
            fy = _number(get("fl_y"), "fl_y", where)
        elif get("camera_angle_y") is not None:
            fy = focal_from_fov(_number(get("camera_angle_y"), "camera_angle_y", where), h)
        else:
            fy = fx
        cx = _number(get("cx", w / 2.0), "cx", where)
        cy = _number(get("cy", h / 2.0), "cy", where)
        dist = [_number(get(key, 0.0), key, where) for key in ("k1", "k2", "p1", "p2")]
        for key in ("k3", "k4"):
            if _number(get(key, 0.0), key, where) != 0.0:
                raise SceneDataError(
                    f"{where}: {key} != 0 is not supported (OPENCV has k1 k2 p1 p2)"
                )
        model, p = _fit_model(requested, [fx, fy, cx, cy, *dist])

        try:
            M = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise SceneDataError(f"{where}: missing or malformed transform_matrix ({e})") from e
        if M.shape not in ((4, 4), (3, 4)):
            raise SceneDataError(f"{where}: transform_matrix must be 4x4, got {tuple(M.shape)}")
        world_from_cam = opengl_to_opencv_world_from_cam(M[:3, :4])
        check_pose(world_from_cam, where)

        kept.append((k, frame, img))
        models.append(model)
        params.append(torch.tensor(p, dtype=torch.float64))
        sizes.append((w, h))
        poses.append(invert_rigid(world_from_cam))

    if missing:
        warnings.warn(
            f"{json_path}: skipping {len(missing)} frame(s) whose image file is missing: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}",
            stacklevel=2,
        )
    if not kept:
        raise SceneDataError(f"{json_path}: no frame with an existing image file")
    model, params_t = unify_models(models, params, str(json_path))
    cameras = make_cameras(model, params_t, sizes, torch.stack(poses), str(json_path))

    image_paths = [img for _, _, img in kept]
    abs_paths = [os.path.abspath(p) for p in image_paths]
    common = Path(os.path.abspath(base / "images"))
    if not all(Path(p).is_relative_to(common) for p in abs_paths):
        common = Path(os.path.commonpath([os.path.dirname(p) for p in abs_paths]))
    names = [Path(p).relative_to(common).as_posix() for p in abs_paths]

    def optional_files(key: str) -> list[Path | None]:
        out = []
        for k, frame, _ in kept:
            if frame.get(key) is None:
                out.append(None)
                continue
            f = base / str(frame[key])
            if not f.is_file():
                raise SceneDataError(f"{json_path}: frame {k} {key} {f} does not exist")
            out.append(f)
        return out

    mask_paths = optional_files("mask_path")
    depth_paths = optional_files("depth_file_path")
    metadata: dict = {"format": "nerfstudio", "transforms": json_path, "images_dir": common}
    if any(d is not None for d in depth_paths):
        metadata["depth_paths"] = {n: d for n, d in zip(names, depth_paths) if d is not None}
    for key in ("applied_transform", "depth_unit_scale_factor", "aabb_scale", "scale", "offset"):
        if key in data:
            metadata[key] = data[key]

    points = colors = None
    if data.get("ply_file_path"):
        points, colors = read_ply_points(base / str(data["ply_file_path"]))
    return SceneData(
        cameras=cameras,
        image_names=names,
        image_paths=image_paths,
        mask_paths=mask_paths if any(m is not None for m in mask_paths) else None,
        points=points,
        point_colors=colors,
        root=base,
        metadata=metadata,
    )


def read_depth(path: str | Path, unit_scale: float = 1e-3) -> torch.Tensor:
    """A float32 ``H W`` z-depth map: ``.npy`` as stored, or an integer (16-bit) image times
    ``unit_scale`` (nerfstudio's ``depth_unit_scale_factor``, millimetres by default)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise SceneDataError(f"{path}: no such depth file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError, EOFError) as e:
            raise SceneDataError(f"{path}: not a readable depth .npy ({e})") from e
    else:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im).astype(np.float32) * unit_scale
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise SceneDataError(f"{path}: not a readable depth image ({e})") from e
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise SceneDataError(f"{path}: depth must be H x W, got {arr.shape}")
    return torch.from_numpy(arr)


def read_ply_points(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Points (float64 ``M 3``) and uint8 colours (or None) of a PLY point cloud."""
    import trimesh

    if not path.is_file():
        raise SceneDataError(f"{path}: point cloud file does not exist")
    try:
        cloud = trimesh.load(path, process=False)
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise SceneDataError(f"{path}: cannot read the point cloud ({e})") from e
    vertices = np.asarray(getattr(cloud, "vertices", np.zeros((0, 3))), dtype=np.float64)
    colors = getattr(cloud, "colors", None)
    if colors is None or len(colors) != len(vertices):
        colors = getattr(getattr(cloud, "visual", None), "vertex_colors", None)
    col = None
    if colors is not None and len(colors) == len(vertices) and len(vertices):
        col = torch.as_tensor(np.asarray(colors)[:, :3].astype(np.uint8))
    return torch.as_tensor(vertices), col


def write_ply_points(path: Path, points: torch.Tensor, colors: torch.Tensor | None) -> None:
    """Write a binary PLY point cloud (float64 xyz, uint8 rgb) as nerfstudio's sparse_pc.ply."""
    pts = points.double().cpu().numpy()
    col = (
        colors.cpu().numpy().astype(np.uint8)
        if colors is not None
        else np.zeros((len(pts), 3), np.uint8)
    )
    rec = np.zeros(
        len(pts),
        dtype=[
            ("x", "<f8"),
            ("y", "<f8"),
            ("z", "<f8"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
        ],
    )
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(pts)}\n"
        "property double x\nproperty double y\nproperty double z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())


def transforms_dict(
    scene: SceneData,
    file_paths: list[str],
    mask_paths: list[str | None] | None = None,
    depth_paths: list[str | None] | None = None,
    ply_file_path: str | None = None,
) -> dict:
    """The ``transforms.json`` content for ``scene`` with the given relative file paths.

    Intrinsics shared by every image are written once at the top, otherwise per frame;
    ``camera_model`` is sceneforge's model name (nerfstudio reads all five).
    """
    cams = scene.cameras.to(dtype=torch.float64)
    if cams.model not in IMAGE_MODELS:
        raise SceneDataError(f"transforms.json cannot store {cams.model} cameras")
    from sceneforge.core.cameras import split_params

    fx, fy, cx, cy, dist = split_params(cams.model, cams.params)
    intr = []
    for i in range(len(cams)):
        k1, k2, p1, p2 = dist[i].tolist()
        vals = (fx[i].item(), fy[i].item(), cx[i].item(), cy[i].item())
        intr.append(
            dict(
                zip(
                    _INTRINSIC_KEYS,
                    (*vals, int(cams.width[i]), int(cams.height[i]), k1, k2, p1, p2),
                )
            )
        )
    shared = all(d == intr[0] for d in intr)
    out: dict = {"camera_model": cams.model}
    if shared:
        out.update(intr[0])
    world_from_cam_gl = opencv_to_opengl_world_from_cam(cams.world_from_cam)
    frames = []
    for i in range(len(cams)):
        frame: dict = {"file_path": file_paths[i]}
        if not shared:
            frame.update(intr[i])
        frame["transform_matrix"] = as_4x4(world_from_cam_gl[i])
        if mask_paths is not None and mask_paths[i] is not None:
            frame["mask_path"] = mask_paths[i]
        if depth_paths is not None and depth_paths[i] is not None:
            frame["depth_file_path"] = depth_paths[i]
        frames.append(frame)
    out["frames"] = frames
    for key in ("applied_transform", "depth_unit_scale_factor"):
        if key in scene.metadata:
            out[key] = scene.metadata[key]
    if ply_file_path is not None:
        out["ply_file_path"] = ply_file_path
    return out
