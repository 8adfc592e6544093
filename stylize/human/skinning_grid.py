"""A canonical skinning-weight grid: skinning weights and distance to the body anywhere in
the canonical box, by trilinear interpolation (no per-sample search over the mesh).

Built once per body (shape) from the canonical mesh:

1. The surface is sampled densely (vertices plus barycentric samples on every triangle, at a
   spacing below half a voxel); each sample carries the barycentric blend of its triangle's
   vertex weights and vertex normals.
2. Every grid point takes the weights of its nearest surface sample (a KD-tree query,
   :class:`scipy.spatial.cKDTree`) and its signed distance (negative inside, from the sign of
   the offset along the sample's normal; unsigned when no faces are given).
3. Only the ``top_k`` largest weights per grid point are kept (renormalised), so the grid
   stays small for rigs with many bones (anny: ~160).

:meth:`SkinningGrid.lookup` returns the interpolated weights ``[N, J]`` and the distance to the
body ``[N]`` (0 inside, ``inf`` outside the grid); :meth:`SkinningGrid.is_human` flags the points
within ``band`` metres of the body. :meth:`SkinningGrid.build` with ``cache_path`` stores the grid
(``torch.save``; read back with ``weights_only=True``) and reuses it when the inputs hash the same.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

_FORMAT = 1


def _surface_samples(
    vertices: np.ndarray, faces: np.ndarray | None, spacing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Samples ``[S, 3]``, their (vertex index ``[S, 3]``, barycentric ``[S, 3]``) on the mesh,
    and their normals (None without faces)."""
    n_v = len(vertices)
    if faces is None or len(faces) == 0:
        idx = np.repeat(np.arange(n_v)[:, None], 3, axis=1)
        bary = np.tile(np.array([1.0, 0.0, 0.0]), (n_v, 1))
        return vertices, idx, bary, None
    tri = vertices[faces]  # [F, 3, 3]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # area-weighted
    vert_n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vert_n, faces[:, k], face_n)
    vert_n /= np.maximum(np.linalg.norm(vert_n, axis=1, keepdims=True), 1e-12)
    edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=-1).max()
    level = int(min(max(math.ceil(edges / max(spacing, 1e-9)), 1), 12))
    ij = [(i, j) for i in range(level + 1) for j in range(level + 1 - i)]
    bary = np.array([(i / level, j / level, 1 - (i + j) / level) for i, j in ij])  # [P, 3]
    pts = np.einsum("pk,fkc->fpc", bary, tri).reshape(-1, 3)
    idx = np.repeat(faces, len(bary), axis=0)
    bary_all = np.tile(bary, (len(faces), 1))
    normals = np.einsum("sk,skc->sc", bary_all, vert_n[idx])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return pts, idx, bary_all, normals


def _hash_inputs(*arrays: np.ndarray, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    return h.hexdigest()[:32]


@dataclass
class SkinningGrid:
    """Top-k skinning weights and a signed distance on a regular canonical grid.

    Attributes:
        origin: the grid's corner (canonical metres), ``[3]``.
        voxel: the grid spacing (metres).
        indices: bone indices per grid point, ``[X, Y, Z, K]`` (int64).
        values: their weights, ``[X, Y, Z, K]`` (sum to one).
        sdf: signed distance to the body surface (negative inside), ``[X, Y, Z]``.
        num_joints: ``J``.
        band: points farther than this from the body (metres) are not human.
        key: hash of the inputs the grid was built from.
    """

    origin: Float[Tensor, "3"]
    voxel: float
    indices: Int[Tensor, "X Y Z K"]
    values: Float[Tensor, "X Y Z K"]
    sdf: Float[Tensor, "X Y Z"]
    num_joints: int
    band: float
    key: str = ""

    @classmethod
    def build(
        cls,
        canonical_vertices: Float[Tensor, "V 3"],
        faces: Int[Tensor, "F 3"] | None,
        weights: Float[Tensor, "V J"],
        resolution: int = 64,
        padding: float = 0.1,
        band: float = 0.05,
        top_k: int = 8,
        cache_path: str | Path | None = None,
    ) -> SkinningGrid:
        """Build (or load from ``cache_path`` when built from the same inputs) the grid.

        Args:
            canonical_vertices: the canonical mesh's vertices.
            faces: its triangles, or None to use the vertices only (unsigned distance).
            weights: per-vertex skinning weights.
            resolution: grid points along the longest side of the padded bounding box.
            padding: margin added around the mesh's bounding box (metres).
            band: distance to the body beyond which points are not human (metres).
            top_k: weights kept per grid point.
            cache_path: a ``.pt`` file to reuse/write (e.g. in the user cache folder).
        """
        verts = canonical_vertices.detach().double().cpu().numpy()
        w = weights.detach().double().cpu().numpy()
        f = None if faces is None else faces.detach().long().cpu().numpy().reshape(-1, 3)
        key = _hash_inputs(
            verts,
            w,
            *(() if f is None else (f,)),
            extra=f"v{_FORMAT}|{resolution}|{padding}|{band}|{top_k}",
        )
        if cache_path is not None and Path(cache_path).is_file():
            grid = cls.load(cache_path)
            if grid.key == key:
                return grid
        grid = cls._build(verts, f, w, resolution, padding, band, top_k, key)
        if cache_path is not None:
            grid.save(cache_path)
        return grid

    @classmethod
    def _build(cls, verts, faces, w, resolution, padding, band, top_k, key) -> SkinningGrid:
        from scipy.spatial import cKDTree

        if resolution < 2:
            raise ValueError("resolution must be at least 2")
        lo = verts.min(0) - padding
        hi = verts.max(0) + padding
        voxel = float((hi - lo).max() / (resolution - 1))
        shape = tuple(int(math.ceil((hi[i] - lo[i]) / voxel)) + 1 for i in range(3))
        axes = [lo[i] + voxel * np.arange(shape[i]) for i in range(3)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)

        samples, idx, bary, normals = _surface_samples(verts, faces, 0.5 * voxel)
        dist, nearest = cKDTree(samples).query(pts, k=1, workers=-1)
        if normals is not None:
            side = np.einsum("nc,nc->n", pts - samples[nearest], normals[nearest])
            dist = np.where(side < 0, -dist, dist)
        # Weights of the nearest samples: the barycentric blend of their triangle's vertices.
        num_joints = w.shape[1]
        k = min(top_k, num_joints)
        vals = np.zeros((len(pts), k))
        inds = np.zeros((len(pts), k), dtype=np.int64)
        for start in range(0, len(pts), 65536):
            sl = slice(start, start + 65536)
            s = nearest[sl]
            dense = np.einsum("nk,nkj->nj", bary[s], w[idx[s]])
            top = np.argpartition(-dense, k - 1, axis=1)[:, :k] if k < num_joints else None
            if top is None:
                top = np.broadcast_to(np.arange(num_joints), dense.shape)
            inds[sl] = top
            vals[sl] = np.take_along_axis(dense, top, axis=1)
        vals /= np.maximum(vals.sum(1, keepdims=True), 1e-12)
        return cls(
            origin=torch.as_tensor(lo, dtype=torch.float64),
            voxel=voxel,
            indices=torch.as_tensor(inds).reshape(*shape, k),
            values=torch.as_tensor(vals, dtype=torch.float32).reshape(*shape, k),
            sdf=torch.as_tensor(dist, dtype=torch.float32).reshape(shape),
            num_joints=num_joints,
            band=float(band),
            key=key,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.sdf.shape)  # type: ignore[return-value]

    def lookup(
        self, points: Float[Tensor, "N 3"]
    ) -> tuple[Float[Tensor, "N J"], Float[Tensor, " N"]]:
        """Trilinearly interpolated weights ``[N, J]`` and distance to the body ``[N]``.

        The distance is 0 inside the body and ``inf`` outside the grid (those points get the
        weights of the nearest grid cell). The weights sum to one.
        """
        dtype, device = points.dtype, points.device
        flat = points.reshape(-1, 3)
        size = torch.tensor(self.shape, device=device)
        u = (flat - self.origin.to(device, dtype)) / self.voxel
        outside = ((u < 0) | (u > (size - 1).to(dtype))).any(-1)
        u = torch.minimum(u.clamp_min(0), (size - 1).to(dtype))
        i0 = torch.minimum(u.floor().long(), size - 2)
        frac = u - i0.to(dtype)
        values = self.values.to(device, dtype)
        indices = self.indices.to(device)
        sdf = self.sdf.to(device, dtype)
        out = torch.zeros(flat.shape[0], self.num_joints, dtype=dtype, device=device)
        dist = torch.zeros(flat.shape[0], dtype=dtype, device=device)
        for corner in range(8):
            bits = [(corner >> a) & 1 for a in range(3)]
            c = i0 + torch.tensor(bits, device=device)
            wc = torch.ones_like(frac[:, 0])
            for a in range(3):
                wc = wc * (frac[:, a] if bits[a] else 1 - frac[:, a])
            vals = values[c[:, 0], c[:, 1], c[:, 2]] * wc[:, None]
            out.scatter_add_(1, indices[c[:, 0], c[:, 1], c[:, 2]], vals)
            dist = dist + wc * sdf[c[:, 0], c[:, 1], c[:, 2]]
        dist = dist.clamp_min(0).masked_fill(outside, math.inf)
        out = out / out.sum(-1, keepdim=True).clamp_min(1e-12)
        return out.reshape(*points.shape[:-1], -1), dist.reshape(points.shape[:-1])

    def is_human(self, distance: Tensor) -> Tensor:
        """True where ``distance`` (from :meth:`lookup`) is within :attr:`band` of the body."""
        return distance <= self.band

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": _FORMAT,
            "origin": self.origin,
            "voxel": torch.tensor(self.voxel, dtype=torch.float64),
            "indices": self.indices.to(torch.int16 if self.num_joints < 32768 else torch.int64),
            "values": self.values,
            "sdf": self.sdf,
            "num_joints": torch.tensor(self.num_joints),
            "band": torch.tensor(self.band, dtype=torch.float64),
            "key": torch.tensor(list(self.key.encode()), dtype=torch.uint8),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> SkinningGrid:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if int(state.get("format", -1)) != _FORMAT:
            raise ValueError(f"{path}: not a skinning grid of format {_FORMAT}")
        return cls(
            origin=state["origin"],
            voxel=float(state["voxel"]),
            indices=state["indices"].long(),
            values=state["values"],
            sdf=state["sdf"],
            num_joints=int(state["num_joints"]),
            band=float(state["band"]),
            key=bytes(state["key"].tolist()).decode(),
        )
