"""Procedural motions (walk, turn, wave) for any :class:`BodyModel` (issue 20's synthetic
human videos).

A motion is a joint-rotation trajectory in the model's canonical axes (the model's own pose
convention, see :mod:`.body_model`) plus a root displacement over the ground. Joints are found
by name through a small per-model table (:class:`BodyRig`: SMPL's and anny's names differ);
segments are aimed with minimal rotations computed from the subject's canonical joints, so the
same motion works from SMPL's T-pose and anny's A-pose.

Body axes (``left``, ``up``, ``forward``) are given per model in canonical coordinates. A
rotation about ``-left`` swings a hanging limb forward, one about ``up`` turns the body left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.rotations import angle_axis_to_matrix, matrix_to_angle_axis

from .body_model import BodyModel

MOTIONS = ("walk", "turn", "wave")


@dataclass(frozen=True)
class BodyRig:
    """Joint names per role (``{}`` = the side: ``sides[0]`` left, ``sides[1]`` right) and the
    body axes in the model's canonical coordinates."""

    root: str
    spine: str
    upper_arm: str
    fore_arm: str
    hand: str
    thigh: str
    shin: str
    foot: str
    neck: str
    head: str
    sides: tuple[str, str]
    left: tuple[float, float, float]
    up: tuple[float, float, float]
    forward: tuple[float, float, float]

    def joint(self, role: str, side: int | None = None) -> str:
        name = getattr(self, role)
        return name.format(self.sides[side]) if side is not None else name

    def roles(self) -> dict[str, str]:
        """Joint name -> role (``"left_thigh"``, ``"spine"``, ...) of every named joint."""
        out = {self.root: "root", self.spine: "spine", self.neck: "neck", self.head: "head"}
        for role in ("upper_arm", "fore_arm", "hand", "thigh", "shin", "foot"):
            for s, side in enumerate(("left", "right")):
                out[self.joint(role, s)] = f"{side}_{role}"
        return out


SMPL_RIG = BodyRig(
    root="pelvis",
    spine="spine1",
    upper_arm="{}_shoulder",
    fore_arm="{}_elbow",
    hand="{}_wrist",
    thigh="{}_hip",
    shin="{}_knee",
    foot="{}_ankle",
    neck="neck",
    head="head",
    sides=("left", "right"),
    left=(1.0, 0.0, 0.0),
    up=(0.0, 1.0, 0.0),
    forward=(0.0, 0.0, 1.0),
)

ANNY_RIG = BodyRig(
    root="root",
    spine="spine05",
    upper_arm="upperarm01.{}",
    fore_arm="lowerarm01.{}",
    hand="wrist.{}",
    thigh="upperleg01.{}",
    shin="lowerleg01.{}",
    foot="foot.{}",
    neck="neck01",
    head="head",
    sides=("L", "R"),
    left=(1.0, 0.0, 0.0),
    up=(0.0, 0.0, 1.0),
    forward=(0.0, -1.0, 0.0),
)

RIGS = {"smpl": SMPL_RIG, "smplx": SMPL_RIG, "anny": ANNY_RIG}


def body_rig(model: BodyModel) -> BodyRig:
    """The rig of ``model`` (by its name, else the first rig whose joints it has)."""
    rig = RIGS.get(model.name)
    candidates = [rig] if rig is not None else list(dict.fromkeys(RIGS.values()))
    for r in candidates:
        if all(n in model.joint_names for n in r.roles()):
            return r
    raise ValueError(f"no motion rig for body model {model.name!r} (its joints do not match)")


def _unit(v: Tensor) -> Tensor:
    return v / v.norm().clamp_min(1e-12)


def rot(axis: Tensor, angle: float | Tensor) -> Float[Tensor, "3 3"]:
    """Rotation by ``angle`` about ``axis`` (any length)."""
    return angle_axis_to_matrix(_unit(axis) * angle)


def aim(src: Tensor, dst: Tensor) -> Float[Tensor, "3 3"]:
    """The smallest rotation taking direction ``src`` to direction ``dst``."""
    a, b = _unit(src), _unit(dst)
    cross = torch.linalg.cross(a, b)
    s, c = cross.norm(), (a * b).sum()
    if s < 1e-9:
        if c > 0:
            return torch.eye(3, dtype=a.dtype)
        perp = torch.linalg.cross(a, torch.eye(3, dtype=a.dtype)[int(a.abs().argmin())])
        return rot(perp, math.pi)
    return rot(cross, torch.atan2(s, c))


@dataclass
class Motion:
    """A motion of one subject.

    Attributes:
        name: e.g. ``"walk"`` or ``"walk+turn"``.
        fps: frames per second.
        rotations: ``[T, J, 3, 3]`` joint rotations in the model's canonical axes; the root's
            includes the body's heading (yaw about ``up``).
        root_offset: ``[T, 3]`` displacement of the root over the ground, canonical axes.
        start_frame: the first frame's index on the motion's own time line.
    """

    name: str
    fps: float
    rotations: Float[Tensor, "T J 3 3"]
    root_offset: Float[Tensor, "T 3"]
    start_frame: int = 0

    @property
    def num_frames(self) -> int:
        return self.rotations.shape[0]

    def pose(self) -> Float[Tensor, "T J 3"]:
        """Axis-angle pose ``[T, J, 3]`` (the :class:`BodyModel` convention)."""
        return matrix_to_angle_axis(self.rotations)

    def then(self, other: Motion) -> Motion:
        """This motion followed by ``other``, which starts where and facing as this one ends."""
        # roots only rotate about ``up``: the root rotation is the heading
        yaw, last_o = self.rotations[-1, 0], self.root_offset[-1]
        rots = other.rotations.clone()
        rots[:, 0] = yaw @ other.rotations[:, 0]
        return Motion(
            f"{self.name}+{other.name}",
            self.fps,
            torch.cat([self.rotations, rots]),
            torch.cat([self.root_offset, last_o + other.root_offset @ yaw.T]),
            self.start_frame,
        )


class _Poser:
    """Per-frame rotation builder on a model's joints (canonical axes)."""

    def __init__(self, model: BodyModel, shape: Tensor | None, dtype: torch.dtype) -> None:
        self.rig = body_rig(model)
        self.names = model.joint_names
        self.joints = model.canonical_joints(shape).to(dtype)
        self.dtype = dtype
        self.num_joints = model.num_joints
        self.left, self.up, self.fwd = (
            torch.tensor(v, dtype=dtype) for v in (self.rig.left, self.rig.up, self.rig.forward)
        )

    def index(self, role: str, side: int | None = None) -> int:
        return self.names.index(self.rig.joint(role, side))

    def segment(self, role_a: str, role_b: str, side: int) -> Tensor:
        """Canonical direction from joint ``role_a`` to joint ``role_b``."""
        return _unit(self.joints[self.index(role_b, side)] - self.joints[self.index(role_a, side)])

    def identity(self) -> Tensor:
        return torch.eye(3, dtype=self.dtype).expand(self.num_joints, 3, 3).clone()

    def side_dir(self, side: int) -> Tensor:
        return self.left if side == 0 else -self.left

    def arm(self, r: Tensor, side: int, upper: Tensor, fore: Tensor) -> None:
        """Aim the arm of ``side``: upper arm along ``upper``, forearm along ``fore``
        (directions in the torso's frame)."""
        iu, ifo = self.index("upper_arm", side), self.index("fore_arm", side)
        r_sh = aim(self.segment("upper_arm", "fore_arm", side), upper)
        r[iu] = r_sh
        r[ifo] = aim(self.segment("fore_arm", "hand", side), r_sh.T @ fore)

    def hanging_arm(self, r: Tensor, side: int, swing: float, bend: float) -> None:
        """Arm down by the side (10 degrees out), swung forward by ``swing``, elbow bent by
        ``bend`` (radians)."""
        out = math.radians(10.0)
        down = -self.up * math.cos(out) + self.side_dir(side) * math.sin(out)
        upper = rot(-self.left, swing) @ down
        axis = torch.linalg.cross(upper, self.fwd)
        self.arm(r, side, upper, rot(axis, bend) @ upper)

    def leg(self, r: Tensor, side: int, hip: float, knee: float) -> None:
        """Thigh swung forward by ``hip``, shin bent back by ``knee`` (radians)."""
        r[self.index("thigh", side)] = rot(-self.left, hip)
        r[self.index("shin", side)] = rot(self.left, knee)


def _walk_frame(p: _Poser, t: float, speed: float, cadence: float) -> tuple[Tensor, Tensor]:
    r = p.identity()
    phase = 2 * math.pi * cadence * t
    for side, shift in ((0, 0.0), (1, math.pi)):
        ph = phase + shift
        p.leg(r, side, 0.35 * math.sin(ph), 0.1 + 0.6 * max(0.0, math.cos(ph)))
        p.hanging_arm(r, side, -0.3 * math.sin(ph), 0.3 + 0.15 * max(0.0, -math.cos(ph)))
    r[p.index("spine")] = rot(p.up, 0.08 * math.sin(phase))
    return r, p.fwd * speed * t


def _turn_frame(p: _Poser, t: float, duration: float, angle: float) -> tuple[Tensor, Tensor]:
    r = p.identity()
    u = min(max(t / max(duration, 1e-9), 0.0), 1.0)
    r[0] = rot(p.up, angle * u * u * (3 - 2 * u))  # smoothstep heading
    step = 2 * math.pi * 1.2 * t
    for side, shift in ((0, 0.0), (1, math.pi)):
        ph = step + shift
        p.leg(r, side, 0.12 * max(0.0, math.sin(ph)), 0.25 * max(0.0, math.sin(ph)))
        p.hanging_arm(r, side, 0.0, 0.25)
    return r, torch.zeros(3, dtype=p.dtype)


def _wave_frame(p: _Poser, t: float, frequency: float) -> tuple[Tensor, Tensor]:
    r = p.identity()
    p.hanging_arm(r, 0, 0.0, 0.2)
    side = p.side_dir(1)
    raise_ = math.radians(35.0)
    upper = side * math.cos(raise_) + p.up * math.sin(raise_)
    w = 0.15 + 0.45 * math.sin(2 * math.pi * frequency * t)
    fore = p.up * math.cos(w) + side * math.sin(w)
    p.arm(r, 1, upper, fore)
    return r, torch.zeros(3, dtype=p.dtype)


def make_motion(
    model: BodyModel,
    name: str,
    num_frames: int,
    fps: float = 30.0,
    start_frame: int = 0,
    shape: Tensor | None = None,
    *,
    speed: float = 0.9,
    cadence: float = 0.9,
    turn_degrees: float = 120.0,
    wave_frequency: float = 1.5,
) -> Motion:
    """A procedural motion on ``model``'s joints.

    Args:
        name: ``"walk"`` (legs and arms swing, forward at ``speed`` m/s, ``cadence`` strides
            per second), ``"turn"`` (the heading turns by ``turn_degrees`` over the clip,
            small steps), ``"wave"`` (right arm raised, forearm waving at ``wave_frequency``
            Hz), or several joined by ``+`` (``"walk+turn"``; frames split evenly, each part
            starts where the previous ended).
        num_frames: frames ``T``; ``start_frame`` offsets the time line (``t = (start_frame +
            i) / fps``), so later frames of the same motion continue it.
        shape: the subject (the segment directions come from its canonical joints).
    """
    parts = name.split("+")
    if num_frames < len(parts):
        raise ValueError(f"{num_frames} frames cannot hold the motion {name!r}")
    unknown = [q for q in parts if q not in MOTIONS]
    if unknown:
        raise ValueError(f"unknown motion(s) {unknown}; use {', '.join(MOTIONS)} joined by '+'")
    if len(parts) > 1:
        counts = [
            num_frames // len(parts) + (i < num_frames % len(parts)) for i in range(len(parts))
        ]
        kw = dict(speed=speed, cadence=cadence, turn_degrees=turn_degrees)
        out = None
        for part, n in zip(parts, counts, strict=True):
            m = make_motion(model, part, n, fps, 0, shape, wave_frequency=wave_frequency, **kw)
            out = m if out is None else out.then(m)
        out.start_frame = start_frame
        return out
    poser = _Poser(model, shape, model.dtype)
    duration = max(num_frames - 1, 1) / fps  # a turn completes on the last frame
    rots, offs = [], []
    for i in range(num_frames):
        t = (start_frame + i) / fps
        if name == "walk":
            r, o = _walk_frame(poser, t, speed, cadence)
        elif name == "turn":
            r, o = _turn_frame(poser, t, duration, math.radians(turn_degrees))
        else:
            r, o = _wave_frame(poser, t, wave_frequency)
        rots.append(r)
        offs.append(o)
    return Motion(name, fps, torch.stack(rots), torch.stack(offs), start_frame)
