"""Input encodings: multi-resolution hash grid, tri-plane, frequency, spherical harmonics.

The hash grid's pure-torch path uses tiny-cuda-nn's exact parameter layout and hashing, so
one parameter vector gives the same outputs on both paths; :func:`make_hash_grid` picks the
tinycudann adapter only when it is importable and the device is CUDA (decided at run time).
All encodings take positions in ``[0, 1]^3`` (directions for SH: unit vectors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

#: tiny-cuda-nn's coherent prime hash constants (first three dimensions).
_PRIMES = (1, 2654435761, 805459861)
_U32 = 0xFFFFFFFF


@dataclass
class HashGridConfig:
    """Multi-resolution hash grid (Instant-NGP) settings."""

    num_levels: int = 12
    """Number of resolution levels."""
    features_per_level: int = 2
    """Feature channels stored per level."""
    log2_hashmap_size: int = 16
    """log2 of the table size of each hashed level."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    max_resolution: int = 1024
    """Finest grid resolution (sets the per-level growth factor)."""
    init_scale: float = 1e-4
    """Uniform init range of the table entries."""

    @property
    def per_level_scale(self) -> float:
        if self.num_levels <= 1:
            return 1.0
        return math.exp(
            (math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.num_levels - 1)
        )


def hash_grid_layout(cfg: HashGridConfig) -> tuple[list[float], list[int], list[int], list[int]]:
    """Per level: ``scale``, ``resolution``, table ``offset`` and ``size`` (tcnn's layout).

    ``scale = base * s^l - 1``, ``resolution = ceil(scale) + 1``; a level's table holds
    ``min(next_multiple(res^3, 8), 2^log2_hashmap_size)`` entries.
    """
    log2_s = math.log2(cfg.per_level_scale)
    scales, resolutions, offsets, sizes = [], [], [], []
    offset = 0
    for lvl in range(cfg.num_levels):
        scale = 2.0 ** (lvl * log2_s) * cfg.base_resolution - 1.0
        res = math.ceil(scale) + 1
        dense = res**3
        dense = (dense + 7) // 8 * 8
        size = min(dense, 2**cfg.log2_hashmap_size)
        scales.append(scale)
        resolutions.append(res)
        offsets.append(offset)
        sizes.append(size)
        offset += size
    return scales, resolutions, offsets, sizes


class HashGridEncoding(nn.Module):
    """Vectorised pure-torch multi-resolution hash grid with trilinear interpolation.

    ``params`` is one flat vector laid out as tiny-cuda-nn's ``Encoding`` parameters
    (``[(offset_l + index) * F + f]``), so it can be handed to tcnn unchanged.
    """

    def __init__(self, cfg: HashGridConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or HashGridConfig()
        scales, res, offsets, sizes = hash_grid_layout(self.cfg)
        self.total_entries = offsets[-1] + sizes[-1]
        f = self.cfg.features_per_level
        self.params = nn.Parameter(
            (torch.rand(self.total_entries * f) * 2 - 1) * self.cfg.init_scale
        )
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32), persistent=False)
        self.register_buffer("resolutions", torch.tensor(res, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        # Levels whose dense grid fits in the table are indexed densely, the rest hashed.
        self.register_buffer(
            "hashed", torch.tensor([r**3 > s for r, s in zip(res, sizes)]), persistent=False
        )

    @property
    def out_dim(self) -> int:
        return self.cfg.num_levels * self.cfg.features_per_level

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N D"]:
        L, f = self.cfg.num_levels, self.cfg.features_per_level
        n = x.shape[0]
        pos = x[:, None, :] * self.scales[None, :, None] + 0.5  # N L 3
        grid = torch.floor(pos)
        frac = pos - grid
        lo = grid.to(torch.int64)
        c = torch.stack([lo, lo + 1], dim=-1)  # N L 3 2: the two grid coordinates per axis
        cx, cy, cz = c[:, :, 0, :, None, None], c[:, :, 1, None, :, None], c[:, :, 2, None, None, :]
        res = self.resolutions[None, :, None, None, None]
        dense = cx + cy * res + cz * (res * res)
        hashed = ((cx * _PRIMES[0]) ^ (cy * _PRIMES[1]) ^ (cz * _PRIMES[2])) & _U32
        idx = torch.where(self.hashed[None, :, None, None, None], hashed, dense)
        idx = idx.reshape(n, L, 8) % self.sizes[None, :, None] + self.offsets[None, :, None]
        table = self.params.view(-1, f)
        feats = table.index_select(0, idx.reshape(-1)).view(n * L, 8, f)
        wf = torch.stack([1.0 - frac, frac], dim=-1)  # N L 3 2
        w = wf[:, :, 0, :, None, None] * wf[:, :, 1, None, :, None] * wf[:, :, 2, None, None, :]
        out = torch.bmm(w.reshape(n * L, 1, 8).to(feats.dtype), feats)  # (N L) 1 F
        return out.view(n, L * f)


def hash_grid_reference(
    params: Float[Tensor, " P"], cfg: HashGridConfig, x: Float[Tensor, "N 3"]
) -> Float[Tensor, "N D"]:
    """Loop-based reference of the hash grid (one point, level and corner at a time)."""
    scales, resolutions, offsets, sizes = hash_grid_layout(cfg)
    f = cfg.features_per_level
    out = torch.zeros(x.shape[0], cfg.num_levels * f, dtype=params.dtype)
    for n in range(x.shape[0]):
        for lvl in range(cfg.num_levels):
            pos = [float(x[n, d]) * scales[lvl] + 0.5 for d in range(3)]
            base = [math.floor(p) for p in pos]
            frac = [p - b for p, b in zip(pos, base)]
            res = resolutions[lvl]
            for corner in range(8):
                c = [base[d] + ((corner >> d) & 1) for d in range(3)]
                w = 1.0
                for d in range(3):
                    w *= frac[d] if (corner >> d) & 1 else 1.0 - frac[d]
                if res**3 > sizes[lvl]:
                    index = 0
                    for d in range(3):
                        index ^= (c[d] * _PRIMES[d]) & _U32
                else:
                    index = c[0] + c[1] * res + c[2] * res * res
                index = index % sizes[lvl] + offsets[lvl]
                for k in range(f):
                    out[n, lvl * f + k] += w * params[index * f + k]
    return out


class TcnnHashGridEncoding(nn.Module):
    """tiny-cuda-nn hash grid sharing :class:`HashGridEncoding`'s parameter layout."""

    def __init__(self, cfg: HashGridConfig | None = None) -> None:
        super().__init__()
        try:
            import tinycudann as tcnn
        except ImportError as e:  # pragma: no cover - CUDA only
            raise ImportError(
                "tinycudann is not installed; install it (pip install "
                "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch) "
                "or use the pure-torch HashGridEncoding"
            ) from e
        self.cfg = cfg or HashGridConfig()
        self.enc = tcnn.Encoding(
            3,
            {
                "otype": "HashGrid",
                "n_levels": self.cfg.num_levels,
                "n_features_per_level": self.cfg.features_per_level,
                "log2_hashmap_size": self.cfg.log2_hashmap_size,
                "base_resolution": self.cfg.base_resolution,
                "per_level_scale": self.cfg.per_level_scale,
                "interpolation": "Linear",
            },
            dtype=torch.float32,
        )

    @property
    def params(self) -> Tensor:
        return self.enc.params

    @property
    def out_dim(self) -> int:
        return self.cfg.num_levels * self.cfg.features_per_level

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N D"]:
        return self.enc(x.contiguous()).float()


def tcnn_available(device: torch.device | str) -> bool:
    """True when tinycudann imports and ``device`` is CUDA."""
    if torch.device(device).type != "cuda":
        return False
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True


def make_hash_grid(cfg: HashGridConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The tinycudann hash grid on CUDA when available, else the pure-torch one."""
    if tcnn_available(device):
        return TcnnHashGridEncoding(cfg)
    return HashGridEncoding(cfg)


@dataclass
class TriPlaneConfig:
    """Multi-resolution tri-plane (three axis-aligned feature planes, features summed per level)."""

    resolutions: tuple[int, ...] = (32, 64, 128, 256)
    """Plane resolution of each level."""
    features: int = 8
    """Feature channels per plane."""
    init_scale: float = 0.1
    """Normal init standard deviation."""


class TriPlaneEncoding(nn.Module):
    """Tri-plane features via ``grid_sample`` (fast on CPU), optionally initialised from a prior.

    Each level samples the xy, xz and yz planes and multiplies them (as in K-planes), then the
    levels are concatenated. :meth:`init_from_occupancy` seeds the first channel with a coarse
    occupancy / depth prior (projected max over each axis).
    """

    def __init__(self, cfg: TriPlaneConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or TriPlaneConfig()
        f = self.cfg.features
        self.planes = nn.ParameterList(
            [
                nn.Parameter(1.0 + torch.randn(3, f, r, r) * self.cfg.init_scale)
                for r in self.cfg.resolutions
            ]
        )

    @property
    def out_dim(self) -> int:
        return len(self.cfg.resolutions) * self.cfg.features

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N D"]:
        g = x * 2 - 1
        coords = torch.stack([g[:, [0, 1]], g[:, [0, 2]], g[:, [1, 2]]])[:, :, None, :]  # 3 N 1 2
        outs = []
        for p in self.planes:
            s = F.grid_sample(p, coords, mode="bilinear", align_corners=True)[..., 0]  # 3 F N
            outs.append((s[0] * s[1] * s[2]).T)
        return torch.cat(outs, dim=-1)

    @torch.no_grad()
    def init_from_occupancy(self, occupancy: Float[Tensor, "R R R"], strength: float = 1.0) -> None:
        """Bias channel 0 of each plane towards the occupied region of a coarse prior grid."""
        occ = occupancy.float()[None, None]  # indexed [x, y, z]
        proj = [occ.amax(4), occ.amax(3), occ.amax(2)]  # xy, xz, yz
        for p in self.planes:
            r = p.shape[-1]
            for k, m in enumerate(proj):
                # planes are sampled with grid (u, v) = (first, second) axis -> [v, u] storage
                m2 = F.interpolate(m, size=(r, r), mode="bilinear", align_corners=True)[0, 0].T
                p[k, 0] += strength * (m2 - 0.5)


class FrequencyEncoding(nn.Module):
    """NeRF positional encoding ``[x, sin(2^k pi x), cos(2^k pi x)]``."""

    def __init__(self, in_dim: int = 3, num_frequencies: int = 6, include_input: bool = True):
        super().__init__()
        self.in_dim, self.num_frequencies, self.include_input = (
            in_dim,
            num_frequencies,
            include_input,
        )
        self.register_buffer(
            "freqs", (2.0 ** torch.arange(num_frequencies)) * math.pi, persistent=False
        )

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.num_frequencies + int(self.include_input))

    def forward(self, x: Float[Tensor, "N C"]) -> Float[Tensor, "N D"]:
        xf = (x[..., None] * self.freqs).flatten(-2)
        parts = [torch.sin(xf), torch.cos(xf)]
        if self.include_input:
            parts.insert(0, x)
        return torch.cat(parts, dim=-1)


def spherical_harmonics(d: Float[Tensor, "N 3"], degree: int) -> Float[Tensor, "N K"]:
    """Real SH basis up to ``degree`` (1..4 bands, K = degree^2), as in tiny-cuda-nn."""
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree must be in 1..4, got {degree}")
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


class SHEncoding(nn.Module):
    """Spherical-harmonics direction encoding."""

    def __init__(self, degree: int = 4) -> None:
        super().__init__()
        self.degree = degree

    @property
    def out_dim(self) -> int:
        return self.degree**2

    def forward(self, d: Float[Tensor, "N 3"]) -> Float[Tensor, "N K"]:
        return spherical_harmonics(d, self.degree)
