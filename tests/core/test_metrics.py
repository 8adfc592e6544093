"""Pose and image metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from sceneforge.core import metrics as M
from sceneforge.core.cameras import Cameras, make_rigid
from sceneforge.core.rotations import angle_axis_to_matrix
from sceneforge.core.scene import Observations

D = torch.float64


def _cams(n: int) -> torch.Tensor:
    R = angle_axis_to_matrix(0.3 * torch.randn(n, 3, dtype=D))
    return make_rigid(R, torch.randn(n, 3, dtype=D))


def test_umeyama_recovers_similarity():
    src = torch.randn(20, 3, dtype=D)
    R = angle_axis_to_matrix(torch.tensor([0.3, -0.2, 1.0], dtype=D))
    dst = 2.5 * src @ R.T + torch.tensor([1.0, -2.0, 0.5], dtype=D)
    s, R_est, t = M.umeyama_sim3(src, dst)
    assert abs(float(s) - 2.5) < 1e-12
    torch.testing.assert_close(R_est, R)
    torch.testing.assert_close(t, torch.tensor([1.0, -2.0, 0.5], dtype=D))
    with pytest.raises(ValueError):
        M.umeyama_sim3(src[:2], dst[:2])


def test_pose_metrics_invariant_to_similarity():
    gt = _cams(6)
    # estimate = gt seen in another world frame: X_est = (R X_gt + t) * s
    R = angle_axis_to_matrix(torch.tensor([0.5, 0.1, -0.3], dtype=D))
    t = torch.tensor([0.3, 1.0, -2.0], dtype=D)
    s = 0.4
    # cam = Rc X_gt + tc = Rc R^T (X_est / s - t) + tc  -> scale the translation by s
    Rn = gt[..., :3] @ R.T
    tn = s * (gt[..., 3] - (Rn @ t[:, None])[..., 0])
    est = torch.cat([Rn, tn[..., None]], dim=-1)
    r, te = M.relative_pose_errors(est, gt)
    assert r.max() < 1e-6 and te.max() < 1e-5
    out = M.pose_metrics(est, gt)
    assert out["auc3"] == pytest.approx(1.0) and out["ate"] < 1e-9
    aligned, _ = M.align_cameras_sim3(est, gt)
    torch.testing.assert_close(aligned, gt)


def test_relative_rotation_error_hand_value():
    gt = make_rigid(
        torch.eye(3, dtype=D).repeat(2, 1, 1), torch.tensor([[0, 0, 0], [1.0, 0, 0]], dtype=D)
    )
    est = gt.clone()
    est[1, :, :3] = angle_axis_to_matrix(torch.tensor([0, 0, math.radians(4.0)], dtype=D))
    r, t = M.relative_pose_errors(est, gt)
    assert float(r[0]) == pytest.approx(4.0, abs=1e-9)
    assert float(t[0]) == pytest.approx(0.0, abs=1e-9)
    # translation direction rotated by 30 degrees, and the sign flip is not an error
    est2 = gt.clone()
    est2[1, :, 3] = torch.tensor(
        [math.cos(math.radians(30)), math.sin(math.radians(30)), 0], dtype=D
    )
    assert float(M.relative_pose_errors(est2, gt)[1][0]) == pytest.approx(30.0, abs=1e-6)
    est2[1, :, 3] *= -1
    assert float(M.relative_pose_errors(est2, gt)[1][0]) == pytest.approx(30.0, abs=1e-6)


def test_auc_hand_values():
    errs = torch.tensor([0.5, 2.5, 4.0, 100.0], dtype=D)
    # t=1: 1/4, t=2: 1/4, t=3: 2/4 -> AUC@3 = (0.25 + 0.25 + 0.5) / 3
    assert M.pose_auc(errs, 3) == pytest.approx(1.0 / 3.0)
    # t=4: 2/4 (4.0 is not < 4), t=5: 3/4
    assert M.pose_auc(errs, 5) == pytest.approx((0.25 + 0.25 + 0.5 + 0.5 + 0.75) / 5)
    assert M.pose_auc(torch.zeros(0, dtype=D), 5) == 0.0


def test_reprojection_errors():
    cams = Cameras(
        "PINHOLE",
        torch.tensor([[100.0, 100.0, 50.0, 50.0]], dtype=D),
        torch.tensor([100]),
        torch.tensor([100]),
        make_rigid(torch.eye(3, dtype=D)[None], torch.zeros(1, 3, dtype=D)),
    )
    pts = torch.tensor([[0.0, 0.0, 2.0], [0.2, 0.0, 2.0]], dtype=D)
    obs = Observations(
        torch.tensor([0, 0]),
        torch.tensor([0, 1]),
        torch.tensor([[50.0, 53.0], [60.0, 50.0]], dtype=D),
    )
    torch.testing.assert_close(
        M.reprojection_errors(cams, pts, obs), torch.tensor([3.0, 0.0], dtype=D)
    )


def test_psnr_and_ssim_hand_values():
    a = torch.full((16, 16, 3), 0.5)
    b = a + 0.1
    assert M.psnr(b, a) == pytest.approx(20.0, abs=1e-4)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:4] = True
    c = b.clone()
    c[4:] = 0.0  # outside the mask: must not count
    assert M.psnr(c, a, mask) == pytest.approx(20.0, abs=1e-4)
    # constant images: SSIM = (2ab + c1) / (a^2 + b^2 + c1)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert M.ssim(b, a) == pytest.approx(expected, abs=1e-5)
    assert M.ssim(a, a) == pytest.approx(1.0)
    noisy = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert M.ssim(noisy, a) < 0.5
    assert M.ssim(c, a, mask) > M.ssim(c, a)
    with pytest.raises(ValueError, match="mask selects no pixel"):
        M.psnr(a, a, torch.zeros(16, 16, dtype=torch.bool))


def test_ssim_map_separable_filter_equals_the_2d_window():
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(3)
    x = torch.rand(20, 17, 3, generator=gen, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(20, 17, 3, generator=gen, dtype=torch.float64)).clamp(0, 1)
    # the textbook form: one 11x11 Gaussian window (sigma 1.5), reflect-padded
    t = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(t * t) / (2 * 1.5**2))
    w2 = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    a, b = x.permute(2, 0, 1)[None], y.permute(2, 0, 1)[None]

    def filt(z):
        return F.conv2d(F.pad(z, (5, 5, 5, 5), mode="reflect"), w2.expand(3, 1, 11, 11), groups=3)

    mx, my = filt(a), filt(b)
    sxx, syy, sxy = filt(a * a) - mx**2, filt(b * b) - my**2, filt(a * b) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    torch.testing.assert_close(M.ssim_map(x, y), ref[0].mean(0), rtol=1e-12, atol=1e-12)
    f32 = M.ssim_map(x.float(), y.float(), dtype=torch.float32)
    torch.testing.assert_close(f32.double(), ref[0].mean(0), rtol=0, atol=1e-4)
