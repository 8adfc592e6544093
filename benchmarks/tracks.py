"""Track-building benchmark (issue 4): per scene and feature setting, track count, mean track
length, position error against exact ground truth (synthetic scenes), epipolar error against
reference poses (blowtorch), and time per stage; plus peak memory of a long, large sequence.

    .venv/bin/python benchmarks/tracks.py                 # synthetic + real subsets, all settings
    .venv/bin/python benchmarks/tracks.py --settings sift --scenes forward
    .venv/bin/python benchmarks/tracks.py --memory-views 200 --memory-size 1024

Settings: SIFT + mutual NN (the CPU default; OpenCV's SIFT), ``sift-colmap`` (the same with
COLMAP's SIFT extractor), ALIKED + LightGlue, XFeat + mutual NN. Ratios are against SIFT + NN
on the same scene. Errors are of the non-anchor observations (each track's
anchor/query position is exact by definition); "raw" is before sub-pixel refinement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sceneforge.recon.features import FeaturesConfig
from sceneforge.recon.matching import MatchingConfig
from sceneforge.recon.refine import PatchRefiner
from sceneforge.recon.track_eval import (
    epipolar_errors,
    error_summary,
    gt_tracks_from_homographies,
    gt_tracks_from_synthetic,
    procedural_texture,
    random_homographies,
    render_homography_sequence,
    track_errors,
)
from sceneforge.recon.tracking import TracksConfig, build_tracks

DATA = Path(
    os.environ.get("SCENEFORGE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

SETTINGS = {
    "sift": ("sift", "nn"),  # OpenCV's SIFT (the default)
    "sift-colmap": ("sift", "nn"),  # COLMAP's extractor (pycolmap)
    "aliked": ("aliked", "lightglue"),
    "xfeat": ("xfeat", "nn"),
}


def make_config(setting: str, num_queries: int, max_kp: int) -> TracksConfig:
    feat, match = SETTINGS[setting]
    backend = "pycolmap" if setting == "sift-colmap" else "opencv"
    return TracksConfig(
        features=FeaturesConfig(
            method=feat, max_keypoints=max_kp, device="cpu", sift_backend=backend
        ),
        matching=MatchingConfig(method=match, device="cpu"),
        num_query_frames=num_queries,
    )


def load_scene(name: str, args):
    """(images-or-scene, ground-truth kind, extra) for a benchmark scene."""
    if name == "homography":
        h, w, n = 384, 512, args.views
        tex = procedural_texture(2 * h, 2 * w, seed=7)
        hs = random_homographies(n, w, h, seed=7)
        return render_homography_sequence(tex, hs, h, w), "homography", hs
    if name in ("forward", "turntable"):
        from sceneforge.core.synthetic import forward_scene, turntable_scene

        if name == "forward":
            s = forward_scene(num_views=args.views, size=args.size, seed=0)
        else:
            s = turntable_scene(num_views=max(args.views, 24), size=args.size, seed=0)
        return replace(s, masks=None), "synthetic", None
    if name == "fern":
        from sceneforge.core.image_io import list_images

        paths = list_images(DATA / "scenes" / "fern" / "images")[: args.real_views]
        return paths, None, None
    if name == "blowtorch":
        from sceneforge.core.io import load_scene as load

        s = load(DATA / "scenes" / "blowtorch")
        # the capture is unordered: take image 0 and its nearest cameras (overlapping views)
        c = s.cameras.centers
        near = (c - c[0]).norm(dim=-1).argsort()[: args.real_views].sort().values
        return s.subset(near.tolist()), "epipolar", None
    raise ValueError(f"unknown scene {name!r}")


def run_one(scene_name: str, setting: str, args) -> dict:
    src, kind, extra = load_scene(scene_name, args)
    cfg = make_config(setting, args.queries, args.max_keypoints)
    t0 = time.perf_counter()
    raw = build_tracks(src, replace(cfg, refine_enabled=False))
    total = time.perf_counter() - t0
    n_images = raw.num_frames
    loader = (lambda i: src.load_image(i)) if hasattr(src, "load_image") else None
    if loader is None:
        from sceneforge.core.image_io import read_image

        loader = (
            (lambda i: read_image(src[i])) if not torch.is_tensor(src[0]) else (lambda i: src[i])
        )
    masks = (lambda i: src.load_mask(i)) if hasattr(src, "load_mask") else None
    t1 = time.perf_counter()
    refined = PatchRefiner(cfg.refine)(raw, loader, masks).filter(cfg.min_track_length)
    refine_s = time.perf_counter() - t1
    n_obs = int(raw.visible.sum() - raw.num_tracks)
    row = {
        "scene": scene_name,
        "setting": setting,
        "images": n_images,
        "tracks": refined.num_tracks,
        "mean_len": round(refined.mean_length(), 2),
        "features_s_per_image": raw.info["features_s"] / n_images,
        "matching_s_per_pair": raw.info["matching_s"] / max(1, raw.info["num_pairs"]),
        "refine_ms_per_obs": 1000 * refine_s / max(1, n_obs),
        "total_s": total + refine_s,
    }
    if kind is not None:
        for tag, tr in (("raw", raw), ("ref", refined)):
            if kind == "synthetic":
                gt, valid = gt_tracks_from_synthetic(tr, src)
                err = track_errors(tr, gt, valid)
            elif kind == "homography":
                gt, valid = gt_tracks_from_homographies(tr, extra)
                err = track_errors(tr, gt, valid)
            else:
                err = epipolar_errors(tr, src.cameras)
            s = error_summary(err)
            row[f"{tag}_median"] = s["median"]
            row[f"{tag}_p90"] = s["p90"]
            row[f"{tag}_outliers"] = s["outliers"]
        row["error"] = "epipolar" if kind == "epipolar" else "position"
    return row


def memory_run(views: int, size: int, queries: int, max_kp: int) -> dict:
    """Build tracks on a ``views``-frame homography sequence at ``size`` px (long side) held as
    uint8, in this process; report peak RSS."""
    h, w = size * 3 // 4, size
    tex = procedural_texture(2 * h, 2 * w, seed=11)
    hs = random_homographies(views, w, h, seed=11, strength=0.5)
    imgs = []
    for k in range(0, views, 16):  # render in blocks, keep uint8 only
        imgs += [
            (f * 255 + 0.5).to(torch.uint8)
            for f in render_homography_sequence(tex, hs[k : k + 16], h, w)
        ]
    cfg = make_config("sift", queries, max_kp)
    t0 = time.perf_counter()
    tr = build_tracks(imgs, cfg)
    wall = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gt, valid = gt_tracks_from_homographies(tr, hs)
    s = error_summary(track_errors(tr, gt, valid))
    return {
        "views": views,
        "size": f"{w}x{h}",
        "queries": queries,
        "max_keypoints": max_kp,
        "tracks": tr.num_tracks,
        "mean_len": round(tr.mean_length(), 2),
        "peak_rss_gib": round(peak_gib, 2),
        "wall_s": round(wall, 1),
        "median": s["median"],
        "p90": s["p90"],
        **{k: round(v, 1) for k, v in tr.info.items() if k.endswith("_s")},
    }


def cost_run(num_images: int) -> list[dict]:
    """Per-image extraction and per-pair matching cost of each setting on real photos
    (fern 706x529, blowtorch 1060x707), after one warm-up image, in this process."""
    from sceneforge.core.image_io import list_images, read_image
    from sceneforge.recon.features import FeatureExtractor
    from sceneforge.recon.matching import Matcher

    rows = []
    for scene in ("fern", "blowtorch"):
        paths = list_images(DATA / "scenes" / scene / "images")[: num_images + 1]
        imgs = [read_image(p) for p in paths]
        for setting, (feat, match) in SETTINGS.items():
            cfg = make_config(setting, 1, 2048)
            ex = FeatureExtractor(cfg.features)
            matcher = Matcher(replace(cfg.matching, verify=False), feat)
            feats = [ex(imgs[0])]
            t0 = time.perf_counter()
            feats += [ex(im) for im in imgs[1:]]
            t_feat = (time.perf_counter() - t0) / num_images
            t0 = time.perf_counter()
            n_match = [len(matcher(feats[0], f)) for f in feats[1:]]
            t_match = (time.perf_counter() - t0) / num_images
            rows.append(
                {
                    "scene": scene,
                    "setting": f"{feat}+{match}",
                    "size": f"{imgs[0].shape[1]}x{imgs[0].shape[0]}",
                    "keypoints": sum(len(f) for f in feats) / len(feats),
                    "features_s_per_image": round(t_feat, 3),
                    "match_s_per_pair": round(t_match, 3),
                    "matches_per_pair": sum(n_match) / len(n_match),
                    "threads": torch.get_num_threads(),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def fmt(x) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else (f"{x:.3f}" if abs(x) < 100 else f"{x:.0f}")
    return str(x)


def print_table(rows: list[dict]) -> None:
    cols = [
        "scene",
        "setting",
        "images",
        "tracks",
        "mean_len",
        "raw_median",
        "raw_p90",
        "ref_median",
        "ref_p90",
        "ref_outliers",
        "features_s_per_image",
        "matching_s_per_pair",
        "refine_ms_per_obs",
        "total_s",
        "time_vs_sift",
        "tracks_vs_sift",
    ]
    base = {r["scene"]: r for r in rows if r["setting"] == "sift"}
    for r in rows:
        b = base.get(r["scene"])
        if b is not None:
            r["time_vs_sift"] = r["total_s"] / b["total_s"]
            r["tracks_vs_sift"] = r["tracks"] / max(1, b["tracks"])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", default="homography,forward,turntable,fern,blowtorch")
    ap.add_argument("--settings", default="sift,aliked,xfeat")
    ap.add_argument("--views", type=int, default=8, help="views of the synthetic scenes")
    ap.add_argument("--size", type=int, default=320, help="width of the synthetic renders")
    ap.add_argument("--real-views", type=int, default=8, help="first N images of fern/blowtorch")
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--max-keypoints", type=int, default=2048)
    ap.add_argument("--memory-views", type=int, default=0, help="run only the memory test")
    ap.add_argument("--memory-size", type=int, default=1024)
    ap.add_argument("--costs", type=int, default=0, help="only per-image costs on N real images")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per row")
    args = ap.parse_args()
    if args.costs:
        rows = cost_run(args.costs)
        cols = list(rows[0])
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    elif args.memory_views:
        row = memory_run(args.memory_views, args.memory_size, args.queries, args.max_keypoints)
        print(json.dumps(row))
        rows = [row]
    else:
        rows = []
        for scene in args.scenes.split(","):
            for setting in args.settings.split(","):
                t = time.perf_counter()
                try:
                    rows.append(run_one(scene, setting, args))
                except (ImportError, FileNotFoundError) as e:
                    print(f"skip {scene}/{setting}: {e}", file=sys.stderr)
                    continue
                print(f"done {scene}/{setting} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        print_table(rows)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
    sys.exit(0)
