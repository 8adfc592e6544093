"""Volume rendering: weights, accumulation and depth on analytic scenes."""

from __future__ import annotations

import math

import torch
from torch import nn

from sceneforge.fields.field import FieldConfig, SceneBox
from sceneforge.fields.rendering import composite, render_rays, render_weights
from sceneforge.fields.sampling import OccupancyGrid, SamplerConfig, ray_aabb, ray_intervals


class SphereField(nn.Module):
    """Analytic field: density ``sigma`` inside a sphere of radius ``r`` (colour = position)."""

    def __init__(self, r: float = 0.5, sigma: float = 1e4) -> None:
        super().__init__()
        self.r, self.sigma = r, sigma
        self.box = SceneBox(torch.tensor([[-1.0, -1, -1], [1.0, 1, 1]]))
        self.cfg = FieldConfig(num_feature_channels=2)

    def density_normalized(self, u):
        x = u * 2 - 1
        # conservative: any cell overlapping the sphere (cell diagonal 0.22 at 16^3) is dense
        return torch.where(x.norm(dim=-1) < self.r + 0.25, self.sigma, 0.0)

    def density(self, x):
        inside = x.norm(dim=-1) < self.r
        sig = torch.where(inside, torch.full_like(x[:, 0], self.sigma), torch.zeros_like(x[:, 0]))
        return sig, x

    def forward(self, x, d, image_idx=None):
        sig, _ = self.density(x)
        return {"density": sig, "rgb": (x + 1) / 2, "features": torch.ones(x.shape[0], 2)}


def test_weights_sum_at_most_one_and_match_closed_form():
    g = torch.Generator().manual_seed(0)
    sigma = torch.rand(50, 40, generator=g) * 5
    deltas = torch.rand(50, 40, generator=g) * 0.1
    w, trans = render_weights(sigma, deltas)
    assert (w >= 0).all() and (w.sum(-1) <= 1 + 1e-6).all()
    torch.testing.assert_close(w.sum(-1), 1 - torch.exp(-(sigma * deltas).sum(-1)))
    # constant density over length L: accumulation 1 - exp(-sigma L)
    v = torch.rand(50, 40, 3, generator=g)
    assert composite(w, v).shape == (50, 3)
    w, _ = render_weights(torch.full((1, 100), 2.0), torch.full((1, 100), 0.01))
    torch.testing.assert_close(w.sum(), torch.tensor(1 - math.exp(-2.0)))


def test_ray_aabb_and_stratified_intervals_stay_in_box():
    o = torch.tensor([[-3.0, 0, 0], [0, 3.0, 0], [0, 0, 5.0]])
    d = torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [1.0, 0, 0]])
    box = torch.tensor([[-1.0, -1, -1], [1.0, 1, 1]])
    tn, tf = ray_aabb(o, d, box)
    torch.testing.assert_close(tn[:2], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(tf[:2], torch.tensor([4.0, 4.0]))
    assert tf[2] < tn[2]  # miss
    cfg = SamplerConfig(num_samples=32)
    t, dl, valid = ray_intervals(o, d, SceneBox(box), cfg, torch.Generator().manual_seed(1))
    assert not valid[2].any() and valid[:2].all()
    assert (t[:2] >= 2.0).all() and (t[:2] <= 4.0).all()
    torch.testing.assert_close(dl[:2].sum(-1), torch.tensor([2.0, 2.0]))


def test_depth_accumulation_and_features_on_analytic_sphere():
    field = SphereField(r=0.5)
    cfg = SamplerConfig(num_samples=512, transmittance_threshold=0.0)
    # rays from +z towards the sphere at several lateral offsets; a ray through (x, y) hits the
    # sphere at z = sqrt(r^2 - x^2 - y^2), i.e. at distance 3 - z from the origin plane z = 3
    xy = torch.tensor([[0.0, 0.0], [0.2, 0.1], [-0.3, 0.2], [0.8, 0.0]])
    o = torch.cat([xy, torch.full((4, 1), 3.0)], -1)
    d = torch.tensor([0.0, 0.0, -1.0]).expand(4, 3)
    out = render_rays(field, None, cfg, o, d, background=torch.zeros(3), z_per_t=torch.ones(4))
    hit = xy.norm(dim=-1) < 0.5
    expected = 3.0 - (0.25 - xy.pow(2).sum(-1)).clamp(min=0).sqrt()
    torch.testing.assert_close(out["accumulation"][hit], torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["depth"][hit], expected[hit], atol=2.0 / 512 * 2, rtol=0)
    assert out["accumulation"][~hit].abs().max() < 1e-6
    assert (out["weights"].sum(-1) <= 1 + 1e-6).all()
    torch.testing.assert_close(out["features"][hit], torch.ones(3, 2), atol=1e-4, rtol=0)
    # colour = hit position mapped to [0, 1]
    p = o + expected[:, None] * d
    torch.testing.assert_close(out["rgb"][hit], ((p + 1) / 2)[hit], atol=0.01, rtol=0)


def test_occupancy_grid_prunes_empty_space_without_changing_the_image():
    field = SphereField(r=0.5)
    cfg = SamplerConfig(num_samples=256, grid_resolution=16, transmittance_threshold=0.0)
    grid = OccupancyGrid(cfg, ref_step=2.0 / 256)
    grid.update(field.density_normalized, 0, torch.Generator().manual_seed(0))
    assert 0.0 < grid.occupancy_fraction < 0.3
    g = torch.Generator().manual_seed(2)
    o = torch.cat([torch.rand(64, 2, generator=g) - 0.5, torch.full((64, 1), 3.0)], -1)
    d = torch.tensor([0.0, 0.0, -1.0]).expand(64, 3)
    full = render_rays(field, None, cfg, o, d, background=torch.zeros(3))
    pruned = render_rays(field, grid, cfg, o, d, background=torch.zeros(3))
    assert int(pruned["num_samples"]) < 0.7 * int(full["num_samples"])
    torch.testing.assert_close(pruned["rgb"], full["rgb"], atol=1e-4, rtol=0)
    torch.testing.assert_close(pruned["depth"], full["depth"], atol=1e-4, rtol=0)


def test_contraction_maps_everything_into_the_unit_cube():
    box = SceneBox(torch.tensor([[-1.0, -1, -1], [1.0, 1, 1]]), contract=True)
    x = torch.tensor([[0.0, 0, 0], [0.5, -0.5, 0.2], [1e6, 0, 0], [-3.0, 2.0, 1.0]])
    u = box.normalize(x)
    assert ((u >= 0) & (u <= 1)).all()
    torch.testing.assert_close(u[0], torch.full((3,), 0.5))
    torch.testing.assert_close(u[1], (x[1] + 2) / 4)  # identity inside the inner box
    assert u[2, 0] > 0.99
    cfg = SamplerConfig(num_samples=64, near=0.1, far=100.0)
    o, d = torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8]])
    t, dl, valid = ray_intervals(o, d, box, cfg, torch.Generator().manual_seed(0))
    assert valid.all() and (dl > 0).all()
    torch.testing.assert_close(dl.sum(-1), torch.full((2,), 100.0 - 0.1))
    assert (t[:, 32] > 1.0).all() and t[0, -1] > 20  # half the samples beyond the inner box


def test_occupancy_grid_keeps_uniform_density_occupied():
    """Regression: a uniform young field must not empty the grid (float mean above every cell)."""
    from sceneforge.fields.sampling import OccupancyGrid, SamplerConfig

    cfg = SamplerConfig()
    grid = OccupancyGrid(cfg, ref_step=0.01)
    value = 0.1234567  # no exact float32 mean over n^3 equal cells
    grid.update(
        lambda u: torch.full((u.shape[0],), value),
        step=0,
        generator=torch.Generator().manual_seed(0),
    )
    assert bool(grid.occupied.all())
    # and a field that is empty except one blob keeps the blob only
    grid2 = OccupancyGrid(cfg, ref_step=0.01)
    blob = lambda u: 1e3 * ((u - 0.5).norm(dim=-1) < 0.1).float()  # noqa: E731
    grid2.update(blob, step=0, generator=torch.Generator().manual_seed(0))
    assert 0 < int(grid2.occupied.sum()) < grid2.occupied.numel() // 10
