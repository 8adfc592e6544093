"""LO-RANSAC two-view geometry with model selection on synthetic batches: accuracy with
outliers, planar scenes and pure rotations, configuration labels, determinism."""

import math

import pytest
import torch

from sceneforge.core.rotations import angle_axis_to_matrix, rotation_angle_deg
from sceneforge.recon.two_view import (
    PairConfig,
    TwoViewConfig,
    estimate_two_view,
    pose_from_essential,
    ransac_two_view,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F_PX = 500.0


def _look_at(c, target):
    z = torch.nn.functional.normalize(target - c, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(z)
    x = torch.nn.functional.normalize(torch.linalg.cross(up, z, dim=-1), dim=-1)
    return torch.stack([x, torch.linalg.cross(z, x, dim=-1), z], dim=-2)


def _scene(kind, P=16, M=300, noise_px=0.5, outliers=0.0, seed=0):
    """Calibrated correspondences of ``P`` pairs: a general 3D scene, a plane, or a pure
    rotation; camera 2 about a sixth of the depth away, looking at the scene."""
    g = torch.Generator().manual_seed(seed)
    d64 = dict(dtype=torch.float64)
    target = torch.tensor([0.0, 0.0, 6.0], **d64)
    if kind == "planar":
        n = torch.nn.functional.normalize(
            torch.randn(P, 3, generator=g, **d64) * 0.3 + torch.tensor([0.0, 0.0, 1.0], **d64),
            dim=-1,
        )
        u = torch.nn.functional.normalize(
            torch.linalg.cross(n, torch.tensor([1.0, 0.0, 0.0], **d64).expand_as(n)), dim=-1
        )
        v = torch.linalg.cross(n, u)
        ab = (torch.rand(P, M, 2, generator=g, **d64) - 0.5) * 6.0
        X = target + ab[..., :1] * u[:, None] + ab[..., 1:] * v[:, None]
    else:
        X = (torch.rand(P, M, 3, generator=g, **d64) - 0.5) * torch.tensor([5.0, 4.0, 4.0], **d64)
        X = X + target
    if kind == "rotation":
        c2 = torch.zeros(P, 3, **d64)
        R = angle_axis_to_matrix(torch.randn(P, 3, generator=g, **d64) * 0.15)
    else:
        c2 = torch.nn.functional.normalize(torch.randn(P, 3, generator=g, **d64), dim=-1)
        R = angle_axis_to_matrix(torch.randn(P, 3, generator=g, **d64) * 0.03) @ _look_at(
            c2, target.expand_as(c2)
        )
    t = -(R @ c2[..., None])[..., 0]
    X2 = (X - c2[:, None]) @ R.transpose(-1, -2)
    x1, x2 = X[..., :2] / X[..., 2:], X2[..., :2] / X2[..., 2:]
    x1 = x1 + torch.randn(x1.shape, generator=g, **d64) * noise_px / F_PX
    x2 = x2 + torch.randn(x2.shape, generator=g, **d64) * noise_px / F_PX
    out = torch.rand(P, M, generator=g) < outliers
    x2[out] = (torch.rand(int(out.sum()), 2, generator=g, **d64) - 0.5) * 0.9
    valid = torch.rand(P, M, generator=g) < 0.95  # ragged rows through padding
    tn = torch.nn.functional.normalize(t, dim=-1) if kind != "rotation" else t
    return x1, x2, valid, out, R, tn


def _rot_err(geo, R):
    return rotation_angle_deg(geo.R.transpose(-1, -2) @ R)


def test_outliers_25_accuracy_and_labels():
    x1, x2, valid, out, R, t = _scene("general", outliers=0.25)
    geo = estimate_two_view(x1, x2, valid, F_PX)
    assert bool(geo.success.all())
    rot = _rot_err(geo, R)
    terr = torch.rad2deg(torch.acos((geo.t * t).sum(-1).clamp(-1, 1)))
    assert float(rot.median()) < 0.3 and float(rot.max()) < 1.0
    assert float(terr.median()) < 1.5
    assert (geo.config == PairConfig.CALIBRATED).all()
    assert bool(geo.t_reliable.all())
    assert geo.config_names[0] == "calibrated"
    inl = geo.inliers
    assert not bool((inl & ~valid).any())
    assert float((inl & ~out).sum() / inl.sum()) > 0.97
    assert float((inl & ~out).sum() / (valid & ~out).sum()) > 0.9
    # the homography explains few of the points of a general scene
    assert float((geo.num_h_inliers.double() / geo.num_inliers).max()) < 0.8
    assert geo.homography.shape == (16, 3, 3) and geo.h_inliers.shape == valid.shape


def test_outliers_50_still_found():
    x1, x2, valid, _, R, _ = _scene("general", P=12, outliers=0.5, seed=1)
    geo = estimate_two_view(x1, x2, valid, F_PX)
    assert bool(geo.success.all())
    rot = _rot_err(geo, R)
    assert float(rot.median()) < 0.4 and float(rot.max()) < 2.0


def test_planar_scene_is_labelled_and_pose_recovered():
    x1, x2, valid, _, R, t = _scene("planar", outliers=0.1, seed=2)
    geo = estimate_two_view(x1, x2, valid, F_PX)
    assert bool(geo.success.all())
    assert (geo.config == PairConfig.PLANAR).all()
    assert bool(geo.t_reliable.all())
    rot = _rot_err(geo, R)
    # A plane seen from two views can have two interpretations with every point in front;
    # the median pair is recovered.
    assert float(rot.median()) < 0.5
    assert float(geo.median_angle_deg.median()) > 2.0


def test_pure_rotation_is_panoramic():
    x1, x2, valid, _, R, _ = _scene("rotation", outliers=0.1, seed=3)
    geo = estimate_two_view(x1, x2, valid, F_PX)
    assert (geo.config == PairConfig.PANORAMIC).all()
    assert not bool(geo.t_reliable.any())
    assert bool(geo.success.all())  # inliers are not dropped by a meaningless cheirality test
    rot = _rot_err(geo, R)
    assert float(rot.median()) < 0.05
    assert float(geo.median_angle_deg.max()) < 1.0
    assert bool(torch.isfinite(geo.t).all())


def test_deterministic_and_seeded():
    x1, x2, valid, _, _, _ = _scene("general", P=6, outliers=0.3, seed=4)
    a = estimate_two_view(x1, x2, valid, F_PX)
    b = estimate_two_view(x1, x2, valid, F_PX)
    assert torch.equal(a.R, b.R) and torch.equal(a.inliers, b.inliers)
    assert torch.equal(a.homography, b.homography)
    c = estimate_two_view(x1, x2, valid, F_PX, TwoViewConfig(seed=1))
    assert bool(c.success.all())
    assert float(rotation_angle_deg(c.R.transpose(-1, -2) @ a.R).max()) < 0.5


def test_fundamental_seven_point_and_planar_label():
    pp = torch.tensor([320.0, 240.0], dtype=torch.float64)
    K = torch.tensor([[F_PX, 0, 320.0], [0, F_PX, 240.0], [0, 0, 1]], dtype=torch.float64)
    x1, x2, valid, out, R, _ = _scene("general", P=10, outliers=0.2, seed=5)
    geo = estimate_two_view(x1 * F_PX + pp, x2 * F_PX + pp, valid, None)
    assert bool(geo.success.all())
    assert (geo.config == PairConfig.UNCALIBRATED).all()
    assert not bool(geo.t_reliable.any())
    assert float((geo.inliers & ~out).sum() / geo.inliers.sum()) > 0.97
    E = K.T @ geo.matrix @ K
    Rf, _, _ = pose_from_essential(E, x1, x2, geo.inliers)
    rot = rotation_angle_deg(Rf.transpose(-1, -2) @ R)
    assert float(rot.median()) < 0.3
    # a plane: no fundamental matrix is determined, the homography explains the pair
    x1, x2, valid, _, _, _ = _scene("planar", P=6, outliers=0.1, seed=6)
    geo = estimate_two_view(x1 * F_PX + pp, x2 * F_PX + pp, valid, None)
    assert (geo.config == PairConfig.PLANAR_OR_PANORAMIC).all()


def test_ransac_kinds_and_empty():
    x1, x2, valid, out, _, _ = _scene("planar", P=4, outliers=0.2, seed=7)
    H, inl = ransac_two_view(x1, x2, valid, 1.5 / F_PX, "homography")
    assert H.shape == (4, 3, 3)
    assert float((inl & ~out).sum() / (valid & ~out).sum()) > 0.9
    assert int((inl & out).sum()) <= 2
    E, inl = ransac_two_view(x1, x2, valid, 1.5 / F_PX, "essential")
    assert bool(torch.isfinite(E).all())
    with pytest.raises(ValueError):
        ransac_two_view(x1, x2, valid, 0.01, "affine")
    z = torch.zeros(0, 5, 2, dtype=torch.float64)
    geo = estimate_two_view(z, z, torch.zeros(0, 5, dtype=torch.bool), None)
    assert geo.matrix.shape == (0, 3, 3) and geo.config.shape == (0,)
    # fewer correspondences than a minimal sample: failed, finite, no exception
    x1s, x2s, v = x1[:, :4], x2[:, :4], torch.ones(4, 4, dtype=torch.bool)
    geo = estimate_two_view(x1s, x2s, v, F_PX)
    assert not bool(geo.success.any()) and bool(torch.isfinite(geo.R).all())
    assert not math.isnan(float(geo.median_angle_deg.sum()))
