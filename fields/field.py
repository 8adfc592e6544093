"""Radiance field with a clean ``density`` / ``outputs`` split.

``density(x)`` maps world points to volume density and a geometry feature; ``outputs`` maps
that feature, view directions and the image index to RGB (plus optional feature channels).
Positions are first normalised to ``[0, 1]^3`` by a :class:`SceneBox`: an axis-aligned box
for bounded scenes, or the box ``[-1, 1]^3`` around a centre plus an L-inf scene contraction
(mip-NeRF 360 style) for unbounded ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from sceneforge.fields.encodings import (
    HashGridConfig,
    SHEncoding,
    TriPlaneConfig,
    TriPlaneEncoding,
    make_hash_grid,
)
from sceneforge.fields.forward_facing import ForwardFrustum


class _TruncExp(torch.autograd.Function):
    """``exp`` whose gradient is clamped (Instant-NGP's density activation)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def contract(x: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """L-inf scene contraction: identity inside ``[-1, 1]^3``, ``(2 - 1/|x|) x/|x|`` outside."""
    n = x.abs().amax(-1, keepdim=True).clamp(min=1e-6)
    return torch.where(n <= 1.0, x, (2.0 - 1.0 / n) * (x / n))


@dataclass
class SceneBox:
    """World → ``[0, 1]^3`` normalisation.

    ``aabb`` is ``(2, 3)`` (min, max). With ``contract`` the box is mapped to ``[-1, 1]^3`` and
    everything outside is contracted into ``[-2, 2]^3``; without it points outside are empty.
    With ``forward`` (forward-facing captures) points are normalised in the reference camera's
    frustum, spaced in disparity (:mod:`sceneforge.fields.forward_facing`); ``aabb`` is then the
    world box around that frustum.
    """

    aabb: Float[Tensor, "2 3"]
    contract: bool = False
    forward: ForwardFrustum | None = None

    def normalize(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        if self.forward is not None:
            return self.forward.normalize(x)
        lo, hi = self.aabb[0].to(x), self.aabb[1].to(x)
        u = (x - lo) / (hi - lo)
        if not self.contract:
            return u
        return (contract(u * 2 - 1) + 2.0) / 4.0

    def inside(self, u: Float[Tensor, "N 3"]) -> Tensor:
        return ((u >= 0) & (u <= 1)).all(-1)

    @classmethod
    def from_frustum(cls, forward: ForwardFrustum) -> SceneBox:
        """The box of a forward-facing capture."""
        return cls(aabb=forward.world_aabb(), contract=False, forward=forward)

    def state_dict(self) -> dict:
        s = {"aabb": self.aabb.clone(), "contract": self.contract}
        if self.forward is not None:
            s["forward"] = self.forward.state_dict()
        return s

    @classmethod
    def from_state(cls, s: dict) -> SceneBox:
        fwd = s.get("forward")
        fwd = ForwardFrustum.from_state(fwd) if fwd is not None else None
        return cls(aabb=s["aabb"], contract=bool(s["contract"]), forward=fwd)

    def load_state(self, s: dict) -> None:
        """Take a saved box's values in place (the model holds this object)."""
        saved = SceneBox.from_state(s)
        self.aabb.copy_(saved.aabb)
        self.contract, self.forward = saved.contract, saved.forward


@dataclass
class FieldConfig:
    """Radiance-field architecture."""

    encoding: Literal["auto", "hash", "triplane"] = "auto"
    """Position encoding; ``auto`` = hash grid on CUDA, tri-plane on CPU (fastest there)."""
    hash: HashGridConfig = field(default_factory=HashGridConfig)
    """Hash grid settings."""
    triplane: TriPlaneConfig = field(default_factory=TriPlaneConfig)
    """Tri-plane settings."""
    hidden_dim: int = 64
    """Width of the density MLP."""
    geo_feat_dim: int = 15
    """Geometry feature passed from the density to the colour head."""
    color_hidden_dim: int = 64
    """Width of the colour MLP."""
    color_layers: int = 1
    """Hidden layers of the colour MLP."""
    sh_degree: int = 4
    """Spherical-harmonics degree of the view-direction encoding (0 = no view dependence)."""
    appearance_dim: int = 0
    """Per-image appearance embedding size (0 = off)."""
    color_affine: bool = False
    """Per-image affine colour transform (3x3 matrix + bias, starting at identity) applied to
    the colour head's RGB: a camera's exposure / white balance that, unlike an appearance
    embedding, cannot encode view-specific content. Held-out views use the mean transform."""
    num_feature_channels: int = 0
    """Extra per-point feature outputs rendered alongside RGB (0 = none)."""
    density_bias: float = -3.0
    """Added to the raw MLP density before the exp activation."""
    density: Literal["auto", "mlp", "grid"] = "auto"
    """Density from an MLP on the encoding, or from an explicit voxel grid (DVGO-style, fast
    and stable on CPU); ``auto`` = grid on CPU, MLP on CUDA."""
    density_grid_resolution: int = 0
    """Cells per side of the explicit density grid (0 = the trainer picks one from the image
    size: the longest training side rounded to a multiple of 16, clamped to 64..256, or to
    64..128 in a forward-facing frustum)."""
    density_grid_init: float = 0.0
    """Initial density of the explicit grid, per voxel length (opacity of one voxel); 0 = auto:
    0.05 in a bounded box, 1e-3 in a contracted (unbounded) scene or a forward-facing frustum
    (fern, 2 CPU minutes: 17.39 dB with 0.05, 18.67 with 1e-3). From a nearly empty grid
    (1e-3) a bounded object settles into a semi-transparent fog with over-bright colours
    (opacity and colour trade off per ray, worst before a black background) whose held-out
    PSNR falls as training goes on; 0.05 stops rays at the first surface they meet and carves
    free space from there. Contracted scenes keep 1e-3: their background cells seen by few
    training rays would keep the initial fog and block held-out views."""


def _mlp(i: int, h: int, o: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = i
    for _ in range(layers):
        mods += [nn.Linear(d, h), nn.ReLU(inplace=True)]
        d = h
    mods.append(nn.Linear(d, o))
    return nn.Sequential(*mods)


class RadianceField(nn.Module):
    """Encoding → density MLP → (density, geo feature); colour MLP on (feature, SH(dir), embed)."""

    def __init__(
        self,
        cfg: FieldConfig,
        box: SceneBox,
        num_images: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.cfg, self.box = cfg, box
        kind = cfg.encoding
        if kind == "auto":
            kind = "hash" if torch.device(device).type == "cuda" else "triplane"
        self.encoding_kind = kind
        if kind == "hash":
            self.encoding = make_hash_grid(cfg.hash, device)
        elif kind == "triplane":
            self.encoding = TriPlaneEncoding(cfg.triplane)
        else:
            raise ValueError(f"unknown encoding {cfg.encoding!r}; use auto, hash or triplane")
        dens = cfg.density
        if dens == "auto":
            dens = "mlp" if torch.device(device).type == "cuda" else "grid"
        if dens not in ("mlp", "grid"):
            raise ValueError(f"unknown density source {cfg.density!r}; use auto, mlp or grid")
        self.density_kind = dens
        if dens == "grid":
            n = cfg.density_grid_resolution
            if n <= 0:
                raise ValueError("density_grid_resolution must be set (> 0) to build the field")
            self.density_grid = nn.Parameter(torch.zeros(1, 1, n, n, n))
            # softplus(0 + shift) = init: initial space is nearly empty
            init = cfg.density_grid_init
            if init <= 0:
                init = 1e-3 if box.contract or box.forward is not None else 0.05
            self.grid_shift = float(math.log(math.expm1(init)))
            self.density_mlp = _mlp(self.encoding.out_dim, cfg.hidden_dim, cfg.geo_feat_dim, 0)
        else:
            self.density_mlp = _mlp(self.encoding.out_dim, cfg.hidden_dim, 1 + cfg.geo_feat_dim, 1)
        self.dir_enc = SHEncoding(cfg.sh_degree) if cfg.sh_degree > 0 else None
        in_c = cfg.geo_feat_dim + (self.dir_enc.out_dim if self.dir_enc else 0) + cfg.appearance_dim
        self.color_mlp = _mlp(
            in_c, cfg.color_hidden_dim, 3 + cfg.num_feature_channels, cfg.color_layers
        )
        self.embedding = (
            nn.Embedding(max(num_images, 1), cfg.appearance_dim) if cfg.appearance_dim > 0 else None
        )
        if self.embedding is not None:
            nn.init.zeros_(self.embedding.weight)
        # per image: 3x3 matrix (row-major, minus identity) and bias; zeros = identity
        self.color_affine = (
            nn.Parameter(torch.zeros(max(num_images, 1), 12)) if cfg.color_affine else None
        )
        self.unseen_embedding: Tensor | None = None
        """Appearance embedding (``1 x appearance_dim``) for ``image_idx == -1`` instead of the
        training mean (set while fitting / evaluating a held-out image; not saved)."""
        self.unseen_color_affine: Tensor | None = None
        """Likewise for the colour transform (``1 x 12``)."""

    def density(self, x: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, " N"], Float[Tensor, "N G"]]:
        """Volume density (zero outside a bounded box) and the geometry feature at world ``x``."""
        u = self.box.normalize(x)
        inside = self.box.inside(u)
        u = u.clamp(0.0, 1.0)
        h = self.density_mlp(self.encoding(u))
        if self.density_kind == "grid":
            sigma = self._grid_density(u)
            geo = h
        else:
            sigma = trunc_exp(h[:, 0] + self.cfg.density_bias)
            geo = h[:, 1:]
        sigma = torch.where(inside, sigma, torch.zeros_like(sigma))
        return sigma, geo

    def _grid_density(self, u: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        # grid_sample wants (x, y, z) -> indices (W, H, D); the grid is stored [z, y, x]
        g = (u * 2 - 1)[None, :, None, None, :]
        raw = F.grid_sample(self.density_grid, g, mode="bilinear", align_corners=True)
        return F.softplus(raw.view(-1) + self.grid_shift) * self.density_scale

    @property
    def density_scale(self) -> float:
        """Grid densities are per voxel (as in DVGO), so raw values stay O(1); to world units
        (forward-facing scenes: voxels at the scene's typical depth)."""
        if self.box.forward is not None:
            return self.cfg.density_grid_resolution / self.box.forward.extent()
        return self.cfg.density_grid_resolution / float(
            (self.box.aabb[1] - self.box.aabb[0]).mean()
        )

    def density_normalized(self, u: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        """Density at already-normalised ``[0, 1]^3`` points (occupancy-grid updates)."""
        if self.density_kind == "grid":
            return self._grid_density(u)
        h = self.density_mlp(self.encoding(u))
        return trunc_exp(h[:, 0] + self.cfg.density_bias)

    def outputs(
        self,
        geo_feat: Float[Tensor, "N G"],
        directions: Float[Tensor, "N 3"],
        image_idx: Int[Tensor, " N"] | None = None,
    ) -> dict[str, Tensor]:
        """RGB in [0, 1] (and ``features`` when configured) for unit view ``directions``.

        ``image_idx`` selects the appearance embedding; ``-1`` (or None) uses the mean one
        (or :attr:`unseen_embedding` when set).
        """
        parts = [geo_feat]
        if self.dir_enc is not None:
            parts.append(self.dir_enc(directions))
        if self.embedding is not None:
            mean = self.unseen_embedding
            if mean is None:
                mean = self.embedding.weight.mean(0, keepdim=True)
            mean = mean.expand(geo_feat.shape[0], -1)
            if image_idx is None:
                emb = mean
            else:
                known = image_idx >= 0
                emb = torch.where(known[:, None], self.embedding(image_idx.clamp(min=0)), mean)
            parts.append(emb)
        h = self.color_mlp(torch.cat(parts, dim=-1))
        out = {"rgb": torch.sigmoid(h[:, :3])}
        if self.color_affine is not None:
            out["rgb"] = self.apply_color_affine(out["rgb"], image_idx)
        if self.cfg.num_feature_channels > 0:
            out["features"] = h[:, 3:]
        return out

    def apply_color_affine(
        self, rgb: Float[Tensor, "N 3"], image_idx: Int[Tensor, " N"] | None
    ) -> Float[Tensor, "N 3"]:
        """The per-image colour transform (``-1`` / None: the mean one) of ``rgb``."""
        p = self.color_affine
        mean = self.unseen_color_affine
        if mean is None:
            mean = p.mean(0, keepdim=True)
        mean = mean.expand(rgb.shape[0], -1)
        if image_idx is None:
            d = mean
        else:
            d = torch.where((image_idx >= 0)[:, None], p[image_idx.clamp(min=0)], mean)
        return rgb + (d[:, :9].view(-1, 3, 3) @ rgb[:, :, None])[:, :, 0] + d[:, 9:]

    def forward(
        self,
        x: Float[Tensor, "N 3"],
        directions: Float[Tensor, "N 3"],
        image_idx: Int[Tensor, " N"] | None = None,
    ) -> dict[str, Tensor]:
        sigma, geo = self.density(x)
        out = self.outputs(geo, directions, image_idx)
        out["density"] = sigma
        return out

    def normals(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Unit normals as the negative normalised density gradient."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            sigma, _ = self.density(x)
            (g,) = torch.autograd.grad(sigma.sum(), x, create_graph=self.training)
        return -torch.nn.functional.normalize(g, dim=-1)
