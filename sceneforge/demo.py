"""``sceneforge demo``: the main job on a procedurally generated scene, checked for quality.

The scene (textured objects on a ground plane, an orbit of cameras) is rendered by our own
renderer, so nothing is downloaded and the true cameras are known. The demo runs
:func:`sceneforge.pipeline.run` on its images, removes one object with a ``--mask-box``
(computed from the ground truth, carried into the reconstruction's frame by a Sim3 fitted
on the camera centres), and prints the quality floor: all views registered, held-out PSNR.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sceneforge.pipeline import RunConfig


@dataclass
class DemoConfig:
    """``sceneforge demo [OUT_DIR]``: the main job on bundled (procedural) data."""

    num_views: int = 24
    """Cameras on the orbit."""
    size: int = 256
    """Image width and height in pixels."""
    seed: int = 0
    """Seed of the procedural scene."""
    complete: bool = True
    """Remove one object with a mask box and complete the scene."""
    min_psnr: float = 22.0
    """Quality floor: held-out PSNR (dB) of the trained field."""
    run: RunConfig = field(default_factory=RunConfig)
    """Pipeline settings (the demo sets the mask box and a time budget)."""
    train_seconds: float = 150.0
    """Training budget of the field, in seconds."""
    downscale: int = 2
    """Field training / rendering / completion at 1/downscale of the image size."""
    complete_warmup_steps: int = 200
    """Completion: steps on unmasked pixels before the first dataset update."""
    complete_update_every: int = 100
    """Completion: steps between dataset updates (and after the last one)."""
    complete_rounds: int = 2
    """Completion: number of dataset updates."""


def render_demo_images(out: Path, cfg: DemoConfig):
    """Render the demo scene and write its images as PNGs; returns the scene (ground truth)."""
    from sceneforge.core.image_io import write_image_atomic
    from sceneforge.core.synthetic import SyntheticSceneConfig, make_scene

    scene = make_scene(
        SyntheticSceneConfig(
            scene="objects",
            rig="orbit",
            num_views=cfg.num_views,
            width=cfg.size,
            height=cfg.size,
            ground_plane=True,
            seed=cfg.seed,
            elevation_deg=(20.0, 45.0),
        )
    )
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(len(scene)):
        p = images / f"view_{i:03d}.png"
        if not p.exists():
            write_image_atomic(p, scene.images[i].numpy())
    return scene


def object_box_in_reconstruction(
    truth, sfm_dir: Path, images_dir: Path, object_id: int = 0, pad: float = 0.05
):
    """Axis-aligned box around a ground-truth object, in the reconstruction's world frame."""
    import torch

    from sceneforge.core.cameras import invert_rigid
    from sceneforge.core.io import load_scene
    from sceneforge.core.metrics import umeyama_sim3

    rec = load_scene(sfm_dir / "sparse" / "0", images_dir=images_dir)
    idx = [int(Path(n).stem.split("_")[-1]) for n in rec.image_names]
    c_rec = invert_rigid(rec.cameras.cam_from_world.double())[..., 3]
    c_gt = invert_rigid(truth.cameras.cam_from_world[idx].double())[..., 3]
    s, R, t = umeyama_sim3(c_gt, c_rec)  # X_rec = s R X_gt + t
    mesh = truth.metadata["mesh"]
    sel = mesh.face_object == object_id
    v = mesh.vertices[mesh.faces[sel].reshape(-1)].double()
    lo, hi = v.min(0).values - pad, v.max(0).values + pad
    corners = torch.stack(
        [
            torch.stack([a, b, c])
            for a in (lo[0], hi[0])
            for b in (lo[1], hi[1])
            for c in (lo[2], hi[2])
        ]
    )
    cr = s * corners @ R.T + t
    return tuple(cr.min(0).values.tolist() + cr.max(0).values.tolist())


def demo(
    out_dir: str | Path, cfg: DemoConfig | None = None, log: Callable[[str], None] = print
) -> dict:
    """Run the demo into ``out_dir``; returns its summary (``ok`` says if the floor was met)."""
    from sceneforge.pipeline import run

    cfg = cfg or DemoConfig()
    out = Path(out_dir)
    t0 = time.perf_counter()
    truth = render_demo_images(out / "input", cfg)
    t_render = time.perf_counter() - t0
    run_cfg = cfg.run
    # Object-centric orbit: a box around the sparse points beats scene contraction here.
    trainer = replace(run_cfg.train.trainer, downscale=cfg.downscale, scene_box="bounded")
    train = replace(run_cfg.train, max_seconds=cfg.train_seconds, trainer=trainer)
    run_cfg = replace(run_cfg, train=train)
    if cfg.complete:
        # Reconstruct first (resumable), then place the box in the reconstruction's frame.
        run(out / "input" / "images", out / "run", run_cfg, log=log, stop_after="reconstruct")
        box = object_box_in_reconstruction(truth, out / "run" / "sfm", out / "input" / "images")
        log(f"mask box (reconstruction frame): {' '.join(f'{x:.3f}' for x in box)}")
        upd = replace(
            run_cfg.complete.update,
            warmup_steps=cfg.complete_warmup_steps,
            update_every=cfg.complete_update_every,
            num_rounds=cfg.complete_rounds,
            final_steps=cfg.complete_update_every,
        )
        run_cfg = replace(run_cfg, mask_box=box, complete=replace(run_cfg.complete, update=upd))
    stages = run(out / "input" / "images", out / "run", run_cfg, log=log)
    rec = stages["reconstruct"]
    psnr = float(stages["train"]["psnr"])
    ok = rec["num_registered"] == rec["num_images"] and psnr >= cfg.min_psnr
    summary = {
        "registered": f"{rec['num_registered']}/{rec['num_images']}",
        "heldout_psnr_db": psnr,
        "min_psnr_db": cfg.min_psnr,
        "ok": ok,
        "render_scene_s": t_render,
        "stage_s": {k: v["seconds"] for k, v in stages.items()},
        "total_s": time.perf_counter() - t0,
        "report": str(out / "run" / "report.html"),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary
