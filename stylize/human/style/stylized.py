"""Stylized rendering of the 4D capture: rendered feature levels -> AdaAttN with a style
image's features -> decoder -> the stylized image of any camera, frame or new pose.

The style lives in the capture's feature space: every view of one frame renders the same 3D
features (composited along its rays by the renderer's own weights), and only the 2D layers
after them (AdaAttN and the decoder, and the encoder's frozen tail if used) act per image.
``alpha`` in [0, 1] is the strength (0: the decoder's reconstruction of the content features).

Consistency is measured by warping one stylized image onto another with the renderer's depth:
:func:`warp_to` between two cameras at one instant, :func:`warp_frames` between two frames of
one camera through the capture's body (canonical correspondences), and :func:`warp_error`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import Cameras, pixel_to_grid

from ..canonical import canonicalize
from ..field import Human4DModel
from ..lbs import lbs_forward
from .feature_field import HumanFeatureRenderer
from .stylizer import Stylizer


def check_compatible(renderer: HumanFeatureRenderer, stylizer: Stylizer) -> None:
    """The renderer's levels must be the stylizer's encoder levels."""
    if renderer.tail.config.blocks != stylizer.encoder.config.blocks:
        raise ValueError(
            f"the renderer's encoder blocks {renderer.tail.config.blocks} differ from the "
            f"stylizer's {stylizer.encoder.config.blocks}"
        )


@torch.no_grad()
def render_stylized(
    renderer: HumanFeatureRenderer,
    stylizer: Stylizer,
    cameras: Cameras,
    index: int,
    style: Float[Tensor, "H W 3"] | Sequence[Tensor],
    alpha: float = 1.0,
    frame: int = 0,
    pose: Float[Tensor, "J 3"] | None = None,
    transl: Float[Tensor, "3"] | None = None,
) -> dict[str, Tensor]:
    """Camera ``index`` stylized with ``style`` (an image or its
    :meth:`~.stylizer.Stylizer.style_features`) at strength ``alpha``, with the body of
    ``frame`` (or the ``pose``/``transl`` override): ``rgb`` (``H W 3``) and the rendered
    finest-level ``depth`` / ``accumulation`` (``h w``, on the padded stride grid)."""
    check_compatible(renderer, stylizer)
    feats = stylizer.style_features(style) if isinstance(style, Tensor) else list(style)
    h, w = int(cameras.height[index]), int(cameras.width[index])
    maps = renderer.render_frame(cameras, index, frame, pose=pose, transl=transl)
    content = renderer.levels(maps.features)
    size = (content[0].shape[-2] * renderer.stride, content[0].shape[-1] * renderer.stride)
    rgb = stylizer.stylize_features(content, feats, size, alpha)[0, :, :h, :w]
    return {"rgb": rgb.permute(1, 2, 0), "depth": maps.depth, "accumulation": maps.accumulation}


def resample(
    image: Float[Tensor, "H W C"],
    uv: Float[Tensor, "N 2"],
    z: Float[Tensor, " N"],
    valid: Bool[Tensor, " N"],
    image_depth: Float[Tensor, "H W"] | None = None,
    tolerance: float = 0.05,
) -> tuple[Float[Tensor, "N C"], Bool[Tensor, " N"]]:
    """``image`` at pixel positions ``uv`` (bilinear) and where that is defined: ``valid``,
    inside the image, in front of the camera (``z``: the points' camera z) and, with
    ``image_depth`` given, not occluded (its depth there within ``tolerance`` relative)."""
    sh, sw = image.shape[:2]
    grid = pixel_to_grid(uv, sh, sw).float().reshape(1, 1, -1, 2)
    x = image.permute(2, 0, 1)[None].float()
    out = F.grid_sample(x, grid, mode="bilinear", align_corners=False)[0, :, 0].T
    u, v = uv[:, 0], uv[:, 1]
    inside = (u >= 0.5) & (u <= sw - 0.5) & (v >= 0.5) & (v <= sh - 0.5)
    ok = valid & inside & (z > 0)
    if image_depth is not None:
        seen = F.grid_sample(image_depth[None, None].float(), grid, align_corners=False)
        ok &= (seen.reshape(-1) - z.float()).abs() <= tolerance * z.float().abs()
    return out, ok


def surface_points(
    cameras: Cameras, index: int, depth: Float[Tensor, "H W"]
) -> Float[Tensor, "N 3"]:
    """World points of camera ``index``'s pixels at camera-z ``depth``."""
    o, d, z = cameras.rays(index)
    return o + d * (depth.reshape(-1).to(o) / z)[:, None]


@torch.no_grad()
def warp_to(
    cameras: Cameras,
    target: int,
    source: int,
    image: Float[Tensor, "H W C"],
    depth: Float[Tensor, "H W"],
    valid: Bool[Tensor, "H W"],
    source_depth: Float[Tensor, "H W"] | None = None,
    tolerance: float = 0.05,
) -> tuple[Float[Tensor, "H W C"], Bool[Tensor, "H W"]]:
    """``image`` of camera ``source`` warped onto camera ``target`` (one time instant) with
    the target's camera-z ``depth``: the warped image and where it is defined (``valid``,
    inside the source image, and with ``source_depth`` given: not occluded there)."""
    h, w = depth.shape
    uv, zs = cameras[source].project(surface_points(cameras, target, depth))
    out, ok = resample(image, uv[0], zs[0], valid.reshape(-1), source_depth, tolerance)
    return out.reshape(h, w, -1), ok.reshape(h, w)


@torch.no_grad()
def warp_frames(
    model: Human4DModel,
    cameras: Cameras,
    index: int,
    frame_a: int,
    frame_b: int,
    image_b: Float[Tensor, "H W C"],
    depth_a: Float[Tensor, "H W"],
    human_a: Bool[Tensor, "H W"],
    valid: Bool[Tensor, "H W"],
    depth_b: Float[Tensor, "H W"] | None = None,
    tolerance: float = 0.05,
) -> tuple[Float[Tensor, "H W C"], Bool[Tensor, "H W"]]:
    """Frame ``frame_b``'s image of camera ``index`` warped onto frame ``frame_a``'s with the
    capture's correspondences: a person pixel's surface point (``depth_a``, ``human_a``) is
    mapped to the canonical body with frame a's body and posed with frame b's (the non-rigid
    residual's change between the frames is ignored); a background point stays. Returns the
    warped image and where it is defined (as :func:`warp_to`; person points outside the
    canonical band are left out)."""
    h, w = depth_a.shape
    pts = surface_points(cameras, index, depth_a).float()
    ok = valid.reshape(-1).clone()
    person = human_a.reshape(-1) & ok
    if bool(person.any()):
        dev = model.pose.device
        bodies = model.posed_bodies(torch.tensor([frame_a, frame_b], device=dev))
        m = canonicalize(
            pts[person].to(dev),
            bodies.bone_transforms[0],
            model.grid,
            bodies.canonical_joints,
            model.body.parents,
            model.cfg.iterations,
        )
        weights, _ = model.grid.lookup(m.points)
        moved = lbs_forward(m.points, weights, bodies.bone_transforms[1]).to(pts)
        sel = person.nonzero()[:, 0]
        pts[sel] = torch.where(m.valid[:, None].to(pts.device), moved, pts[sel])
        ok[sel] &= m.valid.to(ok.device)
    uv, zs = cameras[index].project(pts.to(cameras.dtype))
    out, ok = resample(image_b, uv[0], zs[0], ok, depth_b, tolerance)
    return out.reshape(h, w, -1), ok.reshape(h, w)


def warp_error(
    a: Float[Tensor, "H W C"], warped_b: Float[Tensor, "H W C"], valid: Bool[Tensor, "H W"]
) -> float:
    """Mean absolute difference over the valid pixels (per channel)."""
    if not bool(valid.any()):
        raise ValueError("no valid pixels to compare")
    return float((a - warped_b).abs()[valid].mean())


__all__ = [
    "check_compatible",
    "render_stylized",
    "resample",
    "surface_points",
    "warp_error",
    "warp_frames",
    "warp_to",
]
