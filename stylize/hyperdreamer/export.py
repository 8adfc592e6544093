"""GLB export of a mesh with its spatially varying PBR materials, and the reload.

Materials are a per-face-corner field (:class:`CornerMaterials`: albedo, roughness, specular,
optional metallic; ``(F, 3, C)`` values interpolated barycentrically, as in :mod:`.edit`).
They are baked into a texture atlas of one square cell per face (:func:`face_atlas`, a
simple stand-in for an ``xatlas`` unwrap, which is not installed): each face's corners sit on
texel centres of its cell ``padding`` texels inside the cell border, and every texel of the
cell (padding included) holds the face's values extrapolated linearly. A field that is linear
inside each face is therefore reproduced exactly by bilinear texture lookups at any point of
the face (up to 8-bit quantisation and clamping to [0, 1]), and the padding keeps
neighbouring cells from bleeding into each other at the first mip levels.

glTF conventions (2.0, metallic-roughness):

- ``baseColorTexture`` = albedo, sRGB-encoded as glTF requires (our albedo is linear);
- ``metallicRoughnessTexture`` RGBA: G = roughness, B = metallic (0 when the field has none),
  as glTF reads them; R is unused (255); A = specular F0;
- specular (our dielectric F0) is not representable in core glTF (which fixes F0 = 0.04): it
  is written with ``KHR_materials_specular`` as ``specularTexture`` (its A channel, the same
  image) with ``specularColorFactor = 1 / 0.04`` and ``specularFactor = 1``, so that the
  extension's ``F0 = min(0.04 * specularColorFactor, 1) * specularFactor * A = A``; viewers
  without the extension show F0 = 0.04;
- y-up: the world here is +z up, so vertices and normals are rotated z-up -> y-up on export
  (the inverse of :func:`sceneforge.core.meshes.load_mesh`'s rotation) and back on reload;
- each face gets its own three vertices (the atlas splits them) with the original smooth
  vertex normals exported, so the reloaded surface shades like the original.

:func:`export_glb` never overwrites: it writes ``NAME.glb``, else ``NAME.v002.glb``, ...
(hard link of a finished temporary file, as :func:`sceneforge.core.atomic.write_json_versioned`).
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sceneforge.core.atomic import write_bytes_versioned
from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh
from sceneforge.core.raster import sample_texture, vertex_normals
from sceneforge.stylize.hyperdreamer.brdf import BRDFInputs, normalize
from sceneforge.stylize.hyperdreamer.edit import view_buffers
from sceneforge.stylize.hyperdreamer.envlight import SplitSumConfig, prefilter_env, shade_split_sum

#: glTF's dielectric F0 for its default ior 1.5, which KHR_materials_specular scales.
GLTF_DIELECTRIC_F0 = 0.04
#: z-up (this project's world) to y-up (glTF): (x, y, z) -> (x, z, -y).
Z_UP_TO_Y_UP = torch.tensor(
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64
)

# ----------------------------------------------------------------------------- materials


@dataclass
class CornerMaterials:
    """Per-face-corner materials; every value in [0, 1].

    Attributes:
        albedo: ``(F, 3, 3)`` linear base colour.
        roughness: ``(F, 3, 1)`` perceptual roughness (alpha = roughness^2).
        specular: ``(F, 3, 1)`` dielectric F0.
        metallic: ``(F, 3, 1)`` or None (dielectric everywhere).
    """

    albedo: Float[Tensor, "F 3 3"]
    roughness: Float[Tensor, "F 3 1"]
    specular: Float[Tensor, "F 3 1"]
    metallic: Float[Tensor, "F 3 1"] | None = None

    @classmethod
    def from_vertices(cls, vertex: BRDFInputs, faces: Int[Tensor, "F 3"]) -> CornerMaterials:
        """A per-vertex field (e.g. :class:`.inverse.VertexMaterialField`) as corners."""
        met = None if vertex.metallic is None else vertex.metallic[faces]
        return cls(vertex.albedo[faces], vertex.roughness[faces], vertex.specular[faces], met)

    def at(self, face: Int[Tensor, " P"], bary: Float[Tensor, "P 3"]) -> BRDFInputs:
        """Materials at surface points (barycentric blend of the face's corners)."""

        def blend(x: Tensor | None) -> Tensor | None:
            return None if x is None else (x[face] * bary.to(x.dtype)[..., None]).sum(1)

        return BRDFInputs(
            blend(self.albedo), blend(self.roughness), blend(self.specular), blend(self.metallic)
        )


def linear_to_srgb(x: Tensor) -> Tensor:
    """The sRGB transfer function (IEC 61966-2-1) of linear values in [0, 1]."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def srgb_to_linear(x: Tensor) -> Tensor:
    """Inverse of :func:`linear_to_srgb`."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


# ----------------------------------------------------------------------------- atlas


@dataclass
class AtlasConfig:
    """One square texture cell per face."""

    #: Cell side in texels.
    cell: int = 8
    #: Texels between a face's corners and its cell border (against bleeding).
    padding: int = 1


@dataclass
class FaceAtlas:
    """Where each face lies in the texture.

    Attributes:
        uv: ``(F, 3, 2)`` corner uv, v up (OBJ / trimesh convention), texel centres.
        height, width: texture size in texels.
        cell: cell side in texels; ``columns``: cells per texture row.
        corner_texels: ``(3, 2)`` the corners' (x, y) texel coordinates inside a cell.
    """

    uv: Float[Tensor, "F 3 2"]
    height: int
    width: int
    cell: int
    columns: int
    corner_texels: Float[Tensor, "3 2"]


def face_atlas(num_faces: int, config: AtlasConfig | None = None) -> FaceAtlas:
    """Square cells in rows; in its cell, a face's corners are the right triangle at texel
    centres ``(p, p)``, ``(S - 1 - p, p)``, ``(p, S - 1 - p)`` (S = cell, p = padding)."""
    config = config or AtlasConfig()
    s, p = config.cell, config.padding
    if s - 2 * p < 2:
        raise ValueError(f"cell {s} leaves no room for a face with padding {p}")
    cols = max(1, math.ceil(math.sqrt(num_faces)))
    rows = max(1, math.ceil(num_faces / cols))
    w, h = cols * s, rows * s
    lo, hi = p + 0.5, s - p - 0.5
    corners = torch.tensor([[lo, lo], [hi, lo], [lo, hi]], dtype=torch.float64)
    f = torch.arange(num_faces)
    origin = torch.stack([(f % cols) * s, (f // cols) * s], -1).to(torch.float64)
    xy = origin[:, None] + corners[None]
    uv = torch.stack([xy[..., 0] / w, 1.0 - xy[..., 1] / h], -1)
    return FaceAtlas(uv, h, w, s, cols, corners)


def texel_faces(atlas: FaceAtlas, num_faces: int) -> tuple[Tensor, Tensor]:
    """``(H, W)`` face of each texel (-1: no face) and ``(H, W, 3)`` its face's barycentrics
    at the texel centre, extrapolated beyond the face inside the cell."""
    s = atlas.cell
    yy, xx = torch.meshgrid(torch.arange(atlas.height), torch.arange(atlas.width), indexing="ij")
    face = (yy // s) * atlas.columns + xx // s
    face = torch.where(face < num_faces, face, -1)
    c = atlas.corner_texels
    lx = (xx % s).to(torch.float64) + 0.5
    ly = (yy % s).to(torch.float64) + 0.5
    b1 = (lx - c[0, 0]) / (c[1, 0] - c[0, 0])
    b2 = (ly - c[0, 1]) / (c[2, 1] - c[0, 1])
    return face, torch.stack([1.0 - b1 - b2, b1, b2], -1)


def bake_corner_texture(
    atlas: FaceAtlas, values: Float[Tensor, "F 3 C"], fill: float = 0.0
) -> Float[Tensor, "H W C"]:
    """Texture of a corner field: each cell's texels hold its face's linear extrapolation,
    clamped to [0, 1]; texels of no face get ``fill``."""
    face, bary = texel_faces(atlas, values.shape[0])
    used = face >= 0
    out = torch.full((atlas.height, atlas.width, values.shape[-1]), fill, dtype=torch.float64)
    vals = (values[face[used]].to(torch.float64) * bary[used][..., None]).sum(1)
    out[used] = vals
    return out.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- asset


@dataclass
class PBRAsset:
    """A textured PBR mesh as a GLB holds it (world frame +z up, one vertex per corner).

    Attributes:
        vertices: ``(V, 3)``; faces: ``(F, 3)``; normals: ``(V, 3)`` unit vertex normals.
        uv: ``(V, 2)`` texture coordinates, v up.
        base_color: ``(H, W, 3)`` linear albedo texture.
        metallic_roughness: ``(H, W, 4)`` glTF channels (R unused, G roughness, B metallic,
            A specular F0).
        specular_scale: multiplies A to give F0 (``min(0.04 * colour factor, 1) * factor``).
        has_metallic: whether the field had a metallic channel.
    """

    vertices: Float[Tensor, "V 3"]
    faces: Int[Tensor, "F 3"]
    normals: Float[Tensor, "V 3"]
    uv: Float[Tensor, "V 2"]
    base_color: Float[Tensor, "H W 3"]
    metallic_roughness: Float[Tensor, "H W 4"]
    specular_scale: float = 1.0
    has_metallic: bool = False

    def materials_at(self, face: Int[Tensor, " P"], bary: Float[Tensor, "P 3"]) -> BRDFInputs:
        """Materials at surface points: textures sampled (bilinearly) at the interpolated uv."""
        b = bary.to(torch.float64)[..., None]
        uv = (self.uv[self.faces[face]].to(torch.float64) * b).sum(1)
        albedo = sample_texture(self.base_color.float(), uv).double()
        gba = sample_texture(self.metallic_roughness[..., 1:].float(), uv).double()
        met = gba[:, 1:2] if self.has_metallic else None
        return BRDFInputs(albedo, gba[:, 0:1], gba[:, 2:3] * self.specular_scale, met)

    def mesh(self) -> Mesh:
        """Geometry only, for the rasterizer."""
        return Mesh(self.vertices, self.faces)


def build_asset(
    mesh: Mesh, materials: CornerMaterials, config: AtlasConfig | None = None
) -> PBRAsset:
    """Split the mesh per face, lay out the atlas and bake the material textures."""
    nf = mesh.num_faces
    if materials.albedo.shape[:2] != (nf, 3):
        raise ValueError(f"materials must be ({nf}, 3, C), got {tuple(materials.albedo.shape)}")
    atlas = face_atlas(nf, config)
    normals = vertex_normals(mesh.vertices, mesh.faces)[mesh.faces].reshape(-1, 3)
    rough = bake_corner_texture(atlas, materials.roughness)
    spec = bake_corner_texture(atlas, materials.specular)
    met = (
        torch.zeros_like(rough)
        if materials.metallic is None
        else bake_corner_texture(atlas, materials.metallic)
    )
    mr = torch.cat([torch.ones_like(rough), rough, met, spec], -1)
    return PBRAsset(
        vertices=mesh.vertices[mesh.faces].reshape(-1, 3).to(torch.float64),
        faces=torch.arange(3 * nf).reshape(nf, 3),
        normals=normals,
        uv=atlas.uv.reshape(-1, 2),
        base_color=bake_corner_texture(atlas, materials.albedo),
        metallic_roughness=mr,
        specular_scale=1.0,
        has_metallic=materials.metallic is not None,
    )


# ----------------------------------------------------------------------------- GLB files


def _to_image(x: Tensor):
    from PIL import Image

    arr = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(arr, "RGBA" if arr.shape[-1] == 4 else "RGB")


def _from_image(img, channels: int) -> Tensor:
    arr = np.asarray(img.convert("RGBA" if channels == 4 else "RGB"), dtype=np.float64)
    return torch.from_numpy(arr / 255.0)


def glb_bytes(asset: PBRAsset, name: str = "sceneforge_asset") -> bytes:
    """The asset as GLB 2.0 bytes (trimesh), with ``KHR_materials_specular`` added."""
    import trimesh
    from trimesh.visual.material import PBRMaterial
    from trimesh.visual.texture import TextureVisuals

    rot = Z_UP_TO_Y_UP
    material = PBRMaterial(
        name=name,
        baseColorTexture=_to_image(linear_to_srgb(asset.base_color)),
        metallicRoughnessTexture=_to_image(asset.metallic_roughness),
        baseColorFactor=[1.0, 1.0, 1.0, 1.0],
        metallicFactor=1.0,
        roughnessFactor=1.0,
    )
    tm = trimesh.Trimesh(
        vertices=(asset.vertices @ rot.T).numpy(),
        faces=asset.faces.numpy(),
        vertex_normals=(asset.normals.to(torch.float64) @ rot.T).numpy(),
        visual=TextureVisuals(uv=asset.uv.numpy(), material=material),
        process=False,
    )
    spec_color = 1.0 / GLTF_DIELECTRIC_F0

    def add_specular(tree: dict) -> None:
        for mat in tree.get("materials", []):
            pbr = mat.get("pbrMetallicRoughness", {})
            if "metallicRoughnessTexture" not in pbr:
                raise RuntimeError("trimesh wrote no metallicRoughnessTexture")
            tex = pbr["metallicRoughnessTexture"]["index"]
            mat.setdefault("extensions", {})["KHR_materials_specular"] = {
                "specularFactor": 1.0,
                "specularTexture": {"index": tex},
                "specularColorFactor": [spec_color] * 3,
            }
            mat["extras"] = {
                "sceneforge": {
                    "specular": "metallicRoughnessTexture.A (KHR_materials_specular)",
                    "metallic": asset.has_metallic,
                }
            }
        used = set(tree.get("extensionsUsed", [])) | {"KHR_materials_specular"}
        tree["extensionsUsed"] = sorted(used)

    scene = trimesh.Scene(tm)
    return trimesh.exchange.gltf.export_glb(
        scene, include_normals=True, tree_postprocessor=add_specular
    )


def export_glb(path: str | Path, asset: PBRAsset) -> Path:
    """Write the asset as a new GLB version at ``path``; returns the path written."""
    return write_bytes_versioned(path, glb_bytes(asset, Path(path).stem))


def glb_json(data: bytes) -> dict:
    """The JSON chunk of GLB bytes."""
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or version != 2:
        raise ValueError("not a GLB 2.0 file")
    length, kind = struct.unpack_from("<I4s", data, 12)
    if kind != b"JSON":
        raise ValueError("GLB: first chunk is not JSON")
    return json.loads(data[20 : 20 + length])


def _specular_scale(material: dict) -> float:
    ext = material.get("extensions", {}).get("KHR_materials_specular")
    if ext is None:
        return 0.0  # no extension: the caller falls back to glTF's fixed F0
    color = ext.get("specularColorFactor", [1.0, 1.0, 1.0])
    return min(GLTF_DIELECTRIC_F0 * float(color[0]), 1.0) * float(ext.get("specularFactor", 1.0))


def load_glb(path: str | Path) -> PBRAsset:
    """Reload a GLB written by :func:`export_glb` (one textured primitive) as a
    :class:`PBRAsset` in the +z-up world. Without ``KHR_materials_specular`` the specular is
    glTF's fixed F0 = 0.04."""
    import trimesh

    data = Path(path).read_bytes()
    header = glb_json(data)
    scene = trimesh.load(io.BytesIO(data), file_type="glb", process=False)
    geoms = list(scene.geometry.values()) if isinstance(scene, trimesh.Scene) else [scene]
    if len(geoms) != 1:
        raise ValueError(f"{path}: expected one mesh, found {len(geoms)}")
    tm = geoms[0]
    mat = tm.visual.material
    if getattr(mat, "baseColorTexture", None) is None or mat.metallicRoughnessTexture is None:
        raise ValueError(f"{path}: the material has no base colour / metallic-roughness texture")
    rot = Z_UP_TO_Y_UP
    gl_mat = header["materials"][0]
    scale = _specular_scale(gl_mat)
    mr = _from_image(mat.metallicRoughnessTexture, 4)
    if scale == 0.0:
        mr[..., 3] = GLTF_DIELECTRIC_F0
        scale = 1.0
    pbr = gl_mat.get("pbrMetallicRoughness", {})
    factor = torch.tensor(pbr.get("baseColorFactor", [1.0] * 4)[:3], dtype=torch.float64)
    mr[..., 1] = mr[..., 1] * float(pbr.get("roughnessFactor", 1.0))
    mr[..., 2] = mr[..., 2] * float(pbr.get("metallicFactor", 1.0))
    extras = gl_mat.get("extras", {}).get("sceneforge", {})
    return PBRAsset(
        vertices=torch.as_tensor(np.array(tm.vertices), dtype=torch.float64) @ rot,
        faces=torch.as_tensor(np.array(tm.faces), dtype=torch.long),
        normals=torch.as_tensor(np.array(tm.vertex_normals), dtype=torch.float64) @ rot,
        uv=torch.as_tensor(np.array(tm.visual.uv), dtype=torch.float64),
        base_color=srgb_to_linear(_from_image(mat.baseColorTexture, 3)) * factor,
        metallic_roughness=mr,
        specular_scale=scale,
        has_metallic=bool(extras.get("metallic", True)),
    )


# ----------------------------------------------------------------------------- relit renders


@dataclass
class ViewSurface:
    """Hit pixels of posed views: face, barycentrics, unit normal and unit direction to the
    camera of each, and the ``(N, H, W)`` hit masks (pixels in row-major order per view)."""

    face: Int[Tensor, " P"]
    bary: Float[Tensor, "P 3"]
    normal: Float[Tensor, "P 3"]
    view: Float[Tensor, "P 3"]
    masks: Tensor


def view_surface(mesh: Mesh, cameras: Cameras, normals: Tensor | None = None) -> ViewSurface:
    """Rasterize every view (the project's ray caster) and keep the hit pixels; ``normals``
    ``(V, 3)`` are interpolated (default: the mesh's area-weighted vertex normals)."""
    buf = view_buffers(mesh, cameras)
    hit = buf.hit
    face, bary = buf.face[hit], buf.bary[hit].to(torch.float64)
    vn = vertex_normals(mesh.vertices, mesh.faces) if normals is None else normals
    corners = mesh.faces[face]
    normal = normalize((vn[corners].to(torch.float64) * bary[..., None]).sum(1))
    pos = (mesh.vertices[corners] * bary[..., None]).sum(1)
    view_index = torch.arange(len(cameras))[:, None, None].expand_as(hit)[hit]
    view = normalize(cameras.centers.to(torch.float64)[view_index] - pos)
    return ViewSurface(face, bary, normal, view, hit)


def relight(
    surface: ViewSurface,
    material: BRDFInputs,
    env: Float[Tensor, "h w 3"],
    config: SplitSumConfig | None = None,
) -> Float[Tensor, "N H W 3"]:
    """Split-sum renders of the hit pixels under ``env`` (background 0)."""
    pre = prefilter_env(env, config or SplitSumConfig())
    rgb = shade_split_sum(pre, surface.normal.to(env.dtype), surface.view.to(env.dtype), material)
    out = torch.zeros(*surface.masks.shape, 3, dtype=rgb.dtype)
    out[surface.masks] = rgb
    return out


def render_corner_materials(
    mesh: Mesh, cameras: Cameras, materials: CornerMaterials, env: Tensor, config=None
) -> Float[Tensor, "N H W 3"]:
    """Relit renders of a mesh with its corner material field (smooth vertex normals)."""
    surf = view_surface(mesh, cameras)
    mat = materials.at(surf.face, surf.bary)
    return relight(surf, _as_dtype(mat, env.dtype), env, config)


def render_asset(
    asset: PBRAsset, cameras: Cameras, env: Tensor, config: SplitSumConfig | None = None
) -> Float[Tensor, "N H W 3"]:
    """Relit renders of a (reloaded) asset: textures sampled at its uv, its own normals."""
    surf = view_surface(asset.mesh(), cameras, asset.normals)
    mat = asset.materials_at(surf.face, surf.bary)
    return relight(surf, _as_dtype(mat, env.dtype), env, config)


def _as_dtype(m: BRDFInputs, dtype) -> BRDFInputs:
    met = None if m.metallic is None else m.metallic.to(dtype)
    return BRDFInputs(m.albedo.to(dtype), m.roughness.to(dtype), m.specular.to(dtype), met)
