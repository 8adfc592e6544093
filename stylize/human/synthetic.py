"""Synthetic 4D human videos with exact ground truth (issue 20's benchmark data).

A body model (anny by default, any :class:`BodyModel`) is posed by a procedural motion
(:mod:`.motions`: walk, turn, wave), given smooth time-varying **non-rigid offsets** along the
posed vertex normals that linear blend skinning cannot express (loose clothing swinging in a
travelling wave over height and around the body; at most ``offset_amplitude`` metres),
coloured per vertex (skin / striped shirt / checked trousers / shoes by body region, from the
skinning weights), stood on the floor of a textured room and rendered with the project's
ray-exact rasterizer (:mod:`sceneforge.core.raster`, ``ssaa`` x ``ssaa`` supersamples per
pixel, mean-downsampled).

Ground truth per frame: image, exact person mask (the person hit at the pixel centre) and
coverage (fraction of supersamples on the person), depth, camera (``K``, OpenCV
``cam_from_world``; world Z up, floor z = 0), body parameters (pose, shape, transl: the
model's own convention, so ``model(pose, shape, transl).vertices + offsets`` is exactly the
rendered mesh), the offsets and the MediaPipe keypoints (3D and projected).

Splits: ``train`` (the ``static`` or ``orbit`` video), ``heldout_views`` (other viewpoints at
every ``heldout_stride``-th training frame, at camera heights no training camera has) and
``heldout_poses`` (``heldout_frames`` later frames of the time line performing
``heldout_motion``, e.g. a wave after a walk, from the training camera path).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.atomic import atomic_dir, atomic_open, atomic_write_json
from sceneforge.core.cameras import Cameras
from sceneforge.core.image_io import read_image, read_mask, write_image_atomic
from sceneforge.core.meshes import Material, Mesh, limit_threads, room_mesh
from sceneforge.core.raster import (
    RasterView,
    Shading,
    camera_triangles,
    cast_rays,
    shade,
    vertex_normals,
)
from sceneforge.core.rotations import matrix_to_angle_axis
from sceneforge.core.synthetic import look_at
from sceneforge.core.synthetic_handheld import tile_room

from .body_model import BodyModel
from .motions import BodyRig, Motion, body_rig, make_motion

SPLITS = ("train", "heldout_views", "heldout_poses")
_META = "human_video.json"
_ARRAYS = "arrays.npz"
#: region -> index; colours per region are drawn from the seed
REGIONS = ("skin", "shirt", "trousers", "shoes", "hair")
_ROLE_REGION = {
    "root": "trousers", "spine": "shirt", "neck": "skin", "head": "skin",
    "upper_arm": "shirt", "fore_arm": "skin", "hand": "skin",
    "thigh": "trousers", "shin": "trousers", "foot": "shoes",
}  # fmt: skip


@dataclass
class HumanVideoConfig:
    """Options of :func:`make_human_video` (lengths in metres, angles in degrees)."""

    size: int = 128
    num_frames: int = 30
    fps: float = 30.0
    motion: str = "walk"
    camera: str = "static"  # "static" | "orbit"
    ssaa: int = 3
    seed: int = 0
    offset_amplitude: float = 0.02
    heldout_motion: str = "wave"
    heldout_frames: int = 10
    heldout_views: int = 2
    heldout_stride: int = 5
    distance: float = 3.0
    camera_height: float = 1.3
    fov_deg: float = 45.0
    orbit_degrees: float = 360.0
    heading_deg: float = -90.0
    room: tuple[float, float, float] = (10.0, 10.0, 3.2)


@dataclass
class HumanFrames:
    """Rendered frames of one split (``N`` views) and their ground truth."""

    frame: Int[Tensor, " N"]  # index on the time line (t = frame / fps)
    cameras: Cameras
    images: Float[Tensor, "N 3 H W"]
    masks: Bool[Tensor, "N H W"]
    alpha: Float[Tensor, "N H W"]  # fraction of a pixel's supersamples on the person
    depth: Float[Tensor, "N H W"]  # camera z at the pixel centre, 0 = nothing
    pose: Float[Tensor, "N J 3"]
    transl: Float[Tensor, "N 3"]
    offsets: Float[Tensor, "N V 3"]  # world-space non-rigid offsets added after LBS
    keypoints_3d: Float[Tensor, "N K 3"]
    keypoints_2d: Float[Tensor, "N K 2"]

    def __len__(self) -> int:
        return self.frame.shape[0]


@dataclass
class HumanVideo:
    """A synthetic human video: see the module docstring."""

    config: HumanVideoConfig
    model_name: str
    joint_names: list[str]
    shape: Float[Tensor, " S"]
    faces: Int[Tensor, "F 3"]
    vertex_colors: Float[Tensor, "V 3"]
    keypoint_ids: list[int]  # into MEDIAPIPE_POSE_LANDMARKS
    train: HumanFrames
    heldout_views: HumanFrames
    heldout_poses: HumanFrames

    def split(self, name: str) -> HumanFrames:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use {', '.join(SPLITS)}")
        return getattr(self, name)

    def posed_vertices(self, model: BodyModel, split: str = "train") -> Float[Tensor, "N V 3"]:
        """The exact ground-truth meshes of a split: LBS of the stored parameters + offsets."""
        f = self.split(split)
        out = model(f.pose.to(model.dtype), self.shape.to(model.dtype), f.transl.to(model.dtype))
        return out.vertices + f.offsets.to(model.dtype)


# ----------------------------------------------------------------------------- body


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + salt)


def _axes(rig: BodyRig, dtype) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.tensor(v, dtype=dtype) for v in (rig.left, rig.up, rig.forward))


def world_from_model(rig: BodyRig, heading_deg: float, dtype=torch.float64) -> Float[Tensor, "3 3"]:
    """Rotation taking the model's canonical axes to the world (Z up), the body facing
    ``heading_deg`` (0 = +X, 90 = +Y)."""
    left, up, fwd = _axes(rig, dtype)
    h = math.radians(heading_deg)
    f_w = torch.tensor([math.cos(h), math.sin(h), 0.0], dtype=dtype)
    u_w = torch.tensor([0.0, 0.0, 1.0], dtype=dtype)
    l_w = torch.linalg.cross(u_w, f_w)
    return torch.stack([l_w, u_w, f_w], -1) @ torch.stack([left, up, fwd], -1).T


def vertex_regions(model: BodyModel, shape: Tensor | None = None) -> Int[Tensor, " V"]:
    """Per-vertex body region (index into :data:`REGIONS`): the region of the nearest named
    ancestor (or itself) of the vertex's strongest joint; hair above 94 % of the height."""
    rig = body_rig(model)
    roles = rig.roles()
    joint_region = []
    for j in range(model.num_joints):
        k = j
        while k >= 0 and model.joint_names[k] not in roles:
            k = model.parents[k]
        role = roles.get(model.joint_names[k], "root") if k >= 0 else "root"
        role = role.removeprefix("left_").removeprefix("right_")
        joint_region.append(REGIONS.index(_ROLE_REGION[role]))
    v_c, _, weights = model.canonical(model._shape(shape))
    region = torch.tensor(joint_region)[weights.argmax(-1)]
    h = _height01(v_c, rig)
    return torch.where((region == 0) & (h > 0.94), REGIONS.index("hair"), region)


def _height01(v_c: Tensor, rig: BodyRig) -> Tensor:
    up = v_c @ torch.tensor(rig.up, dtype=v_c.dtype)
    return (up - up.min()) / (up.max() - up.min()).clamp_min(1e-9)


def vertex_colors(model: BodyModel, seed: int, shape: Tensor | None = None) -> Tensor:
    """Per-vertex albedo ``[V, 3]``: a seeded colour per region, horizontal 5 cm stripes on
    the shirt, 8 cm checks on the trousers, and a faint fine pattern on the skin."""
    rig = body_rig(model)
    left, up, fwd = _axes(rig, torch.float64)
    g = _gen(seed, 11)
    skin = torch.tensor([0.85, 0.65, 0.52]) * (0.75 + 0.25 * torch.rand(1, generator=g))
    shirt = torch.rand(2, 3, generator=g) * 0.7 + 0.15
    shirt[1] = 1.0 - shirt[0]  # contrasting stripe
    trousers = torch.rand(2, 3, generator=g) * 0.5 + 0.1
    trousers[1] = (trousers[0] + 0.35).clamp(max=1.0)
    palette = [
        skin,
        shirt[0],
        trousers[0],
        torch.tensor([0.12, 0.1, 0.1]),
        torch.tensor([0.2, 0.12, 0.06]),
    ]
    region = vertex_regions(model, shape)
    v_c = model.canonical(model._shape(shape))[0].double()
    x, y, z = v_c @ left, v_c @ up, v_c @ fwd
    col = torch.stack(palette)[region].clone()
    stripe = torch.sin(2 * math.pi * y / 0.05) > 0
    sel = (region == 1) & stripe
    col[sel] = shirt[1]
    check = (torch.sin(2 * math.pi * x / 0.08) * torch.sin(2 * math.pi * y / 0.08)) > 0
    sel = (region == 2) & check
    col[sel] = trousers[1]
    fine = 0.9 + 0.1 * torch.sin(2 * math.pi * (x + z) / 0.03).float()
    col[region == 0] = col[region == 0] * fine[region == 0, None]
    return col.clamp(0, 1).float()


def nonrigid_offsets(
    model: BodyModel,
    posed_vertices: Float[Tensor, "T V 3"],
    times: Float[Tensor, " T"],
    amplitude: float,
    seed: int,
    shape: Tensor | None = None,
) -> Float[Tensor, "T V 3"]:
    """Loose-clothing offsets along the posed vertex normals: clothed vertices ripple in a
    wave travelling up the body and around it (strongest about the hips, like a skirt),
    ``|offset| <= amplitude``. They depend on time and on position within a bone's region,
    so no pose of the body model reproduces them."""
    rig = body_rig(model)
    left, up, fwd = _axes(rig, posed_vertices.dtype)
    v_c, j_c, _ = model.canonical(model._shape(shape))
    v_c = v_c.to(posed_vertices.dtype)
    region = vertex_regions(model, shape)
    cloth = ((region == 1) | (region == 2)).to(v_c.dtype)
    h = _height01(v_c, rig)
    height = float((v_c @ up).max() - (v_c @ up).min())
    weight = cloth * (0.35 + 0.65 * torch.exp(-(((h - 0.45) / 0.12) ** 2)))
    rel = v_c - j_c[0].to(v_c.dtype)
    azimuth = torch.atan2(rel @ fwd, rel @ left)
    phase0 = float(torch.rand(1, generator=_gen(seed, 23))) * 2 * math.pi
    t = times.to(v_c.dtype)[:, None]
    wave = torch.sin(
        2 * math.pi * 1.3 * t + 2 * math.pi * h * height / 0.25 + 3.0 * azimuth + phase0
    )
    normals = torch.stack([vertex_normals(v, model.faces) for v in posed_vertices])
    return amplitude * (weight * wave)[..., None] * normals


# ----------------------------------------------------------------------------- rendering


def room_scene(cfg: HumanVideoConfig) -> Mesh:
    """The room: textured floor tiles, solid-noise walls and ceiling (scene structure)."""
    w, d, h = cfg.room
    return tile_room(room_mesh(w, d, h, seed=cfg.seed), ("floor",), 0.5, cfg.seed)


def person_mesh(vertices: Tensor, faces: Tensor, colors: Tensor) -> Mesh:
    """The posed person (object id 0) with per-vertex colours."""
    mat = Material(color=torch.ones(3), name="person")
    return Mesh(vertices.double(), faces, vertex_colors=colors, materials=[mat]).with_object_id(0)


@limit_threads
def render_person_in_room(
    person: Mesh,
    room: Mesh,
    cameras: Cameras,
    index: int,
    ssaa: int,
    shading: Shading | None = None,
    room_cache: dict | None = None,
    near: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Colour ``[H, W, 3]``, person mask (pixel centre) ``[H, W]``, coverage ``[H, W]`` and
    depth ``[H, W]`` of view ``index``: the person and the room cast separately and
    z-composited per supersample (the room's hits are cached per camera in ``room_cache``,
    so a static camera casts them once). Equal to ``render_view`` of the merged mesh."""
    shading = shading or Shading()
    view = RasterView.of(cameras, index)
    h, w, s = view.height, view.width, ssaa
    vv, uu = torch.meshgrid(
        (torch.arange(h * s, dtype=torch.float64) + 0.5) / s,
        (torch.arange(w * s, dtype=torch.float64) + 0.5) / s,
        indexing="ij",
    )
    xy = view.pixels_to_normalized(torch.stack([uu, vv], -1).reshape(-1, 2))
    cfw = cameras.cam_from_world[index]
    key = (cfw.double().numpy().tobytes(), view.params.numpy().tobytes(), w, h, s)
    cached = None if room_cache is None else room_cache.get(key)
    if cached is None:
        hr = cast_rays(camera_triangles(room, cfw), view, xy, near, grid_scale=s)
        col_r = torch.zeros(xy.shape[0], 3)
        hit = hr.face >= 0
        col_r[hit] = shade(room, hr.face[hit], hr.bary[hit], shading)
        cached = (col_r, torch.where(hit, hr.depth, torch.full_like(hr.depth, math.inf)))
        if room_cache is not None:
            room_cache[key] = cached
    col_r, dep_r = cached
    hp = cast_rays(camera_triangles(person, cfw), view, xy, near, grid_scale=s)
    on = (hp.face >= 0) & (hp.depth <= dep_r)  # ties: the person (lower face ids when merged)
    col = col_r.clone()
    if bool(on.any()):
        col[on] = shade(person, hp.face[on], hp.bary[on], shading)
    depth = torch.where(on, hp.depth, dep_r)
    depth = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
    c = s // 2
    on4 = on.reshape(h, s, w, s)
    return (
        col.reshape(h, s, w, s, 3).mean((1, 3)),
        on4[:, c, :, c],
        on4.float().mean((1, 3)),
        depth.reshape(h, s, w, s)[:, c, :, c].float(),
    )


def _pinhole(cfg: HumanVideoConfig, cam_from_world: Tensor) -> Cameras:
    n = cam_from_world.shape[0]
    f = cfg.size / 2 / math.tan(math.radians(cfg.fov_deg) / 2)
    params = torch.tensor([f, f, cfg.size / 2, cfg.size / 2], dtype=torch.float64)
    size = torch.full((n,), cfg.size, dtype=torch.long)
    return Cameras("PINHOLE", params.expand(n, 4).clone(), size, size.clone(), cam_from_world)


def _ring(target: Tensor, azimuth: Tensor, distance: float, height: float) -> Tensor:
    """``cam_from_world`` of cameras at ``height`` on circles round ``target`` looking at it."""
    eye = torch.stack(
        [
            target[:, 0] + distance * torch.cos(azimuth),
            target[:, 1] + distance * torch.sin(azimuth),
            torch.full_like(azimuth, height),
        ],
        -1,
    )
    return look_at(eye, target)


# ----------------------------------------------------------------------------- generator


def _check(cfg: HumanVideoConfig) -> None:
    if cfg.camera not in ("static", "orbit"):
        raise ValueError(f"camera must be 'static' or 'orbit', got {cfg.camera!r}")
    if cfg.ssaa < 1 or cfg.ssaa % 2 == 0:
        raise ValueError(f"ssaa must be an odd positive integer, got {cfg.ssaa}")
    if cfg.num_frames < 1 or cfg.heldout_frames < 0 or cfg.heldout_views < 0:
        raise ValueError("num_frames must be >= 1, heldout_frames and heldout_views >= 0")
    if cfg.heldout_stride < 1 or cfg.size < 4 or not 0 <= cfg.offset_amplitude < 0.2:
        raise ValueError("heldout_stride >= 1, size >= 4, 0 <= offset_amplitude < 0.2 needed")


def _timeline(model: BodyModel, cfg: HumanVideoConfig, shape: Tensor) -> Motion:
    """Training frames then the held-out-pose frames, one continuous motion."""
    t, hf = cfg.num_frames, cfg.heldout_frames
    if hf == 0 or cfg.heldout_motion == cfg.motion:
        return make_motion(model, cfg.motion, t + hf, cfg.fps, shape=shape)
    train = make_motion(model, cfg.motion, t, cfg.fps, shape=shape)
    return train.then(make_motion(model, cfg.heldout_motion, hf, cfg.fps, shape=shape))


@torch.no_grad()
def make_human_video(
    model: BodyModel, cfg: HumanVideoConfig | None = None, shape: Tensor | None = None
) -> HumanVideo:
    """Generate a synthetic human video (see the module docstring); deterministic in
    ``cfg.seed``. ``shape``: the subject (default: the model's default shape)."""
    cfg = cfg or HumanVideoConfig()
    _check(cfg)
    dt = model.dtype
    shape = model._shape(shape)
    rig = body_rig(model)
    motion = _timeline(model, cfg, shape)
    n_all = motion.num_frames
    r_wm = world_from_model(rig, cfg.heading_deg, dt)
    j0 = model.canonical_joints(shape)[0]
    rots = motion.rotations.clone()
    rots[:, 0] = r_wm @ rots[:, 0]
    pose = matrix_to_angle_axis(rots)  # the stored parameters; everything is posed from them
    transl = (r_wm @ j0 - j0) + motion.root_offset @ r_wm.T
    lbs = model(pose, shape, transl).vertices
    times = torch.arange(n_all, dtype=dt) / cfg.fps
    offsets = nonrigid_offsets(model, lbs, times, cfg.offset_amplitude, cfg.seed, shape)
    lift = 1e-3 - (lbs + offsets)[..., 2].amin(-1)  # lowest point 1 mm above the floor
    transl = transl + lift[:, None] * torch.tensor([0.0, 0.0, 1.0], dtype=dt)
    out = model(pose, shape, transl)
    verts = out.vertices + offsets
    kp3d, kp_ids = model.keypoints(out)
    centre = (verts.amin(1) + verts.amax(1)) / 2

    heading = math.radians(cfg.heading_deg)
    az0 = (
        heading
        + math.radians(50.0)
        + (float(torch.rand(1, generator=_gen(cfg.seed, 5))) - 0.5) * 0.35
    )
    t = cfg.num_frames
    k = torch.arange(n_all, dtype=torch.float64)
    c64 = centre.double()
    if cfg.camera == "static":
        target = c64[:t].mean(0).expand(n_all, 3)
        az = torch.full((n_all,), az0, dtype=torch.float64)
    else:
        target = c64
        az = az0 + math.radians(cfg.orbit_degrees) * k / t
    cams = _pinhole(cfg, _ring(target, az, cfg.distance, cfg.camera_height))
    hv_frames, hv_cfw = [], []
    for i in range(0, t, cfg.heldout_stride):
        for v in range(cfg.heldout_views):
            a = az[i] + 2 * math.pi * (v + 1) / (cfg.heldout_views + 1)
            hgt = cfg.camera_height + (0.7 if v % 2 == 0 else -0.6)
            hv_cfw.append(_ring(c64[i : i + 1], a.reshape(1), cfg.distance, hgt)[0])
            hv_frames.append(i)
    hv_cams = _pinhole(
        cfg, torch.stack(hv_cfw) if hv_cfw else torch.zeros(0, 3, 4, dtype=torch.float64)
    )
    w, d, _ = cfg.room
    for c in (cams, hv_cams):
        if len(c) and bool((c.centers[:, :2].abs() > torch.tensor([w / 2, d / 2]) - 0.2).any()):
            raise ValueError("a camera leaves the room: lower distance or enlarge cfg.room")

    room = room_scene(cfg)
    colors = vertex_colors(model, cfg.seed, shape)
    faces = model.faces
    cache: dict = {}
    proj = {}

    def render(frames: list[int], cameras: Cameras) -> HumanFrames:
        imgs, masks, alphas, depths, kp2 = [], [], [], [], []
        for n, f in enumerate(frames):
            person = person_mesh(verts[f], faces, colors)
            img, mask, alpha, depth = render_person_in_room(
                person, room, cameras, n, cfg.ssaa, room_cache=cache
            )
            imgs.append(img.permute(2, 0, 1))
            masks.append(mask)
            alphas.append(alpha)
            depths.append(depth)
            kp2.append(cameras[n].project(kp3d[f].double())[0][0])
        idx = torch.tensor(frames, dtype=torch.long)
        hw = (cfg.size, cfg.size)
        return HumanFrames(
            frame=idx,
            cameras=cameras,
            images=torch.stack(imgs) if imgs else torch.zeros(0, 3, *hw),
            masks=torch.stack(masks) if masks else torch.zeros(0, *hw, dtype=torch.bool),
            alpha=torch.stack(alphas) if alphas else torch.zeros(0, *hw),
            depth=torch.stack(depths) if depths else torch.zeros(0, *hw),
            pose=pose[idx],
            transl=transl[idx],
            offsets=offsets[idx],
            keypoints_3d=kp3d[idx],
            keypoints_2d=torch.stack(kp2)
            if kp2
            else torch.zeros(0, kp3d.shape[1], 2, dtype=torch.float64),
        )

    proj["train"] = render(list(range(t)), cams[list(range(t))])
    proj["heldout_views"] = render(hv_frames, hv_cams)
    ho = list(range(t, n_all))
    proj["heldout_poses"] = render(ho, cams[ho])
    return HumanVideo(
        config=cfg,
        model_name=model.name,
        joint_names=list(model.joint_names),
        shape=shape,
        faces=faces,
        vertex_colors=colors,
        keypoint_ids=kp_ids,
        **proj,
    )


# ----------------------------------------------------------------------------- folders


def _frames_meta(f: HumanFrames) -> dict:
    c = f.cameras
    return {
        "frame": f.frame.tolist(),
        "camera_model": c.model,
        "params": c.params.double().tolist(),
        "K": c.K.double().tolist(),
        "cam_from_world": c.cam_from_world.double().tolist(),
        "width": c.width.tolist(),
        "height": c.height.tolist(),
        "pose": f.pose.double().tolist(),
        "transl": f.transl.double().tolist(),
        "keypoints_3d": f.keypoints_3d.double().tolist(),
        "keypoints_2d": f.keypoints_2d.double().tolist(),
    }


def write_human_video(video: HumanVideo, folder: str | Path) -> Path:
    """Write ``video`` to a new (or empty) folder, atomically: ``<split>/images/*.png``,
    ``<split>/masks/*.png``, ``human_video.json`` (config, cameras with ``K`` and
    ``cam_from_world``, body parameters, keypoints) and ``arrays.npz`` (faces, vertex
    colours, offsets, coverage and depth per split). Refuses a non-empty folder."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder}: exists and is not an empty folder")
    meta = {
        "format": "sceneforge.human_video/1",
        "config": asdict(video.config),
        "model_name": video.model_name,
        "joint_names": video.joint_names,
        "shape": video.shape.double().tolist(),
        "keypoint_ids": video.keypoint_ids,
        "splits": {s: _frames_meta(video.split(s)) for s in SPLITS},
    }
    arrays = {"faces": video.faces.numpy(), "vertex_colors": video.vertex_colors.numpy()}
    with atomic_dir(folder) as tmp:
        for s in SPLITS:
            f = video.split(s)
            for i in range(len(f)):
                write_image_atomic(
                    tmp / s / "images" / f"{i:05d}.png", f.images[i].permute(1, 2, 0)
                )
                write_image_atomic(
                    tmp / s / "masks" / f"{i:05d}.png", f.masks[i].numpy().astype(np.uint8) * 255
                )
            arrays[f"{s}/offsets"] = f.offsets.numpy()
            arrays[f"{s}/alpha"] = f.alpha.numpy()
            arrays[f"{s}/depth"] = f.depth.numpy()
        with atomic_open(tmp / _ARRAYS, "wb") as fh:
            np.savez(fh, **arrays)
        atomic_write_json(tmp / _META, meta)
    return folder


def read_human_video(folder: str | Path) -> HumanVideo:
    """Read a folder written by :func:`write_human_video` (images as stored: 8-bit)."""
    folder = Path(folder)
    with open(folder / _META, encoding="utf-8") as fh:
        meta = json.load(fh)
    cfg_d = dict(meta["config"])
    cfg_d["room"] = tuple(cfg_d["room"])
    with np.load(folder / _ARRAYS) as z:
        arrays = {k: torch.from_numpy(z[k].copy()) for k in z.files}
    splits = {}
    for s in SPLITS:
        m = meta["splits"][s]
        n = len(m["frame"])

        def f64(key, *tail, m=m, n=n):
            return torch.tensor(m[key], dtype=torch.float64).reshape(n, *tail)

        cams = Cameras(
            m["camera_model"],
            f64("params", 4),
            torch.tensor(m["width"], dtype=torch.long),
            torch.tensor(m["height"], dtype=torch.long),
            f64("cam_from_world", 3, 4),
        )
        imgs = [
            read_image(folder / s / "images" / f"{i:05d}.png").permute(2, 0, 1) for i in range(n)
        ]
        masks = [read_mask(folder / s / "masks" / f"{i:05d}.png") for i in range(n)]
        hw = tuple(arrays[f"{s}/alpha"].shape[1:])
        nj, nk = len(meta["joint_names"]), len(meta["keypoint_ids"])
        splits[s] = HumanFrames(
            frame=torch.tensor(m["frame"], dtype=torch.long),
            cameras=cams,
            images=torch.stack(imgs) if imgs else torch.zeros(0, 3, *hw),
            masks=torch.stack(masks) if masks else torch.zeros(0, *hw, dtype=torch.bool),
            alpha=arrays[f"{s}/alpha"],
            depth=arrays[f"{s}/depth"],
            pose=f64("pose", nj, 3),
            transl=f64("transl", 3),
            offsets=arrays[f"{s}/offsets"],
            keypoints_3d=f64("keypoints_3d", nk, 3),
            keypoints_2d=f64("keypoints_2d", nk, 2),
        )
    return HumanVideo(
        config=HumanVideoConfig(**cfg_d),
        model_name=meta["model_name"],
        joint_names=list(meta["joint_names"]),
        shape=torch.tensor(meta["shape"], dtype=torch.float64),
        faces=arrays["faces"],
        vertex_colors=arrays["vertex_colors"],
        keypoint_ids=list(meta["keypoint_ids"]),
        **splits,
    )
