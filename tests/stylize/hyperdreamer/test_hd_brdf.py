"""GGX + Lambert BRDF of HyperDreamer (stylize/hyperdreamer/brdf.py): energy, reciprocity,
normalisation, sampling and float64 gradients."""

from __future__ import annotations

import math

import pytest
import torch

from sceneforge.stylize.hyperdreamer.brdf import (
    BRDFInputs,
    alpha_from_roughness,
    brdf,
    brdf_terms,
    dot,
    ggx_ndf,
    hammersley,
    lambert,
    normalize,
    reflect,
    sample_cosine,
    sample_ggx_half,
    tangent_frame,
    to_world,
)

D64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
UP = torch.tensor([0.0, 0.0, 1.0], dtype=D64)


def _material(n, albedo, roughness, specular, metallic=None):
    full = lambda x, c: torch.full((n, c), float(x), dtype=D64)  # noqa: E731
    return BRDFInputs(
        full(albedo, 3),
        full(roughness, 1),
        full(specular, 1),
        None if metallic is None else full(metallic, 1),
    )


def _view(theta):
    return torch.tensor([math.sin(theta), 0.0, math.cos(theta)], dtype=D64)


def _furnace(roughness, theta, albedo, specular, num=40_000):
    """Directional albedo ``int f (n.l) dl`` (diffuse by cosine sampling, specular by GGX
    importance sampling) and the standard error of the total."""
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(num, 4, generator=gen, dtype=D64)
    n = UP.expand(num, 3)
    v = _view(theta).expand(num, 3)
    mat = _material(num, albedo, roughness, specular)
    l_d = sample_cosine(u[:, :2])
    diff, _ = brdf_terms(n, v, l_d, mat)
    e_d = diff * math.pi
    alpha = alpha_from_roughness(mat.roughness)
    h = sample_ggx_half(u[:, 2:], alpha)
    l_s = reflect(v, h)
    _, spec = brdf_terms(n, v, l_s, mat)
    pdf = ggx_ndf(dot(n, h), alpha) * dot(n, h) / (4 * dot(v, h).clamp_min(1e-12))
    w = torch.where(dot(v, h) > 0, dot(n, l_s).clamp_min(0) / pdf.clamp_min(1e-30), 0.0)
    e_s = spec * w
    total = (e_d + e_s)[:, 0]
    return float(total.mean()), float(total.std() / math.sqrt(num)), float(e_s[:, 0].mean())


@pytest.mark.parametrize("roughness", [0.1, 0.3, 0.6, 1.0])
def test_white_furnace_specular_lobe_never_gains_energy(roughness):
    # F0 = 1 (F = 1 everywhere), albedo 0: the pure microfacet lobe
    for theta in (0.0, 1.0, 1.5):
        e, se, _ = _furnace(roughness, theta, albedo=0.0, specular=1.0, num=10_000)
        assert e <= 1.0 + 4 * se + 1e-3, (theta, e)
        assert e > 0.25  # it does reflect (single scattering loses at most ~70 % at alpha = 1)


def test_white_furnace_matches_closed_forms():
    # smooth GGX at normal incidence reflects everything
    e, se, _ = _furnace(0.1, 0.0, albedo=0.0, specular=1.0)
    assert abs(e - 1.0) < 4 * se + 2e-3
    # alpha = 1, normal incidence: D = 1/pi, V = 1 / (2 (1 + n.l)) -> 1 - ln 2
    e, se, _ = _furnace(1.0, 0.0, albedo=0.0, specular=1.0)
    assert abs(e - (1.0 - math.log(2.0))) < 4 * se + 1e-3


@pytest.mark.parametrize("roughness", [0.05, 0.4, 1.0])
@pytest.mark.parametrize("specular", [0.0, 0.5])
def test_white_furnace_full_brdf_at_most_one(roughness, specular):
    for theta in (0.0, 0.8, 1.3, 1.55):
        e, se, e_spec = _furnace(roughness, theta, albedo=1.0, specular=specular, num=10_000)
        assert e <= 1.0 + 4 * se + 1e-3, (theta, e)
        assert e_spec < e  # the diffuse lobe contributes


def test_white_lambertian_reflects_everything():
    gen = torch.Generator().manual_seed(2)
    u = torch.rand(200_000, 2, generator=gen, dtype=D64)
    # uniform hemisphere sampling (pdf 1 / 2 pi), independent of the cosine sampler
    z = u[:, :1]
    e = (lambert(torch.ones(z.shape[0], 3, dtype=D64)) * z * 2 * math.pi).mean(0)
    assert torch.allclose(e, torch.ones(3, dtype=D64), atol=5e-3)


@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.5, 1.0])
def test_ggx_ndf_is_normalised(alpha):
    theta = torch.linspace(0, math.pi / 2, 200_001, dtype=D64)
    c = theta.cos()[:, None]
    f = ggx_ndf(c, torch.full_like(c, alpha))[:, 0] * c[:, 0] * theta.sin() * 2 * math.pi
    assert abs(float(torch.trapezoid(f, theta)) - 1.0) < 1e-4


def test_ggx_half_sampling_follows_d_cos():
    # E[n.h] under pdf D (n.h) equals int D (n.h)^2 dh
    alpha = 0.4
    u = hammersley(1 << 16)
    h = sample_ggx_half(u, torch.full((u.shape[0], 1), alpha, dtype=D64))
    assert torch.allclose(h.norm(dim=-1), torch.ones(u.shape[0], dtype=D64))
    theta = torch.linspace(0, math.pi / 2, 100_001, dtype=D64)
    c = theta.cos()[:, None]
    f = ggx_ndf(c, torch.full_like(c, alpha))[:, 0] * c[:, 0] ** 2 * theta.sin() * 2 * math.pi
    assert abs(float(h[:, 2].mean()) - float(torch.trapezoid(f, theta))) < 1e-3


def test_reciprocity():
    gen = torch.Generator().manual_seed(3)
    n = normalize(torch.randn(500, 3, generator=gen, dtype=D64))
    v = normalize(torch.randn(500, 3, generator=gen, dtype=D64))
    l_dir = normalize(torch.randn(500, 3, generator=gen, dtype=D64))
    v = torch.where(dot(n, v) < 0, -v, v)
    l_dir = torch.where(dot(n, l_dir) < 0, -l_dir, l_dir)
    mat = BRDFInputs(
        torch.rand(500, 3, generator=gen, dtype=D64),
        torch.rand(500, 1, generator=gen, dtype=D64),
        torch.rand(500, 1, generator=gen, dtype=D64),
        torch.rand(500, 1, generator=gen, dtype=D64),
    )
    f_vl, f_lv = brdf(n, v, l_dir, mat), brdf(n, l_dir, v, mat)
    assert bool((f_vl > 0).all())
    assert torch.allclose(f_vl, f_lv, rtol=1e-12, atol=0)


def test_below_horizon_is_black():
    n = UP.expand(2, 3)
    v = torch.stack([_view(0.3), _view(2.0)])
    l_dir = torch.stack([_view(2.5), _view(0.3)])
    assert bool((brdf(n, v, l_dir, _material(2, 0.8, 0.5, 0.5)) == 0).all())


def test_metallic_takes_f0_from_albedo():
    n, v = UP[None], _view(0.0)[None]
    red = BRDFInputs(
        torch.tensor([[1.0, 0.0, 0.0]], dtype=D64),
        torch.tensor([[0.2]], dtype=D64),
        torch.tensor([[0.04]], dtype=D64),
        torch.tensor([[1.0]], dtype=D64),
    )
    diff, spec = brdf_terms(n, v, v, red)  # mirror configuration, h = n
    assert bool((diff == 0).all())
    assert float(spec[0, 1]) == 0.0 and float(spec[0, 0]) > 0.0


def test_tangent_frame_is_orthonormal_everywhere():
    n = normalize(torch.randn(1000, 3, dtype=D64))
    n = torch.cat([n, torch.tensor([[0, 0, 1.0], [0, 0, -1.0], [1.0, 0, 0]], dtype=D64)])
    t, b = tangent_frame(n)
    frame = torch.stack([t, b, n], -1)
    eye = torch.eye(3, dtype=D64).expand_as(frame)
    assert torch.allclose(frame.transpose(-1, -2) @ frame, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(frame), torch.ones(n.shape[0], dtype=D64))
    z = torch.tensor([0.0, 0.0, 1.0], dtype=D64).expand_as(n)
    assert torch.allclose(to_world(z, n), n)


def test_hammersley_is_a_stratified_point_set():
    u = hammersley(256)
    assert bool(((u >= 0) & (u < 1)).all())
    for axis in range(2):
        counts = torch.bincount((u[:, axis] * 16).long(), minlength=16)
        assert bool((counts == 16).all())


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    n0 = normalize(torch.randn(6, 3, generator=gen, dtype=D64) + torch.tensor([0, 0, 2.0]))
    v = normalize(torch.randn(6, 3, generator=gen, dtype=D64) * 0.5 + torch.tensor([0, 0, 1.0]))
    l_dir = normalize(torch.randn(6, 3, generator=gen, dtype=D64) * 0.5 + UP)
    albedo = torch.rand(6, 3, generator=gen, dtype=D64).requires_grad_()
    rough = (0.2 + 0.7 * torch.rand(6, 1, generator=gen, dtype=D64)).requires_grad_()
    spec = (0.1 + 0.8 * torch.rand(6, 1, generator=gen, dtype=D64)).requires_grad_()
    metal = (0.1 + 0.8 * torch.rand(6, 1, generator=gen, dtype=D64)).requires_grad_()
    normal = n0.clone().requires_grad_()

    def fn(a, r, s, m, nrm):
        return brdf(normalize(nrm), v, l_dir, BRDFInputs(a, r, s, m))

    assert torch.autograd.gradcheck(fn, (albedo, rough, spec, metal, normal))
    assert torch.autograd.gradcheck(
        lambda a, r, s, nrm: brdf(normalize(nrm), v, l_dir, BRDFInputs(a, r, s)),
        (albedo, rough, spec, normal),
    )
