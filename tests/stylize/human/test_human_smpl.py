"""The SMPL-format adapter on a tiny SMPL file the tests write (no SMPL file is shipped)."""

from __future__ import annotations

import importlib.util
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from conftest import SMPL_PARENTS, tiny_smpl_arrays

from sceneforge.stylize.human import (
    MEDIAPIPE_POSE_LANDMARKS,
    BodyOutput,
    SMPLModel,
    find_smpl_file,
    lbs_forward,
    lbs_inverse,
    load_smpl_arrays,
)


@pytest.fixture(scope="module")
def smpl(tiny_smpl_dir):
    return SMPLModel.from_path(tiny_smpl_dir, dtype=torch.float64)


def test_loads_from_folder_with_parents(smpl):
    assert smpl.num_joints == 24 and smpl.parents == SMPL_PARENTS
    assert smpl.faces.shape == (192, 3) and smpl.faces.dtype == torch.int64
    assert smpl.shape_dim == 10 and smpl.joint_names[20] == "left_wrist"


def test_forward_shapes_and_zero_pose(smpl):
    out = smpl()
    assert isinstance(out, BodyOutput)
    assert out.vertices.shape == (1, 144, 3) and out.joints.shape == (1, 24, 3)
    assert out.bone_transforms.shape == (1, 24, 4, 4)
    assert out.canonical_vertices.shape == (144, 3) and out.skinning_weights.shape == (144, 24)
    torch.testing.assert_close(out.vertices[0], out.canonical_vertices)
    torch.testing.assert_close(out.canonical_joints, smpl.canonical_joints())


def test_shape_moves_canonical_mesh(smpl):
    beta = torch.zeros(10, dtype=torch.float64)
    beta[0] = 2.0
    moved = smpl(shape=beta).canonical_vertices
    assert (moved - smpl().canonical_vertices).abs().max() > 1e-3
    with pytest.raises(ValueError, match="one subject"):
        smpl(shape=torch.zeros(2, 10))


def test_inverse_lbs_returns_canonical_without_correctives(tiny_smpl_dir):
    model = SMPLModel.from_path(tiny_smpl_dir, pose_correctives=False)
    pose = 0.4 * torch.randn(3, 24, 3)
    out = model(pose, transl=torch.randn(3, 3))
    w = out.skinning_weights.expand(3, -1, -1)
    back = lbs_inverse(out.vertices, w, out.bone_transforms)
    assert (back - out.canonical_vertices).abs().max() < 1e-5
    torch.testing.assert_close(
        lbs_forward(out.canonical_vertices.expand(3, -1, -1), w, out.bone_transforms),
        out.vertices,
    )


def test_joints_follow_bone_transforms(smpl):
    pose = 0.5 * torch.randn(2, 24, 3, dtype=torch.float64)
    out = smpl(pose, transl=torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    c = torch.cat([out.canonical_joints, torch.ones(24, 1, dtype=torch.float64)], -1)
    own = (out.bone_transforms @ c[None, :, :, None])[..., :3, 0]
    torch.testing.assert_close(own, out.joints)  # each joint moves with its own bone
    par = (out.bone_transforms[:, SMPL_PARENTS[1:]] @ c[None, 1:, :, None])[..., :3, 0]
    torch.testing.assert_close(par, out.joints[:, 1:])  # ... and with its parent's


def test_keypoints_map_to_mediapipe(smpl):
    out = smpl(0.3 * torch.randn(2, 24, 3, dtype=torch.float64))
    kp, ids = smpl.keypoints(out)
    assert kp.shape == (2, len(ids), 3) and ids == sorted(ids)
    lw = ids.index(MEDIAPIPE_POSE_LANDMARKS.index("left_wrist"))
    torch.testing.assert_close(kp[:, lw], out.joints[:, 20])
    assert smpl.keypoint_vertices == {}  # surface landmarks only for the 6890-vertex SMPL


def test_missing_file_and_keys_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="SMPL_NEUTRAL.npz"):
        find_smpl_file(tmp_path)
    arrays = tiny_smpl_arrays()
    del arrays["posedirs"], arrays["kintree_table"]
    np.savez(tmp_path / "SMPL_NEUTRAL.npz", **arrays)
    with pytest.raises(KeyError, match="posedirs.*kintree_table"):
        SMPLModel.from_path(tmp_path)


def test_pickle_with_chumpy_and_sparse_regressor(tmp_path, monkeypatch):
    """The SMPL .pkl layout: chumpy arrays (chumpy absent at load) and a sparse J_regressor."""
    import scipy.sparse

    chumpy = types.ModuleType("chumpy")
    chumpy_ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    chumpy_ch.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", chumpy_ch)
    arrays = tiny_smpl_arrays()
    data = dict(arrays, posedirs=Ch(arrays["posedirs"]), shapedirs=Ch(arrays["shapedirs"]))
    data["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
    (tmp_path / "SMPL_NEUTRAL.pkl").write_bytes(pickle.dumps(data, protocol=2))
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    monkeypatch.delitem(sys.modules, "chumpy")
    loaded = load_smpl_arrays(find_smpl_file(tmp_path))
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_smpl_arrays(tmp_path / "m.pkl")


@pytest.mark.skipif(importlib.util.find_spec("smplx") is None, reason="smplx not installed")
def test_matches_smplx_package():
    import smplx
    from smplx.utils import Struct

    arrays = tiny_smpl_arrays()
    ours = SMPLModel(arrays, dtype=torch.float64)
    keys = ["nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe"]
    keys += ["RSmallToe", "RHeel", "lthumb", "lindex", "lmiddle", "lring", "lpinky", "rthumb"]
    keys += ["rindex", "rmiddle", "rring", "rpinky"]
    ref = smplx.SMPL(
        model_path="unused",
        data_struct=Struct(**arrays),
        vertex_ids={k: i for i, k in enumerate(keys)},
        dtype=torch.float64,
    )
    pose = 0.5 * torch.randn(2, 24, 3, dtype=torch.float64)
    betas = torch.randn(10, dtype=torch.float64)
    transl = torch.randn(2, 3, dtype=torch.float64)
    out = ours(pose, betas, transl)
    expect = ref(
        betas=betas[None].expand(2, -1),
        global_orient=pose[:, 0],
        body_pose=pose[:, 1:].flatten(1),
        transl=transl,
    )
    assert (out.vertices - expect.vertices).abs().max() < 1e-6
    assert (out.joints - expect.joints[:, :24]).abs().max() < 1e-6
