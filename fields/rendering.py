"""Volume rendering of RGB, depth, accumulation and feature channels, with a background.

Pure functions on dense ``(R, S)`` sample layouts, plus :func:`render_rays` which runs the
field only on the samples an occupancy grid keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.fields.field import RadianceField
from sceneforge.fields.sampling import OccupancyGrid, SamplerConfig, ray_intervals


@dataclass
class RenderConfig:
    """How rays are composited."""

    background: Literal["black", "white", "learned", "none"] = "learned"
    """Colour behind the field: fixed, a learned RGB, or none (transparent)."""


def render_weights(
    sigma: Float[Tensor, "R S"], deltas: Float[Tensor, "R S"]
) -> tuple[Float[Tensor, "R S"], Float[Tensor, "R S"]]:
    """Compositing weights ``w_i = (1 - exp(-sigma_i delta_i)) T_i`` and transmittance ``T_i``.

    ``T_i = exp(-sum_{j<i} sigma_j delta_j)``; the weights of a ray sum to ``1 - T_end <= 1``.
    """
    sd = sigma * deltas
    excl = torch.cumsum(sd, dim=-1) - sd
    trans = torch.exp(-excl)
    alpha = 1.0 - torch.exp(-sd)
    return alpha * trans, trans


def composite(
    weights: Float[Tensor, "R S"], values: Float[Tensor, "R S C"]
) -> Float[Tensor, "R C"]:
    """Weighted sum of per-sample values along each ray."""
    return (weights[..., None] * values).sum(-2)


def apply_background(
    rgb: Float[Tensor, "R 3"], accumulation: Float[Tensor, " R"], background: Tensor | None
) -> Float[Tensor, "R 3"]:
    """``rgb + (1 - acc) * background`` (no-op without a background)."""
    if background is None:
        return rgb
    return rgb + (1.0 - accumulation)[:, None] * background.to(rgb)


def render_rays(
    field: RadianceField,
    grid: OccupancyGrid | None,
    sampler: SamplerConfig,
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    image_idx: Int[Tensor, " R"] | None = None,
    background: Tensor | None = None,
    generator: torch.Generator | None = None,
    z_per_t: Float[Tensor, " R"] | None = None,
    compute_normals: bool = False,
    num_samples: int | None = None,
) -> dict[str, Tensor]:
    """Render a batch of rays.

    Returns ``rgb`` (R, 3), ``accumulation`` (R,), ``distance`` (expected ray distance, R),
    ``depth`` (expected camera z-depth when ``z_per_t`` is given, else the distance),
    ``features`` (R, C) when the field has feature channels, ``normals`` when asked,
    ``weights`` (R, S), ``t`` (R, S), ``deltas`` (interval lengths, R, S) and ``num_samples`` (field evaluations).
    Ray distances are not normalised by accumulation (empty rays have depth 0).
    """
    t, deltas, valid = ray_intervals(
        origins, directions, field.box, sampler, generator, num_samples
    )
    r, s = t.shape
    pts = origins[:, None, :] + t[..., None] * directions[:, None, :]
    flat_pts = pts.reshape(-1, 3)
    keep: Bool[Tensor, " RS"] = valid.reshape(-1)
    if grid is not None:
        keep = keep & grid.query(field.box.normalize(flat_pts))
    sel = keep.nonzero()[:, 0]
    if sampler.transmittance_threshold > 0 and sel.numel() > 0:
        # cheap no-grad density pass: drop samples hidden behind opaque matter
        with torch.no_grad():
            sig0, _ = field.density(flat_pts[sel])
            sd = torch.zeros(r * s, dtype=origins.dtype, device=origins.device)
            sd = sd.index_put((sel,), sig0).view(r, s) * deltas
            trans = torch.exp(-(torch.cumsum(sd, dim=-1) - sd)).reshape(-1)
        sel = sel[trans[sel] > sampler.transmittance_threshold]
    ray_of = sel // s
    sigma = torch.zeros(r * s, dtype=origins.dtype, device=origins.device)
    n_out = 3 + field.cfg.num_feature_channels
    values = torch.zeros(r * s, n_out, dtype=origins.dtype, device=origins.device)
    if sel.numel() > 0:
        x = flat_pts[sel]
        d = directions[ray_of]
        img = image_idx[ray_of] if image_idx is not None else None
        out = field(x, d, img)
        sigma = sigma.index_put((sel,), out["density"])
        v = out["rgb"] if "features" not in out else torch.cat([out["rgb"], out["features"]], -1)
        values = values.index_put((sel,), v)
    sigma = sigma.view(r, s)
    weights, _ = render_weights(sigma, deltas)
    vals = composite(weights, values.view(r, s, n_out))
    acc = weights.sum(-1)
    dist = (weights * t).sum(-1)
    result = {
        "rgb": apply_background(vals[:, :3], acc, background),
        "accumulation": acc,
        "distance": dist,
        "depth": dist * z_per_t if z_per_t is not None else dist,
        "weights": weights,
        "t": t,
        "deltas": deltas,
        "num_samples": torch.tensor(sel.numel()),
    }
    if field.cfg.num_feature_channels > 0:
        result["features"] = vals[:, 3:]
    if compute_normals:
        n = torch.zeros(r * s, 3, dtype=origins.dtype, device=origins.device)
        if sel.numel() > 0:
            n = n.index_put((sel,), field.normals(flat_pts[sel]))
        result["normals"] = composite(weights, n.view(r, s, 3))
    return result


def background_color(kind: str, learned: Tensor | None) -> Tensor | None:
    """The background colour tensor for a :class:`RenderConfig` background kind."""
    if kind == "black":
        return torch.zeros(3)
    if kind == "white":
        return torch.ones(3)
    if kind == "learned":
        if learned is None:
            raise ValueError("learned background needs its parameter")
        return torch.sigmoid(learned)
    if kind == "none":
        return None
    raise ValueError(f"unknown background {kind!r}; use black, white, learned or none")
