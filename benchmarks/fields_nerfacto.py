"""Ours vs nerfacto through nerfstudio: same data, same CPU training-time budgets.

Runs in the nerfstudio venv (``.venv-ns``, see ``tests/test_ns_plugin.py``). Both methods train
on the synthetic 64x64 turntable (24 views, every 8th held out) through the same dataparser
(``sceneforge-data``) and data manager; each run pauses at every budget (training time only)
to render the held-out views and compute PSNR with the same code.

    .venv-ns/bin/python benchmarks/fields_nerfacto.py                 # budgets 120 300 600 s
    .venv-ns/bin/python benchmarks/fields_nerfacto.py --budgets 30 60 --json out.json

nerfacto's constructor builds LPIPS (downloads AlexNet weights): it is replaced by a stub here
(LPIPS is not reported). nerfacto's pose optimiser is off, as our trainer does not refine poses.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


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

    from sceneforge.ns_dataparser import SceneforgeDataParserConfig
    from sceneforge.ns_plugin import method_config

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


def run_method(method: str, scene_dir: Path, out: Path, budgets: list[float]) -> list[dict]:
    from nerfstudio.engine.callbacks import TrainingCallbackLocation as Loc

    cfg = make_config(method, scene_dir, out, max_steps=100_000)
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    rows, step, train_s = [], 0, 0.0
    for b in sorted(budgets):
        while train_s < b:
            t0 = time.perf_counter()
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=Loc.BEFORE_TRAIN_ITERATION)
            trainer.pipeline.train()
            trainer.train_iteration(step)
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=Loc.AFTER_TRAIN_ITERATION)
            step += 1
            train_s += time.perf_counter() - t0
        rows.append(
            {"method": method, "budget_s": b, "steps": step, "psnr": heldout_psnr(trainer.pipeline)}
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budgets", type=float, nargs="+", default=[120, 300, 600])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _patch_lpips()
    from sceneforge.core.io import save_scene
    from sceneforge.core.synthetic import turntable_scene

    with tempfile.TemporaryDirectory() as tmp:
        scene_dir = save_scene(turntable_scene(num_views=24, size=64), Path(tmp) / "turntable")
        rows = []
        for method in ("sceneforge", "nerfacto"):
            rows += run_method(method, scene_dir, Path(tmp) / "out", args.budgets)
    print(
        f"\n{'budget s':>9} | {'ours PSNR':>9} {'steps':>6} | {'nerfacto':>9} {'steps':>6} | diff dB"
    )
    for b in sorted(args.budgets):
        o = next(r for r in rows if r["method"] == "sceneforge" and r["budget_s"] == b)
        n = next(r for r in rows if r["method"] == "nerfacto" and r["budget_s"] == b)
        print(
            f"{b:9.0f} | {o['psnr']:9.2f} {o['steps']:6d} | {n['psnr']:9.2f} {n['steps']:6d} |"
            f" {o['psnr'] - n['psnr']:+.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
