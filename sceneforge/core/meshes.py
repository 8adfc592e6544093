"""Triangle meshes for synthetic scenes: loading (obj/ply/glb/dae), procedural primitives,
materials (image textures, vertex colours, seeded solid-noise textures) and merging.

Untextured meshes get a *solid* (3D) noise texture evaluated at each surface point's
object-space position, so the pattern is view-independent and feature detectors find
stable features on every surface. Meshes from files are rotated so +z is up when they
are y-up (the usual obj/glTF/collada convention).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

#: Smallest texture side accepted as a real texture (trimesh invents 2x2 placeholders).
_MIN_TEXTURE_SIDE = 8


#: torch intra-op threads inside the renderer's public functions (0 = leave torch's setting).
#: The rasterizer runs many mid-sized ops; on a busy 2-core machine one thread measured ~5x
#: faster than two (the threads wait on each other more than they help).
RENDER_THREADS = 1


def limit_threads(fn):
    """Run ``fn`` with :data:`RENDER_THREADS` torch threads, restoring the setting after."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = RENDER_THREADS
        old = torch.get_num_threads()
        if n > 0 and n != old:
            torch.set_num_threads(n)
        try:
            return fn(*args, **kwargs)
        finally:
            if n > 0 and n != old:
                torch.set_num_threads(old)

    return wrapper


class MeshLoadError(ValueError):
    """A mesh file that cannot be turned into a :class:`Mesh`; the message names the file."""


@dataclass
class Material:
    """Surface albedo = ``color`` x (texture at uv | solid noise at object position | 1).

    Attributes:
        color: ``(3,)`` RGB factor in [0, 1].
        texture: ``(H, W, 3)`` float32 image in [0, 1] sampled at the vertex uv (v up), or None.
        noise_seed: seed of a solid-noise texture (used when ``texture`` is None), or None.
        noise_frequency: lattice cells per object unit of the coarsest noise octave.
        name: for messages.
    """

    color: Float[Tensor, "3"] = field(default_factory=lambda: torch.ones(3))
    texture: Float[Tensor, "H W 3"] | None = None
    noise_seed: int | None = None
    noise_frequency: float = 3.0
    name: str = ""


@dataclass
class Mesh:
    """A triangle mesh with per-face materials.

    Attributes:
        vertices: ``(V, 3)`` float64 positions.
        faces: ``(F, 3)`` int64 vertex indices.
        uv: ``(V, 2)`` texture coordinates (v up, OBJ convention), or None.
        vertex_colors: ``(V, 3)`` float RGB in [0, 1] multiplying the albedo, or None.
        solid_coords: ``(V, 3)`` object-space coordinates where solid noise is evaluated
            (fixed at creation so moving the mesh keeps its pattern), or None (= vertices).
        face_material: ``(F,)`` index into ``materials``.
        materials: the materials.
        face_object: ``(F,)`` object id per face: >= 0 for objects of interest (they make
            the object masks), -1 for scene structure (ground, walls).
    """

    vertices: Float[Tensor, "V 3"]
    faces: Int[Tensor, "F 3"]
    uv: Float[Tensor, "V 2"] | None = None
    vertex_colors: Float[Tensor, "V 3"] | None = None
    solid_coords: Float[Tensor, "V 3"] | None = None
    face_material: Int[Tensor, " F"] | None = None
    materials: list[Material] = field(default_factory=list)
    face_object: Int[Tensor, " F"] | None = None
    _noise_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.vertices = torch.as_tensor(self.vertices, dtype=torch.float64)
        self.faces = torch.as_tensor(self.faces, dtype=torch.long)
        nv, nf = self.vertices.shape[0], self.faces.shape[0]
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must be (V, 3), got {tuple(self.vertices.shape)}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {tuple(self.faces.shape)}")
        if nf and (int(self.faces.min()) < 0 or int(self.faces.max()) >= nv):
            raise ValueError(f"face indices out of range for {nv} vertices")
        if not self.materials:
            self.materials = [Material()]
        if self.face_material is None:
            self.face_material = torch.zeros(nf, dtype=torch.long)
        if self.face_object is None:
            self.face_object = torch.zeros(nf, dtype=torch.long)
        for name, arr, cols in (
            ("uv", self.uv, 2),
            ("vertex_colors", self.vertex_colors, 3),
            ("solid_coords", self.solid_coords, 3),
        ):
            if arr is not None and tuple(arr.shape) != (nv, cols):
                raise ValueError(f"{name} must be ({nv}, {cols}), got {tuple(arr.shape)}")

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    def transformed(
        self, rotation: Float[Tensor, "3 3"] | None = None, translation=None, scale: float = 1.0
    ) -> Mesh:
        """The mesh with vertices ``scale * R v + t`` (solid texture coordinates unchanged)."""
        v = self.vertices * scale
        if rotation is not None:
            v = v @ torch.as_tensor(rotation, dtype=torch.float64).T
        if translation is not None:
            v = v + torch.as_tensor(translation, dtype=torch.float64)
        return replace(self, vertices=v, solid_coords=self.solid_texture_coords())

    def solid_texture_coords(self) -> Float[Tensor, "V 3"]:
        return self.vertices.clone() if self.solid_coords is None else self.solid_coords

    def noise_lattice(self, material_index: int) -> NoiseLattice:
        """Tabulated solid noise of a noise material over its faces' solid coordinates
        (cached: rendering many views evaluates it once)."""
        lat = self._noise_cache.get(material_index)
        if lat is None:
            mat = self.materials[material_index]
            if mat.noise_seed is None:
                raise ValueError(f"material {material_index} has no solid-noise texture")
            faces = self.faces[self.face_material == material_index].reshape(-1)
            p = self.solid_texture_coords()[faces]
            lat = noise_lattice(
                p.min(0).values, p.max(0).values, mat.noise_seed, mat.noise_frequency
            )
            self._noise_cache[material_index] = lat
        return lat

    def normalized(self) -> Mesh:
        """Centre the bounding box at the origin and scale its largest side to 1."""
        lo, hi = self.vertices.min(0).values, self.vertices.max(0).values
        extent = float((hi - lo).max())
        if extent <= 0:
            raise ValueError("cannot normalise a mesh with zero extent")
        return self.transformed(translation=-(lo + hi) / 2 / extent, scale=1.0 / extent)

    def with_object_id(self, object_id: int) -> Mesh:
        return replace(self, face_object=torch.full((self.num_faces,), object_id, dtype=torch.long))

    def bounds(self) -> tuple[Tensor, Tensor]:
        return self.vertices.min(0).values, self.vertices.max(0).values


def merge_meshes(meshes: list[Mesh]) -> Mesh:
    """Concatenate meshes (materials, object ids and optional attributes are kept)."""
    if not meshes:
        raise ValueError("merge_meshes needs at least one mesh")
    verts, faces, uvs, cols, solid, fmat, fobj, mats = [], [], [], [], [], [], [], []
    any_uv = any(m.uv is not None for m in meshes)
    any_col = any(m.vertex_colors is not None for m in meshes)
    vo = 0
    for m in meshes:
        nv = m.vertices.shape[0]
        verts.append(m.vertices)
        faces.append(m.faces + vo)
        if any_uv:
            uvs.append(
                m.uv.double() if m.uv is not None else torch.zeros(nv, 2, dtype=torch.float64)
            )
        if any_col:
            cols.append(
                m.vertex_colors.float()
                if m.vertex_colors is not None
                else torch.ones(nv, 3, dtype=torch.float32)
            )
        solid.append(m.solid_texture_coords())
        fmat.append(m.face_material + len(mats))
        fobj.append(m.face_object)
        mats.extend(m.materials)
        vo += nv
    return Mesh(
        vertices=torch.cat(verts),
        faces=torch.cat(faces),
        uv=torch.cat(uvs) if any_uv else None,
        vertex_colors=torch.cat(cols) if any_col else None,
        solid_coords=torch.cat(solid),
        face_material=torch.cat(fmat),
        materials=mats,
        face_object=torch.cat(fobj),
    )


# ----------------------------------------------------------------------------- solid noise


_HASH_MASK = 0xFFFFFFFF


def _hash_lattice(ijk: Int[Tensor, "N 3"], seed: int) -> Float[Tensor, "N 3"]:
    """Deterministic pseudo-random RGB in [0, 1) at integer lattice points (32-bit mixing)."""
    h = (ijk[:, 0] * 73856093) ^ (ijk[:, 1] * 19349663) ^ (ijk[:, 2] * 83492791)
    h = (h ^ (int(seed) * 2654435761)) & _HASH_MASK
    chans = []
    for c in range(3):
        x = (h + c * 0x9E3779B9) & _HASH_MASK
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _HASH_MASK
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _HASH_MASK
        x = x ^ (x >> 16)
        chans.append((x & 0xFFFFFF).float() / float(1 << 24))
    return torch.stack(chans, -1)


def _trilinear(values: Tensor, dims: tuple[int, int, int], q: Tensor, smooth: bool) -> Tensor:
    """Interpolate a dense lattice ``values`` ((nx*ny*nz), 3) at lattice coordinates ``q``."""
    nx, ny, nz = dims
    i0 = torch.floor(q)
    f = (q - i0).float()
    if smooth:
        f = f * f * (3.0 - 2.0 * f)
    i0 = i0.long()
    i0 = torch.stack(
        [i0[:, 0].clamp(0, nx - 2), i0[:, 1].clamp(0, ny - 2), i0[:, 2].clamp(0, nz - 2)], -1
    )
    out = torch.zeros(q.shape[0], values.shape[1], dtype=values.dtype)
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1.0 - f[:, 0]
        for dy in (0, 1):
            wxy = wx * (f[:, 1] if dy else 1.0 - f[:, 1])
            for dz in (0, 1):
                w = wxy * (f[:, 2] if dz else 1.0 - f[:, 2])
                idx = ((i0[:, 0] + dx) * ny + (i0[:, 1] + dy)) * nz + (i0[:, 2] + dz)
                out += w[:, None] * values[idx]
    return out


@dataclass
class NoiseLattice:
    """Summed noise octaves sampled on the finest lattice over a box; see :func:`solid_noise`."""

    values: Float[Tensor, "L 3"]
    dims: tuple[int, int, int]
    origin: Float[Tensor, "3"]
    fine: float

    def lookup(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        q = points.to(torch.float64) * self.fine - self.origin
        return _trilinear(self.values, self.dims, q, smooth=False)


@limit_threads
def noise_lattice(
    lo: Float[Tensor, "3"], hi: Float[Tensor, "3"], seed: int, frequency: float, octaves: int = 4
) -> NoiseLattice:
    """The multi-octave noise of :func:`solid_noise` tabulated over the box ``[lo, hi]``.

    Octave ``o`` hashes its own integer lattice (``2**(octaves-1-o)`` fine cells per cell)
    and is upsampled trilinearly onto the fine lattice; values depend only on global
    lattice indices, so any box gives the same noise where boxes overlap.
    """
    fine = frequency * 2.0 ** (octaves - 1)
    lo_i = (torch.floor(lo.to(torch.float64) * fine) - 1).long()
    hi_i = (torch.floor(hi.to(torch.float64) * fine) + 2).long()
    dims = tuple(int(x) for x in (hi_i - lo_i + 1).tolist())
    acc = torch.zeros(3, *dims)
    total = 0.0
    for o in range(octaves):
        step = 2 ** (octaves - 1 - o)  # fine cells per cell of octave o
        shift = 1000 * (o + 1) * step  # decorrelates octaves (in fine cells)
        c0 = torch.div(lo_i + shift, step, rounding_mode="floor")
        c1 = torch.div(hi_i + shift, step, rounding_mode="floor") + 1
        cdims = tuple(int(x) for x in (c1 - c0 + 1).tolist())
        cax = [torch.arange(int(c0[a]), int(c0[a]) + cdims[a]) for a in range(3)]
        cgrid = torch.stack(torch.meshgrid(*cax, indexing="ij"), -1).reshape(-1, 3)
        vals = _hash_lattice(cgrid, seed + 31 * o).T.reshape(1, 3, *cdims)
        if step > 1:
            out_size = tuple((n - 1) * step + 1 for n in cdims)
            vals = F.interpolate(vals, size=out_size, mode="trilinear", align_corners=True)
        off = (lo_i + shift - c0 * step).tolist()  # fine index lo_i sits here in vals
        vals = vals[
            0, :, off[0] : off[0] + dims[0], off[1] : off[1] + dims[1], off[2] : off[2] + dims[2]
        ]
        amp = 0.9**o
        acc += amp * vals
        total += amp
    acc = (acc / total).reshape(3, -1).T
    # strong luminance contrast (what feature detectors see) plus moderate colour
    lum = acc.mean(-1, keepdim=True)
    mixed = (0.5 + 4.5 * (lum - 0.5) + 1.6 * (acc - lum)).clamp(0.0, 1.0)
    return NoiseLattice(0.12 + 0.88 * mixed, dims, lo_i.to(torch.float64), fine)


def solid_noise(
    points: Float[Tensor, "N 3"], seed: int, frequency: float = 3.0, octaves: int = 4
) -> Float[Tensor, "N 3"]:
    """Seeded multi-octave RGB value noise at 3D ``points``, contrast-stretched to [0, 1].

    Octave ``o`` has ``frequency * 2**o`` cells per unit with values hashed from integer
    lattice coordinates; the octaves are summed on the finest lattice, then interpolated.
    Deterministic and view independent: a point's colour does not depend on the box the
    lattice was tabulated over, nor on the other points queried with it.
    """
    if points.shape[0] == 0:
        return torch.zeros(0, 3)
    p = points.to(torch.float64)
    return noise_lattice(p.min(0).values, p.max(0).values, seed, frequency, octaves).lookup(p)


# ----------------------------------------------------------------------------- primitives


def _noise_material(seed: int, frequency: float, tint=None, name: str = "") -> Material:
    color = torch.ones(3) if tint is None else torch.as_tensor(tint, dtype=torch.float32)
    return Material(color=color, noise_seed=int(seed), noise_frequency=frequency, name=name)


def grid_patch(
    origin, axis_u, axis_v, nu: int, nv: int, material: Material, object_id: int = -1
) -> Mesh:
    """A planar ``nu x nv`` cell grid spanning ``origin + s axis_u + t axis_v``, s, t in [0, 1]."""
    o = torch.as_tensor(origin, dtype=torch.float64)
    a = torch.as_tensor(axis_u, dtype=torch.float64)
    b = torch.as_tensor(axis_v, dtype=torch.float64)
    s = torch.linspace(0, 1, nu + 1, dtype=torch.float64)
    t = torch.linspace(0, 1, nv + 1, dtype=torch.float64)
    ss, tt = torch.meshgrid(s, t, indexing="ij")
    verts = o + ss.reshape(-1, 1) * a + tt.reshape(-1, 1) * b
    idx = torch.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    v00, v10, v01, v11 = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    faces = torch.cat(
        [
            torch.stack([v00, v10, v11], -1).reshape(-1, 3),
            torch.stack([v00, v11, v01], -1).reshape(-1, 3),
        ]
    )
    uv = torch.stack([ss.reshape(-1), tt.reshape(-1)], -1)
    return Mesh(verts, faces, uv=uv, materials=[material]).with_object_id(object_id)


def box_mesh(
    size=(1.0, 1.0, 1.0), seed: int = 0, frequency: float = 3.0, subdivisions: int = 4, tint=None
) -> Mesh:
    """An axis-aligned box centred at the origin with a solid-noise texture (flat faces)."""
    sx, sy, sz = (float(x) for x in size)
    h = torch.tensor([sx, sy, sz], dtype=torch.float64) / 2
    mat = _noise_material(seed, frequency, tint, "box")
    n = subdivisions
    ex, ey, ez = torch.eye(3, dtype=torch.float64) * torch.tensor([sx, sy, sz], dtype=torch.float64)
    patches = [
        grid_patch(-h, ey, ex, n, n, mat),  # bottom (z-)
        grid_patch(-h + ez, ex, ey, n, n, mat),  # top
        grid_patch(-h, ex, ez, n, n, mat),  # y-
        grid_patch(-h + ey, ez, ex, n, n, mat),  # y+
        grid_patch(-h, ez, ey, n, n, mat),  # x-
        grid_patch(-h + ex, ey, ez, n, n, mat),  # x+
    ]
    m = merge_meshes(patches)
    return replace(m, materials=[mat], face_material=torch.zeros(m.num_faces, dtype=torch.long))


def sphere_mesh(
    radius: float = 0.5, seed: int = 0, frequency: float = 3.0, segments: int = 24, tint=None
) -> Mesh:
    """A latitude-longitude sphere centred at the origin with a solid-noise texture."""
    mat = _noise_material(seed, frequency, tint, "sphere")
    rings = max(segments // 2, 2)
    th = torch.linspace(0, math.pi, rings + 1, dtype=torch.float64)[1:-1]
    ph = torch.arange(segments, dtype=torch.float64) * (2 * math.pi / segments)
    tt, pp = torch.meshgrid(th, ph, indexing="ij")
    body = torch.stack([tt.sin() * pp.cos(), tt.sin() * pp.sin(), tt.cos()], -1).reshape(-1, 3)
    poles = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    verts = torch.cat([body, poles]) * radius
    top, bottom = body.shape[0], body.shape[0] + 1
    idx = torch.arange(body.shape[0]).reshape(rings - 1, segments)
    nxt = torch.roll(idx, -1, dims=1)
    quads = [
        torch.stack([idx[:-1], idx[1:], nxt[1:]], -1).reshape(-1, 3),
        torch.stack([idx[:-1], nxt[1:], nxt[:-1]], -1).reshape(-1, 3),
        torch.stack([torch.full_like(idx[0], top), idx[0], nxt[0]], -1),
        torch.stack([torch.full_like(idx[-1], bottom), nxt[-1], idx[-1]], -1),
    ]
    return Mesh(verts, torch.cat(quads), materials=[mat])


def plane_mesh(
    size: float = 4.0, z: float = 0.0, seed: int = 0, frequency: float = 4.0, cells: int = 16
) -> Mesh:
    """A square ground plane at height ``z`` (scene structure, object id -1)."""
    mat = _noise_material(seed, frequency, (0.85, 0.8, 0.75), "ground")
    return grid_patch((-size / 2, -size / 2, z), (size, 0, 0), (0, size, 0), cells, cells, mat)


def room_mesh(
    width: float = 6.0,
    depth: float = 5.0,
    height: float = 2.8,
    seed: int = 0,
    frequency: float = 3.0,
    cell: float = 0.25,
) -> Mesh:
    """Floor, ceiling and four walls of a room centred on the origin, floor at z = 0."""
    w, d, h = width / 2, depth / 2, height
    nw, nd, nh = (max(1, math.ceil(x / cell)) for x in (width, depth, height))
    surfaces = [
        ((-w, -d, 0), (width, 0, 0), (0, depth, 0), nw, nd, (0.8, 0.75, 0.7)),  # floor
        ((-w, -d, h), (0, depth, 0), (width, 0, 0), nd, nw, (0.9, 0.9, 0.95)),  # ceiling
        ((-w, -d, 0), (0, 0, h), (width, 0, 0), nh, nw, (0.95, 0.85, 0.8)),  # y- wall
        ((-w, d, 0), (width, 0, 0), (0, 0, h), nw, nh, (0.8, 0.9, 0.85)),  # y+ wall
        ((-w, -d, 0), (0, depth, 0), (0, 0, h), nd, nh, (0.85, 0.85, 0.95)),  # x- wall
        ((w, -d, 0), (0, 0, h), (0, depth, 0), nh, nd, (0.95, 0.95, 0.8)),  # x+ wall
    ]
    parts = [
        grid_patch(o, a, b, nu, nv, _noise_material(seed + 101 * i, frequency, tint, "room"))
        for i, (o, a, b, nu, nv, tint) in enumerate(surfaces)
    ]
    return merge_meshes(parts)


# ----------------------------------------------------------------------------- loading

_Y_UP_TO_Z_UP = torch.tensor(
    [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64
)


def _material_image(material) -> np.ndarray | None:
    img = getattr(material, "baseColorTexture", None)
    if img is None:
        img = getattr(material, "image", None)
    if img is None:
        return None
    if min(img.size) < _MIN_TEXTURE_SIDE:
        return None
    return np.asarray(img.convert("RGB"))


def _material_color(material) -> np.ndarray:
    factor = getattr(material, "baseColorFactor", None)
    if factor is not None:
        return np.asarray(factor, dtype=np.float64)[:3] / 255.0
    return np.ones(3)


def load_mesh(
    path: str | Path,
    *,
    normalize: bool = True,
    up_axis: str = "y",
    seed: int = 0,
    noise_frequency: float = 5.0,
) -> Mesh:
    """Load an obj (+mtl), ply, glb/gltf or dae file into one :class:`Mesh` (object id 0).

    Textures come from the materials (obj ``map_Kd``, glTF base colour, collada diffuse);
    parts with no usable texture and no varying vertex colours get a seeded solid-noise
    texture. With ``normalize`` the bounding box is centred and its largest side is 1;
    ``up_axis="y"`` rotates y-up files so that +z is up (``"z"`` leaves them).
    """
    path = Path(path)
    if not path.is_file():
        raise MeshLoadError(f"{path}: mesh file not found")
    if up_axis not in ("y", "z"):
        raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")
    try:
        import trimesh
    except ImportError as e:  # pragma: no cover - trimesh is a core dependency
        raise ImportError("loading meshes needs trimesh: pip install trimesh pycollada") from e
    try:
        loaded = trimesh.load(str(path), process=False)
    except ImportError as e:
        raise ImportError(f"{path}: loading this format needs an extra package ({e})") from e
    except (ValueError, KeyError, IndexError, OSError) as e:
        raise MeshLoadError(f"{path}: cannot read mesh ({type(e).__name__}: {e})") from e
    if isinstance(loaded, trimesh.Scene):
        parts = []
        for node in loaded.graph.nodes_geometry:
            transform, geom_name = loaded.graph[node]
            geom = loaded.geometry[geom_name]
            if isinstance(geom, trimesh.Trimesh):
                parts.append((np.asarray(transform, dtype=np.float64), geom))
    elif isinstance(loaded, trimesh.Trimesh):
        parts = [(np.eye(4), loaded)]
    else:
        raise MeshLoadError(f"{path}: holds no triangle mesh (got {type(loaded).__name__})")
    if not parts or sum(len(g.faces) for _, g in parts) == 0:
        raise MeshLoadError(f"{path}: holds no triangles")

    meshes = []
    for k, (transform, geom) in enumerate(parts):
        v = np.asarray(geom.vertices, dtype=np.float64) @ transform[:3, :3].T + transform[:3, 3]
        f = np.asarray(geom.faces, dtype=np.int64)
        visual = geom.visual
        uv = getattr(visual, "uv", None)
        material = getattr(visual, "material", None)
        image = _material_image(material) if material is not None else None
        good_uv = (
            uv is not None and len(uv) == len(v) and np.ptp(np.asarray(uv), axis=0).min() > 1e-6
        )
        vcols = None
        if image is not None and good_uv:
            mat = Material(
                color=torch.as_tensor(_material_color(material), dtype=torch.float32),
                texture=torch.from_numpy(image.astype(np.float32) / 255.0),
                name=f"{path.name}:{getattr(material, 'name', k)}",
            )
            uv_t = torch.as_tensor(np.asarray(uv, dtype=np.float64))
        else:
            uv_t = None
            if getattr(visual, "kind", None) == "vertex":
                c = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
                if np.ptp(c, axis=0).max() > 0.05:
                    vcols = torch.as_tensor(c, dtype=torch.float32)
            tint = _material_color(material) if material is not None else None
            mat = Material(
                color=torch.ones(3)
                if vcols is not None
                else torch.as_tensor(tint if tint is not None else np.ones(3), dtype=torch.float32),
                noise_seed=None if vcols is not None else seed + 7919 * k,
                noise_frequency=noise_frequency,
                name=f"{path.name}:procedural{k}",
            )
        meshes.append(
            Mesh(
                torch.from_numpy(v),
                torch.from_numpy(f),
                uv=uv_t,
                vertex_colors=vcols,
                materials=[mat],
            )
        )
    mesh = merge_meshes(meshes)
    if not torch.isfinite(mesh.vertices).all():
        raise MeshLoadError(f"{path}: non-finite vertex coordinates")
    if up_axis == "y":
        mesh = replace(mesh, vertices=mesh.vertices @ _Y_UP_TO_Z_UP.T, solid_coords=None)
    lo, hi = mesh.bounds()
    extent = float((hi - lo).max())
    if extent <= 0:
        raise MeshLoadError(f"{path}: all vertices coincide")
    # Solid noise lives in the unit-box frame of the object, whatever its file units.
    mesh = replace(mesh, solid_coords=(mesh.vertices - (lo + hi) / 2) / extent)
    if normalize:
        mesh = mesh.normalized()
    return mesh.with_object_id(0)
