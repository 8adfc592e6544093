"""Peak memory and set-up time of field training on many full-size photos.

Per row, a fresh Python process builds the trainer (the training set of ``views`` generated
1920x1080 JPEG photos read from disk) and runs 20 training steps of the default NeRF on the
CPU; the row reports the process's peak resident memory (``resource.getrusage``, so
everything: torch, the model, the images, the batches) and the set-up time (building the
trainer: reading, downscaling and packing the images). The photos are generated once into
``--data`` (smooth colours plus noise, deterministic) and reused.

    .venv/bin/python benchmarks/fields_memory.py --json               # 50 and 200 views
    .venv/bin/python benchmarks/fields_memory.py --long --json rows.jsonl   # also 1,000
    .venv/bin/python benchmarks/fields_memory.py --max-long-side 1600  # the default cap

By default the views are trained at full size (``--max-long-side 0``), the hard case; the
trainer's default caps the longest side at 1600 px (960x540 here). Target: < 4 GB at 200.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

WIDTH, HEIGHT = 1920, 1080


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def photo_path(data: Path, k: int) -> Path:
    return data / f"view_{k:04d}.jpg"


def generate(data: Path, n: int) -> None:
    """Views ``0 .. n-1`` as JPEG files (missing ones only)."""
    import numpy as np
    from PIL import Image

    data.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    for k in range(n):
        p = photo_path(data, k)
        if p.exists():
            continue
        rng = np.random.default_rng(k)
        a = 2 * math.pi * k / 1000
        img = np.stack(
            [
                0.5 + 0.4 * np.sin(x / 97.0 + a),
                0.5 + 0.4 * np.cos(y / 61.0 - a),
                0.5 + 0.4 * np.sin((x + y) / 143.0 + 2 * a),
            ],
            -1,
        )
        img += rng.normal(0.0, 0.03, img.shape).astype(np.float32)
        arr = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        tmp = p.with_suffix(".tmp.jpg")
        Image.fromarray(arr).save(tmp, quality=90)
        tmp.replace(p)


def scene_of(data: Path, n: int):
    """A disk-backed scene: ``n`` cameras on a circle looking at the origin."""
    import torch

    from sceneforge.core.cameras import Cameras
    from sceneforge.core.scene import SceneData

    poses = []
    for k in range(n):
        a = 2 * math.pi * k / n
        eye = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 0.5], dtype=torch.float64)
        fwd = -eye / eye.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        right = right / right.norm()
        down = torch.linalg.cross(fwd, right)
        R = torch.stack([right, down, fwd])  # rows: camera axes in world coordinates
        poses.append(torch.cat([R, (-R @ eye)[:, None]], 1))
    params = torch.tensor([[1500.0, 1500.0, WIDTH / 2, HEIGHT / 2]], dtype=torch.float64)
    cams = Cameras(
        "PINHOLE",
        params.expand(n, -1).clone(),
        torch.full((n,), WIDTH),
        torch.full((n,), HEIGHT),
        torch.stack(poses),
    )
    return SceneData(
        cameras=cams,
        image_names=[photo_path(data, k).name for k in range(n)],
        image_paths=[photo_path(data, k) for k in range(n)],
        metadata={"aabb": [[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]},
    )


def child(data: Path, n: int, steps: int, max_long_side: int) -> dict:
    """One row, measured in this (fresh) process."""
    import torch

    from sceneforge.fields.trainer import Trainer, TrainerConfig

    # torch imports its compiler lazily on the first use_deterministic_algorithms (seconds):
    # done here so that setup_s is the training set's set-up
    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled())
    import_mb = peak_rss_mb()
    scene = scene_of(data, n)
    cfg = TrainerConfig(
        max_steps=steps,
        progress=False,
        tensorboard=False,
        device="cpu",
        max_long_side=max_long_side,
        checkpoint_every=0,
    )
    t0 = time.perf_counter()
    tr = Trainer(scene, cfg)
    setup_s = time.perf_counter() - t0
    setup_mb = peak_rss_mb()
    t1 = time.perf_counter()
    tr.train()
    h, w = tr.view_shape(0)
    return {
        "views": n,
        "size": f"{WIDTH}x{HEIGHT}",
        "working_size": f"{w}x{h}",
        "train_views": tr.num_views,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "setup_s": round(setup_s, 2),
        "step_s": round((time.perf_counter() - t1) / max(steps, 1), 3),
        "import_rss_mb": round(import_mb, 1),
        "setup_peak_rss_mb": round(setup_mb, 1),
        "dataset_mb": round(tr.dataset.nbytes() / 1024**2, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--long", action="store_true", help="also 1,000 views")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-long-side", type=int, default=0, help="trainer cap (0: full size)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/sceneforge_fields_memory"))
    ap.add_argument("--json", nargs="?", const="-", default=None, help="rows as JSON lines")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.data, a.child, a.steps, a.max_long_side)))
        return
    views = sorted(set(a.views + ([1000] if a.long else [])))
    generate(a.data, max(views))
    rows = []
    for n in views:
        cmd = [sys.executable, __file__, "--child", str(n), "--steps", str(a.steps)]
        cmd += ["--max-long-side", str(a.max_long_side), "--data", str(a.data)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{r['views']:5d} views {r['size']} (working {r['working_size']}): peak RSS "
            f"{r['peak_rss_mb']:.0f} MB, set-up {r['setup_s']:.1f} s, "
            f"{r['step_s']:.2f} s/step, dataset {r['dataset_mb']:.0f} MB",
            file=sys.stderr,
        )
    if a.json is not None:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if a.json == "-":
            sys.stdout.write(text)
        else:
            Path(a.json).write_text(text)


if __name__ == "__main__":
    main()
