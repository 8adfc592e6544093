"""A generated street walk with exact ground truth: two rows of building facades (window
grids on a noisy wall, every window and building its own) along a straight or curving
street, and a camera walking down it, looking from one side of the street to the other.

Rendered by the same CPU ray caster and textures as :mod:`sceneforge.core.synthetic`
(:func:`~sceneforge.core.raster.render_view`, uv-mapped :class:`~sceneforge.core.meshes.Material`
textures for the facades, solid noise for the road and the buildings' side walls), and
returned as the same :class:`~sceneforge.core.scene.SceneData` (OpenCV ``cam_from_world``,
depths, face ids, sampled points and their exact observations), so that
:func:`~sceneforge.core.synthetic.pixel_correspondences` works on it.

World frame: +z up, metres. The street's centre line starts at the origin heading +x and turns
by ``turn_deg`` in total (a circular arc; 0 = straight) over the walk; the walk is
``step * (num_views - 1)`` long, so a longer capture is a longer street, not denser frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.meshes import Material, Mesh, grid_patch, limit_threads, merge_meshes
from sceneforge.core.raster import Shading
from sceneforge.core.scene import SceneData
from sceneforge.core.synthetic import look_at, make_cameras
from sceneforge.core.synthetic_truth import render_ground_truth


@dataclass
class StreetConfig:
    """A walk down a generated street (see the module notes)."""

    num_views: int = 60
    """Frames of the walk."""
    width: int = 480
    """Image width in pixels."""
    height: int = 360
    """Image height in pixels."""
    fov_deg: float = 70.0
    """Horizontal field of view."""
    step: float = 0.35
    """Metres walked between consecutive frames."""
    turn_deg: float = 0.0
    """Heading change of the street over the whole walk (0: straight)."""
    street_width: float = 12.0
    """Distance between the two rows of facades."""
    building_width: tuple[float, float] = (5.0, 11.0)
    """Range of a building's width along the street (metres)."""
    building_height: tuple[float, float] = (7.0, 16.0)
    """Range of a building's height (metres)."""
    building_depth: float = 6.0
    """Depth of the buildings' side walls, seen through the gaps between buildings."""
    max_gap: float = 2.0
    """Gaps between neighbouring buildings are drawn from ``[0, max_gap]`` metres."""
    texels_per_metre: int = 48
    """Facade texture resolution."""
    eye_height: float = 1.6
    """Camera height above the road."""
    sideways: float = 1.5
    """The walk weaves this far (metres) to either side of the centre line."""
    look_deg: float = 40.0
    """The view swings this far left and right of the walking direction."""
    look_period: float = 14.0
    """Metres walked per left-right swing of the view."""
    pitch_deg: float = 6.0
    """Camera pitch (up) towards the facades."""
    sky: tuple[float, float, float] = (0.62, 0.75, 0.9)
    """Background colour (the sky and the far end of the street)."""
    num_points: int = 2000
    """Surface points sampled for the ground-truth observations."""
    seed: int = 0
    """Seed of the buildings, their textures and the road."""


def _check(cfg: StreetConfig) -> None:
    if cfg.num_views < 2:
        raise ValueError(f"a street walk needs at least 2 views, got num_views={cfg.num_views}")
    if cfg.step <= 0 or cfg.street_width <= 2 * cfg.sideways:
        raise ValueError(
            f"need step > 0 and street_width > 2 * sideways, got step={cfg.step}, "
            f"street_width={cfg.street_width}, sideways={cfg.sideways}"
        )
    for name in ("building_width", "building_height"):
        lo, hi = getattr(cfg, name)
        if not 0 < lo <= hi:
            raise ValueError(f"{name} must be a range 0 < lo <= hi, got {(lo, hi)}")
    if cfg.texels_per_metre < 4:
        raise ValueError(f"texels_per_metre must be at least 4, got {cfg.texels_per_metre}")


def centre_line(
    s: Float[Tensor, " N"], length: float, turn_deg: float
) -> tuple[Float[Tensor, "N 2"], Float[Tensor, " N"]]:
    """Points and headings (radians) of the street's centre line at arc lengths ``s``: a
    circular arc turning by ``turn_deg`` over ``length`` (straight for 0), from the origin
    heading +x."""
    s = s.to(torch.float64)
    k = math.radians(turn_deg) / max(length, 1e-9)  # curvature
    heading = k * s
    if abs(k) < 1e-12:
        xy = torch.stack([s, torch.zeros_like(s)], -1)
    else:
        xy = torch.stack([torch.sin(heading) / k, (1 - torch.cos(heading)) / k], -1)
    return xy, heading


def _smooth_noise(gen: torch.Generator, h: int, w: int, cells: tuple[int, int]) -> Tensor:
    """``h x w x 3`` noise in [0, 1] from a ``cells`` lattice, bicubically upsampled."""
    lat = torch.rand(1, 3, max(cells[0], 2), max(cells[1], 2), generator=gen)
    img = F.interpolate(lat, size=(h, w), mode="bicubic", align_corners=True)
    return img[0].permute(1, 2, 0).clamp(0, 1)


def facade_texture(
    gen: torch.Generator, width_m: float, height_m: float, texels_per_metre: int
) -> Float[Tensor, "H W 3"]:
    """A facade (row 0 = top): a tinted wall with two scales of noise, a grid of framed
    windows (floors ~3 m, each pane its own glass shade and curtain noise) and a shop-front
    band on the ground floor. float32 RGB in [0, 1]."""
    tpm = texels_per_metre
    h, w = max(round(height_m * tpm), 8), max(round(width_m * tpm), 8)
    tint = 0.55 + 0.4 * torch.rand(3, generator=gen)
    coarse = _smooth_noise(gen, h, w, (round(height_m * 2), round(width_m * 2)))
    fine = _smooth_noise(gen, h, w, (round(height_m * 10), round(width_m * 10)))
    wall = tint * (0.55 + 0.3 * coarse.mean(-1, keepdim=True) + 0.3 * (fine - 0.5))
    z = (h - torch.arange(h, dtype=torch.float32) - 0.5)[:, None] / tpm  # metres up
    x = (torch.arange(w, dtype=torch.float32) + 0.5)[None, :] / tpm  # metres across
    floor_h = 2.8 + 0.6 * float(torch.rand(1, generator=gen))
    cols = max(1, round(width_m / (1.7 + 0.8 * float(torch.rand(1, generator=gen)))))
    pitch = width_m / cols
    win_w = pitch * (0.45 + 0.2 * float(torch.rand(1, generator=gen)))
    win_h = floor_h * (0.45 + 0.15 * float(torch.rand(1, generator=gen)))
    floors = math.ceil(height_m / floor_h) + 1
    fi = torch.floor(z / floor_h).long().expand(h, w)
    ci = torch.floor(x / pitch).long().clamp(max=cols - 1).expand(h, w)
    lx = (x - (ci + 0.5) * pitch).abs()  # distance from the window's centre line
    lz = z - fi * floor_h - 0.35 * floor_h  # height above the sill
    frame = 0.09
    inside = (lx < win_w / 2) & (lz > 0) & (lz < win_h) & (fi >= 1)
    framed = (lx < win_w / 2 + frame) & (lz > -frame) & (lz < win_h + frame) & (fi >= 1)
    glass = 0.08 + 0.3 * torch.rand(floors, cols, 3, generator=gen)
    curtain = _smooth_noise(gen, h, w, (round(height_m * 6), round(width_m * 6)))
    pane = glass[fi.clamp(max=floors - 1), ci] * (0.6 + 0.8 * curtain)
    pane = pane + 0.25 * (lz / win_h).clamp(0, 1)[..., None]  # sky reflection towards the top
    frame_col = 0.75 + 0.2 * torch.rand(3, generator=gen)
    img = torch.where(framed[..., None], frame_col.expand(h, w, 3), wall)
    img = torch.where(inside[..., None], pane, img)
    shop = (fi == 0) & (z > 0.4) & (z < floor_h * 0.8) & (lx < pitch * 0.42)
    shop_col = 0.2 + 0.7 * torch.rand(cols, 3, generator=gen)
    shop_img = shop_col[ci] * (0.5 + 0.9 * fine)
    img = torch.where(shop[..., None], shop_img, img)
    return img.clamp(0.03, 1.0).float().contiguous()


def _noise_material(gen: torch.Generator, tint, frequency: float, name: str) -> Material:
    seed = int(torch.randint(0, 2**30, (1,), generator=gen))
    color = torch.as_tensor(tint, dtype=torch.float32)
    return Material(color=color, noise_seed=seed, noise_frequency=frequency, name=name)


def street_mesh(cfg: StreetConfig) -> Mesh:
    """Road and two rows of buildings covering the walk and ``3 * street_width`` beyond each
    end (a view along the street sees buildings, not the street's end). Building ``b`` has
    object id ``b``; the road is structure (-1)."""
    _check(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    length = cfg.step * (cfg.num_views - 1)
    margin = 3 * cfg.street_width
    half = cfg.street_width / 2
    parts: list[Mesh] = []
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)

    def frame_at(s: float) -> tuple[Tensor, Tensor, Tensor]:
        xy, th = centre_line(torch.tensor([s]), length, cfg.turn_deg)
        p = torch.cat([xy[0], torch.zeros(1, dtype=torch.float64)])
        t = torch.tensor([math.cos(th[0]), math.sin(th[0]), 0.0], dtype=torch.float64)
        n = torch.tensor([-math.sin(th[0]), math.cos(th[0]), 0.0], dtype=torch.float64)
        return p, t, n

    # the road: one noise patch per ~8 m, so that no noise lattice spans the whole walk
    s, seg = -margin, 8.0
    while s < length + margin:
        p, t, n = frame_at(s + seg / 2)
        origin = p - t * seg / 2 - n * (half + 0.5)
        mat = _noise_material(gen, (0.55, 0.55, 0.58), 2.0, "road")
        cells = max(1, round(seg / 2))
        parts.append(grid_patch(origin, t * seg, n * (2 * half + 1), cells, cells, mat))
        s += seg
    building = 0
    for side in (1.0, -1.0):
        s = -margin + float(torch.rand(1, generator=gen)) * cfg.max_gap
        while s < length + margin:
            w = cfg.building_width[0] + float(torch.rand(1, generator=gen)) * (
                cfg.building_width[1] - cfg.building_width[0]
            )
            hgt = cfg.building_height[0] + float(torch.rand(1, generator=gen)) * (
                cfg.building_height[1] - cfg.building_height[0]
            )
            p, t, n = frame_at(s + w / 2)
            out = n * side  # away from the street
            corner = p + out * half - t * w / 2  # facade's bottom corner (walk's start side)
            tex = facade_texture(gen, w, hgt, cfg.texels_per_metre)
            facade = Material(texture=tex, name=f"facade:{building}")
            cu, cv = max(1, math.ceil(w)), max(1, math.ceil(hgt))
            pieces = [grid_patch(corner, t * w, ez * hgt, cu, cv, facade)]
            tint = (0.6 + 0.35 * torch.rand(3, generator=gen)).tolist()
            wall = _noise_material(gen, tint, 1.5, f"side:{building}")
            cd = max(1, math.ceil(cfg.building_depth))
            for end in (corner, corner + t * w):  # side walls, seen through the gaps
                pieces.append(grid_patch(end, out * cfg.building_depth, ez * hgt, cd, cv, wall))
            parts += [m.with_object_id(building) for m in pieces]
            building += 1
            s += w + float(torch.rand(1, generator=gen)) * cfg.max_gap
    return merge_meshes(parts)


def street_cameras(cfg: StreetConfig) -> Float[Tensor, "N 3 4"]:
    """``cam_from_world`` of the walk: ``step`` metres apart along the centre line, weaving
    ``sideways`` metres to either side, the view swinging ``look_deg`` left and right."""
    _check(cfg)
    length = cfg.step * (cfg.num_views - 1)
    s = torch.arange(cfg.num_views, dtype=torch.float64) * cfg.step
    xy, heading = centre_line(s, length, cfg.turn_deg)
    normal = torch.stack([-torch.sin(heading), torch.cos(heading)], -1)
    weave = cfg.sideways * torch.sin(2 * math.pi * s / (2.3 * cfg.look_period))
    bob = 0.03 * torch.sin(2 * math.pi * s / 0.7)  # footsteps
    eye = torch.cat([xy + weave[:, None] * normal, (cfg.eye_height + bob)[:, None]], -1)
    yaw = heading + math.radians(cfg.look_deg) * torch.sin(2 * math.pi * s / cfg.look_period)
    pitch = torch.full_like(s, math.radians(cfg.pitch_deg))
    look = torch.stack(
        [torch.cos(pitch) * torch.cos(yaw), torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch)],
        -1,
    )
    return look_at(eye, eye + look)


@limit_threads
def make_street(cfg: StreetConfig | None = None) -> SceneData:
    """Render the street walk of ``cfg`` with exact ground truth (as
    :func:`sceneforge.core.synthetic.make_scene`; images named ``view_NNN.png`` in walking
    order, zero-padded to at least 3 digits)."""
    cfg = cfg or StreetConfig()
    mesh = street_mesh(cfg)
    cameras = make_cameras(street_cameras(cfg), cfg.width, cfg.height, cfg.fov_deg)
    extra = {"rig": "street", "config": asdict(cfg)}
    extra["mask_semantics"] = "True where the pixel-centre ray hits a building"
    return render_ground_truth(
        mesh, cameras, 1e-2, Shading(), cfg.sky, cfg.num_points, cfg.seed, extra
    )


__all__ = ["StreetConfig", "centre_line", "facade_texture", "make_street", "street_cameras"]
