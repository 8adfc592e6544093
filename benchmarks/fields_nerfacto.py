"""Ours vs nerfacto through nerfstudio: same data, same CPU training-time budgets.

Runs in the nerfstudio venv (``.venv-ns``, see ``tests/test_ns_plugin.py``). Both methods train
on the synthetic 64x64 turntable (24 views, every 8th held out) through the same dataparser
(``sceneforge-data``) and data manager; each run pauses at every budget (training time only)
to render the held-out views and compute PSNR with the same code.

Budgets are **CPU seconds of this process** (``time.process_time`` around each training
iteration, callbacks included, evaluation excluded) with torch pinned to one thread: on a
shared machine wall-clock time is inflated by other jobs, while one-thread CPU time is close to
the wall time the same run would take on an idle core.

    OMP_NUM_THREADS=1 flock /tmp/sceneforge-bench.lock \
        .venv-ns/bin/python benchmarks/fields_nerfacto.py --results    # budgets 120 300 600 s
    .venv-ns/bin/python benchmarks/fields_nerfacto.py --budgets 30 60 --json out.json

``--results`` rewrites only the "### Ours vs nerfacto" sub-section of the "## Fields" section of
``benchmarks/RESULTS.md``.

nerfacto's constructor builds LPIPS (downloads AlexNet weights): it is replaced by a stub here
(LPIPS is not reported). nerfacto's pose optimiser is off, as our trainer does not refine poses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from _sections import replace_section


class _NoLPIPS(torch.nn.Module):
    """Stands in for torchmetrics' LPIPS (no weight download); returns NaN."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, a, b):
        return torch.tensor(float("nan"))


def _patch_lpips() -> None:
    import torchmetrics.image.lpip as lp

    lp.LearnedPerceptualImagePatchSimilarity = _NoLPIPS


def make_config(method: str, scene_dir: Path, out: Path, max_steps: int):
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    from sceneforge.nerfstudio.dataparser import SceneforgeDataParserConfig
    from sceneforge.nerfstudio.plugin import method_config

    if method == "sceneforge":
        cfg = method_config(max_steps)
        rays = 1024  # as benchmarks/fields.py
    else:
        cfg = method_configs["nerfacto"]
        cfg.pipeline.model.camera_optimizer = CameraOptimizerConfig(mode="off")
        rays = 4096
    cfg.pipeline.datamanager = VanillaDataManagerConfig(
        dataparser=SceneforgeDataParserConfig(data=scene_dir, scene_box="bounded", use_masks=False),
        train_num_rays_per_batch=rays,
        eval_num_rays_per_batch=rays,
    )
    cfg.pipeline.datamanager.data = scene_dir
    cfg.machine.device_type = "cpu"
    cfg.vis = "tensorboard"
    cfg.output_dir = out
    cfg.max_num_iterations = max_steps
    cfg.steps_per_save = 10**9
    cfg.timestamp = method
    return cfg


@torch.no_grad()
def heldout_psnr(pipeline) -> float:
    from sceneforge.core.metrics import psnr

    model = pipeline.model
    model.eval()
    ds = pipeline.datamanager.eval_dataset
    vals = []
    for k in range(len(ds)):
        cam = ds.cameras[k : k + 1].to(model.device)
        out = model.get_outputs_for_camera(cam)
        gt = ds.get_image_float32(k)[..., :3] if hasattr(ds, "get_image_float32") else None
        if gt is None:
            gt = ds[k]["image"][..., :3].float()
        vals.append(float(psnr(out["rgb"].clamp(0, 1).cpu(), gt.cpu())))
    model.train()
    return sum(vals) / len(vals)


def rays_per_step(cfg) -> int:
    return int(cfg.pipeline.datamanager.train_num_rays_per_batch)


def run_method(method: str, scene_dir: Path, out: Path, budgets: list[float]) -> list[dict]:
    from nerfstudio.engine.callbacks import TrainingCallbackLocation as Loc

    cfg = make_config(method, scene_dir, out, max_steps=100_000)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    rows, step, train_s = [], 0, 0.0
    for b in sorted(budgets):
        while train_s < b:
            t0 = time.process_time()
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=Loc.BEFORE_TRAIN_ITERATION)
            trainer.pipeline.train()
            trainer.train_iteration(step)
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=Loc.AFTER_TRAIN_ITERATION)
            step += 1
            train_s += time.process_time() - t0
        rows.append(
            {
                "method": method,
                "budget_s": b,
                "cpu_s": round(train_s, 1),
                "steps": step,
                "rays_per_s": round(step * rays_per_step(cfg) / max(train_s, 1e-9)),
                "psnr": heldout_psnr(trainer.pipeline),
            }
        )
        print(rows[-1], flush=True)
    return rows


SECTION = "### Ours vs nerfacto"
RESULTS = Path(__file__).with_name("RESULTS.md")


def table(rows: list[dict], budgets: list[float]) -> list[str]:
    lines = [
        "| CPU budget s | ours PSNR | ours steps | ours rays/s | nerfacto PSNR | nerfacto steps"
        " | nerfacto rays/s | ours - nerfacto dB | target +3 dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in sorted(budgets):
        cells = [f"{b:.0f}"]
        got = {}
        for method in ("sceneforge", "nerfacto"):
            r = next((r for r in rows if r["method"] == method and r["budget_s"] == b), None)
            got[method] = r
            cells += ["-"] * 3 if r is None else [f"{r['psnr']:.2f}", str(r["steps"])]
            if r is not None:
                cells.append(str(r["rays_per_s"]))
        o, n = got["sceneforge"], got["nerfacto"]
        if o is None or n is None:
            cells += ["-", "-"]
        else:
            d = o["psnr"] - n["psnr"]
            cells += [f"{d:+.2f}", "met" if d >= 3 else "NOT met"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_results(rows: list[dict], budgets: list[float], note: str) -> None:
    """Replace (or add at the end of ``## Fields``) the ``### Ours vs nerfacto`` sub-section."""
    body = "\n".join([note, "", *table(rows, budgets)])
    replace_section(RESULTS, SECTION, body, parent="## Fields")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budgets", type=float, nargs="+", default=[120, 300, 600])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=["sceneforge", "nerfacto"])
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--from-json", type=Path, default=None, help="only re-print / re-write rows")
    ap.add_argument("--results", action="store_true", help="write our RESULTS.md sub-section")
    ap.add_argument("--note", default="", help="extra paragraph for the RESULTS.md sub-section")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_json is not None:
        rows = json.loads(args.from_json.read_text())
        args.budgets = sorted({r["budget_s"] for r in rows})
    else:
        _patch_lpips()
        from sceneforge.core.io import save_scene
        from sceneforge.core.synthetic import turntable_scene

        with tempfile.TemporaryDirectory() as tmp:
            scene = turntable_scene(num_views=args.views, size=args.size)
            scene_dir = save_scene(scene, Path(tmp) / "turntable")
            rows = []
            for method in args.methods:
                rows += run_method(method, scene_dir, Path(tmp) / "out", args.budgets)
                if args.json is not None:
                    args.json.write_text(json.dumps(rows, indent=2))
    print("\n".join(["", *table(rows, args.budgets)]))
    if args.results:
        import nerfstudio

        note = (
            f"`benchmarks/fields_nerfacto.py` in the nerfstudio venv (nerfstudio "
            f"{getattr(nerfstudio, '__version__', '1.1.5')}, torch {torch.__version__}), "
            f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, no GPU. "
            f"Both methods train through nerfstudio's trainer and data manager on the same "
            f"`turntable_scene({args.views} views, {args.size}x{args.size})` (black background, "
            f"every 8th view held out) via our `sceneforge-data` dataparser (bounded box). "
            f"**Budgets are CPU seconds of the benchmark process** (`time.process_time` of the "
            f"training iterations, torch pinned to {args.threads} thread, `OMP_NUM_THREADS=1`), "
            f"not wall time: the machine was shared, and one-thread CPU time approximates the wall "
            f"time on an idle core. One run per method, paused at each budget for the held-out "
            f"PSNR (same code for both). Ours: `method_config()` (learned background, 1024 "
            f"rays/step); nerfacto: nerfstudio's `nerfacto` config with 4096 rays/step and the "
            f"camera optimiser off (our trainer does not refine poses); its LPIPS module is "
            f"replaced by a stub (no AlexNet download; LPIPS is not reported)."
        )
        if args.note:
            note += "\n\n" + args.note
        write_results(rows, args.budgets, note)
        print(f"wrote the {SECTION!r} sub-section of {RESULTS}")


if __name__ == "__main__":
    main()
