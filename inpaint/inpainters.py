"""Image inpainters: fill masked pixels of a batch of posed views.

Convention: ``fill`` masks are True where a pixel must be filled (the opposite of
:class:`~sceneforge.core.scene.SceneData` masks, where True = usable). Every backend returns
images whose unmasked pixels are bit-exact copies of the input (:func:`composite`).

Backends:

- :class:`TeleaInpainter`: OpenCV Telea per image (the "individual inpainting" baseline).
- :class:`MultiViewInpainter`: weight-free and multi-view consistent: masked pixels are filled
  by forward-warping observed pixels of the other views with their depth (soft z-buffer,
  occlusion by nearer surfaces, weights favouring similar viewing directions); what no view
  saw is filled by Telea, and filled views become sources for later views (propagation), so
  even the hallucinated part is shared between overlapping views.
- :class:`~sceneforge.inpaint.diffusion.SDInpainter`: Stable Diffusion inpainting with the joint
  multi-view grid prior (in :mod:`sceneforge.inpaint.diffusion`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import Cameras, pixel_centers, transform_points, unproject


@dataclass
class InpaintResult:
    """Filled images (and depths when the backend completes depth)."""

    images: Float[Tensor, "N H W 3"]
    depths: Float[Tensor, "N H W"] | None = None


def composite(
    original: Float[Tensor, "N H W C"],
    filled: Float[Tensor, "N H W C"],
    fill: Bool[Tensor, "N H W"],
) -> Float[Tensor, "N H W C"]:
    """``filled`` inside ``fill``, ``original`` (bit-exact) elsewhere."""
    return torch.where(fill[..., None], filled.to(original.dtype), original)


def _check_inputs(images: Tensor, fill: Tensor, depths: Tensor | None) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {tuple(images.shape)}")
    if fill.shape != images.shape[:3] or fill.dtype != torch.bool:
        raise ValueError(
            f"fill masks must be bool (N, H, W) = {tuple(images.shape[:3])}, got "
            f"{fill.dtype} {tuple(fill.shape)}"
        )
    if depths is not None and depths.shape != images.shape[:3]:
        raise ValueError(f"depths must be (N, H, W), got {tuple(depths.shape)}")


class Inpainter(ABC):
    """Images + fill masks (+ optional depth, cameras, prompt) -> filled images."""

    name: str = "inpainter"

    @abstractmethod
    def inpaint(
        self,
        images: Float[Tensor, "N H W 3"],
        fill: Bool[Tensor, "N H W"],
        depths: Float[Tensor, "N H W"] | None = None,
        cameras: Cameras | None = None,
        prompt: str | None = None,
        strength: float = 1.0,
    ) -> InpaintResult:
        """Fill ``fill`` pixels of ``images`` (float [0, 1]); the rest stays bit-exact.

        ``depths`` are camera z-depths (0 = nothing hit / background, NaN = unknown) and ``cameras`` the views' cameras (same
        size as the images); ``strength`` in (0, 1] is the noise strength for generative
        backends (1 = ignore the current content of the masked pixels)."""


# ----------------------------------------------------------------------------- Telea


def telea_fill(
    image: Float[Tensor, "H W C"], fill: Bool[Tensor, "H W"], radius: float = 5.0
) -> Float[Tensor, "H W C"]:
    """OpenCV Telea on float data, channel by channel (no 8-bit quantisation)."""
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - opencv is a core dependency
        raise ImportError("Telea inpainting needs opencv-python-headless") from e
    if not bool(fill.any()):
        return image.clone()
    m = fill.cpu().numpy().astype(np.uint8) * 255
    src = np.nan_to_num(image.detach().cpu().float().numpy(), nan=0.0)
    out = np.empty_like(src)
    known = ~fill.cpu().numpy()
    for c in range(src.shape[-1]):
        ch = src[..., c]
        # OpenCV's float Telea misbehaves on small value ranges: work on a 0..255 scale
        lo = float(ch[known].min()) if known.any() else 0.0
        hi = float(ch[known].max()) if known.any() else 1.0
        scale = 255.0 / max(hi - lo, 1e-12)
        ch = np.ascontiguousarray((ch - lo) * scale, dtype=np.float32)
        out[..., c] = cv2.inpaint(ch, m, float(radius), cv2.INPAINT_TELEA) / scale + lo
    return torch.from_numpy(out).to(image)


class TeleaInpainter(Inpainter):
    """Per-image OpenCV Telea (and Telea on depth when depths are given)."""

    name = "telea"

    def __init__(self, radius: float = 5.0) -> None:
        self.radius = radius

    def inpaint(self, images, fill, depths=None, cameras=None, prompt=None, strength=1.0):
        _check_inputs(images, fill, depths)
        out = torch.stack([telea_fill(im, f, self.radius) for im, f in zip(images, fill)])
        dep = None
        if depths is not None:
            dep = torch.stack(
                [telea_fill(d[..., None], f, self.radius)[..., 0] for d, f in zip(depths, fill)]
            )
            dep = torch.where(fill, dep, depths)
        return InpaintResult(composite(images, out.clamp(0, 1), fill), dep)


# ----------------------------------------------------------------------------- multi-view


@dataclass
class MultiViewConfig:
    """Depth-warping multi-view inpainter settings."""

    depth_rtol: float = 0.03
    """Soft z-buffer: splats within this relative depth of the nearest one are blended."""
    angle_sigma: float = 0.05
    """View weight ``exp((cos(angle) - 1) / sigma)`` between source and target rays."""
    min_weight: float = 0.05
    """A pixel counts as filled by warping when its splat weight sum exceeds this."""
    max_sources: int = 16
    """Warp from at most this many nearest source views (by camera centre distance)."""
    propagate: bool = True
    """Filled views become sources for later views (consistent hallucinated content)."""
    propagated_weight: float = 0.3
    """Weight factor of propagated (filled, not observed) source pixels."""
    telea_radius: float = 5.0
    """Telea radius for what no view saw."""
    warp_background: bool = False
    """Warp pixels without depth (nothing hit: sky, black background) as points at
    infinity, so empty background is copied between views too (good with exact depth; with a
    field's rendered depth, far points tend to leak into holes nothing near covers)."""
    num_threads: int = 1
    """torch threads while warping (0 = leave torch's setting); many small ops run much
    faster single-threaded on a busy machine."""


def _view_points(cams: Cameras, i: int, depth: Tensor, far: float) -> Float[Tensor, "HW 3"]:
    """World points of view ``i``'s pixel centres; depth 0 (nothing hit) is put at ``far``
    (a point "at infinity": it only lands where nothing nearer does)."""
    h, w = depth.shape
    rays = unproject(
        pixel_centers(h, w, dtype=torch.float64).reshape(-1, 2),
        cams.model,
        cams.params[i].expand(h * w, -1),
    )
    d = depth.reshape(-1, 1).to(torch.float64)
    pc = rays * torch.where(d > 0, d, torch.full_like(d, far))
    return transform_points(cams.world_from_cam[i], pc)


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    if n > 0 and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0 and n != old:
            torch.set_num_threads(old)


def warp_into_view(
    cams: Cameras,
    target: int,
    target_fill: Bool[Tensor, "H W"],
    sources: list[tuple[Float[Tensor, "P 3"], Float[Tensor, "P 3"], Float[Tensor, " P"]]],
    source_centers: Float[Tensor, "S 3"],
    cfg: MultiViewConfig,
) -> tuple[Float[Tensor, "H W 3"], Float[Tensor, "H W"], Float[Tensor, "H W"]]:
    """Forward-warp source points (world xyz, rgb, weight) into ``target``'s fill pixels.

    Each point splats bilinearly onto its 4 nearest pixel centres; per pixel, only splats
    within ``depth_rtol`` of the nearest depth count (soft z-buffer: farther surfaces are
    occluded). Returns colour, z-depth and weight sums (weight 0 = nothing landed).
    """
    h, w = target_fill.shape
    cam = cams[[target]]
    c_t = cams.centers[target].to(torch.float64)
    pix_all, z_all, rgb_all, w_all = [], [], [], []
    for (pts, rgb, wt), c_s in zip(sources, source_centers):
        if pts.shape[0] == 0:
            continue
        uv, z = cam.project(pts)
        uv, z = uv[0], z[0]
        d_s = torch.nn.functional.normalize(pts - c_s.to(pts), dim=-1)
        d_t = torch.nn.functional.normalize(pts - c_t, dim=-1)
        cos = (d_s * d_t).sum(-1)
        vw = wt.to(torch.float64) * torch.exp((cos - 1.0) / cfg.angle_sigma)
        ok = (z > 1e-6) & (uv[:, 0] > -0.5) & (uv[:, 1] > -0.5)
        ok &= (uv[:, 0] < w + 0.5) & (uv[:, 1] < h + 0.5)
        uv, z, vw, rgb = uv[ok], z[ok], vw[ok], rgb[ok]
        px, py = uv[:, 0] - 0.5, uv[:, 1] - 0.5
        x0, y0 = px.floor(), py.floor()
        fx, fy = px - x0, py - y0
        for dx, dy, bw in (
            (0, 0, (1 - fx) * (1 - fy)),
            (1, 0, fx * (1 - fy)),
            (0, 1, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            xi, yi = (x0 + dx).long(), (y0 + dy).long()
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & (bw > 1e-3)
            flat = yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)
            inside &= target_fill.reshape(-1)[flat]
            pix_all.append(flat[inside])
            z_all.append(z[inside])
            rgb_all.append(rgb[inside].to(torch.float64))
            w_all.append((bw * vw)[inside])
    colour = torch.zeros(h * w, 3, dtype=torch.float64)
    depth = torch.zeros(h * w, dtype=torch.float64)
    wsum = torch.zeros(h * w, dtype=torch.float64)
    if pix_all:
        pix, z = torch.cat(pix_all), torch.cat(z_all)
        rgb, wt = torch.cat(rgb_all), torch.cat(w_all)
        zmin = torch.full((h * w,), float("inf"), dtype=torch.float64)
        zmin = zmin.scatter_reduce(0, pix, z, reduce="amin")
        front = z <= zmin[pix] * (1 + cfg.depth_rtol)
        pix, z, rgb, wt = pix[front], z[front], rgb[front], wt[front]
        wsum.index_add_(0, pix, wt)
        colour.index_add_(0, pix, rgb * wt[:, None])
        depth.index_add_(0, pix, z * wt)
    nz = wsum > 0
    colour[nz] /= wsum[nz, None]
    depth[nz] /= wsum[nz]
    return colour.view(h, w, 3), depth.view(h, w), wsum.view(h, w)


class MultiViewInpainter(Inpainter):
    """Fill masked pixels from the other views through depth, then Telea for the rest.

    Needs ``depths`` (z-depth per view; the field's rendered depth at run time; 0 = nothing
    hit, NaN = unknown: never warped) and ``cameras``. Views are processed from the least to the most masked; with ``propagate``
    a filled view (colour and completed depth) is a source for the later ones.
    """

    name = "multiview"

    def __init__(self, config: MultiViewConfig | None = None) -> None:
        self.cfg = config or MultiViewConfig()

    def inpaint(self, images, fill, depths=None, cameras=None, prompt=None, strength=1.0):
        with _threads(self.cfg.num_threads):
            return self._inpaint(images, fill, depths, cameras)

    def _inpaint(self, images, fill, depths, cameras):
        _check_inputs(images, fill, depths)
        if depths is None or cameras is None:
            raise ValueError("MultiViewInpainter needs per-view depths and cameras")
        n, h, w, _ = images.shape
        if len(cameras) != n:
            raise ValueError(f"{n} images but {len(cameras)} cameras")
        if bool(((cameras.height != h) | (cameras.width != w)).any()):
            raise ValueError(f"cameras must match the {w}x{h} images (rescale them first)")
        cfg = self.cfg
        cams = cameras.to(dtype=torch.float64)
        out = images.clone()
        # per-view source state: usable pixels, their world points, colours and weights
        known = torch.isfinite(depths)
        depths = torch.nan_to_num(depths.float(), nan=0.0)
        out_depth = depths.clone()
        usable = (~fill) & known
        if not cfg.warp_background:
            usable &= depths > 0
        weight = usable.float()
        pos = depths[depths > 0]
        far = 1e4 * (float(pos.median()) if pos.numel() else 1.0)
        points = [_view_points(cams, i, depths[i], far) for i in range(n)]
        centers = cams.centers
        order = sorted(range(n), key=lambda i: int(fill[i].sum()))
        for t in order:
            if not bool(fill[t].any()):
                continue
            dist = (centers - centers[t]).norm(dim=-1)
            cand = [s for s in torch.argsort(dist).tolist() if s != t][: cfg.max_sources]
            srcs = []
            for s in cand:
                sel = weight[s].reshape(-1) > 0
                srcs.append(
                    (
                        points[s][sel],
                        out[s].reshape(-1, 3)[sel],
                        weight[s].reshape(-1)[sel],
                    )
                )
            colour, dep, wsum = warp_into_view(cams, t, fill[t], srcs, centers[cand], cfg)
            dep = torch.where(dep > 0.5 * far, torch.zeros_like(dep), dep)  # at infinity
            hit = fill[t] & (wsum > cfg.min_weight)
            img = torch.where(hit[..., None], colour.to(out.dtype), out[t])
            d = torch.where(hit, dep.to(out_depth.dtype), out_depth[t])
            rest = fill[t] & ~hit
            if bool(rest.any()):
                img = telea_fill(img, rest, cfg.telea_radius)
                d = torch.where(rest, telea_fill(d[..., None], rest, cfg.telea_radius)[..., 0], d)
            out[t] = img.clamp(0, 1)
            out_depth[t] = torch.where(fill[t], d, out_depth[t])
            if cfg.propagate:
                newly = fill[t] if cfg.warp_background else fill[t] & (out_depth[t] > 0)
                pw = torch.full_like(weight[t], cfg.propagated_weight)
                weight[t] = torch.where(newly, pw, weight[t])
                points[t] = _view_points(cams, t, out_depth[t], far)
        return InpaintResult(
            composite(images, out, fill), torch.where(fill, out_depth, depths.float())
        )


__all__ = [
    "InpaintResult",
    "Inpainter",
    "MultiViewConfig",
    "MultiViewInpainter",
    "TeleaInpainter",
    "composite",
    "telea_fill",
    "warp_into_view",
]
