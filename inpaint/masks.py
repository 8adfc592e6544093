"""Where to fill: 3D boxes projected into views, per-image mask files, unobserved regions.

All functions return **fill** masks (True = pixel to fill), the inpainters' convention.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.metrics import dilate_mask
from sceneforge.core.scene import SceneData, SceneDataError


def ray_box_intervals(
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    box_min: Float[Tensor, " 3"],
    box_max: Float[Tensor, " 3"],
) -> tuple[Float[Tensor, " R"], Float[Tensor, " R"]]:
    """Slab test: entry and exit ray parameters ``t`` of an axis-aligned box (entry > exit
    when the ray misses). Zero direction components are handled with +-inf slabs."""
    d = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (box_min.to(origins) - origins) / d
    t1 = (box_max.to(origins) - origins) / d
    t_near = torch.minimum(t0, t1).amax(-1)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


def parse_box(box) -> tuple[Tensor, Tensor]:
    """``(xmin, ymin, zmin, xmax, ymax, zmax)`` -> (min, max) float64 tensors, validated."""
    b = torch.as_tensor(box, dtype=torch.float64).reshape(-1)
    if b.numel() != 6:
        raise ValueError(
            f"mask box needs 6 numbers (xmin ymin zmin xmax ymax zmax), got {b.numel()}"
        )
    lo, hi = b[:3], b[3:]
    if bool((hi <= lo).any()):
        raise ValueError(f"mask box {b.tolist()}: every max must exceed its min")
    return lo, hi


def box_fill_mask(
    cameras: Cameras,
    index: int,
    box,
    downscale: int = 1,
    depth: Float[Tensor, "h w"] | None = None,
    depth_rtol: float = 0.02,
) -> Bool[Tensor, "h w"]:
    """Pixels of view ``index`` whose ray (through the pixel centre) meets the world box.

    With a z-``depth`` map (0 = unknown), pixels whose visible surface lies clearly in front
    of the box entry are kept (an object in front of the removed one stays).
    """
    lo, hi = parse_box(box)
    cams = cameras.to(dtype=torch.float64)
    o, d, z_per_t = cams.rays(index, downscale=downscale)
    t_near, t_far = ray_box_intervals(o, d, lo, hi)
    hit = (t_far > t_near.clamp(min=0.0)) & (t_far > 0)
    if depth is not None:
        z_entry = t_near.clamp(min=0.0) * z_per_t
        surf = depth.reshape(-1).to(torch.float64)
        in_front = (surf > 0) & (surf < z_entry * (1 - depth_rtol))
        hit &= ~in_front
    h, w = int(cams.height[index]) // downscale, int(cams.width[index]) // downscale
    return hit.view(h, w)


def box_fill_masks(
    cameras: Cameras, box, downscale: int = 1, depths: list[Tensor] | None = None
) -> list[Bool[Tensor, "h w"]]:
    """:func:`box_fill_mask` for every view."""
    return [
        box_fill_mask(cameras, i, box, downscale, None if depths is None else depths[i])
        for i in range(len(cameras))
    ]


def read_fill_masks(folder: str | Path, scene: SceneData) -> list[Bool[Tensor, "H W"]]:
    """Per-image fill masks from ``folder``: one image per scene image, same stem (any
    extension read by OpenCV), **white / nonzero = fill**. Images without a file get an
    all-False mask; at least one file must match."""
    from sceneforge.core.image_io import read_mask

    folder = Path(folder)
    if not folder.is_dir():
        raise SceneDataError(f"{folder}: mask folder not found")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file()}
    out, found = [], 0
    for i, name in enumerate(scene.image_names):
        h, w = int(scene.cameras.height[i]), int(scene.cameras.width[i])
        p = files.get(Path(name).stem)
        if p is None:
            out.append(torch.zeros(h, w, dtype=torch.bool))
            continue
        m = read_mask(p)
        if tuple(m.shape) != (h, w):
            raise SceneDataError(f"{p}: mask is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}")
        out.append(m)
        found += 1
    if found == 0:
        raise SceneDataError(f"{folder}: no mask file matches an image name of the scene")
    return out


def unobserved_mask(
    accumulation: Float[Tensor, "h w"], threshold: float = 0.5
) -> Bool[Tensor, "h w"]:
    """Fill where the field's accumulated opacity is low (nothing was reconstructed)."""
    return accumulation < threshold


#: binary dilation by a ``(2 p + 1)^2`` square (grows fill masks over edge pixels)
dilate = dilate_mask


__all__ = [
    "box_fill_mask",
    "box_fill_masks",
    "dilate",
    "parse_box",
    "ray_box_intervals",
    "read_fill_masks",
    "unobserved_mask",
]
