"""Field training on CPU budgets: held-out PSNR / SSIM, rays/s, samples per ray, peak memory.

One training run per scene, paused at each cumulative budget (2, 5 and 10 minutes by default)
to evaluate on the held-out views (every 8th image). Budgets are **CPU seconds of this
process spent in training steps** (``time.process_time``; evaluation not counted) with torch
pinned to one thread, so on an idle machine they equal wall seconds, and on a shared,
oversubscribed one they do not stretch with the load. Scenes: the synthetic 64x64 turntable
(exact ground truth, 21 train / 3 held-out views), blowtorch (LLFF poses, downscaled, whole
photos, contracted scene) and blowtorch-object (the same photos with the background outside
the foreground masks set to black, a bounded box around the masks' visual hull and a mask
loss: the object protocol of NeRD-style evaluations); on request (``--scenes``) fern (posed
by our SfM, 353x264) and room-1080p (a generated 1920x1080 hand-held capture trained at
960x540). Held-out metrics are reported raw (mean
appearance embedding) and colour-corrected (``cc``: per-image least-squares affine colour
transform, see ``sceneforge.fields.evaluation``).

    .venv/bin/python benchmarks/fields.py --jobs 3            # budgets 120 300 600 CPU s
    .venv/bin/python benchmarks/fields.py --budgets 30 60 --scenes synthetic --no-results

Writes the ``### CPU budgets`` table of ``## Fields`` in benchmarks/RESULTS.md (unless
``--no-results``) and, with ``--json PATH``, one JSON object per row.
No peer implementation runs in this script (see benchmarks/fields_nerfacto.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from _sections import replace_section

from sceneforge.fields.trainer import Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "### CPU budgets (benchmarks/fields.py)"
GAUSSIAN_SECTION = "### CPU budgets, 3D Gaussians (benchmarks/fields.py --model gaussians)"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic_setup() -> tuple:
    from sceneforge.core.synthetic import turntable_scene

    scene = turntable_scene(num_views=24, size=64)
    cfg = TrainerConfig(
        max_steps=20000,
        batch_rays=1024,
        scene_box="bounded",
        use_masks=False,  # synthetic masks mark objects, not unusable pixels
        progress=False,
        tensorboard=False,
        num_threads=1,
    )
    return scene, cfg


def blowtorch_setup(downscale: int) -> tuple:
    from sceneforge.core.io import load_scene

    scene = load_scene(DATA / "scenes" / "blowtorch")
    cfg = TrainerConfig(
        max_steps=5000,
        batch_rays=1024,  # same quality per CPU second as 2048 early on, more steps
        downscale=downscale,
        scene_box="unbounded",
        use_masks=False,  # blowtorch masks are foreground masks: train on the whole photo
        progress=False,
        tensorboard=False,
        num_threads=1,
    )
    cfg.nerf.field.appearance_dim = 8
    # LLFF near bounds are 1.5-5.6 (one image 0.69): starting rays at 1.0 instead of 0.05
    # removes near-camera floaters (held-out PSNR 15.58 -> 15.82 at 60 CPU s, 15.4 -> 15.68
    # at 120 s; foreground 15.59 -> 16.01 and 14.9 -> 15.41).
    cfg.nerf.sampler.near = 1.0
    # Cameras are 2.6-6.5 from the focus; a half-size box (cameras in the contracted part)
    # gives the object twice the grid resolution: with near 1.0, 15.82 -> 16.15 at 60 s
    # (foreground 16.01 -> 15.64) and 15.68 -> 15.99 at 120 s (foreground 15.41 -> 15.89).
    cfg.inner_scale = 0.5
    # Total variation on the density grid: background regions seen by few training views are
    # otherwise filled with floaters and blocks (at 600 steps held-out 16.02 dB, colour-
    # corrected 17.50; with weight 1e-3 / 3e-3 / 1e-2 / 3e-2 / 1e-1: 16.34 / 16.45 / 16.54 /
    # 16.93 / 17.12, corrected 18.07 / 18.29 / 18.53 / 18.66 / 18.69), and with it held-out
    # PSNR keeps rising with training (1e-2: 16.54 -> 16.75 dB from step 600 to 2000).
    cfg.nerf.density_tv_weight = 0.03
    # mip-NeRF 360's distortion loss (issue 26): fewer floaters; at 120 CPU s 16.95 -> 17.44 dB
    # (colour-corrected 18.58 -> 19.56, foreground 16.38 -> 17.77; 0.001: 17.48, 0.004:
    # 16.85, 0.01: 12.81), 10 CPU min 17.55 dB (cc 19.67). Not a library default: with
    # color_affine instead of the embedding it collapsed (16.65 -> 14.65 dB at 120 s).
    cfg.nerf.distortion_weight = 0.002
    return scene, cfg


def blowtorch_object_setup(downscale: int, mask_weight: float = 0.05) -> tuple:
    """The masked-object protocol (as NeRD / Neural-PIL / SAMURAI evaluate such captures):
    ``TrainerConfig.object_masks`` composites the background pixels to black, bounds the scene
    by the masks' visual hull, adds a mask loss on the accumulated opacity and starts the
    density grid at 0.01; whole (composited) images for training and foreground pixels for
    ``PSNR objects/fg``. Returns ``(scene, cfg)``."""
    scene, cfg = blowtorch_setup(downscale)
    cfg.object_masks = True
    cfg.mask_loss_weight = mask_weight
    cfg.scene_box = "auto"  # object_masks: the masks' visual hull
    cfg.inner_scale = 1.0
    cfg.render.background = "black"
    # cfg.nerf.field.density_grid_init stays 0 (auto): object_masks picks 0.01. The bounded default
    # (0.05 per voxel) fills the box with opaque grey fog; most of the box is black background
    # here, so the colour head is driven to black everywhere, its sigmoid saturates and it
    # never recovers (all-black renders, 11.6 dB foreground at 150-1000 steps, with or
    # without the mask loss). 0.01 keeps rays transparent enough.
    # the object's grid needs less smoothing (foreground 20.18 dB at 1000 steps with 1e-3,
    # 20.05 with 1e-2, 19.88 without)
    cfg.nerf.density_tv_weight = 1e-3
    # no distortion loss (foreground 19.61 dB at 120 CPU s without, 19.44 with 0.002)
    cfg.nerf.distortion_weight = 0.0
    # ~14 steps per CPU second (16 samples/ray): a longer decay horizon uses the 10-min budget
    # (foreground 20.18 / 20.33 / 20.45 dB at steps 1000 / 1500 / 2500 with max_steps 5000)
    cfg.max_steps = 10000
    return scene, cfg


def run(name: str, scene, cfg: TrainerConfig, budgets: list[float], prepare=None) -> list[dict]:
    c0 = time.process_time()
    tr = Trainer(scene, cfg)
    if prepare is not None:
        prepare(tr)
    setup_s = time.process_time() - c0
    h, w = tr.view_shape(0)
    hw = h * w
    # pixels trained per step: a whole view for Gaussians (images batch), else the ray batch
    px_per_step = hw if cfg.model == "gaussians" else cfg.batch_rays
    rows, spent = [], 0.0
    for budget in sorted(budgets):
        steps0, spr, tp, c_start = tr.step, [], [], time.process_time()
        while spent + (time.process_time() - c_start) < budget and tr.step < cfg.max_steps:
            st = tr.train_step()
            spr.append(st["samples_per_ray"])
            tp.append(st["psnr"])
        seg = time.process_time() - c_start
        spent += seg
        ev = tr.evaluate()
        row = {
            "scene": name,
            "budget_s": budget,
            "steps": tr.step,
            "train_cpu_s": round(spent, 1),
            "psnr": round(ev["psnr"], 2),
            "ssim": round(ev["ssim"], 4),
            "psnr_masked": round(ev.get("psnr_masked", float("nan")), 2),
            "psnr_cc": round(ev.get("psnr_cc", float("nan")), 2),
            "psnr_masked_cc": round(ev.get("psnr_masked_cc", float("nan")), 2),
            "train_psnr": round(sum(tp[-100:]) / max(len(tp[-100:]), 1), 2),
            "model": cfg.model,
            "num_gaussians": tr.describe().get("num_gaussians", "-"),
            "train_rays_per_s": round((tr.step - steps0) * px_per_step / max(seg, 1e-9)),
            "train_images_per_s": round((tr.step - steps0) * px_per_step / max(seg, 1e-9) / hw, 2),
            "samples_per_ray": round(sum(spr) / max(len(spr), 1), 2),
            "eval_rays_per_s": round(ev["eval_rays_per_s"]),
            "peak_rss_mb": round(peak_rss_mb()),
            "setup_cpu_s": round(setup_s, 1),
            "num_train_images": len(tr.train_indices),
            "num_eval_images": ev["num_eval_images"],
            "image_size": list(tr.view_shape(0)),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


COLS = [
    ("scene", "scene"),
    ("model", "model"),
    ("budget_s", "CPU budget s"),
    ("steps", "steps"),
    ("psnr", "held-out PSNR"),
    ("psnr_cc", "PSNR cc"),
    ("ssim", "SSIM"),
    ("psnr_masked", "PSNR objects/fg"),
    ("psnr_masked_cc", "fg PSNR cc"),
    ("train_psnr", "train PSNR"),
    ("train_rays_per_s", "train rays/s"),
    ("train_images_per_s", "train images/s"),
    ("num_gaussians", "Gaussians"),
    ("samples_per_ray", "samples/ray"),
    ("peak_rss_mb", "peak RSS MiB"),
]


def table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(h for _, h in COLS) + " |", "|" + "---|" * len(COLS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "-")) for c, _ in COLS) + " |")
    return lines


def write_results(rows: list[dict], note: str, path: Path = RESULTS, model: str = "nerf") -> None:
    """Replace (or add right after the ``## Fields`` introduction) this script's sub-section
    (one per model)."""
    body = "\n".join([note, "", *table(rows)])
    heading = GAUSSIAN_SECTION if model == "gaussians" else SECTION
    replace_section(path, heading, body, parent="## Fields", first=True)


def as_gaussians(scene, cfg: TrainerConfig) -> tuple:
    """The same scene and budgets with 3D Gaussians instead of NeRF: whole views per step,
    started from the scene's sparse points or, without them (LLFF blowtorch), uniformly in a
    bounded box (the contracted NeRF box has no bounds to fill)."""
    cfg.model = "gaussians"
    cfg.batch = "auto"
    if cfg.scene_box == "unbounded":
        cfg.scene_box = "bounded"
    # A schedule for CPU minutes instead of gsplat's 30k steps: refine from step 100 every 50
    # (500 / 100 by default: at ~2 views per CPU second densification started at 5 minutes),
    # 5,000 random starts where there are no sparse points (20,000 halved the steps per
    # second) and the squared error instead of 3DGS's L1 + D-SSIM (which grows the set to
    # 15-18k Gaussians in 10 CPU minutes here: fewer steps). blowtorch-object foreground at
    # 10 CPU min: 19.86 dB with the defaults, 20.48 with this schedule and L1 + D-SSIM, 21.05
    # with it and the squared error (before the tile-ordering speed-up), see RESULTS.md.
    cfg.gaussians.num_random = 5000
    cfg.gaussians.densify.refine_start_iter = 100
    cfg.gaussians.densify.refine_every = 50
    cfg.photometric = "mse"
    return scene, cfg


def real_capture_config(**kw) -> TrainerConfig:
    """``sceneforge train`` / ``run``'s trainer defaults for photos (whole images, the 1600-px
    long-side cap, scene box auto), one thread, 1024 rays per step, and a learning-rate horizon
    (``max_steps`` 5000) that a 10-minute CPU budget reaches, as for blowtorch."""
    base = dict(max_steps=5000, batch_rays=1024, use_masks=False, progress=False)
    return TrainerConfig(**{**base, "tensorboard": False, "num_threads": 1, **kw})


def fern_setup(cache: Path) -> tuple:
    """LLFF fern (20 photos, 706x529, no poses in the data): posed by our SfM
    (``sceneforge reconstruct``'s defaults; cached in ``cache``), trained at downscale 2
    (353x264, the size ``sceneforge run`` plans for it)."""
    from sceneforge.core.io import load_scene
    from sceneforge.recon.reconstruct import ReconstructConfig, reconstruct

    out = cache / "fern_sfm"
    if not (out / "summary.json").is_file():
        reconstruct(DATA / "scenes" / "fern" / "images", out, ReconstructConfig(progress=False))
    return load_scene(out), real_capture_config(downscale=2)


def room_1080p_setup(cache: Path, views: int = 24) -> tuple:
    """A generated hand-held capture of a room (``views`` 1920x1080 renders of the
    ``handheld`` rig of benchmarks/sfm.py without motion blur, exact cameras; rendered once
    into ``cache``, ~20 s per view), trained at the default long-side cap (960x540)."""
    from sceneforge.core.io import load_scene, save_scene
    from sceneforge.core.synthetic import SyntheticSceneConfig, make_scene

    out = cache / f"room_1080p_{views}"
    if not (out / "sparse").is_dir():
        gen = SyntheticSceneConfig(
            scene="room", rig="handheld", num_views=views, width=1920, height=1080,
            fov_deg=70.0, num_objects=20, seed=0,
        )  # fmt: skip
        tmp = cache / f".room_1080p_{views}.partial"
        save_scene(make_scene(gen), tmp, "colmap")
        tmp.rename(out)
    return load_scene(out), real_capture_config()


SETUPS = {
    "synthetic": lambda args: synthetic_setup(),
    "blowtorch": lambda args: blowtorch_setup(args.blowtorch_downscale),
    "blowtorch-object": lambda args: blowtorch_object_setup(args.blowtorch_downscale),
    "fern": lambda args: fern_setup(args.cache),
    "room-1080p": lambda args: room_1080p_setup(args.cache),
}
DEFAULT_SCENES = ("synthetic", "blowtorch", "blowtorch-object")
"""What a run without ``--scenes`` measures (fern: SfM first; room-1080p: ~8 minutes of
rendering the first time)."""


def apply_override(cfg: TrainerConfig, item: str) -> None:
    """Set ``KEY=VALUE`` on the trainer config (dotted path, e.g. ``gaussians.strategy=mcmc``;
    the value is parsed as the field's current type)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
    *path, last = key.split(".")
    obj = cfg
    for part in path:
        obj = getattr(obj, part)
    if not hasattr(obj, last):
        raise SystemExit(f"--set: the trainer config has no field {key!r}")
    cur = getattr(obj, last)
    if isinstance(cur, tuple):  # e.g. nerf.field.triplane.resolutions=32,64,128
        parsed = tuple(type(cur[0] if cur else 0)(float(v)) for v in value.split(","))
    elif isinstance(cur, bool):
        parsed = value.lower() in ("1", "true", "yes")
    elif isinstance(cur, (int, float)):
        parsed = type(cur)(float(value)) if isinstance(cur, int) else float(value)
    elif cur is None:
        try:
            parsed = None if value.lower() == "none" else float(value)
        except ValueError:
            parsed = value
    else:
        parsed = value
    setattr(obj, last, parsed)


def run_scene(name: str, args: argparse.Namespace) -> list[dict]:
    """Set up and run one scene (also in a worker process with ``--jobs``)."""
    torch.set_num_threads(args.threads)
    data = {"blowtorch": "blowtorch", "blowtorch-object": "blowtorch", "fern": "fern"}
    if name in data and not (DATA / "scenes" / data[name]).is_dir():
        print(f"skip {name}: {DATA / 'scenes' / data[name]} not found", file=sys.stderr)
        return []
    args.cache.mkdir(parents=True, exist_ok=True)
    scene, cfg, *prepare = SETUPS[name](args)
    if args.model == "gaussians":
        scene, cfg = as_gaussians(scene, cfg)
    for item in args.set:
        apply_override(cfg, item)
    cfg.num_threads = args.threads
    return run(name, scene, cfg, args.budgets, *prepare)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[120, 300, 600])
    ap.add_argument("--scenes", nargs="+", default=list(DEFAULT_SCENES), help=", ".join(SETUPS))
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sceneforge_bench_fields",
        help="fern's SfM and the generated room-1080p capture, made once",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="scenes run in parallel processes (one torch thread each; CPU-time budgets)",
    )
    ap.add_argument("--blowtorch-downscale", type=int, default=8)
    ap.add_argument("--model", choices=["nerf", "gaussians"], default="nerf")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (budgets assume 1)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a trainer setting, e.g. gaussians.strategy=mcmc (repeatable)",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.scenes:
        if name not in SETUPS:
            raise SystemExit(f"unknown scene {name!r}; use {', '.join(SETUPS)}")
    rows = []
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(args.scenes)), mp_context=ctx) as ex:
            for r in ex.map(run_scene, args.scenes, [args] * len(args.scenes)):
                rows += r
    else:
        for name in args.scenes:
            rows += run_scene(name, args)
    print("\n".join(table(rows)))
    if args.json:
        args.json.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if not args.no_results and rows:
        note = (
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch threads"
            f" {args.threads}, budgets in CPU seconds of training (`time.process_time`),"
            f" cumulative within one run per scene; load average at the end"
            f" {os.getloadavg()[0]:.1f}. Command: `benchmarks/fields.py"
            f" --budgets {' '.join(f'{b:g}' for b in args.budgets)}"
            f" --scenes {' '.join(args.scenes)} --jobs {args.jobs} --model {args.model}"
            f"{''.join(f' --set {x}' for x in args.set)}`."
        )
        write_results(rows, note, model=args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
