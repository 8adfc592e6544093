"""The one GPU check: every CUDA path of sceneforge, measured on one GPU in under 8 minutes.

Sections (each a function in the one list ``SECTIONS``, run in its own process and killed at
its time cap; the caps add up to at most ``TOTAL_CAP_S``):

- ``pytest_gpu``: ``pytest -m gpu`` over the test files that hold gpu-marked tests (passed /
  failed / skipped; without CUDA every one skips, which is a valid result);
- ``nerf_cuda_vs_cpu``: NeRF training with the same model (the pure-torch hash grid, MLP
  density) on CUDA and on CPU: steps/s, held-out PSNR and their ratios;
- ``tcnn_vs_torch``: the tinycudann hash grid against the torch one with the same parameters
  (max |difference| of the features, forward and backward speed), when tinycudann imports;
- ``ba_cuda_vs_cpu``: bundle adjustment of the small shared BAL problems and the benchmark's
  largest generated one (438k observations) on CUDA, on our CPU path (1 thread) and with Ceres
  (pycolmap, 1 thread and all cores, when importable): final costs, wall times, speed-ups;
  target on the largest: CUDA >= 10x Ceres-CPU; skipped when ``--bal-dir`` is absent;
- ``free3d_cuda``: ``benchmarks/free3d.py``'s CUDA run (noise sharing, pose sensitivity, and the
  RCN / cross-view ablation), when diffusers and transformers import;
- ``nccl``: data-parallel NeRF training (``fields.distributed``) started by
  ``torch.distributed.run --standalone`` with 1 process (and one per GPU when there are
  several), NCCL, against the non-distributed CUDA run: max parameter difference
  (``benchmarks/gpu_check_nccl.py``).

Each section returns a dict of figures or skips with a reason; without CUDA every CUDA
section skips and the script exits 0. It exits 1 when a section fails or passes its cap.
Another module adds a section with ``register(Section(...))`` (run it with
``--extra-module NAME``). Only the standard library is imported at module level, and the
sections need nothing optional (tyro, pycolmap, diffusers, trimesh, viser), so the script
runs on a bare GPU machine through ``benchmarks/gpu_check.sh`` (the BA section adds Ceres'
figures only where pycolmap happens to import):

    python3 benchmarks/gpu_check.py                    # JSON summary on stdout
    python3 benchmarks/gpu_check.py --json --out gpu_check.json   # one JSON row per section
    python3 benchmarks/gpu_check.py --quick --cpu-dry-run         # CUDA sections on CPU
    OUT=/tmp bash benchmarks/gpu_check.sh --bal-dir outputs/bal   # bare machine, no pip
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BAL_DIR = REPO.parent / "shared" / "data" / "bal"
TOTAL_CAP_S = 480.0
"""The caps of all sections add up to at most this (8 minutes on one GPU)."""
RESULT_MARK = "GPU_CHECK_RESULT "


class Skip(Exception):
    """Raised by a section that cannot run here; the message is the reason."""


class CheckFailed(Exception):
    """Raised by a section whose measurement worked but whose check failed."""

    def __init__(self, reason: str, figures: dict | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


@dataclass
class Context:
    """What a section gets: options and its deadline."""

    quick: bool = False
    """Small problems and few steps (the CPU test of this script)."""
    cpu_dry_run: bool = False
    """Run the CUDA sections with the CPU in place of CUDA (exercises their code; the figures
    compare the CPU with itself)."""
    bal_dir: Path = DEFAULT_BAL_DIR
    nerf_steps: int = 500
    deadline: float = float("inf")
    """``time.monotonic()`` at which the section is killed."""

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def cuda_device(self) -> str:
        """``cuda`` (``cpu`` in a dry run); raises :class:`Skip` without CUDA."""
        if self.cpu_dry_run:
            return "cpu"
        import torch

        if not torch.cuda.is_available():
            built = torch.version.cuda
            raise Skip(
                f"CUDA is not available (torch {torch.__version__}, "
                + (f"built for CUDA {built}, no device found)" if built else "CPU-only build)")
            )
        return "cuda"


@dataclass(frozen=True)
class Section:
    name: str
    fn: Callable[[Context], dict]
    cap_s: float
    """Wall-clock cap; the section's process is killed after it."""
    doc: str = ""


SECTIONS: list[Section] = []
"""The sections, in run order (filled by :func:`register` below and by extra modules)."""


def register(section: Section) -> Section:
    """Add a section to :data:`SECTIONS` (unique name; all caps within ``TOTAL_CAP_S``)."""
    if any(s.name == section.name for s in SECTIONS):
        raise ValueError(f"gpu_check: a section named {section.name!r} exists already")
    if section.cap_s <= 0:
        raise ValueError(f"gpu_check: section {section.name!r} needs a positive time cap")
    total = sum(s.cap_s for s in SECTIONS) + section.cap_s
    if total > TOTAL_CAP_S:
        raise ValueError(
            f"gpu_check: adding {section.name!r} ({section.cap_s:.0f} s) makes the caps "
            f"{total:.0f} s, over the {TOTAL_CAP_S:.0f} s budget; lower some caps"
        )
    SECTIONS.append(section)
    return section


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- (a) pytest -m gpu


def gpu_test_files(root: Path = REPO / "tests") -> list[Path]:
    """Test files that mark tests ``gpu`` (collecting only them keeps the run short and free
    of import errors from optional packages in unrelated test files)."""
    return sorted(p for p in root.rglob("test_*.py") if "mark.gpu" in p.read_text(errors="replace"))


def junit_counts(path: Path) -> dict:
    """passed / failed / errors / skipped from a pytest junit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in c:
            c[k] += int(s.get(k, 0))
    return {
        "passed": c["tests"] - c["failures"] - c["errors"] - c["skipped"],
        "failed": c["failures"],
        "errors": c["errors"],
        "skipped": c["skipped"],
    }


def section_pytest_gpu(ctx: Context) -> dict:
    files = gpu_test_files()
    if not files:
        raise Skip("no test file marks a test gpu")
    with tempfile.TemporaryDirectory(prefix="gpu-check-pytest-") as tmp:
        xml = Path(tmp) / "junit.xml"
        # From an empty folder: `python -m pytest` puts its working folder first on sys.path,
        # and the repo root there would hide sceneforge's package-dir mapping (the shim's or
        # the installed one) behind the bare sceneforge/ folder.
        cmd = [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml")]
        cmd += ["--rootdir", str(REPO), "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider"]
        cmd += ["--continue-on-collection-errors", f"--junitxml={xml}", *map(str, files)]
        t0 = time.perf_counter()
        p = subprocess.run(
            cmd,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=max(ctx.seconds_left() - 5, 1),
        )
        wall = time.perf_counter() - t0
        if not xml.is_file():
            raise CheckFailed(f"pytest wrote no report (exit {p.returncode}): {p.stdout[-800:]}")
        counts = junit_counts(xml)
    summary = [ln for ln in p.stdout.splitlines() if ln.startswith(("FAILED", "ERROR", "SKIPPED"))]
    figures = {
        **counts,
        "exit_code": p.returncode,
        "wall_s": round(wall, 1),
        "files": [str(f.relative_to(REPO)) for f in files],
        "report": summary[:40],
    }
    if counts["failed"] or counts["errors"] or p.returncode not in (0, 5):
        figures["output_tail"] = (p.stdout + p.stderr).splitlines()[-80:]
        raise CheckFailed(
            f"pytest -m gpu: {counts['failed']} failed, {counts['errors']} errors", figures
        )
    return figures


# ----------------------------------------------------------------------------- (b) NeRF CUDA vs CPU


def nerf_scene(quick: bool):
    """A tiny procedural turntable (exact images, every 8th view held out)."""
    from sceneforge.core.synthetic import turntable_scene

    return (
        turntable_scene(num_views=9, size=24) if quick else turntable_scene(num_views=24, size=64)
    )


def build_trainer(scene, device: str, steps: int, quick: bool):
    """A trainer with the same model on every device: NeRF with the pure-torch hash grid (also
    where tinycudann imports) and an MLP density. The only place that knows the trainer's
    config layout (``cfg.nerf.field``) and where the field lives (``trainer.model.field``)."""
    from unittest import mock

    from sceneforge.fields import encodings
    from sceneforge.fields.encodings import HashGridConfig, HashGridEncoding
    from sceneforge.fields.field import FieldConfig
    from sceneforge.fields.trainer import Trainer, TrainerConfig

    cfg = TrainerConfig(
        max_steps=steps,
        batch_rays=256 if quick else 1024,
        holdout_every=8,
        scene_box="bounded",
        use_masks=False,
        progress=False,
        tensorboard=False,
        eval_color_correct=False,
        checkpoint_every=0,
        seed=0,
        device=device,
    )
    cfg.model = "nerf"
    cfg.nerf.field = FieldConfig(
        encoding="hash",
        density="mlp",
        hash=HashGridConfig(num_levels=8, log2_hashmap_size=15, max_resolution=512),
    )
    if quick:  # a 16^3 occupancy grid: its dense warm-up updates dominate tiny CPU runs
        cfg.nerf.sampler.grid_resolution = 16
        cfg.nerf.sampler.num_samples = 32
    with mock.patch.object(encodings, "tcnn_available", lambda device: False):
        tr = Trainer(scene, cfg)
    enc = tr.model.field.encoding
    if type(enc) is not HashGridEncoding:
        raise RuntimeError(f"expected the torch hash grid, the field uses {type(enc).__name__}")
    return tr


def _train_and_eval(scene, device: str, steps: int, quick: bool, max_seconds: float) -> dict:
    import torch

    warm = min(5, steps // 2)
    tr = build_trainer(scene, device, steps, quick)
    tr.train(max_steps=warm)
    _sync(device)
    t0 = time.perf_counter()
    stats = tr.train(max_steps=steps, max_seconds=max_seconds)
    _sync(device)
    wall = time.perf_counter() - t0
    ev = tr.evaluate(color_correct=False)
    out = {
        "steps": tr.step,
        "steps_per_s": round((tr.step - warm) / max(wall, 1e-9), 3),
        "heldout_psnr": round(ev["psnr"], 3),
        "train_psnr": round(stats.get("psnr", float("nan")), 3),
        "samples_per_ray": round(stats.get("samples_per_ray", float("nan")), 2),
        "generator_device": str(tr.generator.device),
    }
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def section_nerf(ctx: Context) -> dict:
    dev = ctx.cuda_device()
    steps = 6 if ctx.quick else ctx.nerf_steps
    scene = nerf_scene(ctx.quick)
    w, h = scene.cameras.width[0], scene.cameras.height[0]
    gpu = _train_and_eval(scene, dev, steps, ctx.quick, max(ctx.seconds_left() * 0.3, 5))
    cpu = _train_and_eval(scene, "cpu", steps, ctx.quick, max(ctx.seconds_left() * 0.7, 5))
    figures = {
        "encoding": "torch hash grid (both devices)",
        "scene": f"turntable, {len(scene)} views of {int(w)}x{int(h)} px",
        "steps": steps,
        "cuda": gpu,
        "cpu": cpu,
        "speedup_steps_per_s": round(gpu["steps_per_s"] / max(cpu["steps_per_s"], 1e-9), 2),
        "psnr_diff_db": round(gpu["heldout_psnr"] - cpu["heldout_psnr"], 3),
        "psnr_ratio": round(gpu["heldout_psnr"] / max(cpu["heldout_psnr"], 1e-9), 4),
    }
    short = [
        f"{d} after {r['steps']}" for d, r in (("CUDA", gpu), ("CPU", cpu)) if r["steps"] < steps
    ]
    if short:  # the PSNRs then compare different amounts of training
        figures["note"] = "stopped at the time share: " + ", ".join(short) + " steps"
    return figures


# ----------------------------------------------------------------------------- (c) tcnn vs torch


TCNN_TOLERANCE = 1e-3
"""Largest |tcnn - torch| feature difference accepted with table values in [-1, 1]: a layout
mismatch shows at the scale of the values, float32 positions at fine levels (resolution ~1000)
move interpolation weights by ~1e-4 (the torch grid vs the Python-float loop reference: 5e-5)."""


def section_tcnn(ctx: Context) -> dict:
    dev = ctx.cuda_device()
    import torch

    from sceneforge.fields.encodings import (
        HashGridConfig,
        HashGridEncoding,
        TcnnHashGridEncoding,
        hash_grid_reference,
        tcnn_available,
    )

    if not tcnn_available(dev):
        if dev == "cpu":
            raise Skip("tinycudann needs CUDA (CPU dry run)")
        try:
            import tinycudann  # noqa: F401
        except Exception as e:  # ImportError or a broken CUDA extension
            raise Skip(f"tinycudann does not import ({type(e).__name__}: {e})") from None
        raise Skip("tinycudann imports but tcnn_available() says no")
    cfg = HashGridConfig()
    g = torch.Generator().manual_seed(0)
    ref = HashGridEncoding(cfg)
    with torch.no_grad():  # table values in [-1, 1]: a layout mismatch shows at full scale
        ref.params.copy_(torch.rand(ref.params.shape, generator=g) * 2 - 1)
    ref = ref.to(dev)
    tc = TcnnHashGridEncoding(cfg).to(dev)
    with torch.no_grad():
        tc.params.copy_(ref.params.to(tc.params))
    n = 2**14 if ctx.quick else 2**20
    x = torch.rand(n, 3, generator=g).to(dev)
    with torch.no_grad():
        diff = float((tc(x) - ref(x)).abs().max())
        few = x[:16]
        loop = hash_grid_reference(ref.params.detach().cpu(), cfg, few.cpu())
        diff_loop = float((tc(few).cpu() - loop).abs().max())

    def speed(enc, backward: bool) -> float:
        def once() -> None:
            if backward:
                enc.zero_grad(set_to_none=True)
                enc(x).float().sum().backward()
            else:
                with torch.no_grad():
                    enc(x)

        reps = 3 if ctx.quick else 20
        once()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            once()
        _sync(dev)
        return n * reps / (time.perf_counter() - t0)

    fwd_t, fwd_r = speed(tc, False), speed(ref, False)
    bwd_t, bwd_r = speed(tc, True), speed(ref, True)
    figures = {
        "points": n,
        "max_abs_diff": diff,
        "max_abs_diff_vs_loop_reference": diff_loop,
        "tcnn_fwd_mpts_per_s": round(fwd_t / 1e6, 2),
        "torch_fwd_mpts_per_s": round(fwd_r / 1e6, 2),
        "fwd_speedup": round(fwd_t / fwd_r, 2),
        "tcnn_fwd_bwd_mpts_per_s": round(bwd_t / 1e6, 2),
        "torch_fwd_bwd_mpts_per_s": round(bwd_r / 1e6, 2),
        "fwd_bwd_speedup": round(bwd_t / bwd_r, 2),
    }
    if max(diff, diff_loop) > TCNN_TOLERANCE:
        raise CheckFailed(
            f"tinycudann and torch hash grids differ by {max(diff, diff_loop):.3g} "
            f"(tolerance {TCNN_TOLERANCE:g}, table values in [-1, 1])",
            figures,
        )
    return figures


# ----------------------------------------------------------------------------- (d) BA CUDA vs CPU

BA_TOLERANCES = dict(function_tolerance=1e-6, gradient_tolerance=1e-10, parameter_tolerance=1e-8)
BA_SMALL_OBSERVATIONS = 50_000
"""Problems up to this many observations are run (the shared ones have at most 36k)."""


BA_LARGE = (128, 30000, 0.1)
"""The generated problem of the BA benchmark's largest row (cameras, points, visibility)."""
BA_CERES_TARGET = 10.0
"""Target: CUDA at least this many times faster than Ceres on the CPU, on the largest."""


def _solve(problem, device: str, max_iterations: int, threads: int | None = None) -> dict:
    from sceneforge.recon.ba import BAOptions, bundle_adjust
    from sceneforge.recon.bal import bal_cost

    p = problem.to(device=device)
    bundle_adjust(p, BAOptions(max_iterations=2, num_threads=threads))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    opts = BAOptions(**BA_TOLERANCES, max_iterations=max_iterations, num_threads=threads)
    res, summ = bundle_adjust(p, opts)
    _sync(device)
    wall = time.perf_counter() - t0
    return {
        "final_cost": bal_cost(res.detach().to(device="cpu")),
        "iterations": summ.iterations,
        "wall_s": round(wall, 3),
        "termination": summ.termination,
    }


def _ceres(problem, threads: int, max_iterations: int) -> dict | str:
    """Ceres (pycolmap) on the CPU, or why it cannot run here."""
    from sceneforge.recon.bal import bal_cost

    try:
        from sceneforge.recon.colmap_bridge import colmap_bundle_adjust

        res, _, wall = colmap_bundle_adjust(
            problem, num_threads=threads, max_iterations=max_iterations, **BA_TOLERANCES
        )
    except ImportError as e:  # pycolmap is optional on a bare GPU machine
        return f"pycolmap not importable: {e}"
    return {"final_cost": bal_cost(res), "wall_s": round(wall, 3), "threads": threads}


def _large_problem():
    from sceneforge.recon.ba import make_synthetic_problem, perturb_problem

    cams, pts, vis = BA_LARGE
    p = make_synthetic_problem("BAL", cams, pts, noise_px=0.5, visibility=vis, seed=0)
    return perturb_problem(p, 1e-2), f"synthetic-ring-{cams}-{pts}-{vis:g}"


def section_ba(ctx: Context) -> dict:
    dev = ctx.cuda_device()
    bal_dir = Path(ctx.bal_dir)
    if not bal_dir.is_dir():
        raise Skip(f"no BAL folder at {bal_dir} (give --bal-dir DIR)")
    files = sorted(bal_dir.glob("*.txt"))
    if not files:
        raise Skip(f"no BAL files (*.txt) in {bal_dir}")
    from sceneforge.recon.bal import bal_cost, read_bal

    problems = sorted(((read_bal(f), f.name) for f in files), key=lambda t: t[0].num_observations)
    problems = [(p, n) for p, n in problems if p.num_observations <= BA_SMALL_OBSERVATIONS]
    if ctx.quick:
        problems = problems[:1]
    else:
        problems.append(_large_problem())
    rows = []
    for prob, name in problems:
        iters = 5 if ctx.quick else 100
        init = bal_cost(prob)
        gpu = _solve(prob, dev, iters)
        cpu = _solve(prob, "cpu", iters, threads=1)
        ceres = _ceres(prob, 1, iters)
        ceres_all = _ceres(prob, os.cpu_count() or 1, iters)
        rows.append(
            {
                "problem": name,
                "observations": prob.num_observations,
                "initial_cost": init,
                "cuda": gpu,
                "cpu": cpu,
                "cost_ratio_cuda_over_cpu": gpu["final_cost"] / max(cpu["final_cost"], 1e-300),
                # the ratio is noise when both costs are round-off (a tiny problem solved exactly)
                "cost_diff_over_initial": abs(gpu["final_cost"] - cpu["final_cost"])
                / max(init, 1e-300),
                "speedup": round(cpu["wall_s"] / max(gpu["wall_s"], 1e-9), 2),
                "ceres_cpu_1t": ceres,
                "ceres_cpu_all_cores": ceres_all,
                "speedup_vs_ceres_1t": _ratio(ceres, gpu),
                "speedup_vs_ceres_all_cores": _ratio(ceres_all, gpu),
            }
        )
    large = rows[-1]
    if not ctx.quick and isinstance(large["speedup_vs_ceres_1t"], float):
        large["ceres_target"] = f">= {BA_CERES_TARGET:g}x Ceres-CPU (1 thread)"
        large["ceres_target_met"] = large["speedup_vs_ceres_1t"] >= BA_CERES_TARGET
    return {"bal_dir": str(bal_dir), "problems": rows}


def _ratio(ceres: dict | str, gpu: dict) -> float | str:
    if isinstance(ceres, str):
        return ceres
    return round(ceres["wall_s"] / max(gpu["wall_s"], 1e-9), 2)


def section_free3d(ctx: Context) -> dict:
    """``benchmarks/free3d.py --device cuda`` within the cap: the main model and the RCN /
    cross-view ablation (target: RCN beats the pose-token-only model on held-out PSNR)."""
    dev = ctx.cuda_device()
    for mod in ("diffusers", "transformers"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except ImportError:  # a finder that refuses the name
            found = False
        if not found:
            raise Skip(f"{mod} is not installed here (Free3D's UNet needs it)")
    from free3d import gpu_section  # benchmarks/ is on sys.path

    return gpu_section(dev, max(ctx.seconds_left() - 20.0, 30.0), quick=ctx.quick)


# ----------------------------------------------------------------------------- (f) NCCL


def section_nccl(ctx: Context) -> dict:
    """torchrun with 1 process (and one per GPU when there are several), NCCL (gloo in a CPU
    dry run), against the non-distributed run: see ``benchmarks/gpu_check_nccl.py``."""
    import torch

    dev = ctx.cuda_device()
    if dev == "cuda" and not torch.distributed.is_nccl_available():
        raise Skip(f"torch {torch.__version__} was built without NCCL")
    from gpu_check_nccl import run_section  # benchmarks/ is on sys.path

    figures, failure = run_section(ctx, dev, build_trainer, nerf_scene)
    if failure:
        raise CheckFailed(failure, figures)
    return figures


for _s in (
    Section("pytest_gpu", section_pytest_gpu, 150.0, "pytest -m gpu on the gpu-marked test files"),
    Section("nerf_cuda_vs_cpu", section_nerf, 80.0, "NeRF training, torch hash grid, CUDA vs CPU"),
    Section("tcnn_vs_torch", section_tcnn, 30.0, "tinycudann vs torch hash grid"),
    Section(
        "ba_cuda_vs_cpu",
        section_ba,
        70.0,
        "bundle adjustment: shared BAL problems and the largest generated one, CUDA vs our CPU "
        "and Ceres' (pycolmap, when importable)",
    ),
    Section("free3d_cuda", section_free3d, 90.0, "Free3D toy benchmark + RCN ablation on CUDA"),
    Section("nccl", section_nccl, 50.0, "torchrun + NCCL data-parallel NeRF vs one CUDA process"),
):
    register(_s)


# ----------------------------------------------------------------------------- runner


def call_section(section: Section, ctx: Context) -> dict:
    """Run one section in this process: a row with ``status`` ok / skipped / failed."""
    row: dict = {"section": section.name, "cap_s": section.cap_s}
    t0 = time.perf_counter()
    try:
        figures = section.fn(ctx)
        if not isinstance(figures, dict):
            raise TypeError(f"section {section.name} returned {type(figures).__name__}, not dict")
        row.update(status="ok", figures=figures)
    except Skip as e:
        row.update(status="skipped", reason=str(e) or "skipped without a reason")
    except CheckFailed as e:
        row.update(status="failed", reason=str(e), figures=e.figures)
    except Exception as e:
        tb = traceback.format_exc().splitlines()
        row.update(status="failed", reason=f"{type(e).__name__}: {e}", traceback=tb[-15:])
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _child_args(args: argparse.Namespace, name: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    cmd += ["--bal-dir", str(args.bal_dir), "--nerf-steps", str(args.nerf_steps)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--cpu-dry-run"] if args.cpu_dry_run else []
    for m in args.extra_module:
        cmd += ["--extra-module", m]
    return cmd


def _no_result(section: Section, status: str, reason: str, t0: float, stderr: str) -> dict:
    """The row of a section process that gave no result (killed at its cap, or crashed)."""
    return {
        "section": section.name,
        "cap_s": section.cap_s,
        "status": status,
        "reason": reason,
        "seconds": round(time.perf_counter() - t0, 2),
        "stderr_tail": stderr.splitlines()[-15:],
    }


def run_isolated(section: Section, args: argparse.Namespace) -> dict:
    """Run a section in its own process group, killed at its cap; returns its row."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        _child_args(args, section.name),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=section.cap_s)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the section and anything it started
        out, err = p.communicate()
        return _no_result(
            section, "timeout", f"killed at its cap of {section.cap_s:.0f} s", t0, err
        )
    rows = [ln[len(RESULT_MARK) :] for ln in out.splitlines() if ln.startswith(RESULT_MARK)]
    if not rows:
        return _no_result(
            section,
            "failed",
            f"the section process exited with {p.returncode} and no result",
            t0,
            err,
        )
    row = json.loads(rows[-1])
    row["process_s"] = round(time.perf_counter() - t0, 2)
    return row


def environment() -> dict:
    """Versions and where sceneforge is imported from (found, not imported: no torch here)."""
    env = {"python": platform.python_version(), "host": platform.node()}
    for mod in ("sceneforge", "sceneforge.recon", "sceneforge.fields"):
        try:
            spec = importlib.util.find_spec(mod)
            env[f"{mod}_path"] = spec.origin if spec else None
        except Exception as e:
            env[f"{mod}_path"] = f"not importable: {type(e).__name__}: {e}"
    code = (
        "import json, torch; c = torch.cuda.is_available(); print(json.dumps({"
        "'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'cuda_available': c,"
        "'gpu': torch.cuda.get_device_name(0) if c else None}))"
    )
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        env.update(json.loads(p.stdout.strip().splitlines()[-1]))
    except Exception as e:
        env["torch"] = f"unknown ({type(e).__name__}: {e})"
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object per section")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    ap.add_argument("--quick", action="store_true", help="small problems, few steps")
    ap.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run the CUDA sections with the CPU in place of CUDA (tests this script)",
    )
    ap.add_argument("--bal-dir", type=Path, default=DEFAULT_BAL_DIR, help="BAL problems folder")
    ap.add_argument("--nerf-steps", type=int, default=500, help="NeRF steps on each device")
    ap.add_argument("--only", nargs="+", default=None, metavar="SECTION", help="run these")
    ap.add_argument("--list", action="store_true", help="list the sections and their caps")
    ap.add_argument(
        "--extra-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register() more sections)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.bal_dir = args.bal_dir.absolute()  # the sections run with the repo as working folder
    # extra modules `import gpu_check` and must see this module, not a second copy
    sys.modules.setdefault("gpu_check", sys.modules[__name__])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for m in args.extra_module:
        importlib.import_module(m)
    by_name = {s.name: s for s in SECTIONS}
    if args.list:
        for s in SECTIONS:
            print(f"{s.name:20s} cap {s.cap_s:5.0f} s  {s.doc}")
        print(f"{'total':20s} cap {sum(s.cap_s for s in SECTIONS):5.0f} s")
        return 0
    names = args.only or list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; sections: {list(by_name)}")
    if args.child is not None:
        sec = by_name[args.child]
        ctx = Context(
            quick=args.quick,
            cpu_dry_run=args.cpu_dry_run,
            bal_dir=args.bal_dir,
            nerf_steps=args.nerf_steps,
            deadline=time.monotonic() + sec.cap_s - 2.0,
        )
        print(RESULT_MARK + json.dumps(call_section(sec, ctx), default=str), flush=True)
        return 0
    t0 = time.perf_counter()
    env = environment()
    rows = []
    for name in names:
        sec = by_name[name]
        print(f"[gpu_check] {name} (cap {sec.cap_s:.0f} s) ...", file=sys.stderr, flush=True)
        row = run_isolated(sec, args)
        rows.append(row)
        why = f": {row['reason']}" if row.get("reason") else ""
        print(f"[gpu_check] {name}: {row['status']}{why}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps(row, default=str), flush=True)
    ok = all(r["status"] in ("ok", "skipped") for r in rows)
    summary = {
        "ok": ok,
        "total_s": round(time.perf_counter() - t0, 1),
        "quick": args.quick,
        "cpu_dry_run": args.cpu_dry_run,
        "environment": env,
        "sections": rows,
    }
    text = json.dumps(summary, indent=2, default=str)
    if not args.json:
        print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"[gpu_check] wrote {args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
