"""The ``nccl`` section of ``benchmarks/gpu_check.py``: data-parallel NeRF training
(``fields.distributed``) started by ``torch.distributed.run --standalone`` against the
non-distributed run on the same device.

World size 1 (one process: the launch, torchrun's environment, an NCCL process group and a
one-value all-reduce; the trainer itself runs as one process there) and, when the machine has
several GPUs, one process per GPU (the gradients all-reduced over NCCL). Each run trains
``NCCL_STEPS`` steps of gpu_check's NeRF (``build_trainer``); rank 0 saves its parameters, and
the section reports the largest difference against the one-process run, failing above
``NCCL_TOLERANCE``. In a CPU dry run (``--cpu-dry-run``) the same runs use gloo on the CPU.
Only the standard library is imported at module level (the bare GPU machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NCCL_STEPS = 10
"""Steps of each run (few: launch and agreement, not speed)."""
NCCL_TOLERANCE = 1e-3
"""Largest parameter difference accepted against the one-process run after ``NCCL_STEPS``
steps: one process under torchrun runs the same code (CUDA atomics in the backward pass make it
not bit-exact); several sum their gradients in another order."""
WORKER = """
import os, sys, time
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import gpu_check
out, device, steps, quick = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
if device == "cuda":
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl" if device == "cuda" else "gloo")  # the trainer reuses it
one = torch.ones(1, device=f"cuda:{torch.cuda.current_device()}" if device == "cuda" else "cpu")
dist.all_reduce(one)
tr = gpu_check.build_trainer(gpu_check.nerf_scene(quick), device, steps, quick)
t0 = time.perf_counter()
tr.train()
gpu_check._sync(str(tr.device))
res = {"world": world, "all_reduce_ok": float(one) == world, "backend": str(dist.get_backend()),
       "device": str(tr.device), "trainer_world": tr.dist.world_size, "steps": tr.step,
       "train_s": round(time.perf_counter() - t0, 3),
       "in_collectives_s": round(tr.dist.comm.get("seconds", 0.0), 3)}
if rank == 0:
    params = {k: v.detach().cpu() for k, v in tr.model.named_parameters()}
    torch.save({"res": res, "params": params}, os.path.join(out, f"world{world}.pt"))
dist.destroy_process_group()
"""


def torchrun(nproc: int, device: str, steps: int, quick: bool, tmp: Path, timeout: float):
    """Rank 0's result and parameters of :data:`WORKER` under ``torch.distributed.run``, or
    the log's tail (a list of lines) when the run failed."""
    import torch

    worker = tmp / "nccl_worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), str(worker), str(REPO / "benchmarks"), str(tmp)]
    cmd += [device, str(steps), "1" if quick else "0"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [f"torchrun --nproc_per_node {nproc} still running after {timeout:.0f} s"]
    f = tmp / f"world{nproc}.pt"
    if p.returncode != 0 or not f.is_file():
        tail = (p.stdout + p.stderr).strip().splitlines()[-12:]
        return [f"torchrun --nproc_per_node {nproc} exited {p.returncode}", *tail]
    return torch.load(f, weights_only=False)


def run_section(
    ctx, device: str, build_trainer: Callable, nerf_scene: Callable
) -> tuple[dict, str | None]:
    """The figures of every world size run, and why the check failed (None: passed)."""
    import torch

    steps = 3 if ctx.quick else NCCL_STEPS
    ref = build_trainer(nerf_scene(ctx.quick), device, steps, ctx.quick)
    ref.train()
    base = {k: v.detach().cpu() for k, v in ref.model.named_parameters()}
    worlds = [1]
    if device == "cuda" and torch.cuda.device_count() > 1:
        worlds.append(torch.cuda.device_count())
    figures: dict = {"steps": steps, "tolerance": NCCL_TOLERANCE}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in worlds:
            left = ctx.seconds_left() - 3.0
            if left < 10:
                figures[f"world_{w}"] = "not run: the section's cap was spent"
                continue
            got = torchrun(w, device, steps, ctx.quick, Path(tmp), left)
            if isinstance(got, list):
                figures[f"world_{w}"] = {"log": got}
                failures.append(got[0])
                continue
            diff = max(float((got["params"][k] - v).abs().max()) for k, v in base.items())
            r = figures[f"world_{w}"] = {**got["res"], "max_param_diff": diff}
            if not r["all_reduce_ok"] or diff > NCCL_TOLERANCE or r["steps"] != steps:
                failures.append(f"world size {w}: differs from the one-process run")
    return figures, "; ".join(failures) or None
