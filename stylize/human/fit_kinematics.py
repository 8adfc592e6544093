"""The body side of the fit (:mod:`.fit`): the problem a fit solves, and the kinematics it
poses (a reduced joint tree posed level by level, the active / in-between joints, the hinge
axes of knees and elbows).

Only the joints that place a keypoint are posed (:class:`PoseTree`); the skipped joints keep
the canonical pose, so for skinning their weights move to their nearest kept ancestor, whose
bone transform they share. Parameters and kinematics run in float64 (see :mod:`.fit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sceneforge.core.rotations import rot6d_to_matrix

from .body_model import MEDIAPIPE_POSE_LANDMARKS, BodyModel

LANDMARK_INDEX = {n: i for i, n in enumerate(MEDIAPIPE_POSE_LANDMARKS)}
"""MediaPipe Pose landmark name -> index."""
TORSO = tuple(
    LANDMARK_INDEX[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
)
"""The shoulder and hip landmarks."""

#: hinge landmark -> (the landmarks before and after it, flexion: +1 backwards, -1 forwards)
HINGES = {
    f"{s}_{j}": (f"{s}_{a}", f"{s}_{b}", d)
    for s in ("left", "right")
    for j, a, b, d in (("knee", "hip", "ankle", 1.0), ("elbow", "shoulder", "wrist", -1.0))
}
#: bounded shape spaces (model name -> range)
SHAPE_RANGE = {"anny": (0.0, 1.0)}


@dataclass
class FitProblem:
    """A fit's checked inputs: the mapped keypoints, their weights, the cameras, the scale."""

    lm_ids: list[int]  # landmark indices the model maps (landmark order)
    kp_joints: list[int] | None  # their joint indices when all are joints (fast path)
    target: Tensor  # [F, K, 2]
    weight: Tensor  # [F, K]
    focal: Tensor  # [F, 2]
    principal: Tensor  # [F, 2]
    cam_from_world: Tensor  # [F, 3, 4]
    scale: float  # person size in px


def unit(v: Tensor) -> Tensor:
    """``v`` normalised along its last axis."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class PoseTree:
    """Forward kinematics over a reduced tree: the joints that place a keypoint (the keypoint
    joints, the active joints and all their ancestors), level by level (one batched matrix
    product per tree depth instead of one per joint). A skipped joint has the canonical
    (identity) rotation, so its subtree hangs rigidly off its nearest kept ancestor; for
    skinning, each joint's weight moves to that ancestor (its bone transform is the same)."""

    def __init__(self, parents: list[int], keep: set[int]):
        kept: set[int] = {0}
        for j in keep:
            while j >= 0 and j not in kept:
                kept.add(j)
                j = parents[j]
        self.nodes = sorted(kept)
        pos = {j: i for i, j in enumerate(self.nodes)}

        def anc(j: int) -> int:  # nearest kept ancestor-or-self
            while j not in pos:
                j = parents[j]
            return pos[j]

        self.anc = torch.tensor([anc(j) for j in range(len(parents))])
        self.parent = [-1] + [anc(parents[j]) for j in self.nodes[1:]]
        depth = [0] * len(self.nodes)
        for i in range(1, len(self.nodes)):
            depth[i] = depth[self.parent[i]] + 1
        order = sorted(range(len(self.nodes)), key=lambda i: depth[i])  # 0 first
        at = {i: k for k, i in enumerate(order)}  # node -> place in the level-by-level order
        self.levels = [
            (
                torch.tensor(idx),
                torch.tensor([at[self.parent[i]] for i in idx]),
                torch.tensor([self.parent[i] for i in idx]),
            )
            for d in range(1, max(depth) + 1)
            for idx in [[i for i in order if depth[i] == d]]
        ]
        self.inv = torch.tensor([at[i] for i in range(len(self.nodes))])
        self.index = pos

    def __call__(self, local: Tensor, joints_c: Tensor) -> tuple[Tensor, Tensor]:
        """World rotations ``[F, N, 3, 3]`` and positions ``[F, N, 3]`` of the kept joints from
        their local rotations ``[F, N, 3, 3]`` and canonical positions ``[N, 3]``."""
        rots, poss = local[:, :1], joints_c[:1].expand(local.shape[0], 1, 3)
        for idx, par_at, par in self.levels:
            r_par, p_par = rots[:, par_at], poss[:, par_at]
            off = joints_c[idx] - joints_c[par]
            p_new = p_par + (r_par @ off[..., None])[..., 0]
            r_new = r_par @ local[:, idx]
            rots = torch.cat([rots, r_new], 1)
            poss = torch.cat([poss, p_new], 1)
        return rots[:, self.inv], poss[:, self.inv]


class KinematicBody:
    """Rotations / shape / translation -> keypoints (and vertices), in float64."""

    def __init__(
        self,
        model: BodyModel,
        prob: FitProblem,
        active: list[int],
        fit_shape: bool,
        weights: Tensor,
        mask_vertices: int,
    ):
        self.model, self.prob, self.active = model, prob, active
        self.fit_shape = fit_shape
        self.rng = SHAPE_RANGE.get(model.name)
        self.j = model.num_joints
        self.tree = None
        if prob.kp_joints is not None:
            self.tree = PoseTree(model.parents, set(prob.kp_joints) | set(active))
            self.kp_nodes = [self.tree.index[j] for j in prob.kp_joints]
            self.node_ids = torch.tensor(self.tree.nodes)
            nv = weights.shape[0]
            self.vsub = torch.linspace(0, nv - 1, min(mask_vertices, nv)).round().long()
            w = weights[self.vsub].double()
            self.vweights = w.new_zeros(len(self.vsub), len(self.tree.nodes))
            self.vweights.index_add_(1, self.tree.anc, w)

    def shape(self, delta: Tensor) -> Tensor:
        s = self.model.default_shape().double() + delta
        return s if self.rng is None else s.clamp(*self.rng)

    def rotations(self, root6d: Tensor, body6d: Tensor) -> Tensor:
        n = root6d.shape[0]
        rot = torch.eye(3, dtype=root6d.dtype).expand(n, self.j, 3, 3)
        parts = torch.cat([rot6d_to_matrix(root6d)[:, None], rot6d_to_matrix(body6d)], 1)
        return rot.index_copy(1, torch.tensor([0, *self.active]), parts)

    def linearise(self, shape: Tensor, jacobian: bool = True) -> None:
        """Canonical joints (and the mask stage's vertices) to first order about ``shape``
        (exact for SMPL, whose joints are linear in the betas): the model's ``canonical``
        builds every vertex (anny: 80 ms), far more than the keypoints need."""
        m = self.model
        s0 = shape.detach().to(m.dtype)
        self.s0 = s0.double()
        v0, j0, _ = m.canonical(s0)
        self.j0 = j0.detach().double()
        sub = getattr(self, "vsub", None)
        if sub is not None:
            self.v0 = v0[sub].detach().double()
        if self.fit_shape and jacobian:  # central differences: 2 S evaluations
            h = 1e-4
            jc, vc = [], []
            for e in torch.eye(len(s0), dtype=s0.dtype):
                vp, jp, _ = m.canonical(s0 + h * e)
                vm, jm, _ = m.canonical(s0 - h * e)
                jc.append((jp - jm).double() / (2 * h))
                if sub is not None:
                    vc.append((vp[sub] - vm[sub]).double() / (2 * h))
            self.jac = torch.stack(jc, -1).detach()  # [J, 3, S]
            if sub is not None:
                self.vjac = torch.stack(vc, -1).detach()  # [V', 3, S]

    def __call__(
        self, rot: Tensor, shape: Tensor, transl: Tensor, verts: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        m = self.model
        if self.tree is not None:
            j_c = self.j0
            if self.fit_shape:
                j_c = j_c + self.jac @ (shape - self.s0)
            j_c = j_c[self.node_ids]
            r_w, p_w = self.tree(rot[:, self.node_ids], j_c)
            kp = p_w[:, self.kp_nodes] + transl[:, None]
            if not verts:
                return kp, None
            v_c = self.v0
            if self.fit_shape:
                v_c = v_c + self.vjac @ (shape - self.s0)
            t = p_w - (r_w @ j_c[..., None])[..., 0]  # bone transforms x -> R x + t
            blend = torch.einsum("vn,fnij->fvij", self.vweights, torch.cat([r_w, t[..., None]], -1))
            v = (blend[..., :3] @ v_c[..., None])[..., 0] + blend[..., 3] + transl[:, None]
            return kp, v
        out = m(rot.to(m.dtype), shape.to(m.dtype), transl.to(m.dtype))
        kp, ids = m.keypoints(out)
        assert ids == self.prob.lm_ids
        return kp.double(), out.vertices.double()


def active_joints(model: BodyModel, lm_ids: list[int], weights: Tensor) -> list[int]:
    """The non-root joints optimised: those whose rotation moves a keypoint (the strict
    ancestors of keypoint joints; for a vertex keypoint also its dominant joint). The rest
    (fingers, toes, face) keep the canonical pose. (Tried: only the joints of the compressed
    keypoint skeleton, i.e. without anny's twist and in-between spine bones: worse, 64 vs 42
    mm MPJPE with 2 px noise, as the rest pose then misplaces the chains.)"""
    parents = model.parents
    carriers: set[int] = set()
    own: set[int] = set()
    for i in lm_ids:
        name = MEDIAPIPE_POSE_LANDMARKS[i]
        if name in model.keypoint_joints:
            carriers.add(model.joint_names.index(model.keypoint_joints[name]))
        else:
            j = int(weights[model.keypoint_vertices[name]].argmax())
            carriers.add(j)
            own.add(j)
    branches: dict[int, set[int]] = {}
    for j in carriers:
        c, p = j, parents[j]
        while p >= 0:
            branches.setdefault(p, set()).add(c)
            c, p = p, parents[p]
    return sorted((own | set(branches)) - {0})


def chain_joints(model: BodyModel, lm_ids: list[int], active: list[int]) -> Tensor:
    """1 for the active joints that lie inside a keypoint chain, 0 for the others ``[A]``.

    The structural joints are the keypoint joints and the branch points (joints with two or
    more child subtrees holding keypoints): rotating one moves whole keypoint segments about a
    keypoint or a branch. The others (twist bones, intermediate spine and neck segments,
    clavicles, pelvis and metacarpal bones) only add redundant ways of placing the same
    keypoints, which noise exploits; :attr:`FitConfig.chain_prior` holds them near rest."""
    parents = model.parents
    kp_joints = {
        model.joint_names.index(model.keypoint_joints[MEDIAPIPE_POSE_LANDMARKS[i]])
        for i in lm_ids
        if MEDIAPIPE_POSE_LANDMARKS[i] in model.keypoint_joints
    }
    branches: dict[int, set[int]] = {}
    for j in kp_joints:
        c, p = j, parents[j]
        while p >= 0:
            branches.setdefault(p, set()).add(c)
            c, p = p, parents[p]
    structural = kp_joints | {j for j, ch in branches.items() if len(ch) > 1}
    return torch.tensor([0.0 if j in structural else 1.0 for j in active], dtype=torch.float64)


def hinge_frames(
    model: BodyModel, body: KinematicBody, lm_ids: list[int], active: list[int]
) -> tuple[list[int], Tensor, Tensor]:
    """Joints, flexion axes ``[H, 3]`` (canonical axes) and rest flexion angles ``[H]`` of the
    mapped knees and elbows that are optimised. A limb bent at rest (anny's elbows: ~50
    degrees) bends about the normal of its rest plane ``upper x lower``, which a positive
    rotation bends further; a straight one (knees) about ``d * forward x lower`` with the
    body's forward (from the canonical shoulders and hips), ``d = +1`` (knee: the shin swings
    backwards) or ``-1`` (elbow: the forearm swings forwards), and rest angle 0."""
    names = {MEDIAPIPE_POSE_LANDMARKS[i] for i in lm_ids}
    kp_j = {n: model.joint_names.index(model.keypoint_joints[n])
            for n in names if n in model.keypoint_joints}  # fmt: skip
    none = ([], torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    if not all(MEDIAPIPE_POSE_LANDMARKS[t] in kp_j for t in TORSO):
        return none
    j0 = body.j0
    ls, rs, lh, rh = (j0[kp_j[MEDIAPIPE_POSE_LANDMARKS[t]]] for t in TORSO)
    up, left = unit(ls + rs - lh - rh), unit(ls - rs + lh - rh)
    fwd = unit(torch.linalg.cross(left, up))
    joints, axes, rests = [], [], []
    for name, (before, after, sign) in HINGES.items():
        if not (name in kp_j and before in kp_j and after in kp_j and kp_j[name] in active):
            continue
        upper = unit(j0[kp_j[name]] - j0[kp_j[before]])
        lower = unit(j0[kp_j[after]] - j0[kp_j[name]])
        normal = torch.linalg.cross(upper, lower)
        bent = float(normal.norm()) > math.sin(math.radians(10.0))
        axes.append(unit(normal if bent else sign * torch.linalg.cross(fwd, lower)))
        rests.append(math.acos(max(-1.0, min(1.0, float(upper @ lower)))) if bent else 0.0)
        joints.append(kp_j[name])
    if not joints:
        return none
    return joints, torch.stack(axes), torch.tensor(rests, dtype=torch.float64)


# ----------------------------------------------------------------------------- stage 0
