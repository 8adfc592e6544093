"""The body-model interface every adapter (anny, SMPL) implements, and the shared pieces.

Parameters (the same for every body model):

- ``pose``: per-joint **axis-angle** ``[B, J, 3]`` (radians; axis times angle), each joint's
  rotation relative to its parent in the canonical world-aligned axes, joint 0 being the
  global orientation about the root joint (SMPL's ``global_orient`` + ``body_pose``).
  Rotation matrices ``[B, J, 3, 3]`` are accepted too (e.g. from
  :func:`sceneforge.core.rotations.rot6d_to_matrix` when optimising in 6D).
  Zero pose = the canonical pose.
- ``shape``: one subject's shape, ``[S]`` or ``[1, S]`` (SMPL betas; anny phenotypes in
  ``[0, 1]``), shared by the whole batch: one person, many frames. None = the default shape.
- ``transl``: ``[B, 3]`` world translation added after posing (None = 0).

:meth:`BodyModel.forward` returns a :class:`BodyOutput`; its ``bone_transforms`` map canonical
points to posed world points (:mod:`.lbs`), so ``lbs_forward(canonical_vertices,
skinning_weights, bone_transforms)`` gives ``vertices`` (up to pose correctives, see
:class:`BodyOutput`).

Canonical frames are the models' own: anny is Z-up (metres), SMPL Y-up (metres);
:attr:`BodyModel.up_axis` says which.

Keypoints: :data:`MEDIAPIPE_POSE_LANDMARKS` is the generic 2D keypoint set (MediaPipe Pose's
33 landmarks, in its order). Each model maps the landmarks it can represent to its joints
(:attr:`BodyModel.keypoint_joints`) or, where a landmark is a surface point of a known
topology, to a vertex (:attr:`BodyModel.keypoint_vertices`); :meth:`BodyModel.keypoints`
returns their 3D positions with the landmark indices.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sceneforge.core.rotations import angle_axis_to_matrix

from .lbs import batch_rigid_transform, lbs_forward
from .skinning_grid import SkinningGrid

#: MediaPipe Pose's 33 landmarks, in MediaPipe's order ("left" = the person's left).
MEDIAPIPE_POSE_LANDMARKS: tuple[str, ...] = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)


def sceneforge_cache_dir(*parts: str) -> Path:
    """The user cache folder: ``$SCENEFORGE_CACHE``, else ``$XDG_CACHE_HOME/sceneforge``, else
    ``~/.cache/sceneforge`` (never inside the repository); ``parts`` are joined below it."""
    root = os.environ.get("SCENEFORGE_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "sceneforge") if xdg else str(Path.home() / ".cache" / "sceneforge")
    return Path(root).expanduser().joinpath(*parts)


@dataclass
class BodyOutput:
    """A posed body.

    Attributes:
        vertices: posed vertices ``[B, V, 3]`` (pose correctives, if the model has them,
            included: SMPL's pose blend shapes).
        joints: posed joints ``[B, J, 3]``.
        bone_transforms: canonical->posed world transforms ``[B, J, 4, 4]``.
        canonical_vertices: the subject's canonical (rest) vertices ``[V, 3]``, without pose
            correctives.
        canonical_joints: the subject's canonical joints ``[J, 3]``.
        skinning_weights: ``[V, J]``.
    """

    vertices: Float[Tensor, "B V 3"]
    joints: Float[Tensor, "B J 3"]
    bone_transforms: Float[Tensor, "B J 4 4"]
    canonical_vertices: Float[Tensor, "V 3"]
    canonical_joints: Float[Tensor, "J 3"]
    skinning_weights: Float[Tensor, "V J"]


class BodyModel(torch.nn.Module, ABC):
    """A skinned parametric body. Subclasses give the canonical mesh, joints and weights for a
    shape (:meth:`canonical`) and optionally pose correctives (:meth:`pose_offsets`); posing
    (:mod:`.lbs`) is shared."""

    #: short name, used in cache file names
    name: str = "body"
    #: the canonical frame's up axis ("y" or "z")
    up_axis: str = "y"
    #: joint names, ``J`` of them
    joint_names: list[str]
    #: MediaPipe landmark name -> joint name
    keypoint_joints: dict[str, str] = {}
    #: MediaPipe landmark name -> vertex index (surface landmarks of a known topology)
    keypoint_vertices: dict[str, int] = {}

    # -- what an adapter provides ------------------------------------------------------------

    @property
    @abstractmethod
    def parents(self) -> list[int]:
        """Parent index per joint (the kintree), ``-1`` for the root (joint 0)."""

    @property
    @abstractmethod
    def faces(self) -> Int[Tensor, "F 3"]:
        """Triangles of the mesh (int64)."""

    @property
    @abstractmethod
    def shape_dim(self) -> int:
        """``S``: the number of shape parameters."""

    @abstractmethod
    def default_shape(self) -> Float[Tensor, " S"]:
        """The default subject's shape (SMPL: zeros; anny: 0.5 phenotypes)."""

    @abstractmethod
    def canonical(
        self, shape: Float[Tensor, " S"]
    ) -> tuple[Float[Tensor, "V 3"], Float[Tensor, "J 3"], Float[Tensor, "V J"]]:
        """Canonical vertices, canonical joints and skinning weights of a shape."""

    def pose_offsets(
        self, rotations: Float[Tensor, "B J 3 3"], canonical_vertices: Float[Tensor, "V 3"]
    ) -> Float[Tensor, "B V 3"] | None:
        """Pose-dependent corrective offsets added in the canonical frame before skinning
        (SMPL's pose blend shapes); None when the model has none."""
        return None

    # -- shared ------------------------------------------------------------------------------

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @property
    def dtype(self) -> torch.dtype:
        buf = next(iter(self.buffers()), None)
        return torch.float32 if buf is None else buf.dtype

    @property
    def device(self) -> torch.device:
        buf = next(iter(self.buffers()), None)
        return torch.device("cpu") if buf is None else buf.device

    def _shape(self, shape: Tensor | None) -> Tensor:
        if shape is None:
            return self.default_shape()
        shape = torch.as_tensor(shape, dtype=self.dtype, device=self.device)
        if shape.dim() == 2 and shape.shape[0] == 1:
            shape = shape[0]
        if shape.shape != (self.shape_dim,):
            raise ValueError(
                f"{self.name}: shape must be [{self.shape_dim}] or [1, {self.shape_dim}] (one "
                f"subject for the whole batch), got {tuple(shape.shape)}"
            )
        return shape

    def rotations(self, pose: Tensor) -> Float[Tensor, "B J 3 3"]:
        """Per-joint rotation matrices from axis-angle ``[B, J, 3]`` (or matrices)."""
        j = self.num_joints
        if pose.dim() == 3 and pose.shape[1:] == (j, 3):
            return angle_axis_to_matrix(pose)
        if pose.dim() == 4 and pose.shape[1:] == (j, 3, 3):
            return pose
        raise ValueError(
            f"{self.name}: pose must be axis-angle [B, {j}, 3] or rotations [B, {j}, 3, 3], "
            f"got {tuple(pose.shape)}"
        )

    def zero_pose(self, batch: int = 1) -> Float[Tensor, "B J 3"]:
        """The canonical pose as axis-angle."""
        return torch.zeros(batch, self.num_joints, 3, dtype=self.dtype, device=self.device)

    def canonical_joints(self, shape: Tensor | None = None) -> Float[Tensor, "J 3"]:
        """Canonical joints of ``shape`` (default shape when None)."""
        return self.canonical(self._shape(shape))[1]

    def forward(
        self,
        pose: Tensor | None = None,
        shape: Tensor | None = None,
        transl: Tensor | None = None,
    ) -> BodyOutput:
        """Pose the body (see the module docstring for the parameters)."""
        pose = self.zero_pose() if pose is None else pose.to(self.dtype)
        rot = self.rotations(pose)
        batch = rot.shape[0]
        v_c, j_c, weights = self.canonical(self._shape(shape))
        joints, transforms = batch_rigid_transform(rot, j_c.expand(batch, -1, -1), self.parents)
        if transl is not None:
            transl = torch.as_tensor(transl, dtype=rot.dtype, device=rot.device).expand(batch, 3)
            joints = joints + transl[:, None]
            transforms = transforms.clone()
            transforms[:, :, :3, 3] = transforms[:, :, :3, 3] + transl[:, None]
        offsets = self.pose_offsets(rot, v_c)
        v = v_c.expand(batch, -1, -1) if offsets is None else v_c + offsets
        vertices = lbs_forward(v, weights.expand(batch, -1, -1), transforms)
        return BodyOutput(
            vertices=vertices,
            joints=joints,
            bone_transforms=transforms,
            canonical_vertices=v_c,
            canonical_joints=j_c,
            skinning_weights=weights,
        )

    def keypoints(self, output: BodyOutput) -> tuple[Float[Tensor, "B K 3"], list[int]]:
        """3D positions of the MediaPipe landmarks this model maps, and their landmark indices
        (into :data:`MEDIAPIPE_POSE_LANDMARKS`), in landmark order."""
        rows, ids = [], []
        for i, lm in enumerate(MEDIAPIPE_POSE_LANDMARKS):
            if lm in self.keypoint_joints:
                rows.append(output.joints[:, self.joint_names.index(self.keypoint_joints[lm])])
            elif lm in self.keypoint_vertices:
                rows.append(output.vertices[:, self.keypoint_vertices[lm]])
            else:
                continue
            ids.append(i)
        return torch.stack(rows, dim=1), ids

    def skinning_grid(
        self,
        shape: Tensor | None = None,
        resolution: int = 64,
        padding: float = 0.1,
        band: float = 0.05,
        top_k: int = 8,
        cache: bool = True,
    ) -> SkinningGrid:
        """The canonical skinning-weight grid of a shape, built once and cached under
        :func:`sceneforge_cache_dir` ``/skinning_grids/`` (``cache=False``: not stored)."""
        v_c, _, weights = self.canonical(self._shape(shape))
        path = None
        if cache:
            digest = hashlib.sha256(v_c.detach().double().cpu().numpy().tobytes()).hexdigest()
            name = f"{self.name}_{digest[:16]}_r{resolution}.pt"
            path = sceneforge_cache_dir("skinning_grids", name)
        return SkinningGrid.build(
            v_c, self.faces, weights, resolution, padding, band, top_k, cache_path=path
        )
