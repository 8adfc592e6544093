"""``sceneforge demo``: the main job on a procedurally generated scene, checked for quality.

The scene (four textured objects on a bounded ground square, black around it, an orbit of
cameras) is rendered by our own renderer, so nothing is downloaded and the true cameras are
known. Its textures are smooth enough for a field to fit at the working resolution in a few
hundred CPU steps, yet detailed enough for SIFT. The demo runs
:func:`sceneforge.pipeline.run` on its images, removes one object with a ``--mask-box``
(computed from the ground truth, carried into the reconstruction's frame by a Sim3 fitted
on the camera centres), and prints the quality floor: all views registered, held-out PSNR
(every 8th view, never trained on, rendered from its reconstructed camera).

Every trainer, field and sampler setting the demo depends on is pinned in
:func:`demo_trainer_config` (not taken from the library defaults), and training runs for a
fixed number of steps on one thread, so its result does not depend on the machine's load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sceneforge.core import run_files
from sceneforge.core.atomic import atomic_write_json
from sceneforge.core.timing import cpu_seconds
from sceneforge.fields.api import RenderConfig, TrainConfig
from sceneforge.fields.encodings import HashGridConfig, TriPlaneConfig
from sceneforge.fields.field import FieldConfig
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.rendering import RenderConfig as CompositeConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import TrainerConfig
from sceneforge.inpaint.complete import CompleteConfig
from sceneforge.pipeline import RunConfig


def demo_trainer_config() -> TrainerConfig:
    """The demo's field training, every setting explicit (library defaults may change)."""
    return TrainerConfig(
        max_steps=600,
        max_seconds=None,
        batch_rays=2048,
        lr_final_factor=0.1,
        holdout_every=8,
        eval_every=0,
        eval_max_images=0,
        checkpoint_every=200,
        log_every=25,
        seed=0,
        downscale=2,
        use_masks=False,
        scene_box="bounded",  # object-centric orbit: a box around the sparse points
        inner_scale=1.0,
        progress=True,
        tensorboard=True,
        deterministic=True,
        device="cpu",
        num_threads=1,
        model="nerf",
        nerf=NerfConfig(
            lr=1e-2,
            grid_lr=0.1,
            density_tv_weight=0.0,
            color_affine_weight=1e-3,
            chunk_rays=8192,
            field=FieldConfig(
                encoding="triplane",
                hash=HashGridConfig(),  # unused by the tri-plane encoding
                triplane=TriPlaneConfig(resolutions=(32, 64, 128, 256), features=8, init_scale=0.1),
                hidden_dim=64,
                geo_feat_dim=15,
                color_hidden_dim=64,
                color_layers=1,
                sh_degree=4,
                appearance_dim=0,
                num_feature_channels=0,
                density_bias=-3.0,
                density="grid",
                # A coarse explicit density grid: a 128^3 grid (the image-size default) fits the
                # 21 training views with semi-transparent fog and generalises far worse.
                density_grid_resolution=48,
                # Start from a visible fog (opacity 0.05 per voxel): from a nearly empty grid
                # (1e-3) the colours saturate and the field stays a grey fog (21 dB held out).
                density_grid_init=0.05,
            ),
            sampler=SamplerConfig(
                num_samples=96,
                near=0.05,
                far=1000.0,
                sample_budget=24.0,
                min_samples=16,
                transmittance_threshold=1e-3,
                grid_resolution=64,
                grid_update_every=16,
                grid_warmup_steps=128,
                grid_decay=0.95,
                grid_alpha_threshold=0.01,
            ),
        ),
        render=CompositeConfig(background="learned"),
    )


def _demo_run_config() -> RunConfig:
    return RunConfig(
        # the demo's quality floor is measured on CPU with the tri-plane (CI has no GPU)
        device="cpu",
        train=TrainConfig(trainer=demo_trainer_config()),
        # the box's occlusion test renders at 1/4 size (IoU 0.99 with full-size renders)
        complete=CompleteConfig(mask_render_downscale=4),
        render=RenderConfig(path="orbit", num_frames=24, fps=24, video=True, depth=False),
    )


@dataclass
class DemoConfig:
    """``sceneforge demo [OUT_DIR]``: the main job on bundled (procedural) data."""

    num_views: int = 24
    """Cameras on the orbit."""
    size: int = 256
    """Image width and height in pixels."""
    seed: int = 0
    """Seed of the procedural scene."""
    object_frequency: float = 3.0
    """Coarsest texture frequency of the objects (cells per unit; the finest octave is 8x)."""
    ground_frequency: float = 1.5
    """Coarsest texture frequency of the ground square."""
    ground_size: float = 2.6
    """Side of the ground square (the objects span about 1.5 units)."""
    complete: bool = True
    """Remove one object with a mask box and complete the scene."""
    min_psnr: float = 22.0
    """Quality floor: held-out PSNR (dB) of the trained field."""
    run: RunConfig = field(default_factory=_demo_run_config)
    """Pipeline settings (the demo sets the mask box, steps and downscale)."""
    train_steps: int = 600
    """Field training steps (a step budget: the same result on a busy or an idle machine)."""
    downscale: int = 2
    """Field training / rendering / completion at 1/downscale of the image size."""
    complete_warmup_steps: int = 200
    """Completion: steps on unmasked pixels before the first dataset update."""
    complete_update_every: int = 100
    """Completion: steps between dataset updates (and after the last one)."""
    complete_rounds: int = 2
    """Completion: number of dataset updates."""


def demo_scene_config(cfg: DemoConfig):
    """The :class:`~sceneforge.core.synthetic.SyntheticSceneConfig` of the demo scene."""
    from sceneforge.core.synthetic import SyntheticSceneConfig

    return SyntheticSceneConfig(
        scene="objects",
        rig="orbit",
        num_views=cfg.num_views,
        width=cfg.size,
        height=cfg.size,
        ground_plane=True,
        ground_size=cfg.ground_size,
        ground_frequency=cfg.ground_frequency,
        object_frequency=cfg.object_frequency,
        seed=cfg.seed,
        elevation_deg=(20.0, 45.0),
    )


def render_demo_images(out: Path, cfg: DemoConfig):
    """Render the demo scene and write its images as PNGs; returns the scene (ground truth)."""
    from sceneforge.core.image_io import write_image_atomic
    from sceneforge.core.synthetic import make_scene

    scene = make_scene(demo_scene_config(cfg))
    images = out / run_files.DEMO_IMAGES_DIR
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

    rec = load_scene(sfm_dir / run_files.SFM_MODEL_DIR, images_dir=images_dir)
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
    """Run the demo into ``out_dir``; returns its summary (``ok`` says if the floor was met).

    ``stage_s`` are wall seconds, ``stage_cpu_s`` CPU seconds of this process (with one
    torch thread about the wall time on an idle machine).
    """
    from sceneforge.core.progress import RunLog
    from sceneforge.core.run_files import LOG_FILE
    from sceneforge.pipeline import run

    cfg = cfg or DemoConfig()
    out = Path(out_dir)
    t0, c0 = time.perf_counter(), cpu_seconds()
    inputs, run_dir = out / run_files.DEMO_INPUT_DIR, out / run_files.DEMO_RUN_DIR
    if not isinstance(log, RunLog):  # the run's log file gets the demo's messages too
        log = RunLog(run_dir / LOG_FILE, console=log)
    images_dir = inputs / run_files.DEMO_IMAGES_DIR
    truth = render_demo_images(inputs, cfg)
    t_render, c_render = time.perf_counter() - t0, cpu_seconds() - c0
    run_cfg = cfg.run
    trainer = replace(run_cfg.train.trainer, downscale=cfg.downscale, max_steps=cfg.train_steps)
    train = replace(run_cfg.train, max_steps=cfg.train_steps, max_seconds=None, trainer=trainer)
    run_cfg = replace(run_cfg, train=train)
    if cfg.complete:
        # Reconstruct first (resumable), then place the box in the reconstruction's frame.
        run(images_dir, run_dir, run_cfg, log=log, stop_after="reconstruct")
        box = object_box_in_reconstruction(truth, run_dir / run_files.SFM_DIR, images_dir)
        log(f"mask box (reconstruction frame): {' '.join(f'{x:.3f}' for x in box)}")
        upd = replace(
            run_cfg.complete.update,
            warmup_steps=cfg.complete_warmup_steps,
            update_every=cfg.complete_update_every,
            num_rounds=cfg.complete_rounds,
            final_steps=cfg.complete_update_every,
        )
        run_cfg = replace(run_cfg, mask_box=box, complete=replace(run_cfg.complete, update=upd))
    stages = run(images_dir, run_dir, run_cfg, log=log)
    rec = stages["reconstruct"]
    psnr = float(stages["train"]["psnr"])
    ok = rec["num_registered"] == rec["num_images"] and psnr >= cfg.min_psnr
    summary = {
        "registered": f"{rec['num_registered']}/{rec['num_images']}",
        "heldout_psnr_db": psnr,
        "num_heldout_views": stages["train"].get("num_eval_images"),
        "min_psnr_db": cfg.min_psnr,
        "ok": ok,
        "render_scene_s": t_render,
        "render_scene_cpu_s": c_render,
        "stage_s": {k: v["seconds"] for k, v in stages.items()},
        "stage_cpu_s": {k: v.get("cpu_seconds", float("nan")) for k, v in stages.items()},
        "total_s": time.perf_counter() - t0,
        "total_cpu_s": cpu_seconds() - c0,
        "report": str(run_dir / run_files.REPORT_HTML),
        "log": str(run_dir / LOG_FILE),
    }
    atomic_write_json(out / run_files.DEMO_SUMMARY, summary)
    return summary
