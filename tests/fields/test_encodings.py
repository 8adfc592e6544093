"""Encodings: the vectorised hash grid against a loop-based reference, and the others' basics."""

from __future__ import annotations

import pytest
import torch

from sceneforge.fields.encodings import (
    FrequencyEncoding,
    HashGridConfig,
    HashGridEncoding,
    SHEncoding,
    TriPlaneConfig,
    TriPlaneEncoding,
    hash_grid_layout,
    hash_grid_reference,
    make_hash_grid,
    spherical_harmonics,
)

# coarse levels dense, fine levels hashed (table 2^9 < res^3)
SMALL = HashGridConfig(
    num_levels=5, features_per_level=2, log2_hashmap_size=9, base_resolution=4, max_resolution=40
)


def test_layout_mixes_dense_and_hashed_levels():
    _, res, offsets, sizes = hash_grid_layout(SMALL)
    hashed = [r**3 > s for r, s in zip(res, sizes)]
    assert hashed[0] is False and hashed[-1] is True
    assert offsets[1] == sizes[0] and all(s % 8 == 0 for s in sizes)


def test_hash_grid_matches_loop_reference():
    enc = HashGridEncoding(SMALL)
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    x = torch.rand(7, 3, dtype=torch.float32)
    x[0] = torch.tensor([0.0, 1.0, 0.5])  # domain corners / faces
    x[1] = torch.tensor([1.0, 1.0, 1.0])
    ref = hash_grid_reference(enc.params.detach().double(), SMALL, x.double())
    out = enc(x)
    assert out.shape == (7, SMALL.num_levels * SMALL.features_per_level)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_hash_grid_gradient_reaches_only_touched_entries():
    enc = HashGridEncoding(SMALL)
    enc(torch.rand(3, 3)).sum().backward()
    g = enc.params.grad
    assert torch.isfinite(g).all()
    assert 0 < int((g != 0).sum()) <= 3 * SMALL.num_levels * 8 * SMALL.features_per_level


def test_make_hash_grid_uses_torch_on_cpu():
    assert isinstance(make_hash_grid(SMALL, "cpu"), HashGridEncoding)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tinycudann comparison needs CUDA")
def test_tcnn_matches_torch_with_same_params():
    pytest.importorskip("tinycudann")
    from sceneforge.fields.encodings import TcnnHashGridEncoding

    ref = HashGridEncoding(SMALL).cuda()
    tc = TcnnHashGridEncoding(SMALL).cuda()
    with torch.no_grad():
        ref.params.uniform_(-1, 1)
        tc.params.copy_(ref.params)
    x = torch.rand(1000, 3, device="cuda")
    torch.testing.assert_close(tc(x), ref(x), atol=1e-4, rtol=1e-3)


def test_spherical_harmonics_are_orthonormal():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(
        torch.randn(200000, 3, generator=g, dtype=torch.float64), dim=-1
    )
    y = spherical_harmonics(d, 4)
    gram = 4 * torch.pi * (y.T @ y) / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)
    assert SHEncoding(3)(d[:5].float()).shape == (5, 9)


def test_frequency_and_triplane_shapes_and_grads():
    f = FrequencyEncoding(3, 4)
    assert f(torch.rand(5, 3)).shape == (5, f.out_dim) and f.out_dim == 27
    tp = TriPlaneEncoding(TriPlaneConfig(resolutions=(8, 16), features=4))
    x = torch.rand(6, 3)
    y = tp(x)
    assert y.shape == (6, 8)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tp.parameters())


def test_triplane_prior_raises_occupied_region():
    tp = TriPlaneEncoding(TriPlaneConfig(resolutions=(16,), features=2, init_scale=0.0))
    occ = torch.zeros(8, 8, 8)
    occ[:4, :4, :4] = 1
    tp.init_from_occupancy(occ, strength=0.5)
    inside = tp(torch.full((1, 3), 0.15))[0, 0]
    outside = tp(torch.full((1, 3), 0.85))[0, 0]
    assert inside > outside
