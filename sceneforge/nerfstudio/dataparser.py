"""nerfstudio dataparser for scene folders sceneforge reads (entry point ``sceneforge-data``).

A module of its own, importing only nerfstudio's camera / dataparser modules: nerfstudio
discovers dataparser plugins while ``nerfstudio.data.datamanagers`` is still being imported,
so this module must not import datamanagers, models or pipelines
(``sceneforge.nerfstudio.plugin`` holds the ``ns-train`` method and re-exports everything here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

try:
    from nerfstudio.cameras import camera_utils
    from nerfstudio.cameras.cameras import Cameras as NSCameras
    from nerfstudio.cameras.cameras import CameraType
    from nerfstudio.data.dataparsers.base_dataparser import (
        DataParser,
        DataParserConfig,
        DataparserOutputs,
    )
    from nerfstudio.data.scene_box import SceneBox as NSSceneBox
    from nerfstudio.plugins.registry_dataparser import DataParserSpecification
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sceneforge.nerfstudio.dataparser needs nerfstudio: install 'sceneforge[nerfstudio]' into "
        "its own venv (nerfstudio pins numpy<2), e.g. python -m venv .venv-ns && "
        ".venv-ns/bin/pip install -e '.[nerfstudio]'"
    ) from e

from sceneforge.core.cameras import convert_params, invert_rigid
from sceneforge.core.conventions import opencv_to_opengl_world_from_cam
from sceneforge.core.scene import SceneData, SceneDataError
from sceneforge.fields.trainer import auto_scene_box, split_indices


def scene_to_nerfstudio_frame(
    scene: SceneData, mode: str = "auto", inner_scale: float = 1.0
) -> tuple[Tensor, float, bool]:
    """``transform`` (3, 4), ``scale`` and ``contract`` mapping our scene box to ``[-1, 1]^3``.

    nerfstudio applies ``p' = scale * (transform @ [p; 1])``; the box is our trainer's
    :func:`~sceneforge.fields.trainer.auto_scene_box` (its inner box when contracted).
    """
    box = auto_scene_box(scene, mode, inner_scale)
    lo, hi = box.aabb[0].double(), box.aabb[1].double()
    center = (lo + hi) / 2
    half = float(((hi - lo) / 2).max().clamp(min=1e-9))
    transform = torch.cat([torch.eye(3, dtype=torch.float64), -center[:, None]], 1)
    return transform, 1.0 / half, box.contract


def nerfstudio_cameras(scene: SceneData, transform: Tensor, scale: float) -> NSCameras:
    """nerfstudio cameras (OpenGL ``camera_to_worlds``, OpenCV distortion) of ``scene``."""
    cams = scene.cameras
    c2w = opencv_to_opengl_world_from_cam(invert_rigid(cams.cam_from_world.double()))
    c2w = transform[None] @ torch.cat(
        [c2w, torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(len(cams), 1, 4)], 1
    )
    c2w[:, :, 3] *= scale
    if cams.model in ("SIMPLE_PINHOLE", "PINHOLE"):
        p = convert_params(cams.model, cams.params.double(), "PINHOLE")
        dist = None
    elif cams.model in ("SIMPLE_RADIAL", "RADIAL", "OPENCV"):
        p = convert_params(cams.model, cams.params.double(), "OPENCV")
        z = torch.zeros_like(p[:, 0])
        # OPENCV params: fx fy cx cy k1 k2 p1 p2; nerfstudio order: k1 k2 k3 k4 p1 p2
        dist = camera_utils.get_distortion_params(p[:, 4], p[:, 5], z, z, p[:, 6], p[:, 7])
    else:
        raise SceneDataError(f"camera model {cams.model} is not supported by nerfstudio here")
    return NSCameras(
        camera_to_worlds=c2w.float(),
        fx=p[:, 0:1].float(),
        fy=p[:, 1:2].float(),
        cx=p[:, 2:3].float(),
        cy=p[:, 3:4].float(),
        width=cams.width.long()[:, None],
        height=cams.height.long()[:, None],
        distortion_params=None if dist is None else dist.float(),
        camera_type=CameraType.PERSPECTIVE,
    )


@dataclass
class SceneforgeDataParserConfig(DataParserConfig):
    """Any scene folder sceneforge reads (COLMAP, transforms.json, LLFF), split like ours."""

    _target: type = field(default_factory=lambda: SceneforgeDataParser)
    data: Path = Path()
    """Scene folder."""
    format: str | None = None
    """Force a format (``colmap``, ``nerfstudio``, ``llff``); None = detect."""
    holdout_every: int = 8
    """Every N-th image (0, N, 2N, ...) is the eval split, as in ``sceneforge train``."""
    scene_box: str = "auto"
    """``auto``: bounded when the scene metadata has an ``aabb``, else unbounded (contracted)."""
    inner_scale: float = 1.0
    """Unbounded scenes: half-size of the uncontracted box relative to the camera radius."""
    use_masks: bool = True
    """Pass the scene's masks (True = usable pixel) to nerfstudio."""


class SceneforgeDataParser(DataParser):
    """Loads a scene with :func:`sceneforge.core.io.load_scene` into ``[-1, 1]^3`` coordinates."""

    config: SceneforgeDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        from sceneforge.core.io import load_scene

        cfg = self.config
        scene = load_scene(cfg.data, format=cfg.format)
        if scene.image_paths is None:
            raise SceneDataError(f"{cfg.data}: nerfstudio needs image files (scene has none)")
        train_idx, eval_idx = split_indices(len(scene), cfg.holdout_every)
        if split == "train":
            idx = train_idx
        elif split in ("val", "test"):
            idx = eval_idx or train_idx
        else:
            raise ValueError(f"unknown split {split!r}")
        transform, scale, contract = scene_to_nerfstudio_frame(
            scene, cfg.scene_box, cfg.inner_scale
        )
        cams = nerfstudio_cameras(scene, transform, scale)[torch.tensor(idx)]
        # nerfstudio's scene box = our box in its frame (inside [-1, 1]^3; tight, not the cube
        # around it: a bounded field then spends its grid and samples where ours does)
        box = auto_scene_box(scene, cfg.scene_box, cfg.inner_scale).aabb.double()
        aabb = (scale * (box + transform[:, 3])).float()
        masks = None
        if cfg.use_masks and scene.mask_paths is not None:
            masks = [Path(scene.mask_paths[i]) for i in idx]
        metadata = {
            "contract": contract,
            "image_names": [scene.image_names[i] for i in idx],
            "max_image_side": int(max(cams.width.max(), cams.height.max())),
        }
        if scene.points is not None and scene.points.shape[0] > 0:
            # the SfM points in nerfstudio's frame: splatfacto starts its Gaussians from them
            pts = scale * (scene.points.double() @ transform[:, :3].T + transform[:, 3])
            metadata["points3D_xyz"] = pts.float()
            cols = scene.point_colors
            metadata["points3D_rgb"] = (
                torch.full((pts.shape[0], 3), 128, dtype=torch.uint8)
                if cols is None
                else cols.to(torch.uint8)
            )
        return DataparserOutputs(
            image_filenames=[Path(scene.image_paths[i]) for i in idx],
            cameras=cams,
            scene_box=NSSceneBox(aabb=aabb),
            mask_filenames=masks,
            dataparser_transform=transform.float(),
            dataparser_scale=scale,
            metadata=metadata,
        )


sceneforge_dataparser = DataParserSpecification(
    config=SceneforgeDataParserConfig(),
    description="Scene folders sceneforge reads: COLMAP, transforms.json, LLFF",
)

__all__ = [
    "SceneforgeDataParser",
    "SceneforgeDataParserConfig",
    "nerfstudio_cameras",
    "scene_to_nerfstudio_frame",
    "sceneforge_dataparser",
]
