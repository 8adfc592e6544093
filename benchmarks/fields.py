"""Field training on CPU budgets: held-out PSNR / SSIM, rays/s, samples per ray, peak memory.

One training run per scene; it is paused at each budget (training time only, evaluation not
counted) to evaluate on the held-out views (every 8th image). Scenes: the synthetic 64x64
turntable (exact ground truth) and blowtorch (LLFF poses, downscaled).

    .venv/bin/python benchmarks/fields.py                      # budgets 120 300 600 s
    .venv/bin/python benchmarks/fields.py --budgets 60 120 --json out.json

No peer implementation (nerfstudio / nerfacc) runs offline on this CPU, so the table shows our
numbers only.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from sceneforge.fields.trainer import Trainer, TrainerConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic_setup() -> tuple:
    from sceneforge.core.synthetic import turntable_scene

    scene = turntable_scene(num_views=24, size=64)
    cfg = TrainerConfig(
        max_steps=3000,
        batch_rays=1024,
        scene_box="bounded",
        use_masks=False,  # synthetic masks mark objects, not unusable pixels
        progress=False,
        tensorboard=False,
    )
    return scene, cfg


def blowtorch_setup(downscale: int) -> tuple:
    from sceneforge.core.io import load_scene

    scene = load_scene(DATA / "scenes" / "blowtorch")
    cfg = TrainerConfig(
        max_steps=6000,
        batch_rays=2048,
        downscale=downscale,
        scene_box="unbounded",
        use_masks=False,  # blowtorch masks are foreground masks: train on the whole photo
        progress=False,
        tensorboard=False,
    )
    cfg.field.appearance_dim = 8
    return scene, cfg


def run(name: str, scene, cfg: TrainerConfig, budgets: list[float]) -> list[dict]:
    t0 = time.perf_counter()
    tr = Trainer(scene, cfg)
    setup_s = time.perf_counter() - t0
    rows, spr, spent = [], [], 0.0
    for budget in sorted(budgets):
        steps0, t_start = tr.step, time.perf_counter()
        while spent + (time.perf_counter() - t_start) < budget and tr.step < cfg.max_steps:
            spr.append(tr.train_step()["samples_per_ray"])
        seg = time.perf_counter() - t_start
        spent += seg
        ev = tr.evaluate()
        row = {
            "scene": name,
            "budget_s": budget,
            "steps": tr.step,
            "train_s": round(spent, 1),
            "psnr": round(ev["psnr"], 2),
            "ssim": round(ev["ssim"], 4),
            "psnr_masked": round(ev.get("psnr_masked", float("nan")), 2),
            "train_rays_per_s": round((tr.step - steps0) * cfg.batch_rays / max(seg, 1e-9)),
            "samples_per_ray": round(sum(spr[-200:]) / max(len(spr[-200:]), 1), 2),
            "eval_rays_per_s": round(ev["eval_rays_per_s"]),
            "peak_rss_mb": round(peak_rss_mb()),
            "setup_s": round(setup_s, 1),
            "num_train_images": len(tr.train_indices),
            "num_eval_images": ev["num_eval_images"],
            "image_size": list(tr.dataset.shapes[0]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[120, 300, 600])
    ap.add_argument("--scenes", nargs="+", default=["synthetic", "blowtorch"])
    ap.add_argument("--blowtorch-downscale", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.scenes:
        if name == "synthetic":
            scene, cfg = synthetic_setup()
        elif name == "blowtorch":
            if not (DATA / "scenes" / "blowtorch").is_dir():
                print(f"skip blowtorch: {DATA / 'scenes' / 'blowtorch'} not found", file=sys.stderr)
                continue
            scene, cfg = blowtorch_setup(args.blowtorch_downscale)
        else:
            raise SystemExit(f"unknown scene {name!r}; use synthetic or blowtorch")
        rows += run(name, scene, cfg, args.budgets)
    cols = [
        ("scene", 10),
        ("budget_s", 8),
        ("steps", 6),
        ("psnr", 6),
        ("ssim", 6),
        ("psnr_masked", 11),
        ("train_rays_per_s", 16),
        ("samples_per_ray", 15),
        ("peak_rss_mb", 11),
    ]
    print(" | ".join(c.ljust(w) for c, w in cols))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(w) for c, w in cols))
    if args.json:
        args.json.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
