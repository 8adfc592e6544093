"""Hand-held indoor walk-through pieces for :mod:`sceneforge.core.synthetic`.

What makes a synthetic room look like a phone walk-through to SfM:

- :func:`handheld_rig`: the camera walks a lap along a wobbly closed curve through the room
  (not a circle; uneven step lengths), looking roughly along the walking direction with a
  slow look-around, per-frame hand shake (yaw / pitch / roll and position jitter) and a
  vertical walking bob;
- :func:`scatter_objects`: clutter of varied size (small items, some stacked on others,
  tables, furniture along the walls) kept clear of the camera path;
- :func:`tile_room`: exactly periodic tile / wallpaper textures on chosen room surfaces, so
  descriptor matching meets ambiguous repeats;
- :func:`motion_blur`: a per-frame line-kernel blur of the rendered image (centred kernel,
  so the poses and the pixel-centre ground truth stay exact).

Everything is deterministic from the scene seed. This module depends on
:mod:`sceneforge.core.meshes` and :mod:`sceneforge.core.cameras` only.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import make_rigid
from sceneforge.core.meshes import Material, Mesh, box_mesh, sphere_mesh

#: Room surfaces in the order :func:`sceneforge.core.meshes.room_mesh` builds them
#: (their material indices in the room mesh).
ROOM_SURFACES = ("floor", "ceiling", "wall_y-", "wall_y+", "wall_x-", "wall_x+")
#: Half extents of the default room (x, y) and its height, as built by ``room_mesh()``.
ROOM_HALF = (3.0, 2.5)
ROOM_HEIGHT = 2.8
#: Clearance between the camera path and any object footprint (world units).
PATH_CLEARANCE = 0.35
EYE_HEIGHT = 1.45

_PATH_SAMPLES = 2048


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 7919 + salt)


# ----------------------------------------------------------------------------- path and rig


def handheld_path(seed: int, samples: int = _PATH_SAMPLES) -> Float[Tensor, "M 2"]:
    """The closed walking curve (floor xy, counter-clockwise, ``samples`` points): an
    ellipse around the room centre with seeded 2- and 3-lobed wobble and offset."""
    g = _gen(seed, 311)
    u = torch.rand(7, generator=g, dtype=torch.float64)
    a2, a3 = 0.08 + 0.10 * u[0], 0.03 + 0.05 * u[1]
    p2, p3, th0 = 2 * math.pi * u[2], 2 * math.pi * u[3], 2 * math.pi * u[4]
    cx, cy = 0.4 * (u[5] - 0.5), 0.4 * (u[6] - 0.5)
    th = th0 + torch.arange(samples, dtype=torch.float64) * (2 * math.pi / samples)
    r = 1.0 + a2 * torch.sin(2 * th + p2) + a3 * torch.sin(3 * th + p3)
    return torch.stack([cx + 1.35 * r * torch.cos(th), cy + 1.0 * r * torch.sin(th)], -1)


def camera_path_xy(rig: str, seed: int, walk_radius: float = 0.6) -> Float[Tensor, "M 2"] | None:
    """Floor points that objects must keep clear of: the handheld path, the walk rig's
    circle (radius ``walk_radius`` around the room centre), or None for other rigs."""
    if rig == "handheld":
        return handheld_path(seed)
    if rig == "walk":
        th = torch.arange(360, dtype=torch.float64) * (2 * math.pi / 360)
        return walk_radius * torch.stack([torch.cos(th), torch.sin(th)], -1)
    return None


def _yaw_pitch_roll_rigid(
    eye: Float[Tensor, "N 3"], yaw: Tensor, pitch: Tensor, roll: Tensor
) -> Float[Tensor, "N 3 4"]:
    """OpenCV ``cam_from_world``: optical axis at ``yaw`` (from +x, about +z) and ``pitch``
    (up positive), image up ~ +z, then rolled by ``roll`` about the optical axis."""
    fwd = torch.stack(
        [torch.cos(pitch) * torch.cos(yaw), torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch)], -1
    )
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(fwd)
    right = torch.cross(fwd, up, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.cross(fwd, right, dim=-1)
    R = torch.stack([right, down, fwd], -1).transpose(-1, -2)
    c, s = torch.cos(roll), torch.sin(roll)
    z, o = torch.zeros_like(roll), torch.ones_like(roll)
    Rz = torch.stack(
        [torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2
    )
    R = Rz @ R
    return make_rigid(R, -(R @ eye[..., None])[..., 0])


def handheld_rig(
    num_views: int,
    seed: int,
    shake_deg: float = 1.5,
    jitter: float = 0.015,
    bob: float = 0.03,
    step_jitter: float = 0.4,
) -> Float[Tensor, "N 3 4"]:
    """Hand-held walk along :func:`handheld_path` (one lap, ``num_views`` frames).

    Step lengths are uniform in ``1 +- step_jitter`` times the mean; the view looks along
    the walking direction turned 15-30 deg towards the inside of the lap, plus a slow seeded
    look-around (+-25 deg of yaw, +-5 of pitch, 15 deg down on average) plus per-frame shake (Gaussian yaw / pitch / roll
    of std ``shake_deg``), position jitter (std ``jitter``) and a walking bob of amplitude
    ``bob`` (one period per ~0.65 units walked)."""
    n = max(int(num_views), 1)
    path = handheld_path(seed)
    closed = torch.cat([path, path[:1]])
    seg = (closed[1:] - closed[:-1]).norm(dim=-1)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), seg.cumsum(0)])
    length = float(cum[-1])
    g = _gen(seed, 577)
    steps = 1.0 + step_jitter * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
    s = (
        length
        * torch.cat([torch.zeros(1, dtype=torch.float64), steps[:-1].cumsum(0)])
        / steps.sum()
    )
    idx = torch.searchsorted(cum, s, right=True).clamp(1, len(cum) - 1) - 1
    frac = ((s - cum[idx]) / seg[idx].clamp_min(1e-12))[:, None]
    xy = closed[idx] + frac * (closed[idx + 1] - closed[idx])
    tangent = closed[idx + 1] - closed[idx]
    heading = torch.atan2(tangent[:, 1], tangent[:, 0])
    u = torch.rand(6, generator=g, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64) / n
    look = math.radians(25.0) * torch.sin(2 * math.pi * (1.5 + u[0]) * k + 2 * math.pi * u[1])
    bias = math.radians(15.0 + 15.0 * float(u[2]))  # towards the inside of the lap (left)
    tilt = math.radians(-15.0) + math.radians(5.0) * torch.sin(
        2 * math.pi * (1.0 + u[3]) * k + 2 * math.pi * u[4]
    )
    shake = torch.randn(n, 3, generator=g, dtype=torch.float64) * math.radians(shake_deg)
    z = EYE_HEIGHT + bob * torch.sin(2 * math.pi * s / 0.65 + 2 * math.pi * u[5])
    eye = torch.cat([xy, z[:, None]], -1)
    eye = eye + jitter * torch.randn(n, 3, generator=g, dtype=torch.float64)
    yaw = heading + bias + look + shake[:, 0]
    return _yaw_pitch_roll_rigid(eye, yaw, tilt + shake[:, 1], shake[:, 2])


# ----------------------------------------------------------------------------- clutter


def _footprint_distance(pts: Tensor, center: Tensor, yaw: float, half: Tensor) -> Tensor:
    """Distance of floor points ``pts`` (M, 2) to an oriented rectangle."""
    c, s = math.cos(yaw), math.sin(yaw)
    d = pts - center
    q = torch.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], -1)
    return (q.abs() - half).clamp_min(0).norm(dim=-1)


def _rot_z(yaw: float) -> Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def scatter_objects(
    num: int,
    seed: int,
    keep_clear: Float[Tensor, "M 2"] | None = None,
    frequency: float = 10.0,
    tries: int = 400,
) -> list[Mesh]:
    """Up to ``num`` textured boxes and spheres of varied size in the default room, their
    footprints at least :data:`PATH_CLEARANCE` from the floor points ``keep_clear``, not
    overlapping each other, inside the walls: every 4th object is furniture (a box up to
    1.5 x 0.6 x 1.9 against a wall), then tables / crates / balls of 0.3-0.8 and small items
    of 0.08-0.25 (stacked on an earlier box when one has room, else on the floor). An
    object that finds no free spot in ``tries`` draws is left out."""
    g = _gen(seed, 2029)
    clear = (
        torch.zeros(0, 2, dtype=torch.float64)
        if keep_clear is None
        else torch.as_tensor(keep_clear, dtype=torch.float64)
    )
    hx, hy = ROOM_HALF
    placed: list[tuple[Tensor, float]] = []  # floor objects: centre, bounding radius
    tops: list[tuple[Tensor, float, Tensor, float]] = []  # boxes: centre, yaw, half, top z
    out: list[Mesh] = []

    def rnd(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))

    for i in range(num):
        kind = "furniture" if i % 4 == 0 else ("medium" if i % 4 == 1 else "small")
        tint = (0.55 + 0.45 * torch.rand(3, generator=g)).tolist()
        oseed = seed * 1000 + 37 * i + 5
        sphere = kind != "furniture" and rnd(0, 1) < 0.3
        if kind == "furniture":
            dims = (rnd(0.8, 1.5), rnd(0.35, 0.6), rnd(0.5, 1.9))
        elif kind == "medium":
            dims = (rnd(0.3, 0.7), rnd(0.3, 0.7), rnd(0.3, 0.8))
        else:
            a = rnd(0.08, 0.25)
            dims = (a, a * rnd(0.6, 1.4), a * rnd(0.6, 1.6))
        if sphere:
            dims = (dims[0], dims[0], dims[0])
        half = torch.tensor(dims[:2], dtype=torch.float64) / 2
        radius = float(half.norm())
        pose = None
        if kind == "small" and tops and rnd(0, 1) < 0.6:
            j = int(torch.randint(len(tops), (1,), generator=g))
            c0, yaw0, half0, z0 = tops[j]
            room = half0 - radius
            if bool((room > 0).all()):
                local = (2 * torch.rand(2, generator=g, dtype=torch.float64) - 1) * room
                R0 = _rot_z(yaw0)[:2, :2]
                pose = (c0 + R0 @ local, yaw0 + rnd(-0.5, 0.5), z0)
        for t in range(tries if pose is None else 0):
            if i == 1 and t == 0 and clear.shape[0]:  # a table inside the walked loop
                c, yaw = clear.mean(0), rnd(0, 2 * math.pi)
            elif kind == "furniture":
                wall = int(torch.randint(4, (1,), generator=g))
                along = rnd(-1, 1)
                if wall < 2:  # y- / y+ walls: long side along x
                    sign = -1 if wall == 0 else 1
                    c = torch.tensor(
                        [along * (hx - half[0] - 0.05), sign * (hy - half[1] - 0.05)],
                        dtype=torch.float64,
                    )
                    yaw = 0.0
                else:
                    sign = -1 if wall == 2 else 1
                    c = torch.tensor(
                        [sign * (hx - half[1] - 0.05), along * (hy - half[0] - 0.05)],
                        dtype=torch.float64,
                    )
                    yaw = math.pi / 2
            else:
                c = torch.tensor(
                    [
                        rnd(-hx + radius + 0.05, hx - radius - 0.05),
                        rnd(-hy + radius + 0.05, hy - radius - 0.05),
                    ],
                    dtype=torch.float64,
                )
                yaw = rnd(0, 2 * math.pi)
            if (
                clear.shape[0]
                and float(_footprint_distance(clear, c, yaw, half).min()) < PATH_CLEARANCE
            ):
                continue
            if any(float((c - c1).norm()) < radius + r1 + 0.03 for c1, r1 in placed):
                continue
            pose = (c, yaw, 0.0)
            placed.append((c, radius))
            break
        if pose is None:
            continue
        c, yaw, z0 = pose
        if sphere:
            m = sphere_mesh(dims[0] / 2, seed=oseed, frequency=frequency, tint=tint)
            R = None
        else:
            m = box_mesh(dims, seed=oseed, frequency=frequency, tint=tint)
            R = _rot_z(yaw)
            if z0 == 0.0 and kind != "small":
                tops.append((c, yaw, half, dims[2]))
        pos = (float(c[0]), float(c[1]), z0 + dims[2] / 2)
        out.append(m.transformed(R, pos).with_object_id(len(out)))
    return out


# ----------------------------------------------------------------------------- tiles


def tile_texture(seed: int, size: int = 128) -> Float[Tensor, "S S 3"]:
    """One seeded tile (float32 RGB in [0, 1]): a contrasty two-scale noise motif framed by
    dark grout lines; repeated by wrap-around uv it gives identical tiles."""
    g = _gen(seed, 883)
    coarse = torch.rand(1, 3, 5, 5, generator=g)
    fine = torch.rand(1, 3, 17, 17, generator=g)
    img = 0.6 * F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    img = img + 0.4 * F.interpolate(fine, size=(size, size), mode="bilinear", align_corners=True)
    img = img[0].permute(1, 2, 0)
    lum = img.mean(-1, keepdim=True)
    img = 0.5 + 3.5 * (lum - 0.5) + 1.2 * (img - lum)
    grout = max(size // 32, 1)
    img[:grout] = 0.15
    img[:, :grout] = 0.15
    return img.clamp(0.05, 1.0).float()


def tile_room(room: Mesh, surfaces: tuple[str, ...], tile_size: float, seed: int) -> Mesh:
    """``room`` (from ``room_mesh``) with the named :data:`ROOM_SURFACES` given a
    periodic tile texture (one motif per surface, a whole number of tiles of side about
    ``tile_size`` across it, same tint as before)."""
    bad = [s for s in surfaces if s not in ROOM_SURFACES]
    if bad:
        raise ValueError(f"unknown room surfaces {bad}; use {', '.join(ROOM_SURFACES)}")
    if room.uv is None or len(room.materials) != len(ROOM_SURFACES):
        raise ValueError("tile_room needs the uv-mapped six-surface mesh of room_mesh()")
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    uv = room.uv.clone().double()
    mats = list(room.materials)
    for name in surfaces:
        m = ROOM_SURFACES.index(name)
        verts = torch.unique(room.faces[room.face_material == m].reshape(-1))
        p, q = room.vertices[verts], uv[verts]
        o = p[(q.norm(dim=-1)).argmin()]
        ends = [
            p[(q - torch.tensor(e, dtype=torch.float64)).norm(dim=-1).argmin()]
            for e in ((1, 0), (0, 1))
        ]
        reps = [max(1, round(float((e - o).norm()) / tile_size)) for e in ends]
        uv[verts] = q * torch.tensor(reps, dtype=torch.float64)
        mats[m] = Material(
            color=mats[m].color, texture=tile_texture(seed + 53 * m), name=f"tiles:{name}"
        )
    return replace(room, uv=uv, materials=mats)


# ----------------------------------------------------------------------------- config glue


def check_options(cfg, rig: str) -> None:
    """Reject bad hand-held walk options of a ``SyntheticSceneConfig`` (resolved ``rig``)."""
    if cfg.tiled_surfaces and cfg.scene != "room":
        raise ValueError("tiled_surfaces needs scene='room'")
    bad = [s for s in cfg.tiled_surfaces if s not in ROOM_SURFACES]
    if bad:
        raise ValueError(f"unknown room surfaces {bad}; use {', '.join(ROOM_SURFACES)}")
    if cfg.room_layout not in ("auto", "ring", "scatter"):
        raise ValueError(f"unknown room_layout {cfg.room_layout!r}; use ring, scatter or auto")
    lo, hi = cfg.motion_blur_px
    if not 0 <= lo <= hi:
        raise ValueError(f"motion_blur_px must be 0 <= lo <= hi, got {cfg.motion_blur_px}")


def dress_room(cfg, rig: str, room: Mesh) -> tuple[list[Mesh], bool]:
    """For a ``SyntheticSceneConfig`` ``cfg`` with resolved ``rig``: the room parts (``room``
    with ``cfg.tiled_surfaces`` tiled, then any scattered objects) and whether the layout is
    the furniture ring (which the caller adds)."""
    if cfg.tiled_surfaces:
        room = tile_room(room, tuple(cfg.tiled_surfaces), cfg.tile_size, cfg.seed * 1000 + 992)
    layout = cfg.room_layout
    if layout == "auto":
        layout = "scatter" if rig == "handheld" else "ring"
    if layout == "ring":
        return [room], True
    clear = camera_path_xy(rig, cfg.seed, cfg.walk_radius)
    return [room, *scatter_objects(cfg.num_objects, cfg.seed, clear, cfg.object_frequency)], False


def handheld_cameras(cfg) -> Float[Tensor, "N 3 4"]:
    """:func:`handheld_rig` with the ``handheld_*`` fields of a ``SyntheticSceneConfig``."""
    return handheld_rig(
        cfg.num_views,
        cfg.seed,
        cfg.handheld_shake_deg,
        cfg.handheld_jitter,
        cfg.handheld_bob,
        cfg.handheld_step_jitter,
    )


# ----------------------------------------------------------------------------- blur


def motion_blur_kernel(length: float, angle: float) -> Float[Tensor, "K K"]:
    """A normalised line kernel ``length`` px long at ``angle`` (radians), centred (so it
    shifts nothing), anti-aliased by bilinear splatting; ``length`` <= 0 is the identity."""
    r = int(math.ceil(max(length, 0.0) / 2)) + 1
    k = torch.zeros(2 * r + 1, 2 * r + 1, dtype=torch.float64)
    if length <= 0:
        k[r, r] = 1.0
        return k.float()
    t = torch.linspace(-length / 2, length / 2, max(2, int(math.ceil(length * 8)) + 1))
    x, y = r + t.double() * math.cos(angle), r + t.double() * math.sin(angle)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    for dx, dy, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        k.index_put_(((y0 + dy).long(), (x0 + dx).long()), w, accumulate=True)
    return (k / k.sum()).float()


def motion_blur(
    image: Float[Tensor, "H W 3"], length: float, angle: float
) -> Float[Tensor, "H W 3"]:
    """``image`` convolved with :func:`motion_blur_kernel` (edges replicated)."""
    if length <= 0:
        return image
    k = motion_blur_kernel(length, angle)
    r = k.shape[0] // 2
    x = image.permute(2, 0, 1)[:, None].float()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    return F.conv2d(x, k[None, None])[:, 0].permute(1, 2, 0).to(image.dtype)


def blur_schedule(
    num_views: int, seed: int, length_px: tuple[float, float]
) -> list[tuple[float, float]]:
    """Per-frame ``(length, angle)``: length uniform in ``length_px``, angle uniform; empty
    when ``length_px`` is all zeros (no blur, no random draws)."""
    if max(length_px, default=0.0) <= 0:
        return []
    g = _gen(seed, 6151)
    u = torch.rand(num_views, 2, generator=g, dtype=torch.float64)
    lo, hi = length_px
    return [(lo + (hi - lo) * float(a), math.pi * float(b)) for a, b in u]


__all__ = [
    "ROOM_SURFACES",
    "blur_schedule",
    "camera_path_xy",
    "check_options",
    "dress_room",
    "handheld_cameras",
    "handheld_path",
    "handheld_rig",
    "motion_blur",
    "motion_blur_kernel",
    "scatter_objects",
    "tile_room",
    "tile_texture",
]
