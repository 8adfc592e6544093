"""Microfacet BRDF of HyperDreamer's materials: GGX specular plus Fresnel-weighted Lambertian.

Conventions (every function here):

- directions are unit vectors pointing *away* from the surface point: ``normal``, ``view``
  (towards the camera) and ``light`` (towards the light); ``half = normalize(view + light)``;
- a material is ``albedo`` ``(..., 3)`` in [0, 1], perceptual ``roughness`` ``(..., 1)`` in
  [0, 1] (GGX width ``alpha = roughness ** 2``), ``specular`` ``(..., 1)`` in [0, 1] (the
  Fresnel reflectance at normal incidence of a dielectric, ``F0 = specular``) and optionally
  ``metallic`` ``(..., 1)``: ``F0 = lerp(specular, albedo, metallic)``, diffuse albedo
  ``albedo * (1 - metallic)``;
- the BRDF value ``f(l, v)`` excludes the cosine ``n . l``; it is zero when either direction is
  below the surface.

The model: ``f = kd * albedo_d / pi + F(v.h) D G / (4 (n.l) (n.v))`` with Trowbridge-Reitz
``D``, Smith height-correlated masking-shadowing ``G`` and Schlick's Fresnel ``F(c) = F0 +
(1 - F0) (1 - c) ** 5``. The diffuse weight ``kd = (1 - F(n.v)) (1 - F(n.l))`` takes away
(at least) what the specular lobe reflects, symmetrically in ``l`` and ``v``, so ``f`` is
reciprocal and its white furnace stays <= 1 at every angle (single scattering loses energy at
high roughness, so it is < 1 there). Schlick's ``F`` reaches 1 at grazing angles even for
``F0 = 0``, so no setting of ``specular`` gives a pure Lambertian (:func:`lambert` is that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

#: Smallest GGX alpha used (alpha = 0 is a delta lobe that a function cannot represent).
MIN_ALPHA = 1e-4
#: Guard for cosines and norms in denominators.
EPS = 1e-12


@dataclass
class BRDFInputs:
    """Per-point material: ``albedo`` ``(..., 3)``, ``roughness``/``specular``/``metallic``
    ``(..., 1)`` (``metallic`` None = dielectric)."""

    albedo: Float[Tensor, "*batch 3"]
    roughness: Float[Tensor, "*batch 1"]
    specular: Float[Tensor, "*batch 1"]
    metallic: Float[Tensor, "*batch 1"] | None = None


def dot(a: Float[Tensor, "*batch 3"], b: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 1"]:
    """Inner product over the last axis, keeping it (``... 1``)."""
    return (a * b).sum(-1, keepdim=True)


def normalize(x: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
    """Unit vectors (zero stays zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def reflect(view: Float[Tensor, "*batch 3"], normal: Float[Tensor, "*batch 3"]) -> Tensor:
    """Mirror direction of ``view`` about ``normal``: ``2 (n.v) n - v``."""
    return 2.0 * dot(normal, view) * normal - view


def alpha_from_roughness(roughness: Float[Tensor, "*batch 1"]) -> Float[Tensor, "*batch 1"]:
    """GGX width ``alpha = roughness ** 2`` (clamped below by :data:`MIN_ALPHA`)."""
    return (roughness * roughness).clamp_min(MIN_ALPHA)


def ggx_ndf(n_dot_h: Float[Tensor, "*batch 1"], alpha: Float[Tensor, "*batch 1"]) -> Tensor:
    """Trowbridge-Reitz normal distribution ``D(h) = a^2 / (pi ((n.h)^2 (a^2 - 1) + 1)^2)``;
    normalised so that ``int D(h) (n.h) dh = 1`` over the hemisphere."""
    a2 = alpha * alpha
    c = n_dot_h.clamp_min(0.0)
    denom = c * c * (a2 - 1.0) + 1.0
    return a2 / (math.pi * denom * denom)


def smith_visibility(
    n_dot_v: Float[Tensor, "*batch 1"],
    n_dot_l: Float[Tensor, "*batch 1"],
    alpha: Float[Tensor, "*batch 1"],
) -> Float[Tensor, "*batch 1"]:
    """Height-correlated Smith term divided by the microfacet denominator:
    ``V = G2 / (4 (n.l) (n.v)) = 0.5 / (n.l sqrt((n.v)^2 (1 - a^2) + a^2) + n.v sqrt(...))``."""
    a2 = alpha * alpha
    nv = n_dot_v.clamp_min(0.0)
    nl = n_dot_l.clamp_min(0.0)
    gv = nl * (nv * nv * (1.0 - a2) + a2).sqrt()
    gl = nv * (nl * nl * (1.0 - a2) + a2).sqrt()
    return 0.5 / (gv + gl).clamp_min(EPS)


def fresnel_schlick(
    f0: Float[Tensor, "*batch C"], v_dot_h: Float[Tensor, "*batch 1"]
) -> Float[Tensor, "*batch C"]:
    """Schlick's approximation ``F0 + (1 - F0) (1 - v.h)^5``."""
    return f0 + (1.0 - f0) * (1.0 - v_dot_h.clamp(0.0, 1.0)) ** 5


def base_reflectance(material: BRDFInputs) -> tuple[Tensor, Tensor]:
    """``(F0 (..., 3), diffuse albedo (..., 3))`` of a material (metallic mixes albedo in)."""
    f0 = material.specular.expand_as(material.albedo)
    diffuse = material.albedo
    if material.metallic is not None:
        f0 = f0 + (material.albedo - f0) * material.metallic
        diffuse = diffuse * (1.0 - material.metallic)
    return f0, diffuse


def brdf_terms(
    normal: Float[Tensor, "*batch 3"],
    view: Float[Tensor, "*batch 3"],
    light: Float[Tensor, "*batch 3"],
    material: BRDFInputs,
) -> tuple[Float[Tensor, "*batch 3"], Float[Tensor, "*batch 3"]]:
    """The diffuse and specular parts of ``f(l, v)`` (no cosine), each ``(..., 3)``."""
    n_dot_v = dot(normal, view)
    n_dot_l = dot(normal, light)
    half = normalize(view + light)
    n_dot_h = dot(normal, half)
    v_dot_h = dot(view, half)
    f0, diffuse_albedo = base_reflectance(material)
    alpha = alpha_from_roughness(material.roughness)
    fresnel = fresnel_schlick(f0, v_dot_h)
    above = ((n_dot_v > 0) & (n_dot_l > 0)).to(normal.dtype)
    kd = (1.0 - fresnel_schlick(f0, n_dot_v)) * (1.0 - fresnel_schlick(f0, n_dot_l))
    diffuse = kd * diffuse_albedo / math.pi
    specular = fresnel * ggx_ndf(n_dot_h, alpha) * smith_visibility(n_dot_v, n_dot_l, alpha)
    return diffuse * above, specular * above


def brdf(
    normal: Float[Tensor, "*batch 3"],
    view: Float[Tensor, "*batch 3"],
    light: Float[Tensor, "*batch 3"],
    material: BRDFInputs,
) -> Float[Tensor, "*batch 3"]:
    """``f(l, v)`` (no cosine): Fresnel-weighted Lambertian plus GGX specular."""
    diffuse, specular = brdf_terms(normal, view, light, material)
    return diffuse + specular


def lambert(albedo: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
    """The Lambertian BRDF ``albedo / pi``."""
    return albedo / math.pi


# ----------------------------------------------------------------------------- sampling


def tangent_frame(normal: Float[Tensor, "*batch 3"]) -> tuple[Tensor, Tensor]:
    """Two unit tangents ``(t, b)`` with ``(t, b, n)`` right-handed orthonormal (Frisvad's
    branchless construction of Duff et al. 2017)."""
    x, y, z = normal.unbind(-1)
    sign = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    a = -1.0 / (sign + z)
    b = x * y * a
    t = torch.stack([1.0 + sign * x * x * a, sign * b, -sign * x], -1)
    bt = torch.stack([b, sign + y * y * a, -y], -1)
    return t, bt


def to_world(local: Float[Tensor, "*batch 3"], normal: Float[Tensor, "*batch 3"]) -> Tensor:
    """Directions given in the tangent frame of ``normal`` (z = normal) in world axes."""
    t, b = tangent_frame(normal)
    return local[..., :1] * t + local[..., 1:2] * b + local[..., 2:] * normal


def sample_cosine(u: Float[Tensor, "*batch 2"]) -> Float[Tensor, "*batch 3"]:
    """Cosine-weighted hemisphere directions (local frame, z up); pdf ``cos / pi``."""
    r = u[..., :1].sqrt()
    phi = 2.0 * math.pi * u[..., 1:]
    z = (1.0 - u[..., :1]).clamp_min(0.0).sqrt()
    return torch.cat([r * phi.cos(), r * phi.sin(), z], -1)


def sample_ggx_half(
    u: Float[Tensor, "*batch 2"], alpha: Float[Tensor, "*batch 1"]
) -> Float[Tensor, "*batch 3"]:
    """Half vectors (local frame) with pdf ``D(h) (n.h)``."""
    a2 = alpha * alpha
    cos2 = (1.0 - u[..., :1]) / (1.0 + (a2 - 1.0) * u[..., :1])
    cos_t = cos2.clamp(0.0, 1.0).sqrt()
    sin_t = (1.0 - cos2).clamp(0.0, 1.0).sqrt()
    phi = 2.0 * math.pi * u[..., 1:]
    return torch.cat([sin_t * phi.cos(), sin_t * phi.sin(), cos_t], -1)


def hammersley(num: int, dtype=torch.float64) -> Float[Tensor, "N 2"]:
    """The 2D Hammersley point set ``((i + 0.5) / N, radical_inverse_2(i))``: deterministic,
    low-discrepancy quadrature nodes in [0, 1)^2."""
    i = torch.arange(num, dtype=torch.long)
    bits = torch.zeros(num, dtype=torch.float64)
    scale, k = 0.5, i.clone()
    while bool((k > 0).any()):
        bits = bits + (k & 1).to(torch.float64) * scale
        k = k >> 1
        scale *= 0.5
    return torch.stack([(i.to(torch.float64) + 0.5) / num, bits], -1).to(dtype)
