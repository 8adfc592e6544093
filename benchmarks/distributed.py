"""Data-parallel training (``fields.distributed``): two gloo ranks on CPU against one process,
the same global batch: correctness (max parameter difference after N steps) and the per-step
communication overhead (seconds inside collectives: the gradient all-reduce, the loss sums,
rank 0's clock broadcast).

A tiny NeRF (``--batch-rays`` rays per step, split by rank) and 3D Gaussians (whole views,
one per rank; the one process trains the same ``--ranks`` views per step) on the synthetic
turntable are each trained ``--steps`` steps by one process and by ``--ranks`` processes
(spawned, ``torch.distributed`` gloo on 127.0.0.1, one thread each).
Reported per run: median step time, median time in collectives per step (which includes
waiting for the slower rank) and its fraction of the step, and (ranks > 1) the largest
parameter difference against the one-process run.

**Not a scaling measurement**: on a 2-core machine (shared with other jobs) two one-thread
ranks cannot show the speed-up of several GPUs; the step times only put the communication
time in proportion. The correctness figure holds anywhere (it is the float summation order of
the all-reduced gradients).

    .venv/bin/python benchmarks/distributed.py                     # 20 steps, 2 ranks
    .venv/bin/python benchmarks/distributed.py --steps 50 --json rows.jsonl --results

Each row (``--json``): ``{"model": "nerf" | "gaussians", "processes": int, "backend": "none" |
"gloo", "steps": int, "batch_rays": int (pixels per step), "num_params": int, "step_ms": float, "comm_ms": float, "comm_fraction":
float, "comm_calls_per_step": float, "max_param_diff": float | null}``. ``--results`` rewrites
the "## Data parallel (benchmarks/distributed.py)" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _sections import replace_section

from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.distributed import ENV_VARS, spawn_local
from sceneforge.fields.encodings import TriPlaneConfig
from sceneforge.fields.field import FieldConfig
from sceneforge.fields.gaussian_model import GaussiansConfig
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Data parallel (benchmarks/distributed.py)"


def config(model: str, steps: int, batch_rays: int, ranks: int) -> TrainerConfig:
    """A small NeRF (the data-parallel tests' model, a larger batch), or Gaussians on whole
    views (``ranks`` views per step: one per rank; densified every 5 steps from step 5)."""
    return TrainerConfig(
        model=model,
        views_per_step=ranks,
        scene_box="bounded",
        gaussians=GaussiansConfig(
            densify=dataclasses.replace(
                GaussiansConfig().densify, refine_start_iter=5, refine_every=5
            )
        ),
        max_steps=steps,
        batch_rays=batch_rays,
        progress=False,
        tensorboard=False,
        checkpoint_every=0,
        log_every=0,
        device="cpu",
        num_threads=1,
        dist_timeout_s=120.0,
        nerf=NerfConfig(
            field=FieldConfig(
                triplane=TriPlaneConfig(resolutions=(32, 64), features=8),
                density_grid_resolution=32,
                hidden_dim=32,
                color_hidden_dim=32,
            ),
            sampler=SamplerConfig(num_samples=48, grid_resolution=32),
        ),
    )


def train_timed(model: str, steps: int, batch_rays: int, ranks: int, views: int, size: int) -> dict:
    """Train (one process, or this rank of a torchrun-like environment); per-step wall time
    and time in collectives, from a hook after every step (the first step, which also copies
    rank 0's parameters, is left out of the medians)."""
    torch.set_num_threads(1)
    cfg = config(model, steps, batch_rays, ranks)
    trainer = Trainer(turntable_scene(num_views=views, size=size), cfg)
    marks: list[tuple[float, float, float]] = []
    comm = trainer.dist.comm

    def hook(_tr) -> None:
        marks.append((time.perf_counter(), comm.get("seconds", 0.0), comm.get("calls", 0.0)))

    trainer.add_hook(hook)
    marks.append((time.perf_counter(), 0.0, 0.0))
    trainer.train()
    step = [b[0] - a[0] for a, b in zip(marks[1:], marks[2:])]
    com = [b[1] - a[1] for a, b in zip(marks[1:], marks[2:])]
    calls = (marks[-1][2] - marks[1][2]) / max(len(marks) - 2, 1)
    return {
        "step_s": statistics.median(step),
        "comm_s": statistics.median(com),
        "calls": calls,
        "params": {k: v.detach().clone() for k, v in trainer.model.named_parameters()},
        "pixels": math.prod(trainer.dataset.shapes[0]) * ranks
        if model == "gaussians"
        else batch_rays,
        "model": model,
        "backend": trainer.dist.backend or "none",
        "world": trainer.dist.world_size,
    }


def _rank(rank: int, args: tuple, out: str) -> None:
    try:
        res = train_timed(*args)
    except Exception as e:  # reported by the parent
        res = {"error": f"{type(e).__name__}: {e}"}
    torch.save(res, Path(out) / f"rank{rank}.pt")


def run_ranks(world: int, args: tuple, timeout_s: float) -> list[dict]:
    """``train_timed(*args)`` on ``world`` spawned gloo ranks; every rank's result."""
    with tempfile.TemporaryDirectory() as tmp:
        spawn_local(_rank, world, (args, tmp), timeout_s)
        out = []
        for r in range(world):
            f = Path(tmp) / f"rank{r}.pt"
            if not f.is_file():
                raise RuntimeError(f"rank {r} of {world} gave no result (timed out or crashed)")
            res = torch.load(f, weights_only=False)
            if "error" in res:
                raise RuntimeError(f"rank {r} of {world}: {res['error']}")
            out.append(res)
    return out


def row(res: dict, steps: int, diff: float | None) -> dict:
    return {
        "model": res["model"],
        "processes": res["world"],
        "backend": res["backend"],
        "steps": steps,
        "batch_rays": res["pixels"],
        "num_params": sum(v.numel() for v in res["params"].values()),
        "step_ms": 1e3 * res["step_s"],
        "comm_ms": 1e3 * res["comm_s"],
        "comm_fraction": res["comm_s"] / res["step_s"],
        "comm_calls_per_step": res["calls"],
        "max_param_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-rays", type=int, default=1024)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument(
        "--models", nargs="+", choices=("nerf", "gaussians"), default=["nerf", "gaussians"]
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds for the ranks")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON object per row")
    ap.add_argument("--results", action="store_true", help="rewrite the RESULTS.md section")
    args = ap.parse_args(argv)
    if any(v in os.environ for v in ENV_VARS):
        raise SystemExit("run this benchmark as one process (it starts the ranks itself)")
    t0 = time.perf_counter()
    rows, same = [], True
    for model in args.models:
        job = (model, args.steps, args.batch_rays, args.ranks, args.views, args.size)
        single = train_timed(*job)
        ranks = run_ranks(args.ranks, job, args.timeout)
        p0, p1 = ranks[0]["params"], single["params"]
        # Gaussians: the same densification decisions, so the same parameter shapes
        diff = max(
            float((p0[k] - v).abs().max()) if p0[k].shape == v.shape else math.inf
            for k, v in p1.items()
        )
        # every rank holds the same parameters (rank 0's, summed gradients)
        same &= all(torch.equal(r["params"][k], p0[k]) for r in ranks for k in r["params"])
        rows += [row(single, args.steps, None), row(ranks[0], args.steps, diff)]
    print(
        f"{'model':>9} {'processes':>9} {'step ms':>8} {'comm ms':>8} {'comm %':>7} {'calls':>6} diff"
    )
    for r in rows:
        d = "-" if r["max_param_diff"] is None else f"{r['max_param_diff']:.1e}"
        print(
            f"{r['model']:>9} {r['processes']:>9} {r['step_ms']:8.1f} {r['comm_ms']:8.2f} "
            f"{100 * r['comm_fraction']:6.1f}% {r['comm_calls_per_step']:6.1f} {d}"
        )
    print(f"ranks hold identical parameters: {same}; wall {time.perf_counter() - t0:.0f} s")
    if args.json is not None:
        with args.json.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if args.results:
        write_results(rows, args, same)
    return 0 if same else 1


def write_results(rows: list[dict], args, same: bool) -> None:
    load = os.getloadavg()[0]
    cmd = f"python benchmarks/distributed.py --steps {args.steps} --batch-rays {args.batch_rays}"
    cmd += f" --ranks {args.ranks} --views {args.views} --size {args.size}"
    cmd += f" --models {' '.join(args.models)} --results"
    table = [
        "| model | processes | backend | pixels / step | parameters | step (median) | in "
        "collectives / step | fraction | collectives / step | max parameter diff vs 1 process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d = "-" if r["max_param_diff"] is None else f"{r['max_param_diff']:.1e}"
        table.append(
            f"| {r['model']} | {r['processes']} | {r['backend']} | {r['batch_rays']} | "
            f"{r['num_params']:,} | {r['step_ms']:.1f} ms | {r['comm_ms']:.2f} ms "
            f"| {100 * r['comm_fraction']:.1f}% | {r['comm_calls_per_step']:.0f} | {d} |"
        )
    body = (
        f"`{cmd}` on {platform.machine()}, {os.cpu_count()} cores (shared with other jobs; load "
        f"average at the end {load:.1f}), torch {torch.__version__}, one thread per process; "
        f"{args.steps} steps; NeRF: {args.batch_rays} rays per step (the global batch; each of "
        f"the {args.ranks} ranks trains {args.batch_rays // args.ranks}); Gaussians: whole "
        f"{args.size}x{args.size} views, one per rank ({args.ranks} per step, as the one "
        "process), densified every 5 steps from step 5. Every rank holds the same parameters "
        "after training: "
        f"{'yes' if same else 'NO'}.\n\n" + "\n".join(table) + "\n\n"
        "The parameter difference is the float summation order of the all-reduced gradients "
        "(the data-parallel tests bound it at 1e-5 after 6 steps; Adam lets it grow with the "
        "steps, and turns the sign flip of a ~0 gradient into a whole learning-rate step). The step times are not a scaling measure: two one-thread ranks on a 2-core "
        "machine shared with other jobs. The time in collectives (gloo over loopback: the one "
        "flat-buffer gradient all-reduce, the loss sums, rank 0's clock) includes waiting for "
        "the slower rank, so it bounds the communication cost from above. Not measured: NCCL "
        "across GPUs (the GPU check's `nccl` section) and several machines."
    )
    replace_section(RESULTS, SECTION, body)


if __name__ == "__main__":
    sys.exit(main())
