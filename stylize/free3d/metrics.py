"""Multi-view consistency metrics for generated novel views with known geometry.

- :func:`warp_to_view` / :func:`warped_psnr`: backward warping of view ``i`` into view ``j``
  with the **true** depth of view ``j`` and the true cameras, and the PSNR between the warped
  view and view ``j`` on the pixels that are foreground in both views and visible in both
  (the depth of the warped point agrees with view ``i``'s true depth). On ground-truth images
  this is the ceiling of the metric (only resampling error remains).
- :func:`tsed_pair` / :func:`tsed`: TSED, the Thresholded Symmetric Epipolar Distance of
  Yu et al. 2023 ("Long-term photometric consistent novel view synthesis with diffusion
  models"), the consistency metric reported by Free3D. SIFT keypoints (OpenCV) of two
  neighbouring views, upsampled to ``size`` pixels, are matched with Lowe's ratio test; the
  symmetric epipolar distance of every match is computed with the fundamental matrix of the
  **true** relative pose; a pair is *consistent* when at least ``min_matches`` (T_matches,
  default 10) matches have an SED below ``max_error`` (T_error, default 2 px at the 256-pixel
  upsampling). TSED is the fraction of consistent pairs. (Keypoints on silhouettes are not
  fixed 3D points, and SIFT on upsampled toy images localises to about a source pixel, so
  even ground-truth pairs have a median SED near T_error; counting the matches that agree
  with the true geometry is the robust form of the test. The median is reported too.)

Conventions are sceneforge's: OpenCV ``cam_from_world`` (x right, y down, z forward),
pinhole ``K`` with COLMAP pixel centres (the top-left pixel's centre is at (0.5, 0.5)),
depth = camera z (0 = no surface), images ``[3, H, W]`` in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import compose_rigid, invert_rigid, pixel_centers
from sceneforge.core.metrics import psnr
from sceneforge.recon.epipolar import fundamental_from_poses, symmetric_epipolar_distance

#: TSED thresholds of Yu et al. 2023 / Free3D (pixels at a 256-pixel image; matches).
TSED_MAX_ERROR = 2.0
TSED_MIN_MATCHES = 10
TSED_SIZE = 256
SIFT_RATIO = 0.8


# ----------------------------------------------------------------------------- rendering


def render_with_depth(
    mesh, cam_from_world: Float[Tensor, "V 3 4"], size: int, fov_deg: float,
    shading: str = "lambert",
) -> dict[str, Tensor]:  # fmt: skip
    """Views of ``mesh`` on white as :func:`~.data.render_view_set` renders them (one sample
    per pixel), with the true depth: ``images`` [V 3 S S], ``alpha`` [V 1 S S], ``depth``
    [V S S] (camera z, 0 = background), ``K`` [V 3 3], ``cam_from_world`` [V 3 4]."""
    from sceneforge.core.raster import Shading, render_view, vertex_normals
    from sceneforge.core.synthetic import make_cameras

    cams = make_cameras(cam_from_world.double(), size, size, fov_deg)
    normals = vertex_normals(mesh.vertices, mesh.faces)
    out = [
        render_view(
            mesh,
            cams,
            i,
            background=(1.0, 1.0, 1.0),
            near=1e-3,
            shading=Shading(mode=shading),
            normals=normals,
        )  # fmt: skip
        for i in range(len(cams))
    ]
    return {
        "images": torch.stack([o.color.permute(2, 0, 1).float() for o in out]),
        "alpha": torch.stack([(o.face >= 0).float()[None] for o in out]),
        "depth": torch.stack([torch.where(o.face >= 0, o.depth, 0.0).float() for o in out]),
        "K": cams.K,
        "cam_from_world": cams.cam_from_world,
    }


# ----------------------------------------------------------------------------- warping


def warp_to_view(
    image_i: Float[Tensor, "3 H W"],
    K_i: Float[Tensor, "3 3"],
    cam_from_world_i: Float[Tensor, "3 4"],
    depth_j: Float[Tensor, "H W"],
    K_j: Float[Tensor, "3 3"],
    cam_from_world_j: Float[Tensor, "3 4"],
    depth_i: Float[Tensor, "H W"] | None = None,
    depth_tol: float = 0.03,
) -> tuple[Float[Tensor, "3 H W"], Float[Tensor, "H W"]]:
    """View ``i`` resampled (bilinearly) at the pixels of view ``j``.

    Every pixel of ``j`` with a surface (``depth_j > 0``) is lifted to 3D with its true depth
    and projected into ``i``. Returns the warped image and the validity mask: the pixel lands
    inside ``i`` with all four bilinear neighbours on the surface of ``i`` (``depth_i > 0``)
    and, with ``depth_i``, the point is visible in ``i`` (its depth there is within
    ``depth_tol`` (relative) of the nearest-pixel true depth of ``i``).
    """
    h, w = depth_j.shape
    dt = torch.float64
    uv = pixel_centers(h, w, dtype=dt).reshape(-1, 2)
    uv1 = torch.cat([uv, torch.ones_like(uv[:, :1])], -1)
    z = depth_j.to(dt).reshape(-1)
    pts_j = (torch.linalg.solve(K_j.to(dt), uv1.T) * z).T  # camera j frame
    i_from_j = compose_rigid(cam_from_world_i.to(dt), invert_rigid(cam_from_world_j.to(dt)))
    pts_i = pts_j @ i_from_j[:, :3].T + i_from_j[:, 3]
    zi = pts_i[:, 2]
    proj = pts_i @ K_i.to(dt).T
    uv_i = proj[:, :2] / torch.where(zi > 1e-9, zi, torch.ones_like(zi))[:, None]
    hi, wi = image_i.shape[-2:]
    grid = torch.stack([2 * uv_i[:, 0] / wi - 1, 2 * uv_i[:, 1] / hi - 1], -1)
    grid = grid.reshape(1, h, w, 2).float()
    warped = F.grid_sample(
        image_i[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    valid = (z > 0) & (zi > 1e-9)
    x, y = uv_i[:, 0] - 0.5, uv_i[:, 1] - 0.5  # pixel-index coordinates
    valid &= (x >= 0) & (x <= wi - 1) & (y >= 0) & (y <= hi - 1)
    if depth_i is not None:
        d = depth_i.to(dt)
        x0 = x.floor().clamp(0, wi - 1).long()
        y0 = y.floor().clamp(0, hi - 1).long()
        x1, y1 = (x0 + 1).clamp(max=wi - 1), (y0 + 1).clamp(max=hi - 1)
        fg = (d[y0, x0] > 0) & (d[y0, x1] > 0) & (d[y1, x0] > 0) & (d[y1, x1] > 0)
        xn = x.round().clamp(0, wi - 1).long()
        yn = y.round().clamp(0, hi - 1).long()
        near = d[yn, xn]
        valid &= fg & ((zi - near).abs() <= depth_tol * zi)
    return warped, valid.reshape(h, w)


def warped_psnr(
    image_i: Float[Tensor, "3 H W"],
    image_j: Float[Tensor, "3 H W"],
    depth_i: Float[Tensor, "H W"],
    depth_j: Float[Tensor, "H W"],
    K_i: Float[Tensor, "3 3"],
    K_j: Float[Tensor, "3 3"],
    cam_from_world_i: Float[Tensor, "3 4"],
    cam_from_world_j: Float[Tensor, "3 4"],
    depth_tol: float = 0.03,
    min_pixels: int = 16,
) -> tuple[float, int]:
    """Depth-warped PSNR (dB) of view ``i`` warped into view ``j`` against view ``j`` over
    the valid pixels of :func:`warp_to_view` (both views' true foreground, visible in both),
    and the number of those pixels; NaN below ``min_pixels``."""
    warped, valid = warp_to_view(
        image_i, K_i, cam_from_world_i, depth_j, K_j, cam_from_world_j, depth_i, depth_tol
    )
    n = int(valid.sum())
    if n < min_pixels:
        return math.nan, n
    return psnr(warped.permute(1, 2, 0), image_j.permute(1, 2, 0).float(), valid), n


# ----------------------------------------------------------------------------- TSED


def _gray_u8(image: Tensor, size: int) -> np.ndarray:
    import cv2

    rgb = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5
    rgb = rgb.astype(np.uint8)
    if rgb.shape[0] != size or rgb.shape[1] != size:
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def sift_matches(
    image_i: Float[Tensor, "3 H W"],
    image_j: Float[Tensor, "3 H W"],
    size: int = TSED_SIZE,
    ratio: float = SIFT_RATIO,
) -> tuple[np.ndarray, np.ndarray]:
    """SIFT matches (Lowe's ratio test) of two images upsampled to ``size x size``, as
    ``[N, 2]`` COLMAP pixel coordinates of the upsampled images."""
    import cv2

    sift = cv2.SIFT_create()
    ki, di = sift.detectAndCompute(_gray_u8(image_i, size), None)
    kj, dj = sift.detectAndCompute(_gray_u8(image_j, size), None)
    if di is None or dj is None or len(ki) < 2 or len(kj) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(di, dj, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    pi = np.array([ki[m.queryIdx].pt for m in good], dtype=np.float64).reshape(-1, 2) + 0.5
    pj = np.array([kj[m.trainIdx].pt for m in good], dtype=np.float64).reshape(-1, 2) + 0.5
    return pi, pj


def tsed_pair(
    image_i: Float[Tensor, "3 H W"],
    image_j: Float[Tensor, "3 H W"],
    K_i: Float[Tensor, "3 3"],
    K_j: Float[Tensor, "3 3"],
    cam_from_world_i: Float[Tensor, "3 4"],
    cam_from_world_j: Float[Tensor, "3 4"],
    size: int = TSED_SIZE,
    max_error: float = TSED_MAX_ERROR,
    min_matches: int = TSED_MIN_MATCHES,
) -> dict:
    """TSED's test of one pair (module doc): ``{"consistent", "matches", "inliers"
    (matches with SED < max_error), "median_sed"}``.

    ``K`` describe the given images; they are rescaled to the ``size``-pixel upsampling
    (a resize maps COLMAP pixel coordinates ``u -> s u`` exactly).
    """
    pi, pj = sift_matches(image_i, image_j, size)
    si = torch.tensor(
        [size / image_i.shape[-1], size / image_i.shape[-2], 1.0], dtype=torch.float64
    )
    sj = torch.tensor(
        [size / image_j.shape[-1], size / image_j.shape[-2], 1.0], dtype=torch.float64
    )
    Fm = fundamental_from_poses(
        K_i.double() * si[:, None], cam_from_world_i, K_j.double() * sj[:, None], cam_from_world_j
    )
    n = len(pi)
    sed = (
        symmetric_epipolar_distance(Fm, torch.from_numpy(pi), torch.from_numpy(pj)).numpy()
        if n
        else np.zeros(0)
    )
    inliers = int((sed < max_error).sum())
    return {"consistent": inliers >= min_matches, "matches": n, "inliers": inliers,
            "median_sed": float(np.median(sed)) if n else math.inf}  # fmt: skip


def tsed(
    images: Float[Tensor, "V 3 H W"],
    K: Float[Tensor, "V 3 3"],
    cam_from_world: Float[Tensor, "V 3 4"],
    size: int = TSED_SIZE,
    max_error: float = TSED_MAX_ERROR,
    min_matches: int = TSED_MIN_MATCHES,
) -> tuple[float, list[dict]]:
    """TSED of a sequence of views: the fraction of consistent neighbouring pairs
    ``(v, v + 1)``, and each pair's :func:`tsed_pair` result."""
    pairs = [
        tsed_pair(
            images[v],
            images[v + 1],
            K[v],
            K[v + 1],
            cam_from_world[v],
            cam_from_world[v + 1],
            size,
            max_error,
            min_matches,
        )  # fmt: skip
        for v in range(images.shape[0] - 1)
    ]
    if not pairs:
        raise ValueError("tsed needs two or more views")
    return sum(p["consistent"] for p in pairs) / len(pairs), pairs


__all__ = [
    "SIFT_RATIO",
    "TSED_MAX_ERROR",
    "TSED_MIN_MATCHES",
    "TSED_SIZE",
    "render_with_depth",
    "sift_matches",
    "tsed",
    "tsed_pair",
    "warp_to_view",
    "warped_psnr",
]
