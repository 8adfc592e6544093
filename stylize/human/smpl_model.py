"""The SMPL-format body model: the user's own SMPL / SMPL-X model file, our torch forward.

No SMPL file is shipped or downloaded (their licence forbids it): pass
``--body-model smplx --body-model-path DIR``. ``DIR`` (or a file path directly) holds
``SMPL_{NEUTRAL,MALE,FEMALE}.{npz,pkl}`` or ``SMPLX_{...}.{npz,pkl}`` (the ``smplx``
package's layout) with the standard keys ``v_template [V,3]``, ``shapedirs [V,3,S]``,
``posedirs [V,3,9(J-1)]``, ``J_regressor [J,V]`` (dense or scipy-sparse), ``weights [V,J]``,
``kintree_table [2,J]`` and ``f [F,3]``.

``.pkl`` files are read with a restricted unpickler: only numpy arrays, scipy sparse
matrices and chumpy arrays (as plain data; chumpy need not be installed) are allowed, so a
file cannot run code.

Forward (as SMPL): shape blend ``v = v_template + shapedirs . betas``, joint regression
``J_regressor @ v``, pose blend shapes from ``(R_j - I)`` of the non-root joints, then LBS
(:mod:`.lbs`). SMPL-X files give their 55-joint body the same way (no expressions, no hand PCA).
The ``smplx`` package is not needed (the tests cross-check against it when installed).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .body_model import BodyModel

REQUIRED_KEYS = (
    "v_template",
    "shapedirs",
    "posedirs",
    "J_regressor",
    "weights",
    "kintree_table",
    "f",
)

#: SMPL's 24 joints (SMPL-X's first 22 are the same).
SMPL_JOINT_NAMES = [
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hand",
    "right_hand",
]

#: MediaPipe landmark -> SMPL joint. The joints are the anatomical joint centres, so the
#: limb landmarks match closely; ``*_foot_index`` -> the ``*_foot`` joint (ball of the foot)
#: and ``*_index`` -> ``*_hand`` (the knuckles) are approximations.
SMPL_KEYPOINT_JOINTS = {
    "left_shoulder": "left_shoulder",
    "right_shoulder": "right_shoulder",
    "left_elbow": "left_elbow",
    "right_elbow": "right_elbow",
    "left_wrist": "left_wrist",
    "right_wrist": "right_wrist",
    "left_index": "left_hand",
    "right_index": "right_hand",
    "left_hip": "left_hip",
    "right_hip": "right_hip",
    "left_knee": "left_knee",
    "right_knee": "right_knee",
    "left_ankle": "left_ankle",
    "right_ankle": "right_ankle",
    "left_foot_index": "left_foot",
    "right_foot_index": "right_foot",
}
#: MediaPipe landmark -> vertex of the SMPL topology (6890 vertices; the face and heel
#: vertices the ``smplx`` package uses for its extra keypoints).
SMPL_KEYPOINT_VERTICES = {
    "nose": 332,
    "left_eye": 2800,
    "right_eye": 6260,
    "left_ear": 583,
    "right_ear": 4071,
    "left_heel": 3387,
    "right_heel": 6787,
}
SMPL_NUM_VERTICES = 6890


class _ChumpyArray:
    """Stand-in for chumpy objects in SMPL pickles: keeps their state; :func:`_to_numpy`
    reads the wrapped array (``x``)."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"x": state})


class _SafeUnpickler(pickle.Unpickler):
    _NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
    _SPARSE = {"csc_matrix", "csr_matrix", "coo_matrix"}
    # protocol-2 helpers: they only build objects of the classes allowed above
    _PLAIN = {
        ("copyreg", "_reconstructor"),
        ("copyreg", "__newobj__"),
        ("builtins", "object"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if module.split(".")[0] == "chumpy":
            return _ChumpyArray
        if module.split(".")[0] == "numpy" and name in self._NUMPY:
            import importlib

            for mod in (module, module.replace("numpy.core", "numpy._core")):
                try:
                    return getattr(importlib.import_module(mod), name)
                except (ImportError, AttributeError):
                    continue
        if module.startswith("scipy.sparse") and name in self._SPARSE:
            import scipy.sparse

            return getattr(scipy.sparse, name)
        if (module, name) in self._PLAIN:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"SMPL pickle: {module}.{name} is not allowed")


def _to_numpy(value, key: str) -> np.ndarray:
    if isinstance(value, _ChumpyArray):
        if "x" not in value.__dict__:
            raise ValueError(f"SMPL file: cannot read the chumpy object under {key!r}")
        return _to_numpy(value.__dict__["x"], key)
    if hasattr(value, "toarray"):  # scipy sparse
        return np.asarray(value.toarray())
    return np.asarray(value)


def find_smpl_file(path: str | Path, gender: str = "neutral") -> Path:
    """The model file at ``path`` (a file, or a folder with ``SMPL[X]_{GENDER}.{npz,pkl}``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--body-model-path {path}: no such file or folder")
    names = [f"{m}_{gender.upper()}.{e}" for m in ("SMPL", "SMPLX") for e in ("npz", "pkl")]
    for name in names:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"--body-model-path {path}: none of {', '.join(names)} found. SMPL/SMPL-X files are "
        "not shipped: download them yourself (smpl.is.tue.mpg.de, smpl-x.is.tue.mpg.de)."
    )


def load_smpl_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The standard SMPL arrays of a ``.npz`` or ``.pkl`` file (clear error on missing keys)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    elif path.suffix == ".pkl":
        with open(path, "rb") as f:
            raw = _SafeUnpickler(f, encoding="latin1").load()
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a dict of arrays, got {type(raw).__name__}")
    else:
        raise ValueError(f"{path}: expected a .npz or .pkl SMPL model file")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise KeyError(f"{path}: missing SMPL key(s) {missing} (need {list(REQUIRED_KEYS)})")
    return {k: _to_numpy(raw[k], k) for k in REQUIRED_KEYS}


class SMPLModel(BodyModel):
    """An SMPL-format body (see the module docstring). Shape = the first ``num_betas``
    betas; canonical pose = the file's template pose (T-pose); Y-up metres."""

    name = "smpl"
    up_axis = "y"

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        num_betas: int = 10,
        pose_correctives: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        v = arrays["v_template"].reshape(-1, 3)
        n_v = len(v)
        shapedirs = arrays["shapedirs"].reshape(n_v, 3, -1)[:, :, :num_betas]
        weights = arrays["weights"].reshape(n_v, -1)
        n_j = weights.shape[1]
        posedirs = arrays["posedirs"].reshape(n_v * 3, -1)
        if posedirs.shape[1] != 9 * (n_j - 1):
            raise ValueError(f"SMPL posedirs: {posedirs.shape[1]} columns for {n_j} joints")
        regressor = arrays["J_regressor"].reshape(n_j, n_v)
        parents = [int(p) for p in np.asarray(arrays["kintree_table"])[0].astype(np.int64)]
        parents[0] = -1
        if len(parents) != n_j:
            raise ValueError(f"SMPL kintree_table has {len(parents)} joints, weights {n_j}")

        def buf(name, a, dt=dtype):
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(a)).to(dt))

        buf("v_template", v)
        buf("shapedirs", shapedirs)
        buf("posedirs", posedirs.T)  # [9(J-1), 3V], smplx's layout
        buf("J_regressor", regressor)
        buf("lbs_weights", weights)
        buf("faces_", arrays["f"].reshape(-1, 3).astype(np.int64), torch.int64)
        self._parents = parents
        self.pose_correctives = pose_correctives
        if n_j == len(SMPL_JOINT_NAMES):
            self.joint_names = list(SMPL_JOINT_NAMES)
        elif n_j > 22:  # SMPL-X and SMPL-H share SMPL's first 22 joints
            self.joint_names = SMPL_JOINT_NAMES[:22] + [f"joint_{i}" for i in range(22, n_j)]
        else:
            self.joint_names = [f"joint_{i}" for i in range(n_j)]
        self.keypoint_joints = {
            k: j for k, j in SMPL_KEYPOINT_JOINTS.items() if j in self.joint_names
        }
        self.keypoint_vertices = dict(SMPL_KEYPOINT_VERTICES) if n_v == SMPL_NUM_VERTICES else {}

    @classmethod
    def from_path(cls, path: str | Path, gender: str = "neutral", **kwargs) -> SMPLModel:
        """Load from ``--body-model-path`` (a folder or a model file)."""
        return cls(load_smpl_arrays(find_smpl_file(path, gender)), **kwargs)

    @property
    def parents(self) -> list[int]:
        return self._parents

    @property
    def faces(self) -> Tensor:
        return self.faces_

    @property
    def shape_dim(self) -> int:
        return self.shapedirs.shape[-1]

    def default_shape(self) -> Tensor:
        return torch.zeros(self.shape_dim, dtype=self.dtype, device=self.device)

    def canonical(self, shape: Float[Tensor, " S"]):
        v = self.v_template + self.shapedirs @ shape
        return v, self.J_regressor @ v, self.lbs_weights

    def pose_offsets(self, rotations: Tensor, canonical_vertices: Tensor) -> Tensor | None:
        if not self.pose_correctives:
            return None
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        feature = (rotations[:, 1:] - eye).flatten(1)
        return (feature @ self.posedirs).view(rotations.shape[0], -1, 3)
