"""Free3D benchmark (issue 22): consistent novel views from one image, toy scale.

A small pixel-space Free3D model (RCN + cross-view attention + pose token) is trained
in-project on procedural objects (``procedural:0..N-1``, rendered by sceneforge's CPU
rasterizer) under a wall-clock cap (training runs in chunks, resumed exactly, until the cap).
Held-out objects (``procedural:1000..``) are then rendered on an orbit arc with their true
depth: a source view at azimuth 0 and K targets at small azimuth steps at the same elevation.
For several sampling seeds the K targets are generated jointly **with and without multi-view
noise sharing** (same seeds, model, steps: paired) and measured:

- consistency: depth-warped PSNR between neighbouring generated views (view i warped into
  view i+1 with the TRUE depth of i+1 and the true cameras, on pixels foreground and visible
  in both; :func:`sceneforge.stylize.free3d.metrics.warped_psnr`), the same on the
  ground-truth views (the ceiling) and on the copy-the-input baseline;
- TSED (Yu et al. 2023, as in Free3D; :mod:`sceneforge.stylize.free3d.metrics`): SIFT at a
  256-pixel upsampling, symmetric epipolar distance under the true relative pose; a pair is
  consistent with >= ``--tsed-matches`` matches of SED < ``--tsed-error`` px (at 256 px);
  the fraction of consistent neighbouring pairs, with the ground truth's as the ceiling;
- accuracy: PSNR / SSIM of generated views against the ground truth, and the PSNR of the
  copy-the-input baseline (the source image as every target);
- pose sensitivity: the denoising loss on the validation tuples with the correct target
  poses vs shuffled ones (same noise and timesteps; paired).

Paired comparisons report the mean difference, a 95 % bootstrap CI and the paired t-test
p-value over (seed, object, pair) samples. ``--device cuda`` trains longer at 64 px and adds
the ablation (held-out view PSNR of pose-token-only vs RCN vs RCN + cross-view models).

    .venv/bin/python benchmarks/free3d.py --json           # CPU, ~15-25 min on 2 cores
    .venv/bin/python benchmarks/free3d.py --quick          # smoke run, ~1-2 min
    python benchmarks/free3d.py --device cuda --json       # + RCN / cross-view ablation
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sceneforge.core.metrics import psnr, ssim
from sceneforge.stylize.free3d.data import (
    RenderSetConfig,
    ViewTupleDataset,
    procedural_object,
    render_view_sets,
)
from sceneforge.stylize.free3d.metrics import render_with_depth, tsed_pair, warped_psnr
from sceneforge.stylize.free3d.pipeline import load_free3d
from sceneforge.stylize.free3d.poses import ZERO123_FOV_DEG, spherical_cam_from_world
from sceneforge.stylize.free3d.rays import relative_pose
from sceneforge.stylize.free3d.sampler import SamplerConfig, sample_views
from sceneforge.stylize.free3d.train import (
    Free3DTrainConfig,
    evaluate_pose_sensitivity,
    train_free3d,
)

HELD_OUT_BASE = 1000  # held-out objects are procedural:1000.. (never trained on)


# ----------------------------------------------------------------------------- statistics


def paired_stats(a, b, boot: int = 5000, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired samples (NaNs dropped), its 95 % bootstrap CI and the
    paired t-test p-value (two-sided)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return {"diff": math.nan, "ci95": [math.nan, math.nan], "p_value": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (boot, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    if len(d) > 1 and d.std() > 0:
        from scipy.stats import ttest_1samp

        p = float(ttest_1samp(d, 0.0).pvalue)
    else:
        p = math.nan
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)], "p_value": p, "n": len(d)}


def nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


# ----------------------------------------------------------------------------- training


def train_capped(cfg: Free3DTrainConfig, data, out: Path, cap_s: float, chunk: int, log) -> dict:
    """Train in chunks of ``chunk`` steps (each resumed exactly) until ``cfg.steps`` or the
    wall-clock cap is reached; returns the last chunk's metrics (with the steps done)."""
    t0, steps, m = time.perf_counter(), 0, {}
    while steps < cfg.steps:
        steps = min(cfg.steps, steps + chunk)
        c = Free3DTrainConfig(**{**cfg.__dict__, "steps": steps})
        m = train_free3d(c, out, data=data, resume=True)
        el = time.perf_counter() - t0
        log(f"  step {steps}: train loss {m['train'][-1][1]:.4f}, val loss "
            f"{m['final_val_loss']:.4f}, {el:.0f} s")  # fmt: skip
        per_step = el / steps
        if el + per_step * chunk > cap_s:
            break
    m["elapsed_s"] = time.perf_counter() - t0
    return m


# ----------------------------------------------------------------------------- evaluation


def eval_orbits(num: int, size: int, views: int, step_deg: float, first_deg: float) -> list:
    """Held-out objects on an orbit arc: view 0 the source at azimuth 0, then ``views``
    targets at ``first_deg + k step_deg``; elevation 5-35 deg and radius 1.9-2.1 seeded."""
    out = []
    for k in range(num):
        g = torch.Generator().manual_seed(HELD_OUT_BASE + k)
        u = torch.rand(2, generator=g, dtype=torch.float64)
        az = torch.tensor([0.0] + [first_deg + i * step_deg for i in range(views)])
        el = torch.full_like(az, 5.0 + 30.0 * float(u[0]))
        r = torch.full_like(az, 1.9 + 0.2 * float(u[1]))
        mesh = procedural_object(HELD_OUT_BASE + k)
        rend = render_with_depth(mesh, spherical_cam_from_world(az, el, r), size, ZERO123_FOV_DEG)
        rend["name"] = f"procedural_{HELD_OUT_BASE + k}"
        out.append(rend)
    return out


def consistency(images, o, args) -> tuple[list[float], list[float]]:
    """Warped PSNR and TSED consistency (0/1) of neighbouring targets (views 1..K)."""
    ps, ts = [], []
    for i in range(1, images.shape[0] - 1):
        j = i + 1
        K, C, D = o["K"], o["cam_from_world"], o["depth"]
        p, _ = warped_psnr(images[i], images[j], D[i], D[j], K[i], K[j], C[i], C[j])
        ps.append(p)
        t = tsed_pair(images[i], images[j], K[i], K[j], C[i], C[j], 256, args.tsed_error,
                      args.tsed_matches)  # fmt: skip
        ts.append(float(t["consistent"]))
    return ps, ts


def evaluate_views(pipe, orbits, args, log) -> dict:
    """Samples with and without noise sharing (paired) and their metrics."""
    keys = ("cons", "tsed", "psnr", "ssim")
    res = {mode: {k: [] for k in keys} for mode in ("shared", "independent")}
    res["gt"] = {"cons": [], "tsed": []}
    res["copy"] = {"cons": [], "tsed": [], "psnr": [], "ssim": []}
    for o in orbits:
        imgs = o["images"]
        ps, ts = consistency(imgs, o, args)
        res["gt"]["cons"] += ps
        res["gt"]["tsed"] += ts
        copy = imgs[:1].expand_as(imgs).clone()
        ps, ts = consistency(copy, o, args)
        res["copy"]["cons"] += ps
        res["copy"]["tsed"] += ts
        src = imgs[0].permute(1, 2, 0)
        for v in range(1, imgs.shape[0]):
            res["copy"]["psnr"].append(psnr(src, imgs[v].permute(1, 2, 0)))
            res["copy"]["ssim"].append(ssim(src, imgs[v].permute(1, 2, 0)))
    # the copy baseline does not depend on the seed: repeat it per seed to stay paired
    res["copy"] = {k: v * len(args.seeds) for k, v in res["copy"].items()}
    for seed in args.seeds:
        for o in orbits:
            C = o["cam_from_world"].double()
            poses = relative_pose(C[:1].expand(len(C) - 1, 3, 4), C[1:])[None]
            for mode, share in (("shared", True), ("independent", False)):
                cfg = SamplerConfig(args.sample_steps, args.guidance, share, 0.0, seed)
                gen = sample_views(pipe, o["images"][:1], o["K"][:1].float(), poses, None, cfg)[0]
                views = torch.cat([o["images"][:1], gen.cpu()])
                ps, ts = consistency(views, o, args)
                res[mode]["cons"] += ps
                res[mode]["tsed"] += ts
                for v in range(1, views.shape[0]):
                    a, b = views[v].permute(1, 2, 0), o["images"][v].permute(1, 2, 0)
                    res[mode]["psnr"].append(psnr(a, b))
                    res[mode]["ssim"].append(ssim(a, b))
        log(f"  seed {seed}: shared cons {nanmean(res['shared']['cons']):.2f} dB, independent "
            f"{nanmean(res['independent']['cons']):.2f} dB (running means)")  # fmt: skip
    return res


def heldout_psnr(pipe, orbits, args) -> list[float]:
    """PSNR of generated targets (shared noise) against the ground truth."""
    out = []
    for seed in args.seeds:
        for o in orbits:
            C = o["cam_from_world"].double()
            poses = relative_pose(C[:1].expand(len(C) - 1, 3, 4), C[1:])[None]
            cfg = SamplerConfig(args.sample_steps, args.guidance, True, 0.0, seed)
            gen = sample_views(pipe, o["images"][:1], o["K"][:1].float(), poses, None, cfg)[0]
            for v in range(gen.shape[0]):
                out.append(psnr(gen[v].cpu().permute(1, 2, 0), o["images"][v + 1].permute(1, 2, 0)))
    return out


# ----------------------------------------------------------------------------- main


def build_config(args, **model) -> Free3DTrainConfig:
    return Free3DTrainConfig(
        steps=args.max_steps, batch_sets=args.batch_sets, views_per_set=3, lr=args.lr,
        warmup_steps=20, val_every=10**6, val_tuples=args.val_tuples, checkpoint_every=0,
        seed=0, device=args.device, image_size=args.size, block_out_channels=args.channels,
        cond_drop_prob=0.1, **model,
    )  # fmt: skip


def _clean(x):
    """NaN / inf as None (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def row(metric: str, value: float, device: str, **extra) -> dict:
    extra = {k: _clean(v) for k, v in extra.items()}
    return {"metric": metric, "value": _clean(float(value)), "device": device, **extra}


def run(args, log) -> list[dict]:
    dev = args.device
    torch.manual_seed(0)
    rcfg = RenderSetConfig(num_views=12, size=args.size, seed=0)
    t0 = time.perf_counter()
    train_sets = render_view_sets([f"procedural:{i}" for i in range(args.train_objects)], rcfg)
    held = [f"procedural:{HELD_OUT_BASE + k}" for k in range(args.eval_objects)]
    val_sets = render_view_sets(held, RenderSetConfig(num_views=12, size=args.size, seed=500))
    orbits = eval_orbits(args.eval_objects, args.size, args.views, args.step_deg, args.first_deg)
    log(f"rendered {len(train_sets)} training / {len(val_sets)} held-out objects at "
        f"{args.size} px in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    data = (train_sets, val_sets)
    cfg = build_config(args)
    log(f"training config: {json.dumps({k: str(v) for k, v in cfg.__dict__.items()})}")
    tmp = Path(tempfile.mkdtemp(prefix="free3d_bench_"))
    m = train_capped(cfg, data, tmp / "full", args.train_seconds, args.chunk, log)
    log(f"trained {m['steps']} steps in {m['elapsed_s']:.0f} s; val loss "
        f"{m['initial_val_loss']:.4f} -> {m['final_val_loss']:.4f}")  # fmt: skip
    pipe = load_free3d(m["model_dir"], dev, torch.float32)
    rows = [row("train_steps", float(m["steps"]), dev, train_s=round(m["elapsed_s"], 1)),
            row("val_loss_initial", m["initial_val_loss"], dev),
            row("val_loss_final", m["final_val_loss"], dev)]  # fmt: skip

    # pose sensitivity on the validation tuples
    vdata = ViewTupleDataset(val_sets, 3, seed=123, samples_per_set=args.pose_tuples)
    for wrong in ("shuffle", "rotate"):
        ps = evaluate_pose_sensitivity(pipe, vdata, None, 4, seed=7, wrong=wrong)
        right, bad = zip(*ps["pairs"], strict=True)
        st = paired_stats(bad, right)
        suffix = "" if wrong == "shuffle" else "_rotate"
        rows += [
            row("loss_correct_pose" + suffix, ps["correct"], dev, n=ps["count"]),
            row("loss_wrong_pose" + suffix, ps["wrong"], dev, n=ps["count"], wrong_pose=wrong),
            row("loss_wrong_minus_correct" + suffix, st["diff"], dev, ci95=st["ci95"],
                p_value=st["p_value"], n=st["n"],
                fraction_correct_lower=ps["fraction_correct_lower"]),
        ]  # fmt: skip

    # generated views: paired shared / independent noise
    t0 = time.perf_counter()
    res = evaluate_views(pipe, orbits, args, log)
    log(f"sampled and measured in {time.perf_counter() - t0:.0f} s")
    S, I_ = res["shared"], res["independent"]
    n = len(S["psnr"])
    rows += [
        row("consistency_psnr_shared_noise", nanmean(S["cons"]), dev, n=len(S["cons"])),
        row("consistency_psnr_independent_noise", nanmean(I_["cons"]), dev, n=len(I_["cons"])),
        row("consistency_psnr_ground_truth", nanmean(res["gt"]["cons"]), dev),
        row("consistency_psnr_copy_input", nanmean(res["copy"]["cons"]), dev),
        row("accuracy_psnr_shared_noise", nanmean(S["psnr"]), dev, n=n),
        row("accuracy_psnr_independent_noise", nanmean(I_["psnr"]), dev, n=n),
        row("accuracy_ssim_shared_noise", nanmean(S["ssim"]), dev, n=n),
        row("accuracy_ssim_independent_noise", nanmean(I_["ssim"]), dev, n=n),
        row("accuracy_psnr_copy_input", nanmean(res["copy"]["psnr"]), dev, n=n),
        row("accuracy_ssim_copy_input", nanmean(res["copy"]["ssim"]), dev, n=n),
        row("tsed_shared_noise", nanmean(S["tsed"]), dev, n=len(S["tsed"])),
        row("tsed_independent_noise", nanmean(I_["tsed"]), dev, n=len(I_["tsed"])),
        row("tsed_ground_truth", nanmean(res["gt"]["tsed"]), dev),
        row("tsed_copy_input", nanmean(res["copy"]["tsed"]), dev),
    ]
    for name, a, b in (
        ("consistency_psnr_shared_minus_independent", S["cons"], I_["cons"]),
        ("accuracy_psnr_shared_minus_independent", S["psnr"], I_["psnr"]),
        ("accuracy_ssim_shared_minus_independent", S["ssim"], I_["ssim"]),
        ("tsed_shared_minus_independent", S["tsed"], I_["tsed"]),
        ("consistency_psnr_shared_minus_copy_input", S["cons"], res["copy"]["cons"]),
        ("accuracy_psnr_shared_minus_copy_input", S["psnr"], res["copy"]["psnr"]),
    ):
        st = paired_stats(a, b)
        rows.append(row(name, st["diff"], dev, ci95=st["ci95"], p_value=st["p_value"], n=st["n"]))
    if args.ablation:
        rows += ablation(args, data, orbits, tmp, log)
    return rows


def ablation(args, data, orbits, tmp: Path, log) -> list[dict]:
    """Held-out view PSNR of pose-token-only, RCN (+ pose token) and RCN + cross-view models,
    each trained under the same cap; paired differences."""
    variants = {
        "pose_token_only": {"rcn": False, "cross_view": False},
        "rcn": {"rcn": True, "cross_view": False},
        "rcn_cross_view": {"rcn": True, "cross_view": True},
    }
    scores, rows, steps = {}, [], None
    for name, model in variants.items():
        log(f"ablation: training {name}")
        cfg = build_config(args, **model)
        cap = args.ablation_seconds
        if steps is not None:  # the same number of steps as the first model (cap: safety)
            cfg.steps, cap = steps, 1.5 * cap
        m = train_capped(cfg, data, tmp / name, cap, args.chunk, log)
        steps = m["steps"] if steps is None else steps
        pipe = load_free3d(m["model_dir"], args.device, torch.float32)
        scores[name] = heldout_psnr(pipe, orbits, args)
        log(f"  {name}: {m['steps']} steps, held-out PSNR {nanmean(scores[name]):.2f} dB")
    d = args.device
    rows += [
        row("pose_token_only_heldout_psnr", nanmean(scores["pose_token_only"]), d),
        row("rcn_heldout_psnr", nanmean(scores["rcn"]), d),
        row("cross_view_heldout_psnr", nanmean(scores["rcn_cross_view"]), d),
        row("no_cross_view_heldout_psnr", nanmean(scores["rcn"]), d),
    ]
    for name, a, b in (
        ("rcn_minus_pose_token_only_heldout_psnr", "rcn", "pose_token_only"),
        ("cross_view_minus_no_cross_view_heldout_psnr", "rcn_cross_view", "rcn"),
    ):
        st = paired_stats(scores[a], scores[b])
        rows.append(row(name, st["diff"], d, ci95=st["ci95"], p_value=st["p_value"], n=st["n"]))
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'metric':48s} {'value':>10s}  extra", "-" * 90]
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ("metric", "value", "device")}
        if "ci95" in extra:
            extra["ci95"] = [round(x, 4) for x in extra["ci95"]]
        if isinstance(extra.get("p_value"), float):
            extra["p_value"] = float(f"{extra['p_value']:.3g}")
        v = math.nan if r["value"] is None else r["value"]
        lines.append(f"{r['metric']:48s} {v:10.4f}  {extra if extra else ''}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (longer, 64 px, "
                   "with the RCN / cross-view ablation)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run (~1-2 min)")
    p.add_argument("--json", action="store_true", help="one JSON row per line on stdout")
    p.add_argument("--out", default=None, help="also write the JSON rows to this file")
    p.add_argument("--train-seconds", type=float, default=None, help="training wall-clock cap")
    p.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=None,
                   help="train the ablation models (default: on with cuda)")  # fmt: skip
    p.add_argument("--ablation-seconds", type=float, default=None, help="cap per ablation model")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="sampling seeds")
    p.add_argument(
        "--tsed-error",
        type=float,
        default=None,
        help="TSED T_error (px at 256 px; default 4 at 32 px, 2 at 64 px and up)",
    )
    p.add_argument("--tsed-matches", type=int, default=10, help="TSED T_matches")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    d = {"size": 64 if cuda else 32, "channels": (32, 64), "batch_sets": 4 if cuda else 2,
         "lr": 1e-3, "max_steps": 20000 if cuda else 2000, "chunk": 200 if cuda else 50,
         "train_objects": 64 if cuda else 40, "eval_objects": 6 if cuda else 4, "views": 4,
         "step_deg": 15.0, "first_deg": 30.0, "sample_steps": 50 if cuda else 25,
         "guidance": 1.0, "val_tuples": 8, "pose_tuples": 8 if cuda else 6}  # fmt: skip
    secs, abl_secs, seeds = (240.0, 150.0, [0, 1, 2, 3]) if cuda else (660.0, 300.0, [0, 1, 2])
    if args.quick:
        d.update(max_steps=10, chunk=5, train_objects=4, eval_objects=2, views=3,
                 sample_steps=5, pose_tuples=2, val_tuples=2)  # fmt: skip
        secs, abl_secs, seeds = 30.0, 10.0, [0, 1]
    for k, v in d.items():
        setattr(args, k, v)
    args.train_seconds = secs if args.train_seconds is None else args.train_seconds
    args.ablation_seconds = abl_secs if args.ablation_seconds is None else args.ablation_seconds
    args.seeds = seeds if args.seeds is None else args.seeds
    args.ablation = cuda if args.ablation is None else args.ablation
    if args.tsed_error is None:
        args.tsed_error = 4.0 if args.size < 64 else 2.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    t0 = time.perf_counter()
    rows = run(args, log)
    log(f"total {time.perf_counter() - t0:.0f} s; TSED T_error {args.tsed_error} px at 256 px, "
        f"T_matches {args.tsed_matches}")  # fmt: skip
    if args.json:
        for r in rows:
            print(json.dumps(r), flush=True)
    else:
        print(table(rows))
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


def gpu_section(device: str, seconds: float, quick: bool = False) -> dict:
    """The ``--device cuda`` run for ``benchmarks/gpu_check.py`` within ``seconds``: the
    training caps are split so that the main model and the three ablation models fit; returns
    ``{metric: value}`` plus ``targets`` (RCN beats pose-token-only on held-out PSNR)."""
    per = max(10.0, (seconds - 60.0) / 5.0)  # main model + 3 ablation models + evaluation
    argv = ["--device", device, "--train-seconds", str(per), "--ablation-seconds", str(per)]
    args = parse_args(argv + (["--quick"] if quick else []))
    args.ablation = True
    rows = run(args, lambda m: print(m, file=sys.stderr, flush=True))
    out = {r["metric"]: r["value"] for r in rows}
    nan = math.nan

    def gt(a: str, b: str) -> bool:
        x, y = out.get(a), out.get(b)
        return x is not None and y is not None and x > y

    out["targets"] = {
        "rcn_beats_pose_token_only": gt("rcn_heldout_psnr", "pose_token_only_heldout_psnr"),
        "correct_pose_lower_loss": gt("loss_wrong_pose", "loss_correct_pose"),
        "shared_noise_consistency_gain_db": (out.get("consistency_psnr_shared_minus_independent")
                                             or nan),
    }  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())
