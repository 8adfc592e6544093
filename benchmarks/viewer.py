"""Viewer field-render latency: the progressive passes a browser camera gets, on CPU.

Trains a field on a synthetic turntable scene for a fixed number of steps (or loads ``--run``),
then renders, from a browser-like camera (the first training pose, 16:9 canvas and a square
one), every pass of :class:`sceneforge.viewer.ProgressiveRenderer`: the preview (64 px on the
long side) and the sharper passes up to 512 px. Prints the median wall and CPU time of
``--repeats`` renders per pass, the rays per second, and the preview's ratio to the 1 s goal;
then the end-to-end preview latency the viewer sees: from ``update_camera`` (what a browser
camera move calls) to the preview image handed to ``publish``, through the render thread.
CPU time (``time.process_time``) is what the pass costs on an idle machine when torch runs
one thread; the wall time is inflated when other jobs share the cores.

    .venv/bin/python benchmarks/viewer.py [--run RUN_DIR] [--train-steps 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from sceneforge.viewer import (
    ProgressiveRenderer,
    ViewCamera,
    find_run,
    frustum_pose,
    resolution_levels,
    vertical_fov,
)

PREVIEW_GOAL_S = 1.0


def trained_run(steps: int) -> Path:
    from sceneforge.core.io import save_scene
    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.trainer import TrainerConfig

    root = Path(tempfile.mkdtemp(prefix="sceneforge-viewer-bench-"))
    scene_dir = save_scene(turntable_scene(num_views=24, size=64), root / "scene", "nerfstudio")
    # The settings of the 25 dB quality test (tests/fields/test_psnr.py).
    cfg = TrainerConfig(
        max_steps=steps,
        batch_rays=1024,
        scene_box="bounded",
        use_masks=False,
        progress=False,
        tensorboard=False,
    )
    res = train(scene_dir, root / "run", TrainConfig(trainer=cfg, save_eval_images=False))
    print(f"trained {res['steps']} steps: held-out PSNR {res['psnr']:.2f} dB")
    return root / "run"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a trained run folder (default: train one)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-px", type=int, default=512)
    ap.add_argument("--preview-samples", type=int, default=24)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = args.run or trained_run(args.train_steps)
    c = find_run(run)
    if not c.field.available:
        raise SystemExit(f"{run}: {c.field.status}")
    print(c.field.status)
    wxyz, pos = frustum_pose(c.scene.cameras)
    fov = float(vertical_fov(c.scene.cameras)[0])
    r = ProgressiveRenderer(c.field.render_rays, lambda *a: None)
    r.render(ViewCamera(tuple(wxyz[0]), tuple(pos[0]), fov, 64, 64), 64)  # warm-up
    print(f"\nthreads {args.threads}; preview goal {PREVIEW_GOAL_S:.1f} s", flush=True)
    print("pass = long side in px (/Ns: N candidate samples per ray, else the field's own)")
    print(
        f"{'canvas':>10} {'pass':>7} {'image':>8} {'wall ms':>9} {'cpu ms':>9} {'rays/s':>9} {'vs goal':>8}"
    )
    for canvas in ((1280, 720), (800, 800)):
        cam = ViewCamera(tuple(wxyz[0]), tuple(pos[0]), fov, *canvas)
        passes = [(64, args.preview_samples)] + [
            (px, 0) for px in resolution_levels(64, args.max_px)
        ]
        for px, ns in passes:
            times, cpus = [], []
            for _ in range(args.repeats if px <= 128 else 1):
                t0, c0 = time.perf_counter(), time.process_time()
                img = r.render(cam, px, num_samples=ns or None)
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            t, cpu = statistics.median(times), statistics.median(cpus)
            rays = img.shape[0] * img.shape[1]
            goal = f"{t / PREVIEW_GOAL_S:.2f}x" if px == 64 else ""
            size = f"{img.shape[1]}x{img.shape[0]}"
            label = f"{px}" + (f"/{ns}s" if ns else "")
            row = f"{canvas[0]}x{canvas[1]:<4} {label:>7} {size:>8} {t * 1000:>9.1f} {cpu * 1000:>9.1f}"
            print(f"{row} {rays / t:>9.0f} {goal:>8}", flush=True)
    latency(c.field.render_rays, wxyz, pos, fov, args.preview_samples, args.repeats)


def latency(render_rays, wxyz, pos, fov: float, preview_samples: int, repeats: int) -> None:
    """Time from ``update_camera`` to the preview reaching ``publish`` (render thread)."""
    got = threading.Event()
    seen: list[tuple[int, float]] = []

    def publish(img, px: int, seconds: float) -> None:
        if not got.is_set():
            seen.append((px, time.perf_counter()))
            got.set()

    r = ProgressiveRenderer(render_rays, publish, 64, 64, preview_samples=preview_samples).start()
    lat = []
    try:
        for k in range(repeats):
            i = k % len(wxyz)
            got.clear()
            t0 = time.perf_counter()
            r.update_camera(ViewCamera(tuple(wxyz[i]), tuple(pos[i]), fov, 1280, 720))
            if not got.wait(30):
                raise SystemExit("no preview published within 30 s")
            lat.append(seen[-1][1] - t0)
    finally:
        r.stop()
    print(
        f"\nend-to-end preview latency (update_camera -> publish, 1280x720 canvas, {repeats} "
        f"cameras): median {statistics.median(lat) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms "
        f"(goal {PREVIEW_GOAL_S * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
