"""Image inpainters: fill masked pixels of a batch of posed views.

Convention: ``fill`` masks are True where a pixel must be filled (the opposite of
:class:`~sceneforge.core.scene.SceneData` masks, where True = usable). Every backend returns
images whose unmasked pixels are bit-exact copies of the input (:func:`composite`).

Backends:

- :class:`TeleaInpainter`: OpenCV Telea per image (the "individual inpainting" baseline).
- :class:`MultiViewInpainter`: weight-free and multi-view consistent. Default (``backward``,
  robust to a field's rendered depth): the depth inside a hole is the removed object's (or
  garbage), so the hidden background's depth is estimated from the depth around the hole
  (harmonic fill of inverse depth: planes exactly); each hole pixel is then looked up in the
  other views, keeping the views whose own depth agrees (visibility / occlusion check),
  weighted by viewing direction and blended with consensus reweighting (outlier views lose
  their say); Telea only where no view sees it. ``forward`` splats the other views' pixels
  with a soft z-buffer (good with exact, captured depth). Filled views become (down-weighted)
  sources for later views (propagation), so even the hallucinated part is shared between
  overlapping views.
- :class:`~sceneforge.inpaint.diffusion.SDInpainter`: Stable Diffusion inpainting with the joint
  multi-view grid prior (in :mod:`sceneforge.inpaint.diffusion`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import (
    Cameras,
    pixel_centers,
    pixel_to_grid,
    transform_points,
    unproject,
)
from sceneforge.core.torch_state import torch_threads


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

    mode: Literal["backward", "forward"] = "backward"
    """``backward`` (robust to a field's rendered depth): estimate the hidden background's
    depth in each hole from the depth around it (harmonic fill of inverse depth), refine it by
    photo-consistency across the sources, then look every hole pixel up in the sources, with a
    visibility check against each source's depth and consensus-weighted blending.
    ``forward``: splat the sources' points into the holes with a soft z-buffer (needs exact
    depth, e.g. an RGB-D capture)."""
    visibility_rtol: float = 0.1
    """Backward: a source sees the hole point when its own depth there agrees within this
    relative tolerance (Gaussian weight ``exp(-(rel / rtol)^2 / 2)``)."""
    unverified_weight: float = 0.0
    """Backward: weight factor of source pixels whose depth is unknown (NaN)."""
    colour_sigma: float = 0.1
    """Backward: consensus reweighting ``exp(-|c - mean|^2 / (2 sigma^2))`` of the sources'
    colours (outlier sources lose their say); 0 = plain weighted mean."""
    calibrate_depth: bool = True
    """Backward: rescale all depths by the one factor that makes the *observed* pixels most
    photo-consistent across views (a field's rendered depth is biased short by the
    semi-transparent density in front of surfaces; exact depth keeps factor 1)."""
    calibration_range: float = 1.3
    """Backward: depth factors tried lie in ``[1 / range, range]`` (log-spaced)."""
    calibration_steps: int = 25
    """Backward: number of depth factors tried."""
    calibration_pixels: int = 2000
    """Backward: observed pixels per view used for the calibration (random subset)."""
    depth_rtol: float = 0.03
    """Soft z-buffer: splats within this relative depth of the nearest one are blended."""
    angle_sigma: float = 0.05
    """View weight ``exp((cos(angle) - 1) / sigma)`` between source and target rays."""
    min_weight: float = 0.05
    """Forward: a pixel counts as filled by warping when its splat weight sum exceeds this."""
    min_support: float = 0.5
    """Backward: a hole pixel is filled from the sources when their visibility weights sum to
    at least this (about half a source seeing it); the rest is Telea."""
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


def harmonic_fill(
    values: Float[Tensor, "H W"], unknown: Bool[Tensor, "H W"]
) -> Float[Tensor, "H W"]:
    """Fill ``unknown`` pixels with the harmonic (Laplace) interpolation of the known ones.

    Known 4-neighbours are Dirichlet values, image borders are Neumann; an affine function of
    the pixel coordinates (the inverse depth of a plane is one) is reproduced exactly in holes
    enclosed by known pixels.
    Regions with no known neighbour at all get the median of the known values."""
    import scipy.sparse
    import scipy.sparse.linalg

    out = values.detach().cpu().double().clone()
    unk = unknown.cpu()
    if not bool(unk.any()):
        return out.to(values)
    known = ~unk
    if not bool(known.any()):
        return torch.zeros_like(values)
    h, w = unk.shape
    idx = torch.full((h, w), -1, dtype=torch.long)
    n = int(unk.sum())
    idx[unk] = torch.arange(n)
    ys, xs = unk.nonzero(as_tuple=True)
    rows, cols = [], []
    diag = torch.zeros(n, dtype=torch.float64)
    rhs = torch.zeros(n, dtype=torch.float64)
    own = idx[ys, xs]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        o, ny, nx = own[inside], ny[inside], nx[inside]
        diag.index_add_(0, o, torch.ones(o.shape[0], dtype=torch.float64))
        nb = idx[ny, nx]
        is_unk = nb >= 0
        rows.append(o[is_unk])
        cols.append(nb[is_unk])
        rhs.index_add_(0, o[~is_unk], out[ny[~is_unk], nx[~is_unk]])
    r, c = torch.cat(rows).numpy(), torch.cat(cols).numpy()
    # components without a known neighbour: pin them weakly to the median (keeps A regular)
    anchored = _reaches_known(unk, known)
    eps = torch.where(anchored[ys, xs], 0.0, 1e-6).double()
    rhs += eps * float(out[known].median())
    ar = np.arange(n)
    vals = np.concatenate([-np.ones(len(r)), (diag + eps).numpy()])
    a = scipy.sparse.csr_matrix(
        (vals, (np.concatenate([r, ar]), np.concatenate([c, ar]))), shape=(n, n)
    )
    sol = scipy.sparse.linalg.spsolve(a.tocsc(), rhs.numpy())
    out[unk] = torch.from_numpy(np.asarray(sol, dtype=np.float64))
    return out.to(values)


def _reaches_known(unk: Tensor, known: Tensor) -> Tensor:
    """Unknown pixels whose 4-connected unknown component touches a known pixel."""
    import scipy.ndimage

    lab, num = scipy.ndimage.label(unk.numpy())
    touch = scipy.ndimage.binary_dilation(known.numpy()) & unk.numpy()
    good = np.zeros(num + 1, dtype=bool)
    good[np.unique(lab[touch])] = True
    good[0] = False
    return torch.from_numpy(good[lab])


def fill_hole_depth(depth: Float[Tensor, "H W"], fill: Bool[Tensor, "H W"]) -> Float[Tensor, "H W"]:
    """The hidden background's z-depth inside ``fill``: harmonic fill of the **inverse** depth
    of the pixels around the hole (0 = nothing hit = inverse depth 0 = at infinity; NaN =
    unknown, filled too). Planes seen all around the hole come out exactly; returns 0 where the
    fill is at infinity."""
    known = (~fill) & torch.isfinite(depth)
    inv = torch.where(known & (depth > 0), 1.0 / depth.clamp(min=1e-12), 0.0).double()
    inv = harmonic_fill(inv, ~known)
    tiny = 1e-9 * float(inv[known].max()) if bool(known.any()) else 0.0
    est = torch.where(inv > tiny, 1.0 / inv.clamp(min=1e-300), 0.0).to(depth.dtype)
    return torch.where(fill, est, depth)


def _sample_sources(
    cams: Cameras,
    target: int,
    points: Float[Tensor, "M 3"],
    src: list[int],
    rgb: Float[Tensor, "N H W 3"],
    depth: Float[Tensor, "N H W"],
    weight: Float[Tensor, "N H W"],
    cfg: MultiViewConfig,
) -> tuple[Float[Tensor, "S M 3"], Float[Tensor, "S M"], Float[Tensor, "S M"]]:
    """Colours of world ``points`` in the source views, their blending weights and how well
    each source sees them (the weight without the view-angle factor; 0 = not seen).

    A source's weight is its pixel weight (usable / propagated), a view-angle factor and a
    visibility factor: the source's own depth at the projection must agree with the point's
    depth in that source (nearer = occluded there, farther = the point is not on its
    surface)."""
    h, w = depth.shape[1:]
    cs = cams[src]
    uv, z = cs.project(points)  # (S, M, 2), (S, M)
    u, v = uv[..., 0], uv[..., 1]
    inside = (z > 1e-9) & (u > 0) & (v > 0) & (u < w) & (v < h)
    xi = u.floor().long().clamp(0, w - 1)
    yi = v.floor().long().clamp(0, h - 1)
    sidx = torch.as_tensor(src)[:, None].expand_as(xi)
    d_s = depth[sidx, yi, xi].to(torch.float64)
    w_pix = weight[sidx, yi, xi].to(torch.float64)
    # colour: bilinear over the source's usable pixels only
    grid = pixel_to_grid(torch.stack([u, v], -1), h, w).float()[:, :, None]  # S M 1 2
    wimg = (weight[src] > 0).float()
    stack = torch.cat([rgb[src].float() * wimg[..., None], wimg[..., None]], -1)
    smp = torch.nn.functional.grid_sample(
        stack.permute(0, 3, 1, 2), grid, mode="bilinear", align_corners=False
    )[..., 0].permute(0, 2, 1)  # S M 4
    colour = smp[..., :3] / smp[..., 3:].clamp(min=1e-6)
    rel = (d_s - z) / z.clamp(min=1e-12)
    vis = torch.exp(-0.5 * (rel / cfg.visibility_rtol) ** 2)
    vis = torch.where(torch.isnan(d_s), torch.full_like(vis, cfg.unverified_weight), vis)
    vis = torch.where(d_s == 0, torch.zeros_like(vis), vis)  # the source sees nothing there
    c_t = cams.centers[target].to(points)
    d_t = torch.nn.functional.normalize(points - c_t, dim=-1)
    d_src = torch.nn.functional.normalize(points[None] - cs.centers[:, None].to(points), dim=-1)
    cos = (d_src * d_t[None]).sum(-1)
    ang = torch.exp((cos - 1.0) / cfg.angle_sigma)
    seen = (w_pix * vis * (smp[..., 3].double() > 0.5) * inside).nan_to_num(0.0)
    return colour.to(torch.float64), seen * ang, seen


def _consensus(
    colour: Float[Tensor, "S M 3"], wt: Float[Tensor, "S M"], sigma: float, iters: int = 2
) -> tuple[Float[Tensor, "M 3"], Float[Tensor, "S M"]]:
    """Weighted mean colour with outlier sources down-weighted (IRLS on colour distance)."""
    w0 = wt
    for k in range(iters + 1):
        mean = (colour * wt[..., None]).sum(0) / wt.sum(0).clamp(min=1e-12)[:, None]
        if k == iters or sigma <= 0:
            break
        d2 = (colour - mean[None]).pow(2).sum(-1)
        wt = w0 * torch.exp(-0.5 * d2 / sigma**2)
    return mean, wt


def depth_scale_from_photoconsistency(
    images: Float[Tensor, "N H W 3"],
    usable: Bool[Tensor, "N H W"],
    depths: Float[Tensor, "N H W"],
    cams: Cameras,
    factors: Float[Tensor, " K"],
    num_sources: int = 4,
    max_pixels: int = 2000,
    truncation: float = 0.3,
    seed: int = 0,
) -> tuple[float, Float[Tensor, " K"]]:
    """The factor ``k`` for which observed pixels, lifted to ``k * depth`` and projected into
    their nearest views, best match those views' colours (truncated mean L1 over all pairs).

    Returns the best factor and the cost of every factor. Only ``usable`` pixels (observed,
    depth > 0) are lifted and looked up."""
    n, h, w, _ = images.shape
    g = torch.Generator().manual_seed(seed)
    pix_all = pixel_centers(h, w, dtype=torch.float64).reshape(-1, 2)
    centers = cams.centers
    wimg = usable.float()
    stack = torch.cat([images.float() * wimg[..., None], wimg[..., None]], -1).permute(0, 3, 1, 2)
    cost = torch.zeros(len(factors), dtype=torch.float64)
    count = torch.zeros(len(factors), dtype=torch.float64)
    for t in range(n):
        idx = usable[t].reshape(-1).nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        idx = idx[torch.randperm(idx.numel(), generator=g)[:max_pixels]]
        pix = pix_all[idx]
        rays = unproject(pix, cams.model, cams.params[t].expand(pix.shape[0], -1))
        d = depths[t].reshape(-1)[idx].to(torch.float64)
        col_t = images[t].reshape(-1, 3)[idx].float()
        dist = (centers - centers[t]).norm(dim=-1)
        src = [s for s in torch.argsort(dist).tolist() if s != t][:num_sources]
        if not src:
            continue
        cs = cams[src]
        for k, f in enumerate(factors.tolist()):
            pts = transform_points(cams.world_from_cam[t], rays * (f * d)[:, None])
            uv, z = cs.project(pts)
            u, v = uv[..., 0], uv[..., 1]
            inside = (z > 1e-9) & (u > 0) & (v > 0) & (u < w) & (v < h)
            grid = pixel_to_grid(torch.stack([u, v], -1), h, w).float()[:, :, None]
            smp = torch.nn.functional.grid_sample(
                stack[src], grid, mode="bilinear", align_corners=False
            )[..., 0].permute(0, 2, 1)
            ok = inside & (smp[..., 3] > 0.99)
            col = smp[..., :3] / smp[..., 3:].clamp(min=1e-6)
            err = (col - col_t[None]).abs().mean(-1).clamp(max=truncation)
            cost[k] += err[ok].sum().double()
            count[k] += ok.sum()
    cost = cost / count.clamp(min=1)
    cost[count == 0] = float("inf")
    best = int(cost.argmin())
    return float(factors[best]), cost


class MultiViewInpainter(Inpainter):
    """Fill masked pixels from the other views through depth, then Telea for the rest.

    Needs ``depths`` (z-depth per view; the field's rendered depth at run time; 0 = nothing
    hit, NaN = unknown: never a source) and ``cameras``. Views are processed from the least to
    the most masked; with ``propagate`` a filled view (colour and completed depth) is a
    source for the later ones. The returned depths are the (calibrated) depths with the
    completed depth inside the holes (the estimated background), for the depth loss. After a
    call, ``depth_factor`` is the calibration factor applied (None: the depth was unusable
    and per-image Telea filled the holes).
    """

    name = "multiview"

    def __init__(self, config: MultiViewConfig | None = None) -> None:
        self.cfg = config or MultiViewConfig()

    def inpaint(self, images, fill, depths=None, cameras=None, prompt=None, strength=1.0):
        with torch_threads(self.cfg.num_threads):
            return self._inpaint(images, fill, depths, cameras)

    def _inpaint(self, images, fill, depths, cameras):
        _check_inputs(images, fill, depths)
        if self.cfg.mode == "backward":
            return self._inpaint_backward(images, fill, depths, cameras)
        if self.cfg.mode != "forward":
            raise ValueError(f"unknown multi-view mode {self.cfg.mode!r}; use backward or forward")
        cams = self._check_geometry(images, depths, cameras)
        n, h, w, _ = images.shape
        cfg = self.cfg
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

    def _check_geometry(self, images, depths, cameras) -> Cameras:
        if depths is None or cameras is None:
            raise ValueError("MultiViewInpainter needs per-view depths and cameras")
        n, h, w, _ = images.shape
        if len(cameras) != n:
            raise ValueError(f"{n} images but {len(cameras)} cameras")
        if bool(((cameras.height != h) | (cameras.width != w)).any()):
            raise ValueError(f"cameras must match the {w}x{h} images (rescale them first)")
        return cameras.to(dtype=torch.float64)

    def _inpaint_backward(self, images, fill, depths, cameras):
        cams = self._check_geometry(images, depths, cameras)
        cfg = self.cfg
        n, h, w, _ = images.shape
        out = images.clone()
        dep = depths.to(torch.float64).clone()  # NaN = unknown (kept for visibility checks)
        usable = (~fill) & torch.isfinite(dep) & (dep > 0)
        weight = usable.to(torch.float64)
        self.depth_factor: float | None = 1.0
        if cfg.calibrate_depth and cfg.calibration_steps > 1 and n > 1:
            r = math.log(cfg.calibration_range)
            factors = torch.exp(torch.linspace(-r, r, cfg.calibration_steps, dtype=torch.float64))
            k, _ = depth_scale_from_photoconsistency(
                images,
                usable,
                torch.nan_to_num(dep, nan=0.0),
                cams,
                factors,
                max_pixels=cfg.calibration_pixels,
            )
            if k in (float(factors[0]), float(factors[-1])):
                # the best factor lies outside the range: the depth is no geometry to warp with
                # (e.g. a field that put everything at infinity); per-image Telea instead
                self.depth_factor = None
                res = TeleaInpainter(cfg.telea_radius).inpaint(images, fill)
                hole = torch.stack([fill_hole_depth(d, f) for d, f in zip(depths.float(), fill)])
                return InpaintResult(res.images, hole)
            self.depth_factor = k
            dep = dep * k
        out_depth = dep.float().clone()
        centers = cams.centers
        pix_all = pixel_centers(h, w, dtype=torch.float64)
        order = sorted(range(n), key=lambda i: int(fill[i].sum()))
        for t in order:
            f = fill[t]
            if not bool(f.any()):
                continue
            z0 = fill_hole_depth(dep[t], f)[f]  # the hidden background's depth (0 = far)
            pix = pix_all[f]
            m = pix.shape[0]
            rays = unproject(pix, cams.model, cams.params[t].expand(m, -1))
            dist = (centers - centers[t]).norm(dim=-1)
            src = [s for s in torch.argsort(dist).tolist() if s != t][: cfg.max_sources]
            finite = z0 > 0
            colour = torch.zeros(m, 3, dtype=torch.float64)
            support = torch.zeros(m, dtype=torch.float64)
            if src and bool(finite.any()):
                pts = transform_points(cams.world_from_cam[t], rays[finite] * z0[finite, None])
                col, wt, seen = _sample_sources(cams, t, pts, src, out, dep, weight, cfg)
                mean, _ = _consensus(col, wt, cfg.colour_sigma)
                sup = seen.sum(0)
                colour[finite] = mean
                support[finite] = sup
            hit = support >= cfg.min_support
            img = out[t].clone()
            hole = img[f]
            hole[hit] = colour[hit].to(img.dtype)
            img[f] = hole
            rest = f.clone()
            rest[f] = ~hit
            if bool(rest.any()):
                img = telea_fill(img, rest, cfg.telea_radius)
            out[t] = img.clamp(0, 1)
            d_t = out_depth[t].clone()
            d_t[f] = z0.to(d_t.dtype)
            out_depth[t] = d_t
            if cfg.propagate:
                newly = f & (d_t > 0)
                dep[t] = torch.where(newly, d_t.to(dep.dtype), dep[t])
                weight[t] = torch.where(newly, cfg.propagated_weight, weight[t])
        return InpaintResult(composite(images, out, fill), out_depth)


__all__ = [
    "InpaintResult",
    "Inpainter",
    "MultiViewConfig",
    "MultiViewInpainter",
    "TeleaInpainter",
    "composite",
    "depth_scale_from_photoconsistency",
    "fill_hole_depth",
    "harmonic_fill",
    "telea_fill",
    "warp_into_view",
]
