"""Captured scene -> relightable asset: per-vertex materials and an unknown environment map
fitted to the posed photos of a reconstructed mesh, then written as a GLB with relit renders.

The inputs are plain: a mesh, its per-vertex colours (the field's colour at the surface) and
posed sRGB photos. Photos are converted to linear radiance for the fit
(:func:`.inverse.fit_materials_and_light`, split-sum shading, light unknown); the initial albedo
is the linearised vertex colour and the initial map a uniform radiance of 1, under which a
Lambertian surface shows its albedo, so the fit starts from the vertex-colour guess. Scores
are PSNR in display (sRGB) space over the pixels the mesh covers.

:func:`write_capture` never overwrites: every file goes to its first free versioned name
(``materials.glb``, then ``materials.v002.glb``, ...; the same for the others), and the
summary ``materials.json`` lists the paths it wrote.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.atomic import write_bytes_versioned, write_json_versioned
from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh
from sceneforge.core.metrics import psnr
from sceneforge.stylize.hyperdreamer.envlight import prefilter_env, shade_split_sum, sky_envmap
from sceneforge.stylize.hyperdreamer.export import (
    CornerMaterials,
    build_asset,
    glb_bytes,
    linear_to_srgb,
    render_corner_materials,
    srgb_to_linear,
)
from sceneforge.stylize.hyperdreamer.inverse import (
    InverseRenderingConfig,
    InverseRenderingResult,
    SurfacePixels,
    fit_materials_and_light,
    interpolate_materials,
    surface_buffers,
)

#: Named procedural environment maps for relit renders (arguments of :func:`sky_envmap`).
NAMED_ENVMAPS: dict[str, dict] = {
    "noon": {
        "sun_direction": (0.2, 0.1, 1.0),
        "sun_color": (2.4, 2.3, 2.1),
        "sky_color": (0.3, 0.4, 0.6),
        "horizon_color": (0.45, 0.45, 0.45),
    },
    "sunset": {
        "sun_direction": (1.0, 0.3, 0.12),
        "sun_color": (2.6, 1.2, 0.45),
        "sky_color": (0.25, 0.2, 0.35),
        "horizon_color": (0.5, 0.3, 0.2),
    },
    "studio": {
        "sun_direction": (-0.4, -0.6, 0.7),
        "sun_color": (1.2, 1.2, 1.2),
        "sun_sharpness": 2.0,
        "sky_color": (0.5, 0.5, 0.5),
        "horizon_color": (0.4, 0.4, 0.4),
    },
}


class CaptureMaterialsError(ValueError):
    """Inputs the material capture cannot use (no views, views of mixed sizes, ...)."""


def named_envmap(name: str, height: int = 16) -> Float[Tensor, "H W 3"]:
    """The named procedural map (see :data:`NAMED_ENVMAPS`) at ``height x 2 height``."""
    if name not in NAMED_ENVMAPS:
        raise CaptureMaterialsError(
            f"unknown environment map {name!r}; named maps: {', '.join(NAMED_ENVMAPS)}"
        )
    return sky_envmap(height, **NAMED_ENVMAPS[name])


@dataclass
class CaptureFitConfig:
    """Material and light fit of a captured mesh, and its relit renders."""

    steps: int = 300
    """Adam steps of the joint material / light fit."""
    env_height: int = 8
    """Height of the fitted lat-long map (width = 2 x height; keep <= 32: dense prefilters)."""
    lr_materials: float = 0.05
    """Learning rate of the material logits."""
    lr_light: float = 0.05
    """Learning rate of the map's log radiance."""
    init_roughness: float = 0.6
    """Initial roughness of every vertex."""
    init_specular: float = 0.04
    """Initial specular F0 of every vertex (0.04: common dielectrics)."""
    smoothness: float = 1e-3
    """Weight of the material differences along mesh edges."""
    relight_maps: tuple[str, ...] = ("noon", "sunset", "studio")
    """Named procedural maps of the relit renders (noon, sunset, studio)."""
    relight_views: int = 3
    """Training views shown in each relit render."""
    relight_height: int = 16
    """Height of the named maps used for relit renders."""


def check_config(cfg: CaptureFitConfig) -> CaptureFitConfig:
    """``cfg`` if every setting is usable (map names included), else a clear error."""
    if cfg.steps < 0 or not 2 <= cfg.env_height <= 32:
        raise CaptureMaterialsError("steps must be >= 0 and env_height in 2..32")
    if not (0.05 < cfg.init_roughness < 1.0 and 0.0 < cfg.init_specular < 1.0):
        raise CaptureMaterialsError("init_roughness must be in (0.05, 1), init_specular in (0, 1)")
    if cfg.relight_views < 1 or cfg.relight_height < 2:
        raise CaptureMaterialsError("relight_views must be >= 1 and relight_height >= 2")
    for name in cfg.relight_maps:
        named_envmap(name, 2)
    return cfg


@dataclass
class PosedImages:
    """Posed photos of one size: ``images`` ``(N, H, W, 3)`` sRGB in [0, 1], with names."""

    cameras: Cameras
    images: Float[Tensor, "N H W 3"]
    names: list[str] = field(default_factory=list)


@dataclass
class CaptureFit:
    """The fitted materials and light, the surfaces of the fit views and the scores."""

    mesh: Mesh
    result: InverseRenderingResult
    surface: SurfacePixels
    scores: dict[str, float]
    fit_s: float


def _check_views(views: PosedImages, what: str) -> None:
    n = len(views.cameras)
    if n == 0:
        raise CaptureMaterialsError(f"no {what} views")
    if views.images.shape[0] != n:
        raise CaptureMaterialsError(f"{what}: {n} cameras but {views.images.shape[0]} images")
    h, w = views.images.shape[1:3]
    if any(int(x) != w for x in views.cameras.width) or any(
        int(y) != h for y in views.cameras.height
    ):
        raise CaptureMaterialsError(f"{what}: every camera must be {w}x{h} like the images")


def _render(surface: SurfacePixels, result: InverseRenderingResult) -> Tensor:
    """Split-sum radiance of the hit pixels under the fitted map (linear)."""
    with torch.no_grad():
        mat = interpolate_materials(
            result.materials.vertex_materials(), surface.corners, surface.bary
        )
        pre = prefilter_env(result.light(), InverseRenderingConfig().split_sum)
        return shade_split_sum(pre, surface.normal.float(), surface.view.float(), mat)


def display_psnr(linear: Tensor, target_srgb: Tensor) -> float:
    """PSNR (dB) of linear radiance shown in sRGB (clamped to [0, 1]) against sRGB pixels."""
    return psnr(linear_to_srgb(linear.double())[None], target_srgb.double()[None])


def fit_capture(
    mesh: Mesh,
    vertex_colors: Float[Tensor, "V 3"],
    views: PosedImages,
    heldout: PosedImages | None = None,
    config: CaptureFitConfig | None = None,
) -> CaptureFit:
    """Fit per-vertex albedo / roughness / specular and an unknown map to ``views`` starting
    from ``vertex_colors`` (sRGB in [0, 1]); scores on the fit views and on ``heldout``:
    ``initial_psnr`` (the starting guess), ``fit_psnr``, ``vertex_color_psnr`` (the unlit
    vertex colours), ``heldout_psnr`` / ``heldout_initial_psnr``."""
    cfg = check_config(config or CaptureFitConfig())
    if mesh.num_faces == 0:
        raise CaptureMaterialsError("the mesh has no faces")
    if tuple(vertex_colors.shape) != (mesh.vertices.shape[0], 3):
        raise CaptureMaterialsError(
            f"vertex colours must be ({mesh.vertices.shape[0]}, 3), got "
            f"{tuple(vertex_colors.shape)}"
        )
    _check_views(views, "fit")
    surface = surface_buffers(mesh, views.cameras)
    if surface.pixel.numel() == 0:
        raise CaptureMaterialsError("the mesh covers no pixel of the fit views")
    target = surface.from_images(views.images.double())
    icfg = InverseRenderingConfig(
        steps=0,
        lr_materials=cfg.lr_materials,
        lr_light=cfg.lr_light,
        env_height=cfg.env_height,
        init_radiance=1.0,
        init_roughness=cfg.init_roughness,
        init_specular=cfg.init_specular,
        smoothness=cfg.smoothness,
    )
    albedo0 = srgb_to_linear(vertex_colors.double()).float()
    linear_target = srgb_to_linear(target).float()
    initial = fit_materials_and_light(mesh, surface, linear_target, icfg, albedo0)
    scores = {"initial_psnr": display_psnr(_render(surface, initial), target)}
    corner = vertex_colors.double()[surface.corners]
    unlit = (corner * surface.bary.double()[..., None]).sum(1)
    scores["vertex_color_psnr"] = psnr(unlit[None], target[None])
    t0 = time.perf_counter()
    icfg.steps = cfg.steps
    result = fit_materials_and_light(mesh, surface, linear_target, icfg, albedo0)
    fit_s = time.perf_counter() - t0
    scores["fit_psnr"] = display_psnr(_render(surface, result), target)
    if heldout is not None and len(heldout.cameras):
        _check_views(heldout, "held-out")
        held = surface_buffers(mesh, heldout.cameras)
        if held.pixel.numel():
            ht = held.from_images(heldout.images.double())
            scores["heldout_psnr"] = display_psnr(_render(held, result), ht)
            scores["heldout_initial_psnr"] = display_psnr(_render(held, initial), ht)
    return CaptureFit(mesh, result, surface, scores, fit_s)


# ----------------------------------------------------------------------------- outputs


def _png_bytes(image: Tensor) -> bytes:
    from PIL import Image

    arr = (image.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _strip(images: Tensor) -> Tensor:
    """``(N, H, W, 3)`` side by side as one ``(H, N W, 3)`` image."""
    return images.permute(1, 0, 2, 3).reshape(images.shape[1], -1, 3)


def _pick(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of ``range(n)``."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def write_capture(
    out_dir: str | Path,
    fit: CaptureFit,
    views: PosedImages,
    config: CaptureFitConfig | None = None,
    info: dict | None = None,
) -> dict:
    """Write the asset and its renders into ``out_dir`` (first free versioned names):
    ``materials.glb``; ``envmap.npy`` (float32 linear ``(h, 2h, 3)``) and ``envmap.png``
    (sRGB preview, 8x enlarged); ``fit.png`` (photos over the fitted renders);
    ``relit_NAME.png`` per named map (the same views side by side); ``materials.json``
    (``info``, the scores, counts and written paths). Returns the summary."""
    cfg = check_config(config or CaptureFitConfig())
    out = Path(out_dir)
    mesh, result = fit.mesh, fit.result
    with torch.no_grad():  # everything is computed first: a failure leaves no file behind
        vertex = result.materials.vertex_materials()
        corners = CornerMaterials.from_vertices(vertex, mesh.faces)
        env = result.light().detach()
        glb = glb_bytes(build_asset(mesh, corners), "materials")
        preview = linear_to_srgb(env.double()).repeat_interleave(8, 0).repeat_interleave(8, 1)
        idx = _pick(len(views.cameras), cfg.relight_views)
        fitted = fit.surface.select(idx)
        pred = fitted.to_images(_render(fitted, result).double())[idx]
        top = _strip(views.images[idx].double())
        images = {"fit": torch.cat([top, _strip(linear_to_srgb(pred))], 0)}
        for name in cfg.relight_maps:
            env_n = named_envmap(name, cfg.relight_height)
            lit = render_corner_materials(mesh, views.cameras[idx], corners, env_n)
            images[f"relit_{name}"] = _strip(linear_to_srgb(lit))
    written: dict[str, str] = {"glb": str(write_bytes_versioned(out / "materials.glb", glb))}
    env_np = _npy_bytes(env.float().numpy())
    written["envmap"] = str(write_bytes_versioned(out / "envmap.npy", env_np))
    written["envmap_png"] = str(write_bytes_versioned(out / "envmap.png", _png_bytes(preview)))
    for name, img in images.items():
        written[name] = str(write_bytes_versioned(out / f"{name}.png", _png_bytes(img)))
    mean = {
        "albedo": [float(x) for x in vertex.albedo.mean(0)],
        "roughness": float(vertex.roughness.mean()),
        "specular": float(vertex.specular.mean()),
    }
    summary = {
        **(info or {}),
        "faces": int(mesh.num_faces),
        "vertices": int(mesh.vertices.shape[0]),
        "views": len(views.cameras),
        "view_names": list(views.names),
        "image_size": [int(views.images.shape[2]), int(views.images.shape[1])],
        "fit_pixels": int(fit.surface.pixel.numel()),
        "steps": len(result.losses),
        "fit_s": round(fit.fit_s, 3),
        **{k: round(v, 3) for k, v in fit.scores.items()},
        "mean_materials": mean,
        "relight_maps": list(cfg.relight_maps),
        "relight_views": [views.names[i] for i in idx] if views.names else idx,
        "files": written,
    }
    summary["summary"] = str(write_json_versioned(out / "materials.json", summary))
    return summary
