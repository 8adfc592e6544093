"""Kinematic chain and forward/inverse LBS: exact round trips and float64 gradchecks."""

from __future__ import annotations

import pytest
import torch

from sceneforge.core.rotations import angle_axis_to_matrix
from sceneforge.stylize.human.lbs import (
    batch_rigid_transform,
    invert_bone_transforms,
    lbs_forward,
    lbs_inverse,
    rigid_4x4,
)

PARENTS = [-1, 0, 1, 1, 3]


def _random_setup(batch=2, n=50, dtype=torch.float64):
    joints = torch.randn(len(PARENTS), 3, dtype=dtype)
    pose = 0.8 * torch.randn(batch, len(PARENTS), 3, dtype=dtype)
    _, transforms = batch_rigid_transform(
        angle_axis_to_matrix(pose), joints.expand(batch, -1, -1), PARENTS
    )
    weights = torch.softmax(2 * torch.randn(batch, n, len(PARENTS), dtype=dtype), -1)
    points = torch.randn(batch, n, 3, dtype=dtype)
    return joints, pose, transforms, weights, points


def test_zero_pose_is_identity():
    joints = torch.randn(1, len(PARENTS), 3)
    rot = torch.eye(3).expand(1, len(PARENTS), 3, 3)
    posed, transforms = batch_rigid_transform(rot, joints, PARENTS)
    torch.testing.assert_close(posed, joints)
    torch.testing.assert_close(transforms, torch.eye(4).expand_as(transforms))


def test_chain_matches_explicit_composition():
    """Joint 4 (chain 0-1-3-4): posed = R0 (R1 (R3 (c4-c3) + c3-c1) + c1-c0) + c0."""
    joints, pose, transforms, _, _ = _random_setup(batch=1)
    rot = angle_axis_to_matrix(pose)[0]
    c = joints
    expect = rot[0] @ (rot[1] @ (rot[3] @ (c[4] - c[3]) + c[3] - c[1]) + c[1] - c[0]) + c[0]
    posed, _ = batch_rigid_transform(angle_axis_to_matrix(pose), joints[None], PARENTS)
    torch.testing.assert_close(posed[0, 4], expect)
    # a point rigidly attached to joint 4 moves with T_4, the joint itself included
    torch.testing.assert_close(transforms[0, 4, :3, :3] @ c[4] + transforms[0, 4, :3, 3], expect)


def test_forward_then_inverse_returns_points():
    _, _, transforms, weights, points = _random_setup(dtype=torch.float32)
    posed = lbs_forward(points, weights, transforms)
    assert (posed - points).abs().max() > 0.1  # the pose does move them
    back = lbs_inverse(posed, weights, transforms)
    assert (back - points).abs().max() < 1e-5


def test_rigid_weights_and_inverse_transforms():
    _, _, transforms, _, points = _random_setup()
    one_hot = torch.zeros(2, points.shape[1], len(PARENTS), dtype=points.dtype)
    one_hot[..., 2] = 1
    posed = lbs_forward(points, one_hot, transforms)
    inv = invert_bone_transforms(transforms)
    back = (inv[:, 2, :3, :3] @ posed.transpose(1, 2)).transpose(1, 2) + inv[:, None, 2, :3, 3]
    torch.testing.assert_close(back, points)
    eye = torch.eye(4, dtype=points.dtype).expand_as(transforms)
    torch.testing.assert_close(inv @ transforms, eye)


def test_rigid_4x4_layout():
    m = rigid_4x4(torch.eye(3)[None] * 2, torch.tensor([[1.0, 2.0, 3.0]]))
    assert m.shape == (1, 4, 4)
    torch.testing.assert_close(m[0, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(m[0, :3, 3], torch.tensor([1.0, 2.0, 3.0]))


def test_bad_parents_rejected():
    rot = torch.eye(3).expand(1, 3, 3, 3)
    with pytest.raises(ValueError, match="precede"):
        batch_rigid_transform(rot, torch.zeros(1, 3, 3), [-1, 2, 0])


def test_gradcheck_batch_rigid_transform():
    joints = torch.randn(1, len(PARENTS), 3, dtype=torch.float64, requires_grad=True)
    pose = 0.7 * torch.randn(1, len(PARENTS), 3, dtype=torch.float64)
    pose.requires_grad_(True)

    def f(p, j):
        return batch_rigid_transform(angle_axis_to_matrix(p), j, PARENTS)

    assert torch.autograd.gradcheck(f, (pose, joints))


def test_gradcheck_lbs_forward_and_inverse():
    _, _, transforms, weights, points = _random_setup(batch=1, n=4)
    transforms = transforms.detach().requires_grad_(True)
    weights = weights.detach().requires_grad_(True)
    points = points.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lbs_forward, (points, weights, transforms))
    assert torch.autograd.gradcheck(lbs_inverse, (points, weights, transforms))
