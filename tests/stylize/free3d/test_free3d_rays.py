"""Relative poses and Plücker ray maps of Free3D (stylize/free3d/rays.py)."""

from __future__ import annotations

import math

import pytest
import torch

from sceneforge.core.cameras import make_rigid, to_homogeneous, transform_points
from sceneforge.core.rotations import angle_axis_to_matrix
from sceneforge.stylize.free3d.rays import (
    plucker_rays,
    rays_for_views,
    relative_pose,
    resize_ray_map,
    scale_intrinsics,
)


def _pose(aa, t, dtype=torch.float64):
    return make_rigid(
        angle_axis_to_matrix(torch.tensor(aa, dtype=dtype)), torch.tensor(t, dtype=dtype)
    )


def _K(f=30.0, cx=10.0, cy=8.0, dtype=torch.float64):
    return torch.tensor([[f, 0, cx], [0, f * 1.1, cy], [0, 0, 1]], dtype=dtype)


def test_relative_pose_maps_source_points_into_the_target():
    src = _pose([0.1, -0.2, 0.3], [0.5, 0.1, -0.2])
    tgt = _pose([-0.3, 0.4, 0.1], [-0.4, 0.2, 1.0])
    X = torch.randn(7, 3, dtype=torch.float64)
    rel = relative_pose(src, tgt)
    assert torch.allclose(
        transform_points(rel, transform_points(src, X)), transform_points(tgt, X), atol=1e-12
    )
    assert torch.allclose(relative_pose(to_homogeneous(src), to_homogeneous(tgt)), rel)
    assert torch.allclose(relative_pose(src, src)[..., :3], torch.eye(3, dtype=torch.float64))


def test_plucker_rays_are_the_lines_through_the_target_pixels():
    rel = _pose([0.2, 0.1, -0.1], [0.3, -0.2, 0.4])  # target_from_source
    K = _K()
    H, W = 12, 16
    r = plucker_rays(K[None], rel[None], H, W)[0]
    d, m = r[:3], r[3:]
    assert r.shape == (6, H, W)
    assert torch.allclose(d.norm(dim=0), torch.ones(H, W, dtype=torch.float64))
    assert (d * m).sum(0).abs().max() < 1e-12  # a Plücker line: d . m = 0
    # points seen by the target at the centre of pixel (i, j), at any depth, lie on its ray
    i, j = 5, 9
    source_from_target = relative_pose(rel, torch.eye(3, 4, dtype=torch.float64))
    ray_cam = torch.linalg.solve(K, torch.tensor([j + 0.5, i + 0.5, 1.0], dtype=torch.float64))
    for depth in (0.5, 2.5, 7.0):
        X_src = transform_points(source_from_target, depth * ray_cam)
        assert torch.allclose(torch.linalg.cross(X_src, d[:, i, j]), m[:, i, j], atol=1e-12)


def test_identity_pose_has_zero_moment_and_forward_centre_ray():
    K = _K(cx=8.0, cy=6.0)
    r = plucker_rays(K[None], torch.eye(4, dtype=torch.float64)[None], 12, 16)[0]
    assert r[3:].abs().max() == 0
    centre = 0.25 * (r[:3, 5, 7] + r[:3, 5, 8] + r[:3, 6, 7] + r[:3, 6, 8])
    assert torch.allclose(
        centre / centre.norm(), torch.tensor([0, 0, 1.0], dtype=torch.float64), atol=1e-12
    )


def test_any_resolution_by_scaled_intrinsics():
    rel, K = _pose([0.1, 0.3, 0.0], [0.2, 0.0, 0.1]), _K()
    full = plucker_rays(K[None], rel[None], 12, 16)[0]
    half = plucker_rays(scale_intrinsics(K, 0.5, 0.5)[None], rel[None], 6, 8)[0]
    # the centre of half-res pixel (i, j) is the full-res image point (2j + 1, 2i + 1)
    R_st = rel[:, :3].T
    p = torch.linalg.solve(K, torch.tensor([2 * 3 + 1.0, 2 * 2 + 1.0, 1.0], dtype=torch.float64))
    d = R_st @ p
    assert torch.allclose(half[:3, 2, 3], d / d.norm(), atol=1e-12)
    assert full.shape[-2:] == (12, 16) and half.shape[-2:] == (6, 8)


def test_area_pooled_maps_keep_moment_consistent():
    rel, K = _pose([0.1, 0.3, 0.0], [0.2, -0.5, 0.1]), _K()
    r = plucker_rays(K[None], rel[None], 12, 16)
    small = resize_ray_map(r, 3, 4)[0]
    o = -rel[:, :3].T @ rel[:, 3]  # target centre in the source frame
    expect = torch.linalg.cross(o[:, None, None].expand_as(small[:3]), small[:3], dim=0)
    assert torch.allclose(small[3:], expect, atol=1e-12)
    assert resize_ray_map(r, 12, 16) is r


def test_rays_for_views_is_view_major_and_defaults_to_the_source_lens():
    K = _K()[None]
    poses = torch.stack([torch.stack([_pose([0, a, 0], [a, 0, 0]) for a in (0.1, 0.2, 0.3)])] * 2)
    poses[1] = poses[1].flip(0)
    r = rays_for_views(K, poses, 6, 8)
    assert r.shape == (6, 6, 6, 8)
    assert torch.allclose(r[2], plucker_rays(K, poses[0, 2][None], 6, 8)[0])
    assert torch.allclose(r[3], r[2])
    with_k = rays_for_views(K, poses, 6, 8, K[:, None].expand(2, 3, 3, 3))
    assert torch.allclose(with_k, r)


@pytest.mark.parametrize("what", ["K", "pose"])
def test_plucker_rays_gradcheck(what):
    K = _K(f=6.0, cx=2.5, cy=2.0).requires_grad_(what == "K")
    aa = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64, requires_grad=what == "pose")
    t = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64, requires_grad=what == "pose")

    def f(*args):
        k, a, tt = (args[0], aa, t) if what == "K" else (K, *args)
        return plucker_rays(k[None], make_rigid(angle_axis_to_matrix(a), tt)[None], 4, 5)

    inputs = (K,) if what == "K" else (aa, t)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_bad_pose_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\[3, 4\] or \[4, 4\]"):
        plucker_rays(_K()[None], torch.eye(3, dtype=torch.float64)[None], 4, 4)
    assert math.isfinite(
        float(plucker_rays(_K()[None], torch.eye(3, 4, dtype=torch.float64)[None], 2, 2).sum())
    )
