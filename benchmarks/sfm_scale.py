"""SfM at scale (issue 25): our reconstruction with pair selection vs pycolmap at 100-1,000
images of a generated walk with exact cameras.

The scene (``--scene``) is rendered at ``--images`` views by our renderer, with exact cameras:

- ``room`` (default): the indoor walk of ``benchmarks/sfm.py`` (a textured room with objects,
  the camera circling inside and looking out: one lap, so the last frames close the loop onto
  the first);
- ``street``: a walk down a street between two rows of building facades (window grids,
  :mod:`sceneforge.core.synthetic_street`), 0.35 m per frame, so more images = a longer street
  (60 images: 21 m, 300: 105 m); no loop to close.

Every method runs in its own process on the same folder of frames (named in capture order),
so its peak RSS is its own:

- ``sceneforge``: ``sceneforge reconstruct`` defaults for frames of a video (``sequential``
  on, pair selection ``auto``: the query-frame scheme up to 100 images, beyond it sequential
  pairs + loop-closure candidates by VLAD retrieval);
- ``sceneforge-sequential`` / ``sceneforge-retrieval``: that pair selection at every size;
- ``colmap-sequential``: pycolmap SIFT + sequential matching (overlap 10, quadratic overlap;
  no loop detection: it needs a vocabulary-tree file that cannot be downloaded here) +
  incremental mapping; ``colmap-exhaustive``: every pair (only up to ``--exhaustive-max``).

Rows (``--json``): ``{"images", "method", "registered", "auc5", "wall_s", "peak_rss_mb"}``
(+ ``cpu_s``: CPU seconds, steadier than the wall time on a shared machine; ``pairs``: image
pairs matched, ours; ``error`` when a method failed). AUC@5 is over all image pairs, a pair with an unregistered
image counting as a failure (``benchmarks/sfm.py``'s definition). ``--long`` adds the
1,000-image run (ours only) and reports a least-squares fit of wall time and peak memory
against the image count for each of our methods run at three or more sizes.

Usage::

    python benchmarks/sfm_scale.py                      # 100 and 300 images
    python benchmarks/sfm_scale.py --images 100 --json /tmp/scale.json
    python benchmarks/sfm_scale.py --long               # + 1,000 images (hours on 2 cores)
    python benchmarks/sfm_scale.py --scene street --images 60 --methods sceneforge colmap-sequential
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OURS = {
    "sceneforge": "auto",
    "sceneforge-sequential": "sequential",
    "sceneforge-retrieval": "retrieval",
}
COLMAP = ("colmap-sequential", "colmap-exhaustive")
DEFAULT_METHODS = ("sceneforge", "colmap-sequential", "colmap-exhaustive")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    """CPU seconds of this process (all threads) and its finished children: unlike the wall
    time, comparable between runs on a machine shared with other work."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ----------------------------------------------------------------------------- scene


SCENES = ("room", "street")


def render_walk(
    views: int, folder: Path, seed: int, scene: str = "room"
) -> dict[str, torch.Tensor]:
    """Frames of the walk through ``scene`` in ``folder`` (cached with their ground truth in
    ``gt.pt``)."""
    sys.path.insert(0, str(HERE))
    from sfm import render_synthetic

    gt_file = folder / "gt.pt"
    if gt_file.is_file():
        return torch.load(gt_file)
    images = folder / "images"
    if scene == "room":
        gt = render_synthetic("walk", views, images, seed)
    elif scene == "street":
        gt = render_street(views, images, seed)
    else:
        raise ValueError(f"unknown scene {scene!r}; use one of {SCENES}")
    torch.save(gt, gt_file)
    return gt


def render_street(views: int, folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """The street walk (480 x 360, as the room) in ``folder``; ground-truth poses by name."""
    from sceneforge.core.image_io import write_image_atomic
    from sceneforge.core.synthetic_street import StreetConfig, make_street

    scene = make_street(StreetConfig(num_views=views, width=480, height=360, seed=seed))
    folder.mkdir(parents=True, exist_ok=True)
    gt = {}
    for i, name in enumerate(scene.image_names):
        write_image_atomic(folder / name, scene.images[i].numpy())
        gt[name] = scene.cameras.cam_from_world[i].double()
    return gt


# ----------------------------------------------------------------------------- methods


def run_ours(images: Path, out: Path, pairs: str, max_image_size: int) -> dict:
    """Our reconstruction of ordered frames; poses by image name."""
    from sceneforge.core.io_colmap import read_colmap
    from sceneforge.recon.reconstruct import ReconstructConfig, reconstruct
    from sceneforge.recon.retrieval import PairSelectionConfig

    cfg = ReconstructConfig(
        features="sift",
        max_image_size=max_image_size,
        sequential=True,
        pair_selection=PairSelectionConfig(method=pairs),  # type: ignore[arg-type]
        progress=False,
        write_png=False,
    )
    summary = reconstruct(images, out, cfg)
    scene = read_colmap(out / "sparse" / "0", images_dir=images)
    poses = {n: scene.cameras.cam_from_world[i].double() for i, n in enumerate(scene.image_names)}
    return {
        "registered": summary["num_registered"],
        "poses": poses,
        "pairs": summary["matching"]["num_pairs"],
        "pair_selection": summary.get("pair_selection"),
        "timings": summary["timings_s"],
    }


def run_colmap(images: Path, work: Path, matching: str, max_image_size: int) -> dict:
    """pycolmap SIFT (our SIFT cap), sequential or exhaustive matching, incremental mapping."""
    import pycolmap
    from sfm import pycolmap_poses

    from sceneforge.recon.features import FeaturesConfig

    work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = max_image_size
    ext.sift.max_num_features = FeaturesConfig().max_keypoints
    ext.num_threads = 2
    pycolmap.extract_features(
        db,
        images,
        camera_mode=pycolmap.CameraMode.SINGLE,
        extraction_options=ext,
        device=pycolmap.Device.cpu,
    )
    if matching == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap, pairing.loop_detection = 10, False
        pycolmap.match_sequential(db, pairing_options=pairing, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
    recs = pycolmap.incremental_mapping(db, images, work / "sparse")
    if not recs:
        return {"registered": 0, "poses": {}}
    rec = max(recs.values(), key=lambda r: r.num_reg_images())
    poses = pycolmap_poses(rec)
    return {"registered": rec.num_reg_images(), "poses": poses}


def worker(method: str, images: Path, work: Path, max_image_size: int, result: Path) -> None:
    """One method in this (fresh) process; writes its result with wall time and peak RSS."""
    torch.set_num_threads(2)
    t0, c0 = time.perf_counter(), cpu_s()
    try:
        if method in OURS:
            res = run_ours(images, work / "ours", OURS[method], max_image_size)
        else:
            res = run_colmap(images, work / "colmap", method.split("-")[1], max_image_size)
    except Exception as e:  # a failed method is a row with 0 registered, not a crash
        res = {"registered": 0, "poses": {}, "error": f"{type(e).__name__}: {e}"}
    res["wall_s"] = time.perf_counter() - t0
    res["cpu_s"] = cpu_s() - c0
    res["peak_rss_mb"] = peak_rss_mb()
    torch.save(res, result)


def run_method(method: str, images: Path, work: Path, max_image_size: int) -> dict:
    """``worker`` in a child process."""
    result = work / "result.pt"
    cmd = [sys.executable, __file__, "--worker", method, "--folder", str(images)]
    cmd += ["--work", str(work), "--max-image-size", str(max_image_size), "--result", str(result)]
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        return {
            "registered": 0,
            "poses": {},
            "wall_s": float("nan"),
            "peak_rss_mb": float("nan"),
            "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}",
        }
    return torch.load(result)


# ----------------------------------------------------------------------------- report


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = a + b x`` and the log-log slope (1 = linear growth)."""
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    A = torch.stack([torch.ones_like(x), x], 1)
    a, b = torch.linalg.lstsq(A, y[:, None]).solution[:, 0].tolist()
    la = torch.stack([torch.ones_like(x), x.log()], 1)
    exponent = torch.linalg.lstsq(la, y.log()[:, None]).solution[1, 0].item()
    return {"intercept": a, "per_image": b, "loglog_exponent": exponent}


def format_rows(rows: list[dict]) -> str:
    head = "| images | method | registered | AUC@5 | wall s | CPU s | peak RSS MB | pairs |"
    lines = [head, "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['method']} | {r['registered']} | {r['auc5']:.3f} | "
            f"{r['wall_s']:.1f} | {r.get('cpu_s', float('nan')):.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r.get('pairs', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, nargs="+", default=[100, 300], help="views per run")
    ap.add_argument("--long", action="store_true", help="also 1,000 images (ours only)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=[*OURS, *COLMAP])
    ap.add_argument(
        "--exhaustive-max", type=int, default=100, help="colmap-exhaustive up to this many"
    )
    ap.add_argument("--max-image-size", type=int, default=1024, help="extraction size, both")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated scene")
    ap.add_argument("--scene", choices=SCENES, default="room", help="generated scene walked")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: temporary)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    # internal: one method in a child process
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.folder, args.work, args.max_image_size, args.result)
        return

    sys.path.insert(0, str(HERE))
    from sfm import auc_with_missing

    sizes = sorted(set(args.images) | ({1000} if args.long else set()))
    work = args.work or Path(tempfile.mkdtemp(prefix="sfm_scale_"))
    rows: list[dict] = []
    for n in sizes:
        prefix = "walk" if args.scene == "room" else args.scene  # room: the older cache name
        scene_dir = work / f"{prefix}_{n}_seed{args.seed}"
        t0 = time.perf_counter()
        gt = render_walk(n, scene_dir, args.seed, args.scene)
        print(f"{n} views rendered ({time.perf_counter() - t0:.0f} s)", flush=True)
        names = sorted(gt)
        for method in args.methods:
            if method == "colmap-exhaustive" and n > args.exhaustive_max:
                continue
            if method in COLMAP and n >= 1000:
                continue
            run_dir = work / f"run_{'' if args.scene == 'room' else 'street_'}{n}_{method}"
            res = run_method(method, scene_dir / "images", run_dir, args.max_image_size)
            auc = auc_with_missing(res["poses"], gt, names)
            row = {
                "scene": args.scene,
                "images": n,
                "method": method,
                "registered": int(res["registered"]),
                "auc5": float(auc["auc5"]),
                "wall_s": float(res["wall_s"]),
                "peak_rss_mb": float(res["peak_rss_mb"]),
            }
            if "cpu_s" in res:
                row["cpu_s"] = float(res["cpu_s"])
            if "pairs" in res:
                row["pairs"] = res["pairs"]
            if "error" in res:
                row["error"] = res["error"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print(format_rows(rows))
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method and "error" not in r]
        if method in OURS and len(mine) >= 3:
            xs = [r["images"] for r in mine]
            for key in ("wall_s", "peak_rss_mb"):
                fit = linear_fit(xs, [r[key] for r in mine])
                print(f"{method} {key}: {json.dumps(fit)}")


if __name__ == "__main__":
    main()
