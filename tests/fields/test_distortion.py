"""mip-NeRF 360's distortion loss (fields/losses.py) and the normalised ray coordinate it is
measured in (fields/sampling.py): the O(S) form equals the pairwise definition, its gradient
is right (float64 gradcheck), it prefers compact weights, and the edges are in [0, 1]; the
tri-plane total variation; both reach the NeRF model's regularisers when weighted."""

from __future__ import annotations

import torch

from sceneforge.fields.field import SceneBox
from sceneforge.fields.losses import distortion_loss, plane_tv
from sceneforge.fields.sampling import SamplerConfig, normalized_edges, ray_intervals


def _pairwise(w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    m = 0.5 * (e[:, 1:] + e[:, :-1])
    inter = (w[:, :, None] * w[:, None, :] * (m[:, :, None] - m[:, None, :]).abs()).sum((1, 2))
    return inter + (w.pow(2) * (e[:, 1:] - e[:, :-1])).sum(-1) / 3


def _rand(r: int, s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(r, s, generator=g, dtype=torch.float64) / s
    e = torch.cumsum(torch.rand(r, s + 1, generator=g, dtype=torch.float64), -1)
    return w, (e - e[:, :1]) / (e[:, -1:] - e[:, :1])


def test_distortion_equals_pairwise_definition_and_gradchecks():
    w, e = _rand(5, 9)
    torch.testing.assert_close(distortion_loss(w, e), _pairwise(w, e))
    w.requires_grad_(True)
    e.requires_grad_(True)
    assert torch.autograd.gradcheck(distortion_loss, (w, e))


def test_distortion_prefers_one_compact_interval():
    e = torch.linspace(0, 1, 11, dtype=torch.float64)[None]
    one = torch.zeros(1, 10, dtype=torch.float64)
    one[0, 4] = 1.0
    split = torch.zeros(1, 10, dtype=torch.float64)
    split[0, 1] = split[0, 8] = 0.5
    fog = torch.full((1, 10), 0.1, dtype=torch.float64)
    a, b, c = distortion_loss(one, e), distortion_loss(split, e), distortion_loss(fog, e)
    assert float(a) < float(c) < float(b)
    torch.testing.assert_close(a, torch.tensor([0.1 / 3], dtype=torch.float64))


def test_normalized_edges_span_unit_interval_in_the_sampling_coordinate():
    cfg = SamplerConfig(num_samples=16, near=0.5, far=100.0)
    o = torch.zeros(4, 3)
    d = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)))
    for box in (
        SceneBox(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), contract=True),
        SceneBox(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), contract=False),
    ):
        t, deltas, _ = ray_intervals(o, d, box, cfg)  # no generator: uniform in the coordinate
        e = normalized_edges(t, deltas, box, cfg)
        assert e.shape == (4, 17)
        torch.testing.assert_close(e[:, 0], torch.zeros(4))
        torch.testing.assert_close(e[:, -1], torch.ones(4))
        # deterministic samples are evenly spaced in the sampling coordinate
        torch.testing.assert_close(
            e[:, 1:] - e[:, :-1], torch.full((4, 16), 1 / 16), atol=1e-4, rtol=0
        )


def test_plane_tv_is_zero_for_constant_planes_and_counts_steps():
    assert float(plane_tv(torch.ones(3, 2, 5, 5))) == 0.0
    ramp = torch.arange(4.0)[None, None, None, :].expand(3, 2, 4, 4)  # +1 per column
    torch.testing.assert_close(plane_tv(ramp), torch.tensor(1.0))
    torch.testing.assert_close(plane_tv(ramp.transpose(-1, -2)), torch.tensor(1.0))


def test_nerf_regularizers_add_the_new_terms_only_when_weighted():
    from sceneforge.fields.field import FieldConfig, RadianceField
    from sceneforge.fields.nerf_model import NerfConfig, nerf_regularizers
    from sceneforge.fields.rendering import render_rays

    box = SceneBox(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), contract=True)
    fcfg = FieldConfig(encoding="triplane", density="grid", density_grid_resolution=8)
    fcfg.triplane.resolutions = (8,)
    field = RadianceField(fcfg, box, num_images=2)
    o = torch.tensor([[0.0, 0, -3], [0.0, 0, -3]])
    d = torch.tensor([[0.0, 0, 1], [0.1, 0, 1]])
    d = torch.nn.functional.normalize(d, dim=-1)
    cfg = NerfConfig(field=fcfg)
    out = render_rays(field, None, SamplerConfig(num_samples=16, near=0.5), o, d)
    assert nerf_regularizers(cfg, field, out) == {}
    cfg.distortion_weight = cfg.triplane_tv_weight = 1.0
    reg = nerf_regularizers(cfg, field, out)
    assert set(reg) == {"distortion", "triplane_tv"}
    sum(reg.values()).backward()
    assert float(field.density_grid.grad.abs().sum()) > 0
