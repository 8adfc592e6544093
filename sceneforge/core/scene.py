"""``SceneData``: the one scene type every module reads and writes.

Images and masks are loaded lazily from disk (``image_paths``) or held in memory
(``images``, e.g. synthetic renders). Cameras are :class:`~sceneforge.core.cameras.Cameras`
(OpenCV, ``cam_from_world``). Masks follow COLMAP: True/255 = usable pixel, False/0 = ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, UInt8
from torch import Tensor

from sceneforge.core.cameras import Cameras


class SceneDataError(ValueError):
    """Bad scene input; the message names the file and what is wrong."""


@dataclass
class Observations:
    """2D observations of sparse points: observation ``k`` sees point ``point_idx[k]``
    in image ``image_idx[k]`` at pixel ``xy[k]``."""

    image_idx: Int[Tensor, " O"]
    point_idx: Int[Tensor, " O"]
    xy: Float[Tensor, "O 2"]

    def __len__(self) -> int:
        return self.image_idx.shape[0]


@dataclass
class SceneData:
    """A posed image collection with optional masks, depth and sparse points.

    Attributes:
        cameras: N cameras (intrinsics, image size, ``cam_from_world``).
        image_names: N names, unique, relative to ``root`` when read from disk.
        image_paths: N image files, loaded lazily; None when ``images`` holds them.
        images: N in-memory images (uint8 ``H W 3``); None when loaded from disk.
        mask_paths: N mask files (or None entries) for disk-backed masks.
        masks: N in-memory boolean masks (True = usable), or None.
        depths: N z-depth maps (``H W``, 0 = no depth), or None.
        points: ``M 3`` sparse world points, or None.
        point_colors: ``M 3`` uint8 colours of ``points``, or None.
        observations: 2D observations of ``points``, or None.
        root: folder the scene was read from, for messages and relative paths.
    """

    cameras: Cameras
    image_names: list[str]
    image_paths: list[Path] | None = None
    images: list[UInt8[Tensor, "H W 3"]] | None = None
    mask_paths: list[Path | None] | None = None
    masks: list[Bool[Tensor, "H W"]] | None = None
    depths: list[Float[Tensor, "H W"]] | None = None
    points: Float[Tensor, "M 3"] | None = None
    point_colors: UInt8[Tensor, "M 3"] | None = None
    observations: Observations | None = None
    root: Path | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.cameras)
        where = f" in {self.root}" if self.root else ""
        if len(self.image_names) != n:
            raise SceneDataError(
                f"{len(self.image_names)} image names but {n} cameras{where}: counts must match"
            )
        if len(set(self.image_names)) != n:
            raise SceneDataError(f"duplicate image names{where}")
        if (self.image_paths is None) == (self.images is None):
            raise SceneDataError("give exactly one of image_paths or images")
        for name, lst in (
            ("image_paths", self.image_paths),
            ("images", self.images),
            ("mask_paths", self.mask_paths),
            ("masks", self.masks),
            ("depths", self.depths),
        ):
            if lst is not None and len(lst) != n:
                raise SceneDataError(f"{len(lst)} {name} but {n} cameras{where}: counts must match")

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None or (
            self.mask_paths is not None and any(p is not None for p in self.mask_paths)
        )

    def load_image(self, i: int) -> Float[Tensor, "H W 3"]:
        """Image ``i`` as float32 RGB in [0, 1], checked against the camera's size."""
        if self.images is not None:
            img = self.images[i]
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
        else:
            from sceneforge.core.image_io import read_image

            img = read_image(self.image_paths[i])
        h, w = int(self.cameras.height[i]), int(self.cameras.width[i])
        if img.shape[:2] != (h, w):
            src = self.image_paths[i] if self.image_paths is not None else self.image_names[i]
            raise SceneDataError(
                f"{src}: image is {img.shape[1]}x{img.shape[0]} but its camera says {w}x{h}"
            )
        return img

    def load_mask(self, i: int) -> Bool[Tensor, "H W"] | None:
        """Mask ``i`` (True = usable pixel), or None if the image has no mask."""
        h, w = int(self.cameras.height[i]), int(self.cameras.width[i])
        if self.masks is not None:
            m = self.masks[i]
            src = self.image_names[i]
        elif self.mask_paths is not None and self.mask_paths[i] is not None:
            from sceneforge.core.image_io import read_mask

            m = read_mask(self.mask_paths[i])
            src = self.mask_paths[i]
        else:
            return None
        if m is not None and tuple(m.shape) != (h, w):
            raise SceneDataError(
                f"{src}: mask is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}"
            )
        return m

    def subset(self, indices: list[int] | Tensor) -> SceneData:
        """The scene restricted to ``indices`` (sparse points keep only their observations there)."""
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]

        def pick(lst):
            return None if lst is None else [lst[i] for i in idx]

        obs = None
        if self.observations is not None:
            remap = torch.full((len(self),), -1, dtype=torch.long)
            remap[idx] = torch.arange(len(idx))
            new = remap[self.observations.image_idx]
            keep = new >= 0
            obs = Observations(
                new[keep], self.observations.point_idx[keep], self.observations.xy[keep]
            )
        return replace(
            self,
            cameras=self.cameras[idx],
            image_names=pick(self.image_names),
            image_paths=pick(self.image_paths),
            images=pick(self.images),
            mask_paths=pick(self.mask_paths),
            masks=pick(self.masks),
            depths=pick(self.depths),
            observations=obs,
        )

    def to_numpy_image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``H W 3`` numpy (for OpenCV / pycolmap consumers)."""
        return (self.load_image(i).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def undistorted_scene(scene: SceneData) -> SceneData:
    """``scene`` on PINHOLE cameras (same ``fx, fy, cx, cy``): images, masks and depth maps
    resampled in memory (:func:`~sceneforge.core.cameras.undistort_image`), 2D observations
    dropped (the 3D points stay). A scene whose cameras have no distortion comes back as is.
    For consumers that project with a pinhole model only (e.g. Gaussian rasterizers)."""
    from dataclasses import replace

    from sceneforge.core.cameras import Cameras, split_params, undistort_image

    cams = scene.cameras
    if cams.model in ("PINHOLE", "SIMPLE_PINHOLE"):
        return scene
    fx, fy, cx, cy, dist = split_params(cams.model, cams.params)
    if not bool((dist != 0).any()):
        k = torch.stack([fx, fy, cx, cy], -1)
        pin = Cameras("PINHOLE", k, cams.width, cams.height, cams.cam_from_world)
        return replace(scene, cameras=pin)
    images, masks, depths, pinhole = [], [], [], []
    for i in range(len(scene)):
        p = cams.params[i]
        img, pin = undistort_image(scene.load_image(i), cams.model, p)
        images.append((img.clamp(0, 1) * 255 + 0.5).to(torch.uint8))
        pinhole.append(pin)
        if scene.has_masks:
            m = scene.load_mask(i)
            m = torch.ones(img.shape[:2], dtype=torch.bool) if m is None else m
            masks.append(undistort_image(m[..., None].float(), cams.model, p)[0][..., 0] > 0.5)
        if scene.depths is not None:
            depths.append(undistort_image(scene.depths[i][..., None], cams.model, p)[0][..., 0])
    new = Cameras("PINHOLE", torch.stack(pinhole), cams.width, cams.height, cams.cam_from_world)
    return replace(
        scene,
        cameras=new,
        images=images,
        image_paths=None,
        masks=masks or None,
        mask_paths=None,
        depths=depths or None,
        observations=None,
    )
