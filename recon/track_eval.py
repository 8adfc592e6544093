"""Ground truth and error metrics for tracks.

Ground-truth positions follow each track's anchor: the anchor pixel is taken as exact (it is the
query), lifted to 3D with the anchor's depth (or mapped through exact homographies) and projected
into every other frame. Errors are measured on the other visible observations.
Also: a homography-warped procedural texture sequence with exact correspondences, and epipolar
errors of tracks against reference poses (for real scenes without ground truth).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import Cameras, pixel_to_grid, transform_points, unproject
from sceneforge.recon.epipolar import fundamental_from_poses, symmetric_epipolar_distance
from sceneforge.recon.tracks import Tracks


def _sample(img: Tensor, xy: Tensor, mode: str = "bilinear") -> Tensor:
    """Samples of ``img`` (H W) at COLMAP pixel positions ``xy`` (K 2)."""
    h, w = img.shape
    grid = pixel_to_grid(xy, h, w)
    out = F.grid_sample(
        img[None, None].float(),
        grid[None, None].float(),
        mode=mode,
        align_corners=False,
        padding_mode="border",
    )
    return out[0, 0, 0]


def gt_tracks_from_depth(
    tracks: Tracks,
    cameras: Cameras,
    depths: list[Float[Tensor, "H W"]],
    occlusion_tol: float = 0.01,
    edge_tol: float = 0.02,
) -> tuple[Float[Tensor, "T N 2"], Bool[Tensor, "T N"]]:
    """Ground-truth positions of every track in every frame from exact depth and cameras.

    Valid where the anchor has depth away from depth edges (3x3 relative range < ``edge_tol``),
    the point projects in front of and inside the frame, and that frame's depth there agrees
    within ``occlusion_tol`` (relative), i.e. the point is not occluded.
    """
    t, n = tracks.num_tracks, tracks.num_frames
    ar = torch.arange(t)
    ref = tracks.ref_frame
    xy = tracks.pixels(torch.float32)
    anchor = xy[ar, ref].double()
    pts_world = torch.zeros(t, 3, dtype=torch.float64)
    ok_anchor = torch.zeros(t, dtype=torch.bool)
    cams = cameras.to(dtype=torch.float64)
    for r in ref.unique().tolist():
        idx = (ref == r).nonzero()[:, 0]
        d = depths[r].double()
        inv = torch.where(d > 0, 1.0 / d.clamp_min(1e-12), torch.zeros_like(d))
        z = 1.0 / _sample(inv, anchor[idx]).double().clamp_min(1e-12)
        # depth edge test on the 3x3 neighbourhood
        dd = d[None, None]
        mx = F.max_pool2d(dd, 3, 1, 1)[0, 0]
        mn = -F.max_pool2d(-dd, 3, 1, 1)[0, 0]
        near = _sample(mx, anchor[idx], "nearest").double()
        far = _sample(mn, anchor[idx], "nearest").double()
        good = (far > 0) & ((near - far) / far.clamp_min(1e-12) < edge_tol)

        ray = unproject(anchor[idx], cams.model, cams.params[r].expand(idx.numel(), -1))
        pc = ray * z[:, None]
        pts_world[idx] = transform_points(cams.world_from_cam[r], pc)
        ok_anchor[idx] = good
    gt = torch.zeros(t, n, 2)
    valid = torch.zeros(t, n, dtype=torch.bool)
    px, depth = cams.project(pts_world)  # N T 2, N T
    for j in range(n):
        h, w = int(cameras.height[j]), int(cameras.width[j])
        p = px[j]
        inside = (p[:, 0] >= 0.5) & (p[:, 0] <= w - 0.5) & (p[:, 1] >= 0.5) & (p[:, 1] <= h - 0.5)
        dj = depths[j].double()
        seen = _sample(dj, p, "nearest").double()
        vis = inside & (depth[j] > 0) & ((seen - depth[j]).abs() < occlusion_tol * depth[j])
        gt[:, j] = p.float()
        valid[:, j] = vis & ok_anchor
    valid[ar, ref] = ok_anchor
    gt[ar, ref] = xy[ar, ref]
    return gt, valid


def track_errors(
    tracks: Tracks, gt_xy: Float[Tensor, "T N 2"], gt_valid: Bool[Tensor, "T N"]
) -> Float[Tensor, " O"]:
    """Pixel errors of the visible, non-anchor observations that have ground truth."""
    sel = tracks.visible & gt_valid
    sel[torch.arange(tracks.num_tracks), tracks.ref_frame] = False
    ti, fi = sel.nonzero(as_tuple=True)
    return (tracks.pixels(torch.float32)[ti, fi] - gt_xy[ti, fi]).norm(dim=-1)


def error_summary(err: Tensor, outlier_px: float = 3.0) -> dict[str, float]:
    """Median / p90 / mean (of inliers) error and the outlier fraction (> ``outlier_px``)."""
    if err.numel() == 0:
        return {
            "median": math.nan,
            "p90": math.nan,
            "mean_inlier": math.nan,
            "outliers": math.nan,
            "n": 0,
        }
    inl = err[err <= outlier_px]
    return {
        "median": float(err.median()),
        "p90": float(err.quantile(0.9)),
        "mean_inlier": float(inl.mean()) if inl.numel() else math.nan,
        "outliers": float((err > outlier_px).float().mean()),
        "n": int(err.numel()),
    }


def fundamental_from_cameras(cameras: Cameras, i: int, j: int) -> Float[Tensor, "3 3"]:
    """Fundamental matrix ``F`` with ``x_j^T F x_i = 0`` (pinhole part of the intrinsics)."""
    cams = cameras.to(dtype=torch.float64)
    K = cams.K
    return fundamental_from_poses(K[i], cams.cam_from_world[i], K[j], cams.cam_from_world[j])


def epipolar_errors(tracks: Tracks, cameras: Cameras) -> Float[Tensor, " O"]:
    """Symmetric point-to-epipolar-line distance (pixels) of every visible non-anchor observation
    against its anchor, under ``cameras`` (e.g. a reference reconstruction)."""
    out = []
    xy = tracks.pixels(torch.float32)
    for r in tracks.ref_frame.unique().tolist():
        rows = (tracks.ref_frame == r).nonzero()[:, 0]
        xa = xy[rows, r].double()
        for j in range(tracks.num_frames):
            if j == r:
                continue
            vis = tracks.visible[rows, j]
            if not vis.any():
                continue
            Fm = fundamental_from_cameras(cameras, r, j)
            out.append(symmetric_epipolar_distance(Fm, xa[vis], xy[rows[vis], j]))
    return torch.cat(out).float() if out else torch.zeros(0)


# ----------------------------------------------------------------------------- homography data


def procedural_texture(height: int, width: int, seed: int = 0) -> Float[Tensor, "H W 3"]:
    """Smooth multi-octave colour noise (band-limited so warps barely alias), values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    tex = torch.zeros(3, height, width)
    for octave, amp in ((8, 1.0), (24, 0.7), (64, 0.5), (160, 0.35)):
        cells = max(2, min(octave, min(height, width) // 3))
        noise = torch.rand(3, cells, int(cells * width / height) + 1, generator=g)
        tex += (
            amp
            * F.interpolate(noise[None], size=(height, width), mode="bicubic", align_corners=False)[
                0
            ]
        )
    tex = tex - tex.amin(dim=(1, 2), keepdim=True)
    tex = tex / tex.amax(dim=(1, 2), keepdim=True)
    return tex.permute(1, 2, 0).clamp(0, 1)


def random_homographies(
    num: int, width: int, height: int, seed: int = 0, strength: float = 1.0
) -> Float[Tensor, "N 3 3"]:
    """Homographies mapping image pixels (COLMAP convention) to texture pixels: small rotation,
    scale, perspective and translation around the image centre (frame 0 is a pure shift)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    cx, cy = width / 2, height / 2
    for k in range(num):
        r = (torch.rand(6, generator=g) * 2 - 1) * strength * (0.0 if k == 0 else 1.0)
        ang = math.radians(8.0) * float(r[0])
        s = 1.0 + 0.12 * float(r[1])
        px, py = 2e-4 * float(r[2]), 2e-4 * float(r[3])
        tx, ty = 0.1 * width * float(r[4]), 0.1 * height * float(r[5])
        c, sn = math.cos(ang), math.sin(ang)
        A = torch.tensor(
            [[s * c, -s * sn, 0.0], [s * sn, s * c, 0.0], [px, py, 1.0]], dtype=torch.float64
        )
        T0 = torch.tensor([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=torch.float64)
        T1 = torch.tensor(
            [[1, 0, cx * 2 + tx], [0, 1, cy * 2 + ty], [0, 0, 1]], dtype=torch.float64
        )
        out.append(T1 @ A @ T0)
    return torch.stack(out)


def apply_homography(H: Tensor, xy: Tensor) -> Tensor:
    """Map ``K 2`` points through a 3x3 homography."""
    p = torch.cat([xy.double(), torch.ones_like(xy[:, :1], dtype=torch.float64)], -1) @ H.T
    return (p[:, :2] / p[:, 2:]).to(xy.dtype)


def render_homography_sequence(
    texture: Float[Tensor, "Ht Wt 3"], homographies: Tensor, height: int, width: int
) -> list[Float[Tensor, "H W 3"]]:
    """Frame ``k`` samples the texture at ``H_k(pixel centre)`` (bilinear: exact continuous
    image, so correspondences are exact)."""
    ht, wt = texture.shape[:2]
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pix = torch.stack([u, v], -1).reshape(-1, 2).double()
    frames = []
    for H in homographies:
        t = apply_homography(H, pix).float()
        grid = torch.stack([t[:, 0] / wt * 2 - 1, t[:, 1] / ht * 2 - 1], -1).view(
            1, height, width, 2
        )
        img = F.grid_sample(
            texture.permute(2, 0, 1)[None],
            grid,
            mode="bilinear",
            align_corners=False,
            padding_mode="border",
        )[0]
        frames.append(img.permute(1, 2, 0).contiguous())
    return frames


def gt_tracks_from_homographies(
    tracks: Tracks, homographies: Tensor
) -> tuple[Float[Tensor, "T N 2"], Bool[Tensor, "T N"]]:
    """Exact positions of every track in every frame of a homography sequence."""
    t, n = tracks.num_tracks, tracks.num_frames
    ar = torch.arange(t)
    anchor = tracks.pixels(torch.float32)[ar, tracks.ref_frame]
    tex = torch.zeros(t, 2, dtype=torch.float64)
    for r in tracks.ref_frame.unique().tolist():
        idx = (tracks.ref_frame == r).nonzero()[:, 0]
        tex[idx] = apply_homography(homographies[r], anchor[idx].double())
    gt = torch.zeros(t, n, 2)
    valid = torch.zeros(t, n, dtype=torch.bool)
    for j in range(n):
        p = apply_homography(torch.linalg.inv(homographies[j]), tex).float()
        h, w = tracks.image_sizes[j].tolist()
        gt[:, j] = p
        valid[:, j] = (p[:, 0] >= 0) & (p[:, 0] <= w) & (p[:, 1] >= 0) & (p[:, 1] <= h)
    return gt, valid


def gt_tracks_from_synthetic(
    tracks: Tracks, scene
) -> tuple[Float[Tensor, "T N 2"], Bool[Tensor, "T N"]]:
    """Exact positions of every track in every frame of a synthetic scene
    (:func:`sceneforge.core.synthetic.pixel_correspondences`: ray-cast, occlusion-aware)."""
    from sceneforge.core.synthetic import pixel_correspondences

    t, n = tracks.num_tracks, tracks.num_frames
    ar = torch.arange(t)
    gt = torch.zeros(t, n, 2)
    valid = torch.zeros(t, n, dtype=torch.bool)
    xy = tracks.pixels(torch.float32)
    for r in tracks.ref_frame.unique().tolist():
        idx = (tracks.ref_frame == r).nonzero()[:, 0]
        pix = xy[idx, r].double()
        for j in range(n):
            if j == r:
                continue
            c = pixel_correspondences(scene, r, j, pix)
            gt[idx, j] = c.xy.float()
            valid[idx, j] = c.visible
    gt[ar, tracks.ref_frame] = xy[ar, tracks.ref_frame]
    valid[ar, tracks.ref_frame] = True
    return gt, valid
