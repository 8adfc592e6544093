"""The HyperDreamer verbs of the ``sceneforge`` command line (registered in
:mod:`sceneforge.cli`): ``materials RUN_DIR OUT`` (a trained capture in, a relightable asset
out: per-vertex albedo / roughness / specular and the estimated environment light).

The mesh is the field's marching-cubes surface at the run's automatic iso level (as
``sceneforge export --what mesh``); a surface with more than ``--max-faces`` faces is
re-extracted from the same density lattice with a coarser marching-cubes step (2, 3, ...
lattice cells), which divides the face count by about the step squared. The fit views are
the run's training photos (evenly spaced), area-downscaled by an integer factor to at most
``--resolution`` pixels on the long side; held-out views come from the run's held-out photos,
else from unused training photos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from sceneforge.commands import Flat, table
from sceneforge.stylize.hyperdreamer.capture import CaptureFitConfig, PosedImages

Pos = tyro.conf.Positional


class MaterialsError(ValueError):
    """A run folder or output folder ``sceneforge materials`` cannot use; names the path."""


@dataclass
class MaterialsConfig:
    """``sceneforge materials RUN_DIR OUT``: which mesh and which views the fit uses."""

    views: int = 8
    """Training photos the materials are fitted to (evenly spaced over the run's)."""
    heldout: int = 2
    """Photos scored but not fitted (the run's held-out photos first; 0 = none)."""
    resolution: int = 128
    """Longest side of the fit images in pixels (integer area downscale of the photos)."""
    mesh_resolution: int = 96
    """Marching-cubes lattice points per side of the scene box."""
    mesh_level: float = 0.0
    """Density iso level; 0 = the run's automatic level (as ``sceneforge export``)."""
    max_faces: int = 20_000
    """Most mesh faces (a coarser marching-cubes step is used above it; CPU-friendly fit)."""
    threads: int = 1
    """Torch CPU threads."""


def resolve_run(run_dir: Path, out_dir: Path) -> Path:
    """The folder holding the run's checkpoint (``RUN_DIR``, or ``RUN_DIR/field`` of a
    ``sceneforge run`` output); refuses a missing folder, one without a checkpoint and an
    ``OUT`` that is the run folder."""
    from sceneforge.core import run_files

    if not run_dir.exists():
        raise MaterialsError(f"{run_dir}: no such run folder")
    if not run_dir.is_dir():
        raise MaterialsError(f"{run_dir}: not a folder (expected a trained run folder)")
    if out_dir.resolve() == run_dir.resolve():
        raise MaterialsError(f"{out_dir}: OUT is the run folder itself; choose another folder")
    for cand in (run_dir, run_dir / run_files.FIELD_DIR):
        if (cand / run_files.CHECKPOINT).is_file():
            if out_dir.resolve() == cand.resolve():
                raise MaterialsError(f"{out_dir}: OUT is the run folder itself")
            return cand
    raise MaterialsError(
        f"{run_dir}: not a trained run (no {run_files.CHECKPOINT}); train one with "
        "`sceneforge train SCENE RUN_DIR` or `sceneforge run`"
    )


@torch.no_grad()
def extract_mesh(trainer, cfg: MaterialsConfig) -> tuple:
    """Marching-cubes mesh of the field: ``(Mesh, vertex colours (V, 3) in [0, 1], info)``."""
    try:
        from skimage.measure import marching_cubes
    except ImportError as e:
        raise ImportError(
            "sceneforge materials needs scikit-image: pip install scikit-image"
        ) from e

    from sceneforge.core.meshes import Mesh
    from sceneforge.fields.export import ExportConfig, auto_level, density_lattice, vertex_colors

    if trainer.model_name != "nerf":
        raise MaterialsError(
            f"the {trainer.model_name!r} model has no density field to mesh; "
            "`sceneforge materials` needs a NeRF run"
        )
    ecfg = ExportConfig(what="mesh", mesh_resolution=cfg.mesh_resolution)
    sigma, box = density_lattice(trainer, cfg.mesh_resolution, ecfg.chunk_points)
    level = cfg.mesh_level if cfg.mesh_level > 0 else auto_level(trainer, ecfg)
    vol = sigma.numpy()
    if not (vol.max() > level > vol.min()):
        raise MaterialsError(
            f"empty mesh: the field's density never crosses the iso level {level:.3g} "
            f"(range {vol.min():.3g}..{vol.max():.3g}); train longer or set --mesh-level"
        )
    spacing = tuple(((box[1] - box[0]) / (cfg.mesh_resolution - 1)).numpy())
    step = 1
    while True:
        verts, faces, normals, _ = marching_cubes(vol, level=level, spacing=spacing, step_size=step)
        if len(faces) <= cfg.max_faces or step >= cfg.mesh_resolution // 4:
            break
        step += 1
    if len(faces) == 0:
        raise MaterialsError(f"empty mesh: no surface at the iso level {level:.3g}")
    if len(faces) > cfg.max_faces:
        raise MaterialsError(
            f"the mesh keeps {len(faces)} faces at the coarsest step {step}; "
            "raise --max-faces or lower --mesh-resolution"
        )
    verts = verts + box[0].numpy()
    faces = np.ascontiguousarray(faces[:, ::-1])  # our inside is the high-density side
    rgb = vertex_colors(trainer, verts, normals, ecfg.chunk_points)
    mesh = Mesh(torch.from_numpy(verts).double(), torch.from_numpy(faces).long())
    colors = torch.from_numpy(rgb).double() / 255.0
    info = {"mesh_level": float(level), "mesh_step": step, "mesh_resolution": cfg.mesh_resolution}
    return mesh, colors, info


def _even(indices: list[int], k: int) -> list[int]:
    if k >= len(indices):
        return list(indices)
    return [indices[round(i * (len(indices) - 1) / max(k - 1, 1))] for i in range(k)]


def capture_views(trainer, cfg: MaterialsConfig) -> tuple[PosedImages, PosedImages | None, int]:
    """Fit views, held-out views (None: none) and the downscale factor used."""
    from sceneforge.fields.datasets import downscale_image, scale_cameras

    scene = trainer.scene
    cams = scene.cameras
    train = list(trainer.train_indices)
    if not train:
        raise MaterialsError("the run has no training views")
    size = (int(cams.width[train[0]]), int(cams.height[train[0]]))

    def same(i: int) -> bool:
        return (int(cams.width[i]), int(cams.height[i])) == size

    factor = max(1, math.ceil(max(size) / cfg.resolution))
    fit_idx = _even([i for i in train if same(i)], cfg.views)
    rest = [i for i in list(trainer.eval_indices) + train if same(i) and i not in fit_idx]
    held_idx = _even(rest, cfg.heldout) if cfg.heldout else []

    def load(idx: list[int]) -> PosedImages:
        imgs = [downscale_image(scene.load_image(i).float(), factor) for i in idx]
        return PosedImages(
            scale_cameras(cams[idx], factor).to(dtype=torch.float64),
            torch.stack(imgs).clamp(0, 1),
            [scene.image_names[i] for i in idx],
        )

    return load(fit_idx), (load(held_idx) if held_idx else None), factor


def _limits(cfg: MaterialsConfig) -> list[tuple[str, float, float]]:
    """``(option, value, smallest allowed)`` of the options checked before any work."""
    return [
        ("views", cfg.views, 1),
        ("heldout", cfg.heldout, 0),
        ("resolution", cfg.resolution, 8),
        ("mesh_resolution", cfg.mesh_resolution, 8),
        ("max_faces", cfg.max_faces, 1),
        ("mesh_level", cfg.mesh_level, 0.0),
    ]


def materials(
    run_dir: str | Path,
    out_dir: str | Path,
    config: MaterialsConfig | None = None,
    fit_config: CaptureFitConfig | None = None,
    log=print,
) -> dict:
    """The whole verb: checks, load, mesh, views, fit, outputs; returns the summary."""
    from sceneforge.fields.api import load_trained
    from sceneforge.stylize.hyperdreamer.capture import check_config, fit_capture, write_capture

    cfg = config or MaterialsConfig()
    fcfg = fit_config or CaptureFitConfig()
    run, out = Path(run_dir), Path(out_dir)
    bad = [f"{k} = {v} (must be >= {lo})" for k, v, lo in _limits(cfg) if v < lo]
    if bad:
        raise MaterialsError("bad option: " + "; ".join(bad))
    field_dir = resolve_run(run, out)
    check_config(fcfg)  # bad fit settings or map names fail before any work
    torch.set_num_threads(max(1, cfg.threads))
    trainer = load_trained(field_dir, device="cpu")
    mesh, colors, info = extract_mesh(trainer, cfg)
    log(f"[materials] mesh: {mesh.num_faces} faces, {mesh.vertices.shape[0]} vertices")
    views, heldout, factor = capture_views(trainer, cfg)
    log(f"[materials] fitting {len(views.cameras)} views at 1/{factor} for {fcfg.steps} steps")
    fit = fit_capture(mesh, colors, views, heldout, fcfg)
    info = {"run_dir": str(field_dir), **info, "downscale": factor}
    info["heldout_views"] = heldout.names if heldout is not None else []
    return write_capture(out, fit, views, fcfg, info)


@dataclass
class Materials:
    """Captured scene -> relightable asset: the run's mesh with fitted per-vertex albedo,
    roughness and specular and the estimated environment light. OUT gets materials.glb,
    envmap.npy/.png, fit.png, relit_NAME.png and materials.json (new versions, never
    overwritten)."""

    run_dir: Pos[Path]
    """Run folder written by ``sceneforge train`` (or a ``sceneforge run`` output)."""
    out_dir: Pos[Path]
    """Output folder (files get new versioned names; nothing is overwritten)."""
    config: Annotated[MaterialsConfig, Flat] = field(default_factory=MaterialsConfig)
    fit: Annotated[CaptureFitConfig, Flat] = field(default_factory=CaptureFitConfig)

    def run(self) -> int:
        summary = materials(self.run_dir, self.out_dir, self.config, self.fit)
        keys = ("faces", "views", "steps", "initial_psnr", "fit_psnr", "vertex_color_psnr")
        keys += ("heldout_initial_psnr", "heldout_psnr", "fit_s")
        print(table(summary, keys))
        for name, path in summary["files"].items():
            print(f"{name}: {path}")
        print(f"summary: {summary['summary']}")
        return 0
