"""The anny adapter (skipped without the optional ``anny`` package): exact forward/inverse
LBS, joints consistent with the bone transforms, agreement with anny's own skinning, the
skinning grid on its mesh, and the same API as the SMPL adapter."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sceneforge.stylize.human import (
    MEDIAPIPE_POSE_LANDMARKS,
    BodyModel,
    SMPLModel,
    lbs_forward,
    lbs_inverse,
)


def _pose(model, batch=2, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(batch, model.num_joints, 3, generator=gen).to(model.dtype)


def test_structure(anny_model):
    m = anny_model
    assert m.num_joints == 104 and m.parents[0] == -1
    assert all(0 <= p < j for j, p in enumerate(m.parents[1:], start=1))
    assert m.faces.shape[1] == 3 and int(m.faces.max()) < m.template_vertices.shape[0]
    assert m.shape_dim == 6 and m.up_axis == "z"
    torch.testing.assert_close(m.lbs_weights.sum(-1), torch.ones_like(m.lbs_weights[:, 0]))


def test_zero_pose_is_canonical_and_shape_changes_it(anny_model):
    out = anny_model()
    torch.testing.assert_close(out.vertices[0], out.canonical_vertices)
    torch.testing.assert_close(out.joints[0], out.canonical_joints)
    tall = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 0.5], dtype=torch.float64)
    z = anny_model(shape=tall).canonical_vertices[:, 2]
    z0 = out.canonical_vertices[:, 2]
    assert (z.max() - z.min()) > (z0.max() - z0.min()) + 0.05  # taller


def test_forward_inverse_lbs_exact(anny_model):
    pose = _pose(anny_model)
    transl = torch.tensor([[0.1, -0.2, 0.3], [1.0, 0.0, 0.0]], dtype=torch.float64)
    out = anny_model(pose, transl=transl)
    assert (out.vertices - out.canonical_vertices).abs().max() > 0.1
    w = out.skinning_weights.expand(2, -1, -1)
    back = lbs_inverse(out.vertices, w, out.bone_transforms)
    assert (back - out.canonical_vertices).abs().max() < 1e-5


def test_float32_forward_inverse_lbs_exact(anny_model):
    out = anny_model(_pose(anny_model, batch=1))
    T = out.bone_transforms.float()
    v, w = out.canonical_vertices.float()[None], out.skinning_weights.float()[None]
    back = lbs_inverse(lbs_forward(v, w, T), w, T)
    assert (back - v).abs().max() < 1e-5


def test_joints_follow_bone_transforms(anny_model):
    out = anny_model(_pose(anny_model, scale=0.5), transl=torch.ones(1, 3, dtype=torch.float64))
    par = anny_model.parents
    c = torch.cat([out.canonical_joints, torch.ones_like(out.canonical_joints[:, :1])], -1)
    own = (out.bone_transforms @ c[None, :, :, None])[..., :3, 0]
    torch.testing.assert_close(own, out.joints)
    on_parent = (out.bone_transforms[:, par[1:]] @ c[None, 1:, :, None])[..., :3, 0]
    torch.testing.assert_close(on_parent, out.joints[:, 1:])
    # a rotated elbow moves the wrist but not the shoulder
    pose = anny_model.zero_pose()
    elbow = anny_model.joint_names.index("lowerarm01.L")
    pose[0, elbow] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    bent = anny_model(pose).joints[0]
    names = anny_model.joint_names
    assert (
        bent[names.index("wrist.L")] - out.canonical_joints[names.index("wrist.L")]
    ).norm() > 0.05
    shoulder = names.index("upperarm01.L")
    torch.testing.assert_close(bent[shoulder], out.canonical_joints[shoulder])


def test_matches_anny_own_skinning(anny_model):
    """anny posed with the same bone poses (its 'world' parameterization) gives our vertices."""
    shape = torch.tensor([0.3, 0.6, 0.5, 0.7, 0.4, 0.5], dtype=torch.float64)
    out = anny_model(_pose(anny_model), shape=shape)
    m = anny_model.anny
    coeffs = anny_model.blendshape_coefficients(shape)
    rest = m.get_rest_model(coeffs)
    torch.testing.assert_close(rest["rest_vertices"][0], out.canonical_vertices)
    torch.testing.assert_close(rest["rest_bone_heads"][0], out.canonical_joints)
    world_poses = out.bone_transforms @ rest["rest_bone_poses"]
    ref = m.forward(world_poses, phenotype_kwargs=shape[None], pose_parameterization="world")
    assert (ref["vertices"] - out.vertices).abs().max() < 1e-6


def test_keypoints(anny_model):
    out = anny_model(_pose(anny_model))
    kp, ids = anny_model.keypoints(out)
    assert kp.shape == (2, 22, 3) and len(ids) == 22
    names = [MEDIAPIPE_POSE_LANDMARKS[i] for i in ids]
    assert "left_wrist" in names and "nose" not in names
    left = out.canonical_joints[anny_model.joint_names.index("upperarm01.L")]
    assert left[0] > 0.1  # the person's left is +X (facing -Y, Z up)


def test_skinning_grid_on_anny(anny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SCENEFORGE_CACHE", str(tmp_path))
    grid = anny_model.skinning_grid(resolution=64)
    assert list(tmp_path.glob("skinning_grids/anny_*_r64.pt"))
    out = anny_model()
    weights, dist = grid.lookup(out.canonical_vertices)
    err = (weights - out.skinning_weights).abs().sum(-1)
    assert err.median() < 0.15  # L1; larger where small bones meet (fingers, face)
    assert grid.is_human(dist).all()
    # what matters: vertices posed with the looked-up weights land where anny puts them
    posed = anny_model(_pose(anny_model, batch=1))
    x = lbs_forward(out.canonical_vertices[None], weights[None], posed.bone_transforms)[0]
    miss = (x - posed.vertices[0]).norm(dim=-1)
    assert miss.median() < 0.003 and miss.quantile(0.9) < 0.02 and miss.max() < 0.1
    pelvis = out.canonical_joints[:1]
    far = torch.tensor([[0.0, -0.5, 0.0], [0.8, 0.0, 0.8], [3.0, 3.0, 3.0]], dtype=torch.float64)
    _, d = grid.lookup(torch.cat([pelvis, far]))
    assert grid.is_human(d).tolist() == [True, False, False, False]
    # observation -> canonical with the grid's weights at the canonical points
    back = lbs_inverse(x[None], weights[None], posed.bone_transforms)
    assert (back[0] - out.canonical_vertices).abs().max() < 1e-5


def test_same_api_as_smpl(anny_model, tiny_smpl_dir):
    smpl = SMPLModel.from_path(tiny_smpl_dir, dtype=torch.float64)
    for model in (anny_model, smpl):
        assert isinstance(model, BodyModel)
        j, s = model.num_joints, model.shape_dim
        out = model(_pose(model, 3), model.default_shape()[None], torch.zeros(3, 3))
        v = out.canonical_vertices.shape[0]
        assert out.vertices.shape == (3, v, 3) and out.joints.shape == (3, j, 3)
        assert out.bone_transforms.shape == (3, j, 4, 4)
        assert out.skinning_weights.shape == (v, j) and out.canonical_joints.shape == (j, 3)
        assert model.canonical_joints().shape == (j, 3) and len(model.parents) == j
        assert model.default_shape().shape == (s,) and len(model.joint_names) == j
        assert set(model.keypoint_joints.values()) <= set(model.joint_names)
        rot = model.rotations(_pose(model, 3))
        torch.testing.assert_close(model(rot).vertices, model(_pose(model, 3)).vertices)


def test_helpful_error_without_anny(monkeypatch):
    from sceneforge.stylize.human import AnnyModel

    monkeypatch.setitem(sys.modules, "anny", None)  # import anny -> ImportError
    with pytest.raises(ImportError, match=r"sceneforge\[human\]"):
        AnnyModel()


def test_package_import_is_light():
    code = (
        "import sys, sceneforge.stylize.human; "
        "print(sorted(m for m in ('anny', 'smplx', 'warp', 'scipy.spatial') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
