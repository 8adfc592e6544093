"""Fixtures of the human body-model tests: anny built once per pytest run (in the user cache
folder, skipped when the optional ``anny`` package is absent) and a tiny SMPL-format file the
tests write themselves (no SMPL file is shipped or downloaded)."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch

#: SMPL's kinematic tree (kintree_table[0], root first).
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
#: Roughly SMPL's T-pose joints (metres, Y up).
TINY_JOINTS = [
    (0, 0, 0), (0.06, -0.09, 0), (-0.06, -0.09, 0), (0, 0.11, 0), (0.1, -0.47, 0),
    (-0.1, -0.47, 0), (0, 0.25, 0), (0.09, -0.87, -0.03), (-0.09, -0.87, -0.03), (0, 0.3, 0),
    (0.11, -0.93, 0.1), (-0.11, -0.93, 0.1), (0, 0.51, 0), (0.08, 0.42, 0), (-0.08, 0.42, 0),
    (0, 0.58, 0.05), (0.18, 0.45, 0), (-0.18, 0.45, 0), (0.43, 0.45, 0), (-0.43, 0.45, 0),
    (0.68, 0.45, 0), (-0.68, 0.45, 0), (0.76, 0.45, 0), (-0.76, 0.45, 0),
]  # fmt: skip


def tiny_smpl_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A small SMPL-format model: an octahedron (6 vertices, 8 triangles) around each of the
    24 joints, smooth skinning weights, random shape and pose blend shapes."""
    rng = np.random.default_rng(seed)
    joints = np.array(TINY_JOINTS, dtype=np.float64)
    octa = 0.03 * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    octa_faces = np.array(
        [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
    )
    verts = (joints[:, None] + octa[None]).reshape(-1, 3)
    faces = (octa_faces[None] + 6 * np.arange(24)[:, None, None]).reshape(-1, 3)
    d2 = ((verts[:, None] - joints[None]) ** 2).sum(-1)
    weights = np.exp(-d2 / 0.01)
    weights /= weights.sum(1, keepdims=True)
    regressor = np.zeros((24, len(verts)))
    for j in range(24):
        regressor[j, 6 * j : 6 * j + 6] = 1 / 6
    kintree = np.array([SMPL_PARENTS, list(range(24))], dtype=np.int64)
    kintree[0, 0] = 4294967295  # as in the SMPL files (uint32 -1)
    return {
        "v_template": verts,
        "shapedirs": 0.01 * rng.standard_normal((len(verts), 3, 10)),
        "posedirs": 0.01 * rng.standard_normal((len(verts), 3, 207)),
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": kintree,
        "f": faces.astype(np.uint32),
    }


@pytest.fixture(scope="session")
def tiny_smpl_dir(tmp_path_factory):
    """A folder with ``SMPL_NEUTRAL.npz`` (the tiny model), as --body-model-path takes."""
    folder = tmp_path_factory.mktemp("smpl")
    np.savez(folder / "SMPL_NEUTRAL.npz", **tiny_smpl_arrays())
    return folder


@pytest.fixture(scope="session")
def anny_model():
    """anny (float64), its model data built once into the user cache folder (first build
    ~110-135 s on 2 cores, then ~2 s)."""
    if importlib.util.find_spec("anny") is None:
        pytest.skip("anny not installed (optional extra: pip install 'sceneforge[human]')")
    from sceneforge.stylize.human import AnnyModel

    start = time.perf_counter()
    model = AnnyModel(dtype=torch.float64)
    print(f"anny ready in {time.perf_counter() - start:.1f} s (built: {model.build_seconds:.1f} s)")
    return model


@pytest.fixture(scope="session")
def body_dir(tmp_path_factory):
    """The tiny SMPL-format body with 10 cm octahedra (visible at 32 px), rigidly skinned, no
    correctives: what the human4d field and capture tests train on."""
    arrays = tiny_smpl_arrays()
    joints = arrays["v_template"].reshape(24, 6, 3).mean(1)
    octa = arrays["v_template"].reshape(24, 6, 3) - joints[:, None]
    arrays["v_template"] = (joints[:, None] + octa * (0.1 / 0.03)).reshape(-1, 3)
    arrays["weights"] = np.repeat(np.eye(24), 6, axis=0)
    arrays["posedirs"] = np.zeros_like(arrays["posedirs"])
    arrays["shapedirs"] = np.zeros_like(arrays["shapedirs"])
    folder = tmp_path_factory.mktemp("body")
    np.savez(folder / "SMPL_NEUTRAL.npz", **arrays)
    return folder
