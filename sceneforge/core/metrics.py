"""Metrics every benchmark and test uses, defined once.

Pose metrics follow VGGSfM: for every image pair, the relative rotation error and the
translation-direction error (degrees, sign-agnostic); a pair's error is the max of the two;
AUC@T is the mean over t = 1..T degrees of the fraction of pairs with error < t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.cameras import Cameras, compose_rigid, invert_rigid, transform_points
from sceneforge.core.rotations import rotation_angle_deg
from sceneforge.core.scene import Observations

# ----------------------------------------------------------------------------- alignment


def umeyama_sim3(
    src: Float[Tensor, "N 3"], dst: Float[Tensor, "N 3"], with_scale: bool = True
) -> tuple[Tensor, Float[Tensor, "3 3"], Float[Tensor, " 3"]]:
    """Least-squares similarity ``dst ≈ s R src + t`` (Umeyama 1991). Needs N >= 3."""
    if src.shape != dst.shape or src.ndim != 2 or src.shape[-1] != 3 or src.shape[0] < 3:
        raise ValueError(
            f"umeyama_sim3 needs two (N>=3, 3) point sets, got {src.shape}, {dst.shape}"
        )
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / src.shape[0]
    U, S, Vh = torch.linalg.svd(cov)
    D = torch.ones(3, dtype=src.dtype, device=src.device)
    if torch.det(U) * torch.det(Vh) < 0:
        D[2] = -1.0
    R = U @ torch.diag(D) @ Vh
    var_s = (xs * xs).sum() / src.shape[0]
    s = (S * D).sum() / var_s if with_scale else torch.ones((), dtype=src.dtype)
    t = mu_d - s * (R @ mu_s)
    return s, R, t


def align_cameras_sim3(
    cam_from_world_est: Float[Tensor, "N 3 4"], cam_from_world_gt: Float[Tensor, "N 3 4"]
) -> tuple[Float[Tensor, "N 3 4"], tuple[Tensor, Tensor, Tensor]]:
    """Align estimated cameras to ground truth by Sim3 on the camera centres.

    Returns the estimated ``cam_from_world`` expressed in the ground-truth frame and
    ``(s, R, t)`` with ``X_gt = s R X_est + t``.
    """
    c_est = invert_rigid(cam_from_world_est)[..., 3]
    c_gt = invert_rigid(cam_from_world_gt)[..., 3]
    s, R, t = umeyama_sim3(c_est, c_gt)
    return transform_cameras_sim3(cam_from_world_est, s, R, t), (s, R, t)


def transform_cameras_sim3(
    cam_from_world: Float[Tensor, "N 3 4"],
    s: Tensor,
    R: Float[Tensor, "3 3"],
    t: Float[Tensor, " 3"],
) -> Float[Tensor, "N 3 4"]:
    """The cameras expressed in the frame ``X' = s R X + t`` (metric ``cam_from_world``: the
    camera-frame translation is scaled by ``s`` with the scene)."""
    # X = (R^T (X' - t)) / s ; cam = R_c X + t_c = (R_c R^T / s)(X' - t) + t_c
    Rc, tc = cam_from_world[..., :3], cam_from_world[..., 3]
    R, t = R.to(Rc), t.to(Rc)
    R_new = Rc @ R.T
    t_new = tc * s - (R_new @ t[:, None])[..., 0]
    return torch.cat([R_new, t_new[..., None]], dim=-1)


def camera_axis_points(
    cam_from_world: Float[Tensor, "N 3 4"], depth: float
) -> Float[Tensor, "2N 3"]:
    """Camera centres, then the points ``depth`` ahead of them on their optical axes."""
    wfc = invert_rigid(cam_from_world)
    return torch.cat([wfc[..., 3], wfc[..., 3] + depth * wfc[..., 2]], dim=0)


def sim3_cameras_to_cameras(
    cam_from_world_src: Float[Tensor, "N 3 4"],
    cam_from_world_dst: Float[Tensor, "N 3 4"],
    depth: float,
) -> tuple[Tensor, Float[Tensor, "3 3"], Float[Tensor, " 3"]]:
    """``(s, R, t)`` with ``X_dst ~= s R X_src + t``: Umeyama on the camera centres and the
    points ``depth`` ahead on the optical axes (:func:`camera_axis_points`; ``depth`` in the
    source frame, times the centres' Umeyama scale in the destination; float64). Unlike
    centres alone it sees the orientations, and it weighs what the cameras see at the scene's
    depth, where a turn about the centre and a sideways move of the camera nearly agree."""
    src, dst = cam_from_world_src.double(), cam_from_world_dst.double()
    s0, _, _ = umeyama_sim3(invert_rigid(src)[..., 3], invert_rigid(dst)[..., 3])
    return umeyama_sim3(camera_axis_points(src, depth), camera_axis_points(dst, depth * float(s0)))


def pose_errors_sim3(
    cam_from_world_est: Float[Tensor, "N 3 4"], cam_from_world_gt: Float[Tensor, "N 3 4"]
) -> tuple[float, float]:
    """Mean rotation error (degrees) and mean camera-centre error (ground-truth units) of the
    estimated cameras after a Sim3 alignment to the ground truth (float64)."""
    from sceneforge.core.rotations import rotation_angle_deg

    gt = cam_from_world_gt.double()
    aligned, _ = align_cameras_sim3(cam_from_world_est.double(), gt)
    rot = rotation_angle_deg(aligned[:, :, :3] @ gt[:, :, :3].transpose(-1, -2))
    d = invert_rigid(aligned)[..., 3] - invert_rigid(gt)[..., 3]
    return float(rot.mean()), float(d.norm(dim=-1).mean())


def absolute_trajectory_error(
    cam_from_world_est: Float[Tensor, "N 3 4"], cam_from_world_gt: Float[Tensor, "N 3 4"]
) -> Tensor:
    """RMSE of camera centres after Sim3 alignment (ATE), in ground-truth units."""
    aligned, _ = align_cameras_sim3(cam_from_world_est, cam_from_world_gt)
    d = invert_rigid(aligned)[..., 3] - invert_rigid(cam_from_world_gt)[..., 3]
    return d.pow(2).sum(-1).mean().sqrt()


# ----------------------------------------------------------------------------- pose errors


def relative_pose_errors(
    cam_from_world_est: Float[Tensor, "N 3 4"], cam_from_world_gt: Float[Tensor, "N 3 4"]
) -> tuple[Float[Tensor, " P"], Float[Tensor, " P"]]:
    """Relative rotation and translation-direction errors (degrees) for all pairs i < j.

    The relative pose is ``cam_j_from_cam_i``. The translation error is the angle between
    the two directions, sign-agnostic (``min(a, 180 - a)``) as in VGGSfM; it is 0 when either
    translation vanishes. Both are invariant to a global similarity of the estimate.
    """
    n = cam_from_world_est.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=cam_from_world_est.device)

    def rel(T: Tensor) -> Tensor:
        return compose_rigid(T[j], invert_rigid(T[i]))

    re, rg = rel(cam_from_world_est), rel(cam_from_world_gt)
    rot_err = rotation_angle_deg(re[..., :3].transpose(-1, -2) @ rg[..., :3])
    te = F.normalize(re[..., 3], dim=-1, eps=1e-15)
    tg = F.normalize(rg[..., 3], dim=-1, eps=1e-15)
    cos = (te * tg).sum(-1).abs().clamp(max=1.0)
    t_err = torch.rad2deg(torch.acos(cos))
    return rot_err, t_err


def pose_auc(pair_errors_deg: Float[Tensor, " P"], max_threshold: int) -> float:
    """Mean over t = 1..T of the fraction of pairs with error < t (VGGSfM's AUC@T)."""
    if pair_errors_deg.numel() == 0:
        return 0.0
    ts = torch.arange(
        1, max_threshold + 1, dtype=pair_errors_deg.dtype, device=pair_errors_deg.device
    )
    frac = (pair_errors_deg[None, :] < ts[:, None]).to(torch.float64).mean(1)
    return float(frac.mean())


def pose_metrics(
    cam_from_world_est: Float[Tensor, "N 3 4"],
    cam_from_world_gt: Float[Tensor, "N 3 4"],
    thresholds: tuple[int, ...] = (3, 5, 10, 30),
) -> dict[str, float]:
    """AUC@T for each threshold, mean rotation/translation errors and ATE, as a dict."""
    r, t = relative_pose_errors(cam_from_world_est.double(), cam_from_world_gt.double())
    err = torch.maximum(r, t)
    out = {f"auc{T}": pose_auc(err, T) for T in thresholds}
    out["mean_rot_err_deg"] = float(r.mean()) if r.numel() else 0.0
    out["mean_trans_err_deg"] = float(t.mean()) if t.numel() else 0.0
    if cam_from_world_est.shape[0] >= 3:
        out["ate"] = float(
            absolute_trajectory_error(cam_from_world_est.double(), cam_from_world_gt.double())
        )
    return out


def reprojection_errors(
    cameras: Cameras, points: Float[Tensor, "M 3"], observations: Observations
) -> Float[Tensor, " O"]:
    """Pixel distance between each observation and its point's projection."""
    T = cameras.cam_from_world[observations.image_idx]
    pc = transform_points(T, points[observations.point_idx])
    from sceneforge.core.cameras import project

    uv, _ = project(pc, cameras.model, cameras.params[observations.image_idx])
    return (uv - observations.xy).norm(dim=-1)


# ----------------------------------------------------------------------------- image metrics


def psnr(
    pred: Float[Tensor, "H W C"],
    target: Float[Tensor, "H W C"],
    mask: Bool[Tensor, "H W"] | None = None,
) -> float:
    """PSNR in dB for images in [0, 1]; with ``mask`` only True pixels count."""
    diff2 = (pred.float() - target.float()).pow(2)
    if mask is not None:
        if mask.sum() == 0:
            raise ValueError("psnr: the mask selects no pixel")
        mse = diff2[mask].mean()
    else:
        mse = diff2.mean()
    return float(-10.0 * torch.log10(mse.clamp(min=1e-20)))


def _gaussian_window(size: int, sigma: float, dtype, device) -> Tensor:
    """The normalised 1-D Gaussian window (the 2-D window is its outer product)."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim_map(
    pred: Float[Tensor, "H W C"],
    target: Float[Tensor, "H W C"],
    window: int = 11,
    sigma: float = 1.5,
    dtype: torch.dtype = torch.float64,
) -> Float[Tensor, "H W"]:
    """Per-pixel SSIM (Wang et al. 2004; Gaussian 11x11, sigma 1.5), averaged over channels.

    The border is reflect-padded so the map has the image's size (needed for masks). The
    Gaussian filter runs as two 1-D passes (the same filter as the 2-D window, 11 instead of
    121 products per pixel). Computed in ``dtype``: float64 for metrics (the variance terms
    cancel catastrophically in float32 on flat regions), float32 is enough for a training loss.
    Differentiable.
    """
    x = pred.to(dtype).permute(2, 0, 1)[None]
    y = target.to(dtype).permute(2, 0, 1)[None]
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.dtype, x.device)
    wx = g.reshape(1, 1, 1, window).expand(c, 1, 1, window)
    wy = g.reshape(1, 1, window, 1).expand(c, 1, window, 1)
    pad = window // 2

    def filt(z: Tensor) -> Tensor:
        z = F.pad(z, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(F.conv2d(z, wx, groups=c), wy, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s[0].mean(0).to(pred.dtype if pred.is_floating_point() else torch.float32)


def ssim(
    pred: Float[Tensor, "H W C"],
    target: Float[Tensor, "H W C"],
    mask: Bool[Tensor, "H W"] | None = None,
) -> float:
    """Mean SSIM for images in [0, 1]; with ``mask`` the SSIM map is averaged over True pixels."""
    m = ssim_map(pred, target)
    if mask is not None:
        if mask.sum() == 0:
            raise ValueError("ssim: the mask selects no pixel")
        return float(m[mask].mean())
    return float(m.mean())


def dilate_mask(mask: Bool[Tensor, "H W"], pixels: int) -> Bool[Tensor, "H W"]:
    """Binary dilation by a ``(2 p + 1)^2`` square (region metrics round an object, fill masks
    grown over edge pixels)."""
    if pixels <= 0:
        return mask
    k = 2 * pixels + 1
    x = mask[None, None].float()
    return F.max_pool2d(x, k, stride=1, padding=pixels)[0, 0] > 0


def mean_or_nan(x: Tensor) -> float:
    """Mean of a tensor, NaN when empty (for summaries)."""
    return float(x.mean()) if x.numel() else math.nan
