"""Ray sampling: stratified steps along each ray, pruned by an occupancy grid.

Candidate samples are laid out densely (``R x S``) so that rendering is a plain cumulative sum;
only the samples in occupied cells are sent to the field (the expensive part on CPU).
Bounded scenes step uniformly inside the box; contracted scenes step uniformly in
``s = g(t)`` (linear near the cameras, linear in disparity far away); forward-facing scenes
step uniformly in disparity between their near and far depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sceneforge.core.devices import draw
from sceneforge.fields.field import SceneBox


@dataclass
class SamplerConfig:
    """Ray-marching and occupancy-grid settings."""

    num_samples: int = 96
    """Candidate samples per ray (before occupancy pruning)."""
    near: float = 0.05
    """Nearest distance along a ray (world units)."""
    far: float = 1000.0
    """Farthest distance for contracted scenes (world units)."""
    sample_budget: float = 24.0
    """Training: candidates per ray are cut to about ``budget / occupied fraction`` (coarse
    steps while the occupancy grid is still dense, full resolution once it is sparse)."""
    min_samples: int = 16
    """Fewest candidate samples per ray in training."""
    transmittance_threshold: float = 1e-3
    """Samples behind this transmittance are skipped (found by a no-grad density pass)."""
    grid_resolution: int = 64
    """Occupancy grid cells per side (in normalised coordinates)."""
    grid_update_every: int = 16
    """Steps between occupancy-grid updates."""
    grid_warmup_steps: int = 128
    """During warm-up every cell is re-evaluated at each update, later a random quarter."""
    grid_decay: float = 0.95
    """EMA decay of the stored densities."""
    grid_alpha_threshold: float = 0.01
    """A cell is occupied when its opacity over a typical step exceeds this."""


def ray_aabb(
    origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"], aabb: Float[Tensor, "2 3"]
) -> tuple[Float[Tensor, " R"], Float[Tensor, " R"]]:
    """Entry and exit distances of rays through a box (``t_far < t_near`` when missed)."""
    inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (aabb[0].to(origins) - origins) * inv
    t1 = (aabb[1].to(origins) - origins) * inv
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def _s_of_t(t: Tensor, split: Tensor) -> Tensor:
    return torch.where(t < split, t, split * (2.0 - split / t.clamp(min=1e-6)))


def _t_of_s(s: Tensor, split: Tensor) -> Tensor:
    return torch.where(s < split, s, split * split / (2.0 * split - s).clamp(min=1e-6))


def ray_intervals(
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    box: SceneBox,
    cfg: SamplerConfig,
    generator: torch.Generator | None = None,
    num_samples: int | None = None,
) -> tuple[Float[Tensor, "R S"], Float[Tensor, "R S"], Bool[Tensor, "R S"]]:
    """Sample distances ``t`` (interval midpoints), interval lengths and a validity mask.

    With a ``generator`` the interior interval edges are shifted by a random fraction per ray
    (stratified training samples); without it the grid is fixed (deterministic rendering).
    The fractions are drawn on the generator's device (a CPU generator may drive CUDA rays:
    the same numbers as on CPU). The intervals always tile ``[t_start, t_end]`` exactly.
    """
    r, s_n = origins.shape[0], num_samples or cfg.num_samples
    dev, dt = origins.device, origins.dtype
    if generator is None:
        u = torch.full((r, 1), 0.5, device=dev, dtype=dt)
    else:
        u = draw(torch.rand, (r, 1), generator=generator, device=dev, dtype=dt)
    k = torch.arange(s_n + 1, device=dev, dtype=dt)[None]
    if box.forward is not None:
        edges, hit = box.forward.ray_intervals(origins, directions, s_n, u)
        valid = hit[:, None].expand(r, s_n).clone()
    elif box.contract:
        # split distance: the inner box's half-diagonal (cameras and object are inside)
        split = ((box.aabb[1] - box.aabb[0]).norm() * 0.5).to(origins)
        s0 = _s_of_t(torch.full((r, 1), cfg.near, device=dev, dtype=dt), split)
        s1 = _s_of_t(torch.full((r, 1), cfg.far, device=dev, dtype=dt), split)
        ds = (s1 - s0) / s_n
        s_edges = s0 + (k + u - 0.5) * ds
        s_edges = torch.cat([s0, s_edges[:, 1:-1], s1], dim=1)  # interior edges jittered
        edges = _t_of_s(s_edges, split)
        valid = torch.ones(r, s_n, dtype=torch.bool, device=dev)
    else:
        tn, tf = ray_aabb(origins, directions, box.aabb)
        tn = tn.clamp(min=cfg.near)
        hit = tf > tn
        tf = torch.where(hit, tf, tn + 1e-3)
        dt_ = ((tf - tn) / s_n)[:, None]
        edges = tn[:, None] + (k + u - 0.5) * dt_
        edges = torch.cat([tn[:, None], edges[:, 1:-1], tf[:, None]], dim=1)
        valid = hit[:, None].expand(r, s_n).clone()
    deltas = edges[:, 1:] - edges[:, :-1]
    t_mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    valid = valid & (deltas > 0)
    return t_mid, deltas, valid


def normalized_edges(
    t: Float[Tensor, "R S"], deltas: Float[Tensor, "R S"], box: SceneBox, cfg: SamplerConfig
) -> Float[Tensor, "R S1"]:
    """The interval edges of :func:`ray_intervals` in the coordinate their samples are spaced
    in (distance in a bounded box, ``g(t)`` of the contraction, disparity in a forward-facing
    frustum), mapped per ray onto ``[0, 1]`` (mip-NeRF 360's normalised ray distance ``s``)."""
    edges = torch.cat([t[:, :1] - 0.5 * deltas[:, :1], t + 0.5 * deltas], dim=1)
    if box.forward is not None:
        g = -1.0 / edges.clamp(min=1e-6)
    elif box.contract:
        g = _s_of_t(edges, ((box.aabb[1] - box.aabb[0]).norm() * 0.5).to(edges))
    else:
        g = edges
    lo, hi = g[:, :1], g[:, -1:]
    return (g - lo) / (hi - lo).clamp(min=1e-9)


class OccupancyGrid(torch.nn.Module):
    """Binary occupancy over the normalised ``[0, 1]^3`` domain, updated from the field's density.

    State (buffers, saved in checkpoints): per-cell EMA density and the occupancy bitfield.
    """

    def __init__(self, cfg: SamplerConfig, ref_step: float) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.grid_resolution
        self.ref_step = float(ref_step)
        self.register_buffer("density", torch.zeros(n, n, n))
        self.register_buffer("occupied", torch.ones(n, n, n, dtype=torch.bool))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def cell_index(self, u: Float[Tensor, "N 3"]) -> Tensor:
        n = self.cfg.grid_resolution
        ijk = (u * n).long().clamp(0, n - 1)
        return (ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]

    def query(self, u: Float[Tensor, "N 3"]) -> Bool[Tensor, " N"]:
        """Occupancy at normalised points (False outside ``[0, 1]^3``)."""
        inside = ((u >= 0) & (u <= 1)).all(-1)
        return self.occupied.view(-1)[self.cell_index(u)] & inside

    @torch.no_grad()
    def update(self, density_fn, step: int, generator: torch.Generator | None) -> None:
        """Re-evaluate cells (all during warm-up, a random quarter later) and re-threshold.

        The random cells and jitter are drawn on ``generator``'s device and moved to the
        grid's (a CPU generator drives a CUDA grid with the CPU numbers); without a generator
        torch's default RNG of the grid's device is used.
        """
        n = self.cfg.grid_resolution
        total = n**3
        dev = self.density.device
        if step < self.cfg.grid_warmup_steps:
            cells = torch.arange(total, device=dev)
        else:
            cells = draw(torch.randperm, total, generator=generator, device=dev)[: total // 4]
        i = cells // (n * n)
        j = (cells // n) % n
        k = cells % n
        jitter = draw(torch.rand, (cells.shape[0], 3), generator=generator, device=dev)
        u = (torch.stack([i, j, k], -1).float() + jitter) / n
        sig = torch.cat([density_fn(c) for c in u.split(65536)])
        flat = self.density.view(-1)
        flat[cells] = torch.maximum(flat[cells] * self.cfg.grid_decay, sig)
        thresh = -torch.log1p(torch.tensor(-self.cfg.grid_alpha_threshold)) / self.ref_step
        # Capped by the mean so a young field keeps its densest cells; the small margin keeps
        # a uniform grid occupied (its float mean can round above every cell).
        thresh = torch.minimum(thresh.to(flat), flat.mean() * (1.0 - 1e-3))
        self.occupied.copy_(self.density >= thresh)
        self.num_updates += 1

    @property
    def occupancy_fraction(self) -> float:
        return float(self.occupied.float().mean())

    def training_samples(self) -> int:
        """Candidate samples per training ray for the current occupancy (see ``sample_budget``)."""
        frac = max(self.occupancy_fraction, 1e-3)
        n = int(round(self.cfg.sample_budget / frac))
        return max(self.cfg.min_samples, min(self.cfg.num_samples, n))
