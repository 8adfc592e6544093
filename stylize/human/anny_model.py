"""The anny body model (NAVER LABS; PyPI ``anny``, Apache-2.0 code, CC0 assets): the default.

Install with ``pip install 'sceneforge[human]'`` (``anny==0.6.2``; it pulls ``roma`` and
``warp-lang``, ~500 MB in site-packages). Everything runs on CPU and offline: the package
carries its assets.

Model data cache. The first :class:`AnnyModel` builds anny's model data from its assets
(observed here: 112 s and 131 s on 2 busy CPU cores) and writes ~790 MB of safetensors;
only the compact model data (~51 MB) is needed afterwards, so the two intermediate files this
build wrote are deleted (``prune_build_files=False`` keeps them). Later constructions load
the compact file (~2 s). The cache lives in ``$SCENEFORGE_ANNY_CACHE``, else
:func:`sceneforge_cache_dir` ``/anny`` (``$SCENEFORGE_CACHE/anny``, ``~/.cache/sceneforge/anny``
by default).

Parameters: ``shape`` = anny's six phenotypes ``(gender, age, muscle, weight, height,
proportions)`` in ``[0, 1]`` (default 0.5 each); ``pose`` = axis-angle per bone (104 bones,
:attr:`AnnyModel.joint_names`) as in :mod:`.body_model`. The canonical pose is anny's rest
pose (an A-pose), Z-up, facing -Y, metres; joints are the bone heads. Posing uses our
kinematics and LBS (:mod:`.lbs`) with anny's rest mesh, bone heads and dense skinning
weights: the bone transforms are exactly anny's for the corresponding ``'world'`` bone poses
(checked in the tests).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import Tensor

from .body_model import BodyModel, sceneforge_cache_dir

ANNY_VERSION = "0.6.2"
ANNY_PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
#: anny's intermediate build files, not needed once the compact model data is cached
_INTERMEDIATE_PREFIXES = ("build_model_data_", "load_data_")

#: MediaPipe landmark -> anny bone (its head). Shoulders/elbows/wrists/hips/knees/ankles are
#: the joint centres; ``*_index`` / ``*_pinky`` / ``*_thumb`` -> the index/little finger base
#: (MCP) and the thumb's MCP; ``*_foot_index`` -> the second toe's base (ball of the foot);
#: ``*_eye`` -> the eyeball centre. Nose, ears, mouth, eye corners and heels have no bone.
ANNY_KEYPOINT_JOINTS = {
    "left_eye": "eye.L",
    "right_eye": "eye.R",
    "left_shoulder": "upperarm01.L",
    "right_shoulder": "upperarm01.R",
    "left_elbow": "lowerarm01.L",
    "right_elbow": "lowerarm01.R",
    "left_wrist": "wrist.L",
    "right_wrist": "wrist.R",
    "left_pinky": "finger5-1.L",
    "right_pinky": "finger5-1.R",
    "left_index": "finger2-1.L",
    "right_index": "finger2-1.R",
    "left_thumb": "finger1-2.L",
    "right_thumb": "finger1-2.R",
    "left_hip": "upperleg01.L",
    "right_hip": "upperleg01.R",
    "left_knee": "lowerleg01.L",
    "right_knee": "lowerleg01.R",
    "left_ankle": "foot.L",
    "right_ankle": "foot.R",
    "left_foot_index": "toe2-1.L",
    "right_foot_index": "toe2-1.R",
}


def anny_cache_dir() -> Path:
    """``$SCENEFORGE_ANNY_CACHE``, else ``sceneforge_cache_dir('anny')``."""
    env = os.environ.get("SCENEFORGE_ANNY_CACHE")
    return Path(env).expanduser() if env else sceneforge_cache_dir("anny")


def import_anny():
    """``anny``, or an ImportError saying how to install it."""
    try:
        import anny
    except ImportError as err:
        raise ImportError(
            f"the anny body model needs the 'anny' package: pip install 'sceneforge[human]' "
            f"(anny=={ANNY_VERSION}), or use --body-model smpl --body-model-path DIR (your "
            "SMPL or SMPL-X files)"
        ) from err
    return anny


def build_anny(cache_dir: str | Path | None = None, prune_build_files: bool = True):
    """anny's default full-body model (``anny.Anny(skinning_method='lbs')``), its model data
    built once into ``cache_dir`` (default :func:`anny_cache_dir`).

    Returns the model and the build time in seconds (0 if nothing was built)."""
    anny = import_anny()
    from anny.paths import get_anny_cache_path, set_anny_cache_path

    cache = Path(cache_dir) if cache_dir is not None else anny_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    before = set(cache.rglob("*.safetensors"))
    previous = get_anny_cache_path()
    set_anny_cache_path(cache)
    try:
        start = time.perf_counter()
        model = anny.Anny(skinning_method="lbs")
        elapsed = time.perf_counter() - start
    finally:
        set_anny_cache_path(previous)
    new = set(cache.rglob("*.safetensors")) - before
    if prune_build_files:
        for path in new:
            if path.name.startswith(_INTERMEDIATE_PREFIXES):
                path.unlink(missing_ok=True)
    return model, (elapsed if new else 0.0)


class AnnyModel(BodyModel):
    """anny behind the :class:`BodyModel` interface (see the module docstring)."""

    name = "anny"
    up_axis = "z"

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        prune_build_files: bool = True,
        model=None,
    ) -> None:
        """``model``: an already built ``anny.Anny`` (with ``skinning_method='lbs'``) to wrap
        instead of building one."""
        super().__init__()
        if model is None:
            model, self.build_seconds = build_anny(cache_dir, prune_build_files)
        else:
            self.build_seconds = 0.0
        if list(model.phenotype_labels) != list(ANNY_PHENOTYPES):
            raise ValueError(f"unexpected anny phenotypes {model.phenotype_labels}")
        if not hasattr(model, "dense_vertex_bone_weights"):
            model.set_skinning_method("lbs")
        self.anny = model
        self.register_buffer("template_vertices", model.template_vertices.to(dtype))
        self.register_buffer("blendshapes", model.blendshapes.to(dtype))
        self.register_buffer("template_bone_heads", model.template_bone_heads.to(dtype))
        self.register_buffer("bone_heads_blendshapes", model.bone_heads_blendshapes.to(dtype))
        self.register_buffer("lbs_weights", model.dense_vertex_bone_weights.to(dtype))
        faces = model.get_triangular_faces() if model.faces.shape[-1] != 3 else model.faces
        self.register_buffer("faces_", torch.as_tensor(faces, dtype=torch.int64))
        self._parents = [int(p) for p in model.bone_parents]
        self._parents[0] = -1
        self.joint_names = list(model.bone_labels)
        self.keypoint_joints = dict(ANNY_KEYPOINT_JOINTS)
        self.keypoint_vertices = {}

    @property
    def parents(self) -> list[int]:
        return self._parents

    @property
    def faces(self) -> Tensor:
        return self.faces_

    @property
    def shape_dim(self) -> int:
        return len(ANNY_PHENOTYPES)

    def default_shape(self) -> Tensor:
        return torch.full((self.shape_dim,), 0.5, dtype=self.dtype, device=self.device)

    def blendshape_coefficients(self, shape: Tensor) -> Tensor:
        """anny's blend-shape coefficients ``[1, C]`` for phenotypes ``[S]``."""
        m = self.anny
        phen = shape[None].to(m.dtype)
        empty = phen.new_zeros(1, 0)
        return m._get_phenotype_blendshape_coefficients(phen, empty, empty).to(shape.dtype)

    def canonical(self, shape: Tensor):
        c = self.blendshape_coefficients(shape)[0]
        verts = self.template_vertices + torch.einsum("cpd,c->pd", self.blendshapes, c)
        joints = self.template_bone_heads + torch.einsum(
            "cpd,c->pd", self.bone_heads_blendshapes, c
        )
        return verts, joints, self.lbs_weights
