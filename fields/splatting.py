"""3D Gaussian splatting: projection, tile rasterization and spherical-harmonics colours.

A Gaussian has a mean ``mu``, a covariance ``Sigma = R S S^T R^T`` (rotation from a wxyz
quaternion, ``S = diag(scales)``), an opacity ``o`` and a colour (or feature vector) ``c``.
For a camera ``cam_from_world = [R_c | t]`` and intrinsics ``K`` (OpenCV: x right, y down,
z forward; pixel centres at ``+0.5`` as in COLMAP and gsplat):

- the camera-space mean is ``p = R_c mu + t``, its depth ``z = p_z``; the projected mean is
  ``(fx p_x / z + cx, fy p_y / z + cy)``;
- the 2D covariance is EWA's first-order ``J (R_c Sigma R_c^T) J^T`` with the perspective
  Jacobian ``J`` at ``p`` (its direction clamped to 1.3 x the field of view, as 3DGS does),
  plus ``eps2d * I`` (a pixel-sized low-pass filter); ``conic`` is the upper triangle
  ``(a, b, c)`` of its inverse. Antialiased (mip-splatting) rendering multiplies the opacity by
  ``sqrt(det(cov2d) / det(cov2d + eps2d I))``;
- a Gaussian is culled (``radius = 0``) outside ``near < z < far``, when degenerate, or when
  its box ``mean +- ceil(3.33 sigma)`` misses the image;
- each pixel ``x`` composites the Gaussians front to back (sorted by ``z``) with
  ``alpha_i = min(0.999, o_i exp(-0.5 d^T conic_i d))``, ``d = x - mean_i``: weights
  ``w_i = alpha_i prod_{j<i} (1 - alpha_j)``; as in 3DGS / gsplat an ``alpha < 1/255`` is
  skipped and compositing stops before the Gaussian that would bring the transmittance to
  ``1e-4`` or below. ``rgb = sum w_i c_i + T background``, ``alpha = 1 - T``, and
  ``depth = sum w_i z_i`` (not divided by alpha: ``depth / alpha`` is the surface depth, as
  for the NeRF renderer).

:func:`rasterize_gaussians` is the pure-torch rasterizer (tiles processed in bounded chunks
by :mod:`~sceneforge.fields.splat_compositing`: a forward pass that stops once every pixel is
done and an analytic backward pass over only the Gaussians that were used);
:func:`rasterize_reference` is its per-pixel loop reference (tests only). On CUDA,
:func:`render_gaussians` calls gsplat's kernels (same outputs), elsewhere the torch path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sceneforge.core.rotations import quat_wxyz_to_matrix
from sceneforge.fields.encodings import spherical_harmonics
from sceneforge.fields.splat_compositing import (
    ALPHA_MAX,
    ALPHA_MIN,
    TRANSMITTANCE_MIN,
    CompositeChunk,
    composite,
)

SIGMA_EXTENT = 3.33
"""Screen-space radius of a Gaussian in standard deviations (gsplat)."""


@dataclass(frozen=True)
class Projection:
    """Gaussians projected into one camera (rows of culled Gaussians are not meaningful
    except ``depths`` and ``radii == 0``)."""

    means2d: Float[Tensor, "N 2"]
    """Projected means in pixels (x, y; pixel centres at +0.5)."""
    conics: Float[Tensor, "N 3"]
    """Upper triangle ``(a, b, c)`` of the inverse 2D covariance (``eps2d`` included)."""
    depths: Float[Tensor, " N"]
    """Camera-space z of the means."""
    radii: Int[Tensor, " N"]
    """Half side of the screen-space bounding square in pixels (int32; 0 = culled)."""
    opacity_compensation: Float[Tensor, " N"] | None = None
    """Antialiased rendering's opacity factor ``sqrt(det(cov2d) / det(cov2d + eps2d I))``."""


def quat_scale_to_covariance(
    quats_wxyz: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]
) -> Float[Tensor, "N 3 3"]:
    """World covariances ``R S S^T R^T`` (quaternions normalised; ``scales`` not log)."""
    M = quat_wxyz_to_matrix(quats_wxyz) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def _as_4x4(cam_from_world: Tensor) -> Tensor:
    if cam_from_world.shape == (4, 4):
        return cam_from_world
    if cam_from_world.shape != (3, 4):
        raise ValueError(f"cam_from_world must be 4x4 or 3x4, got {tuple(cam_from_world.shape)}")
    last = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=cam_from_world.dtype)
    return torch.cat([cam_from_world, last.to(cam_from_world.device)], 0)


def project_gaussians(
    means: Float[Tensor, "N 3"],
    covars: Float[Tensor, "N 3 3"],
    cam_from_world: Float[Tensor, "4 4"],
    K: Float[Tensor, "3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
    antialiased: bool = False,
    opacities: Float[Tensor, " N"] | None = None,
) -> Projection:
    """EWA projection of 3D Gaussians into a pinhole camera (``K``'s skew is ignored, as in
    gsplat's kernels). Same math as gsplat's ``_fully_fused_projection`` (radii reduced to the
    larger of the x / y half-sides). With ``opacities`` the radii shrink to where
    ``opacity * exp(-r^2 / 2)`` reaches 1/255 and Gaussians fainter than 1/255 are culled, as
    gsplat's CUDA kernel does; rasterized images are the same either way."""
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    p = means @ R.T + t
    cov = R @ covars @ R.T
    x, y, z = p.unbind(-1)
    in_depth = (z > near) & (z < far)
    zs = torch.where(in_depth, z, torch.ones_like(z))  # culled rows stay finite (and their grads)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # the Jacobian's direction is clamped to 1.3 x the field of view (0.3 x half of it per side)
    mx, my = 0.15 * width / fx, 0.15 * height / fy
    u = torch.minimum(torch.maximum(x / zs, -(cx / fx + mx)), (width - cx) / fx + mx)
    v = torch.minimum(torch.maximum(y / zs, -(cy / fy + my)), (height - cy) / fy + my)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * u / zs, zero, fy / zs, -fy * v / zs], dim=-1).reshape(
        -1, 2, 3
    )
    cov2d = J @ cov @ J.transpose(-1, -2)
    means2d = torch.stack([(fx * x + cx * z) / zs, (fy * y + cy * z) / zs], -1)

    s_xx, s_yy = cov2d[:, 0, 0], cov2d[:, 1, 1]
    s_xy = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    det_raw = s_xx * s_yy - s_xy * s_xy
    a, c = s_xx + eps2d, s_yy + eps2d
    det = a * c - s_xy * s_xy
    det_c = det.clamp_min(1e-10)
    conics = torch.stack([c / det_c, -s_xy / det_c, a / det_c], -1)
    comp = None
    if antialiased:
        ratio = det_raw / det_c
        comp = torch.where(ratio > 0, ratio.clamp_min(1e-30).sqrt(), torch.zeros_like(ratio))

    with torch.no_grad():
        valid = in_depth & (det > 0)
        extent = torch.full_like(z, SIGMA_EXTENT)
        if opacities is not None:
            op = opacities.detach() * (comp.detach() if comp is not None else 1.0)
            valid &= op >= ALPHA_MIN
            tight = (2.0 * torch.log((op / ALPHA_MIN).clamp_min(1.0))).sqrt()
            extent = torch.minimum(extent, tight)
        rx = torch.ceil(extent * a.detach().clamp_min(0).sqrt())
        ry = torch.ceil(extent * c.detach().clamp_min(0).sqrt())
        m = means2d.detach()
        inside = (m[:, 0] + rx > 0) & (m[:, 0] - rx < width)
        inside &= (m[:, 1] + ry > 0) & (m[:, 1] - ry < height)
        keep = valid & inside & (torch.maximum(rx, ry) > 0)
        radii = torch.where(keep, torch.maximum(rx, ry), torch.zeros_like(rx)).to(torch.int32)
    return Projection(means2d, conics, z, radii, comp)


def _effective_opacities(proj: Projection, opacities: Tensor) -> Tensor:
    if proj.opacity_compensation is None:
        return opacities
    return opacities * proj.opacity_compensation


def _box(radii: Tensor, conics: Tensor) -> tuple[Tensor, Tensor]:
    """Half sides of the bounding rectangle inside the square ``+- radii``: the ellipse's x / y
    extents are ``sigma_x / sigma_max`` and ``sigma_y / sigma_max`` of its largest one
    (``sigma_x^2 / sigma_y^2 = c / a`` for a conic ``(a, b, c)``); non-positive-definite
    conics keep the square."""
    a, b, c = conics.unbind(-1)
    pd = (a > 0) & (c > 0) & (a * c - b * b > 0)
    big = torch.maximum(a, c).clamp_min(1e-30)
    fx = torch.where(pd, (c / big).clamp(0, 1).sqrt(), torch.ones_like(a))
    fy = torch.where(pd, (a / big).clamp(0, 1).sqrt(), torch.ones_like(a))
    slack = 1.0 + 1e-4  # rounding must not cut a pixel on the extent
    return (radii * fx * slack).ceil(), (radii * fy * slack).ceil()


def _graph_zero(*tensors: Tensor) -> Tensor | float:
    """A zero that depends on every input needing grad (outputs stay in the graph even when
    every Gaussian is culled)."""
    z: Tensor | float = 0.0
    for t in tensors:
        if t.requires_grad:
            z = z + t.reshape(-1)[:1].sum() * 0.0
    return z


def _finish(
    acc: Tensor, t_final: Tensor, background: Tensor | None, width: int, height: int, d: int
) -> dict[str, Tensor]:
    rgb = acc[:, :d]
    if background is not None:
        rgb = rgb + t_final[:, None] * background.to(acc)
    return {
        "rgb": rgb.reshape(height, width, d),
        "alpha": (1.0 - t_final).reshape(height, width),
        "depth": acc[:, d].reshape(height, width),
    }


def rasterize_gaussians(
    proj: Projection,
    colors: Float[Tensor, "N D"],
    opacities: Float[Tensor, " N"],
    width: int,
    height: int,
    background: Float[Tensor, " D"] | None = None,
    tile_size: int = 8,
    chunk_elements: int = 1 << 21,
    block: int = 64,
) -> dict[str, Tensor]:
    """Alpha-composite projected Gaussians into an image (pure torch, differentiable w.r.t.
    ``proj.means2d``, ``proj.conics``, ``proj.depths``, ``colors`` and ``opacities``).

    ``opacities`` in [0, 1] (multiplied by ``proj.opacity_compensation`` when present). Square
    tiles of ``tile_size`` pixels (8 was fastest on the CPU; gsplat's kernels use 16) are
    composited in chunks of at most ``chunk_elements`` (pixel, Gaussian) pairs, each tile with
    only the Gaussians whose bounding box overlaps it, sorted by depth, ``block`` Gaussians at a
    time. The forward pass keeps no graph and stops a chunk once all its pixels are done; the
    backward pass recomputes each chunk's weights and applies the analytic gradients to the
    Gaussians it used, so memory stays bounded by one chunk. Returns ``rgb`` (H, W, D), ``alpha`` (H, W) and ``depth`` (H, W)
    (``sum w_i z_i``, see the module docstring)."""
    dev, dtype = colors.device, colors.dtype
    d = colors.shape[1]
    op = _effective_opacities(proj, opacities)
    zero = _graph_zero(proj.means2d, proj.conics, proj.depths, colors, opacities)
    feats = torch.cat([colors, proj.depths[:, None].to(dtype)], -1)  # depth composites too
    acc = torch.zeros(height * width, d + 1, dtype=dtype, device=dev) + zero
    t_final = torch.ones(height * width, dtype=dtype, device=dev) + zero
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)

    with torch.no_grad():
        ids = torch.nonzero(proj.radii > 0).squeeze(1)
        order = ids[torch.argsort(proj.depths[ids].detach(), stable=True)]
        m = proj.means2d.detach()[order]
        r = proj.radii[order].to(m.dtype)
        rx, ry = _box(r, proj.conics.detach()[order])
        x0 = torch.floor((m[:, 0] - rx) / tile_size).clamp(0, tw - 1).long()
        x1 = torch.floor((m[:, 0] + rx) / tile_size).clamp(-1, tw - 1).long()
        y0 = torch.floor((m[:, 1] - ry) / tile_size).clamp(0, th - 1).long()
        y1 = torch.floor((m[:, 1] + ry) / tile_size).clamp(-1, th - 1).long()
        nx, ny = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
        counts = nx * ny
        g = torch.repeat_interleave(torch.arange(order.numel(), device=dev), counts)
        local = torch.arange(g.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[g]
        tile = (y0[g] + local // nx[g]) * tw + x0[g] + local % nx[g]
        perm = torch.argsort(tile, stable=True)  # by tile, front to back within a tile
        isect = order[g[perm]]
        per_tile = torch.bincount(tile, minlength=tw * th)
        start = torch.cumsum(per_tile, 0) - per_tile
        busy_t = torch.nonzero(per_tile).squeeze(1)
        # tiles of similar lengths share a chunk (each chunk pads its tiles to its longest)
        busy = busy_t[torch.argsort(per_tile[busy_t], stable=True)].tolist()
        sizes = per_tile.tolist()
    if not busy:
        return _finish(acc, t_final, background, width, height, d)

    lp = torch.arange(tile_size * tile_size, device=dev)
    lx, ly = lp % tile_size, lp // tile_size
    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (proj.means2d, proj.conics, proj.depths, colors, op)
    )
    pix_ids, acc_parts, t_parts = [], [], []
    k = 0
    while k < len(busy):  # chunks of consecutive busy tiles within the element budget
        e, gmax = k + 1, sizes[busy[k]]
        while e < len(busy) and (e - k + 1) * lp.numel() * max(gmax, sizes[busy[e]]) <= (
            chunk_elements
        ):
            gmax = max(gmax, sizes[busy[e]])
            e += 1
        tl = torch.tensor(busy[k:e], device=dev)
        k = e
        with torch.no_grad():
            slot = torch.arange(gmax, device=dev)
            real = slot[None, :] < per_tile[tl][:, None]
            slot = (start[tl][:, None] + slot[None, :]).clamp_max(isect.numel() - 1)
            gid = isect[slot]  # (T, G)
            col = (tl % tw)[:, None] * tile_size + lx[None, :]
            row = (tl // tw)[:, None] * tile_size + ly[None, :]
            px, py = col.to(dtype) + 0.5, row.to(dtype) + 0.5
            inside = ((col < width) & (row < height)).reshape(-1)
            pix = (row * width + col).reshape(-1)[inside]
        opg = torch.where(real, op[gid], torch.zeros((), dtype=op.dtype, device=dev))
        args = (proj.means2d[gid], proj.conics[gid], opg, feats[gid])
        if need_grad:
            s, tr = CompositeChunk.apply(*args, px, py, block)
        else:
            s, tr, _ = composite(px, py, *args, block, early_exit=True)
        pix_ids.append(pix)
        acc_parts.append(s.reshape(-1, d + 1)[inside])
        t_parts.append(tr.reshape(-1)[inside])
    pix = torch.cat(pix_ids)
    acc = acc.index_copy(0, pix, torch.cat(acc_parts))
    t_final = t_final.index_copy(0, pix, torch.cat(t_parts))
    return _finish(acc, t_final, background, width, height, d)


def rasterize_reference(
    proj: Projection,
    colors: Float[Tensor, "N D"],
    opacities: Float[Tensor, " N"],
    width: int,
    height: int,
    background: Float[Tensor, " D"] | None = None,
) -> dict[str, Tensor]:
    """:func:`rasterize_gaussians` as a per-pixel loop over depth-sorted Gaussians with the
    3DGS kernel's skip and stop (slow: tests only; differentiable)."""
    d = colors.shape[1]
    op = _effective_opacities(proj, opacities)
    ids = torch.nonzero(proj.radii > 0).squeeze(1)
    order = ids[torch.argsort(proj.depths[ids].detach(), stable=True)].tolist()
    rgb, alpha, depth = [], [], []
    for i in range(height):
        for j in range(width):
            px, py = j + 0.5, i + 0.5
            trans = torch.ones((), dtype=colors.dtype)
            acc = torch.zeros(d, dtype=colors.dtype)
            dep = torch.zeros((), dtype=colors.dtype)
            for gi in order:
                dx, dy = px - proj.means2d[gi, 0], py - proj.means2d[gi, 1]
                a, b, c = proj.conics[gi]
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                al = torch.clamp(op[gi] * torch.exp(-sigma), max=ALPHA_MAX)
                if sigma < 0 or al < ALPHA_MIN:
                    continue
                nxt = trans * (1 - al)
                if nxt <= TRANSMITTANCE_MIN:
                    break
                acc = acc + colors[gi] * al * trans
                dep = dep + proj.depths[gi] * al * trans
                trans = nxt
            if background is not None:
                acc = acc + trans * background
            rgb.append(acc)
            alpha.append(1 - trans)
            depth.append(dep)
    return {
        "rgb": torch.stack(rgb).reshape(height, width, d),
        "alpha": torch.stack(alpha).reshape(height, width),
        "depth": torch.stack(depth).reshape(height, width),
    }


def sh_to_rgb(
    sh: Float[Tensor, "N K 3"], dirs: Float[Tensor, "N 3"], degree: int
) -> Float[Tensor, "N 3"]:
    """3DGS colour of spherical-harmonics coefficients seen along ``dirs`` (normalised here):
    ``max(0, sum_k sh_k Y_k(dir) + 0.5)`` over the first ``(degree + 1)^2`` coefficients, in
    gsplat's order. The basis is :func:`~sceneforge.fields.encodings.spherical_harmonics`
    (``degree + 1`` bands), which is gsplat's basis in gsplat's order."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    k = (degree + 1) ** 2
    if sh.shape[-2] < k:
        raise ValueError(f"degree {degree} needs {k} SH coefficients, got {sh.shape[-2]}")
    basis = spherical_harmonics(F.normalize(dirs, dim=-1), degree + 1)
    return (torch.einsum("nk,nkc->nc", basis, sh[:, :k]) + 0.5).clamp_min(0.0)


def _import_gsplat():
    try:
        import gsplat
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the gsplat backend needs the gsplat package (pip install gsplat; it compiles its "
            "CUDA kernels on first use); use backend='torch' without it"
        ) from e
    return gsplat


def gsplat_available() -> bool:
    """Whether gsplat imports (its CUDA kernels are compiled on first use)."""
    try:
        _import_gsplat()
    except ImportError:
        return False
    return True


def render_gaussians(
    means: Float[Tensor, "N 3"],
    quats_wxyz: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, " N"],
    colors: Float[Tensor, "N D"],
    cam_from_world: Float[Tensor, "4 4"],
    K: Float[Tensor, "3 3"],
    width: int,
    height: int,
    background: Float[Tensor, " D"] | None = None,
    backend: Literal["auto", "torch", "gsplat"] = "auto",
    antialiased: bool = False,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
    retain_means2d: bool = False,
) -> dict[str, Tensor]:
    """Render Gaussians (``scales`` not log, ``opacities`` in [0, 1], ``colors`` any ``D``
    channels) into one camera (``cam_from_world`` 4x4 or 3x4).

    ``backend``: ``torch`` (:func:`project_gaussians` + :func:`rasterize_gaussians`, any
    device), ``gsplat`` (gsplat's CUDA kernels, CUDA tensors) or ``auto`` (gsplat for CUDA
    tensors when it imports, else torch). Both return ``rgb`` (H, W, D), ``alpha`` (H, W),
    ``depth`` (H, W) = ``sum w_i z_i`` (``depth / alpha`` is the surface depth), ``radii`` (N,)
    int32 (0 = not drawn; opacity-aware like gsplat's kernel) and ``means2d`` (N, 2) projected
    means in pixels. With ``retain_means2d`` (and grad enabled), ``out["means2d"].grad`` holds
    the gradient of the loss w.r.t. the projected means after ``backward()`` (zero rows for
    culled Gaussians; accumulated over backward passes like a ``.grad``), for densification."""
    T = _as_4x4(cam_from_world)
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and gsplat_available() else "torch"
    if backend == "torch" or (backend == "gsplat" and means.is_cuda and means.shape[0] == 0):
        covars = quat_scale_to_covariance(quats_wxyz, scales)
        proj = project_gaussians(
            means, covars, T, K, width, height, eps2d, near, far, antialiased, opacities
        )
        if retain_means2d and proj.means2d.requires_grad:
            proj.means2d.retain_grad()
        out = rasterize_gaussians(proj, colors, opacities, width, height, background)
        return {**out, "radii": proj.radii, "means2d": proj.means2d}
    if backend != "gsplat":
        raise ValueError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'gsplat'")
    gsplat = _import_gsplat()
    if not means.is_cuda:
        raise ValueError("the gsplat backend needs CUDA tensors; use backend='torch' on the CPU")
    n, d = colors.shape
    img, alpha, meta = gsplat.rasterization(
        means,
        quats_wxyz,
        scales,
        opacities,
        colors,
        T[None],
        K[None],
        width,
        height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        packed=True,  # (gsplat 1.5.3 rejects per-camera backgrounds when packed: added below)
        render_mode="RGB+D",  # accumulated depth sum w_i z_i ("ED" divides it by alpha)
        rasterize_mode="antialiased" if antialiased else "classic",
    )
    gid = meta["gaussian_ids"]
    radii = torch.zeros(n, dtype=torch.int32, device=means.device)
    packed_radii = meta["radii"]  # (M, 2) in gsplat 1.5 (x and y), (M,) before
    if packed_radii.dim() == 2:
        packed_radii = packed_radii.max(-1).values
    radii[gid] = packed_radii.to(torch.int32)
    packed = meta["means2d"]
    means2d = torch.zeros(n, 2, dtype=packed.dtype, device=packed.device)
    means2d[gid] = packed.detach()
    if retain_means2d and packed.requires_grad:

        def _to_means2d_grad(grad: Tensor) -> None:
            full = torch.zeros_like(means2d).index_add_(0, gid, grad)
            means2d.grad = full if means2d.grad is None else means2d.grad + full

        packed.register_hook(_to_means2d_grad)
    rgb, alpha = img[0, ..., :d], alpha[0, ..., 0]
    if background is not None:  # the kernel's own: sum w_i c_i + T background, T = 1 - alpha
        rgb = rgb + (1.0 - alpha)[..., None] * background.to(rgb)
    return {
        "rgb": rgb,
        "alpha": alpha,
        "depth": img[0, ..., d],
        "radii": radii,
        "means2d": means2d,
    }


__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "TRANSMITTANCE_MIN",
    "Projection",
    "gsplat_available",
    "project_gaussians",
    "quat_scale_to_covariance",
    "rasterize_gaussians",
    "rasterize_reference",
    "render_gaussians",
    "sh_to_rgb",
]
