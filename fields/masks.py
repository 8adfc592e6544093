"""Object captures with foreground masks: the visual-hull box, compositing and the mask loss.

The masked-object protocol (as NeRD / Neural-PIL / SAMURAI train and evaluate such captures):
photos composited onto a constant background outside their foreground masks, a bounded scene
box around the masks' visual hull, and a loss pulling each ray's accumulated opacity towards
its pixel's mask coverage. ``TrainerConfig.object_masks`` switches it on; the functions here
are the pure tensor parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData, SceneDataError


def in_visual_hull(
    cameras: Cameras,
    masks: Sequence[Bool[Tensor, "h w"]],
    points: Float[Tensor, "N 3"],
    min_fg: float = 0.95,
    min_views: int = 10,
    mask_stride: int = 1,
) -> Bool[Tensor, " N"]:
    """Whether each point lies in the foreground's visual hull: at least ``min_fg`` of the (>=
    ``min(min_views, N)``) cameras that see it show foreground at its projection (``masks[i]``
    belongs to ``cameras[i]``, subsampled by ``mask_stride``)."""
    pts = points.to(cameras.dtype)
    seen = torch.zeros(len(pts))
    fg = torch.zeros(len(pts))
    for i, m in enumerate(masks):
        uv, z = cameras[[i]].project(pts)
        col = (uv[0, :, 0] / mask_stride).long()
        row = (uv[0, :, 1] / mask_stride).long()
        ok = (z[0] > 0) & (col >= 0) & (col < m.shape[1]) & (row >= 0) & (row < m.shape[0])
        seen += ok.float()
        hit = torch.zeros(len(pts), dtype=torch.bool)
        hit[ok] = m[row[ok], col[ok]]
        fg += hit.float()
    return (seen >= min(min_views, len(masks))) & (fg >= min_fg * seen)


def visual_hull_box(
    cameras: Cameras,
    masks: Sequence[Bool[Tensor, "h w"]],
    search_box: Float[Tensor, "2 3"],
    resolution: int = 64,
    min_fg: float = 0.95,
    pad: float = 0.1,
    min_views: int = 10,
    mask_stride: int = 1,
) -> Float[Tensor, "2 3"]:
    """Axis-aligned box ``[min, max]`` of the foreground's visual hull.

    Points of a ``resolution^3`` lattice spanning ``search_box`` are kept when at least
    ``min_fg`` of the (>= ``min(min_views, N)``) cameras that see them show foreground there;
    the box of the kept points is padded by ``pad`` of its size plus one lattice cell on each
    side. ``masks[i]`` belongs to ``cameras[i]`` and may be subsampled: its pixel ``(r, c)``
    stands for the full-resolution pixel ``(r * mask_stride, c * mask_stride)``.
    """
    if len(masks) != len(cameras):
        raise ValueError(f"visual_hull_box: {len(masks)} masks for {len(cameras)} cameras")
    dtype = cameras.dtype
    box = search_box.to(dtype)
    u = torch.linspace(0, 1, resolution, dtype=dtype)
    lattice = torch.stack(torch.meshgrid(u, u, u, indexing="ij"), -1).reshape(-1, 3)
    pts = box[0] + lattice * (box[1] - box[0])
    keep = in_visual_hull(cameras, masks, pts, min_fg, min_views, mask_stride)
    if not bool(keep.any()):
        raise ValueError(
            "the masks' visual hull is empty: no point is foreground in the masks of the "
            "cameras that see it (masks and poses disagree, or the object is outside the box)"
        )
    lo, hi = pts[keep].amin(0), pts[keep].amax(0)
    cell = (box[1] - box[0]) / (resolution - 1)
    margin = (hi - lo) * pad + cell
    return torch.stack([lo - margin, hi + margin]).float()


def composite_outside_mask(
    image: Float[Tensor, "H W 3"], mask: Bool[Tensor, "H W"], background: Float[Tensor, " 3"]
) -> Float[Tensor, "H W 3"]:
    """``image`` where ``mask`` is True, ``background`` elsewhere."""
    return torch.where(mask[..., None], image, background.to(image).expand_as(image))


def mask_loss(
    accumulation: Float[Tensor, " B"], coverage: Float[Tensor, " B"]
) -> Float[Tensor, ""]:
    """``mean((accumulation - coverage)^2)``: each ray's opacity against its pixel's mask
    coverage (fraction of foreground in the pixel). Without it a constant background is as
    well explained by opaque fog of the background colour as by empty space, and that fog
    occludes the object from held-out viewpoints."""
    return (accumulation - coverage.to(accumulation)).pow(2).mean()


def require_masks(scene: SceneData, what: str = "object_masks") -> None:
    """Raise a clear error unless every image of ``scene`` has a mask."""
    where = str(scene.root) if scene.root is not None else "the in-memory scene"
    missing = [
        scene.image_names[i]
        for i in range(len(scene))
        if (scene.masks is None or scene.masks[i] is None)
        and (scene.mask_paths is None or scene.mask_paths[i] is None)
    ]
    if missing:
        some = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise SceneDataError(
            f"{where}: {what} needs a foreground mask for every image, but "
            f"{len(missing)} of {len(scene)} have none ({some}); add masks (e.g. a masks/ "
            "folder) or train without object_masks"
        )


def object_scene(scene: SceneData, background: Float[Tensor, " 3"]) -> SceneData:
    """In-memory copy of ``scene`` with every pixel outside its mask set to ``background``
    (stored as uint8 like loaded photos); the masks are kept."""
    require_masks(scene)
    images = []
    for i in range(len(scene)):
        img = composite_outside_mask(scene.load_image(i), scene.load_mask(i), background)
        images.append((img * 255.0).round().to(torch.uint8))
    return dataclasses.replace(scene, image_paths=None, images=images)


def scene_hull_box(
    scene: SceneData, search_box: Float[Tensor, "2 3"], mask_stride: int = 0
) -> Float[Tensor, "2 3"]:
    """:func:`visual_hull_box` of all images' masks, subsampled by ``mask_stride`` (0 = auto:
    up to 4x while the shorter side keeps >= 128 pixels; plenty for a box, while coarser masks
    of small images would erode the hull)."""
    require_masks(scene)
    if mask_stride <= 0:
        short = int(torch.minimum(scene.cameras.height, scene.cameras.width).min())
        mask_stride = max(1, min(4, short // 128))
    masks = [scene.load_mask(i)[::mask_stride, ::mask_stride] for i in range(len(scene))]
    return visual_hull_box(scene.cameras, masks, search_box, mask_stride=mask_stride)


__all__ = [
    "composite_outside_mask",
    "in_visual_hull",
    "mask_loss",
    "object_scene",
    "require_masks",
    "scene_hull_box",
    "visual_hull_box",
]
