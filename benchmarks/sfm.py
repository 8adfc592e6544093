"""SfM benchmark: sceneforge's global SfM vs pycolmap incremental mapping (SIFT, exhaustive).

Per scene, all methods run in this process on the same image folder:
- synthetic renders with exact ground truth (orbit, forward-facing, indoor walk, and
  ``handheld``: a phone-like walk-through of a cluttered room, 20 objects, a wallpapered
  wall (``--handheld-tiles``), hand shake and motion blur, 640x480, 70 deg; ``--views`` 25-60
  mimics real captures): registered
  images, AUC@{3,5,10,30} against the ground truth (pairs involving an unregistered image
  count as failures), mean reprojection error, points, wall time;
- real sets from ``../shared/data/scenes`` (no ground truth): registered images and the
  agreement of our poses with COLMAP's (AUC over the images both registered), plus, for
  blowtorch, both against its reference poses (``poses_bounds.npy``, most likely COLMAP's).

Usage: ``python benchmarks/sfm.py [--scenes orbit forward walk handheld fern blowtorch
sacre_coeur] [--max-images N] [--views N] [--seed S] [--ours sceneforge sceneforge-colmap-sift]
[--colmap default cap] [--json PATH] [--results benchmarks/RESULTS.md]``: ``--ours`` picks our
setups (the default OpenCV SIFT, and COLMAP's SIFT extractor inside our pipeline); ``--colmap``
the COLMAP settings: ``default`` (method ``colmap``: pycolmap's own SIFT cap, 8192 features per
image) and ``cap`` (method ``colmap-cap<N>``: capped at our extractor's N = 4096, so both
pipelines see the same number of features). Every row states its ``max_features``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _sections import replace_section

from sceneforge.core.metrics import pose_auc, relative_pose_errors
from sceneforge.core.timing import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "scenes"
SYNTHETIC = ("orbit", "forward", "walk", "handheld")
# our setups by method name -> ReconstructConfig.sift_backend
OURS = {"sceneforge": "opencv", "sceneforge-colmap-sift": "pycolmap"}


def pycolmap_poses(rec) -> dict[str, torch.Tensor]:
    """``{image name: cam_from_world [3, 4] float64}`` of a pycolmap reconstruction's
    registered images (pycolmap's ``xyzw`` quaternions converted)."""
    import numpy as np

    from sceneforge.core.conventions import quat_xyzw_to_wxyz
    from sceneforge.core.rotations import quat_wxyz_to_matrix

    poses = {}
    for img in rec.images.values():
        if not img.has_pose:
            continue
        pose = img.cam_from_world()
        q = quat_xyzw_to_wxyz(torch.as_tensor(np.asarray(pose.rotation.quat), dtype=torch.float64))
        t = torch.as_tensor(np.asarray(pose.translation), dtype=torch.float64)
        poses[img.name] = torch.cat([quat_wxyz_to_matrix(q), t[:, None]], 1)
    return poses


def auc_with_missing(
    est: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], names: list[str]
) -> dict[str, float]:
    """AUC@T over all pairs of ``names`` (the foundation's definition); a pair with an image
    missing from ``est`` counts as an error of 180 degrees."""
    have = [n for n in names if n in est and n in ref]
    out = {f"auc{t}": 0.0 for t in (3, 5, 10, 30)}
    n_all = len([n for n in names if n in ref])
    total_pairs = n_all * (n_all - 1) // 2
    if len(have) < 2 or total_pairs == 0:
        return out
    E = torch.stack([est[n] for n in have]).double()
    G = torch.stack([ref[n] for n in have]).double()
    r, t = relative_pose_errors(E, G)
    err = torch.maximum(r, t)
    err = torch.cat([err, torch.full((total_pairs - err.numel(),), 180.0, dtype=err.dtype)])
    return {f"auc{T}": pose_auc(err, T) for T in (3, 5, 10, 30)}


# ----------------------------------------------------------------------------- scenes


def synthetic_config(kind: str, views: int, seed: int = 0, tiles: tuple[str, ...] = ("wall_y+",)):
    """The :class:`SyntheticSceneConfig` of synthetic scene ``kind`` (``tiles``: the room
    surfaces of ``handheld`` with an exactly repeated motif)."""
    from sceneforge.core.synthetic import SyntheticSceneConfig

    if kind == "handheld":  # a phone walk-through: clutter, repeated texture, shake, blur
        return SyntheticSceneConfig(
            scene="room",
            rig="handheld",
            num_views=views,
            width=640,
            height=480,
            fov_deg=70.0,
            num_objects=20,
            tiled_surfaces=tuple(tiles),
            motion_blur_px=(0.5, 3.0),
            seed=seed,
        )
    return SyntheticSceneConfig(
        scene="room" if kind == "walk" else "objects",
        rig=kind,
        num_views=views,
        width=480,
        height=360,
        num_objects=6,
        seed=seed,
    )


def render_synthetic(
    kind: str, views: int, folder: Path, seed: int = 0, tiles: tuple[str, ...] = ("wall_y+",)
) -> dict[str, torch.Tensor]:
    """Render a synthetic scene into ``folder``; returns ground-truth poses by image name."""
    from sceneforge.core.image_io import write_image_atomic
    from sceneforge.core.synthetic import make_scene

    scene = make_scene(synthetic_config(kind, views, seed, tiles))
    folder.mkdir(parents=True, exist_ok=True)
    gt = {}
    for i, name in enumerate(scene.image_names):
        write_image_atomic(folder / name, scene.images[i].numpy())
        gt[name] = scene.cameras.cam_from_world[i].double()
    return gt


def real_images(name: str, max_images: int, folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A folder with the first ``max_images`` images of a real set and reference poses (or {})."""
    src = SHARED / name / "images"
    files = sorted(p for p in src.iterdir() if p.is_file())
    ref: dict[str, torch.Tensor] = {}
    if (SHARED / name / "poses_bounds.npy").is_file():
        from sceneforge.core.conventions import llff_to_opencv

        pb = np.load(SHARED / name / "poses_bounds.npy")
        cfw, _ = llff_to_opencv(torch.from_numpy(pb[:, :15].reshape(-1, 3, 5)).double())
        ref = {p.name: cfw[i] for i, p in enumerate(files)}
    if max_images and len(files) > max_images:
        step = len(files) / max_images
        files = [files[int(i * step)] for i in range(max_images)]
    folder.mkdir(parents=True, exist_ok=True)
    for p in files:
        (folder / p.name).symlink_to(p)
    return folder, {k: v for k, v in ref.items() if (folder / k).exists()}


# ----------------------------------------------------------------------------- methods


def our_max_features() -> int:
    """Our SIFT cap: keypoints kept per image by the default feature extractor."""
    from sceneforge.recon.features import FeaturesConfig

    return FeaturesConfig().max_keypoints


def colmap_default_max_features() -> int:
    """pycolmap's default SIFT cap (``FeatureExtractionOptions().sift.max_num_features``)."""
    import pycolmap

    return int(pycolmap.FeatureExtractionOptions().sift.max_num_features)


def colmap_methods(settings: list[str]) -> dict[str, int]:
    """COLMAP method name -> SIFT cap for ``--colmap`` settings (default / cap)."""
    out = {}
    if "default" in settings:
        out["colmap"] = colmap_default_max_features()
    if "cap" in settings:
        out[f"colmap-cap{our_max_features()}"] = our_max_features()
    return out


def run_ours(images: Path, out: Path, max_image_size: int, sift_backend: str) -> dict:
    from sceneforge.core.io_colmap import read_colmap

    try:  # reconstruct / ReconstructConfig moved from recon.sfm to recon.reconstruct
        from sceneforge.recon.reconstruct import ReconstructConfig, SfMError, reconstruct
    except ImportError:
        from sceneforge.recon.sfm import ReconstructConfig, SfMError, reconstruct

    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        summary = reconstruct(
            images,
            out,
            ReconstructConfig(
                features="sift",
                max_image_size=max_image_size,
                progress=False,
                sift_backend=sift_backend,
            ),
        )
    except SfMError as e:
        return {
            "registered": 0,
            "poses": {},
            "mean_reproj_px": math.nan,
            "points": 0,
            "wall_s": time.perf_counter() - t0,
            "cpu_s": cpu_seconds() - c0,
            "error": str(e),
        }
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    scene = read_colmap(out / "sparse" / "0", images_dir=images)
    poses = {n: scene.cameras.cam_from_world[i].double() for i, n in enumerate(scene.image_names)}
    return {
        "registered": summary["num_registered"],
        "registered_by": summary["registered_by"],
        "poses": poses,
        "mean_reproj_px": summary["mean_reproj_error_px"],
        "points": summary["num_points"],
        "wall_s": wall,
        "cpu_s": cpu,
        "timings": summary["timings_s"],
    }


def run_colmap(images: Path, work: Path, max_image_size: int, max_features: int) -> dict:
    import pycolmap

    work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    t0, c0 = time.perf_counter(), cpu_seconds()
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = max_image_size
    ext.sift.max_num_features = int(max_features)
    ext.num_threads = 2
    # Like ours: one shared camera when all images have one size, else one per image (AUTO).
    from PIL import Image

    sizes = set()
    for p in sorted(images.iterdir()):
        with Image.open(p) as im:
            sizes.add(im.size)
    mode = pycolmap.CameraMode.SINGLE if len(sizes) == 1 else pycolmap.CameraMode.AUTO
    pycolmap.extract_features(
        db,
        images,
        camera_mode=mode,
        extraction_options=ext,
        device=pycolmap.Device.cpu,
    )
    pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
    recs = pycolmap.incremental_mapping(db, images, work / "sparse")
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if not recs:
        return {
            "registered": 0,
            "poses": {},
            "mean_reproj_px": math.nan,
            "points": 0,
            "wall_s": wall,
            "cpu_s": cpu,
        }
    rec = max(recs.values(), key=lambda r: r.num_reg_images())
    poses = pycolmap_poses(rec)
    return {
        "registered": rec.num_reg_images(),
        "poses": poses,
        "mean_reproj_px": float(rec.compute_mean_reprojection_error()),
        "points": rec.num_points3D(),
        "wall_s": wall,
        "cpu_s": cpu,
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenes",
        nargs="+",
        default=["orbit", "forward", "walk", "fern", "blowtorch", "sacre_coeur"],
        help=f"synthetic ({', '.join(SYNTHETIC)}) and/or real sets of ../shared/data/scenes",
    )
    ap.add_argument("--views", type=int, default=16, help="views per synthetic scene")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenes")
    ap.add_argument(
        "--handheld-tiles",
        nargs="*",
        default=["wall_y+"],
        help="room surfaces of the handheld scene with an exactly repeated motif (none: no "
        "tiles; adding 'floor' makes opposite views of the floor ambiguous: COLMAP flips a "
        "10-frame block by 173 deg at 25 views, seed 0)",
    )
    ap.add_argument("--max-images", type=int, default=20, help="subset of each real set (0 = all)")
    ap.add_argument(
        "--max-image-size", type=int, default=1024, help="feature extraction size, both methods"
    )
    ap.add_argument(
        "--ours",
        nargs="+",
        choices=sorted(OURS),
        default=["sceneforge"],
        help="our setups to run: the default (OpenCV SIFT) and/or COLMAP's SIFT extractor",
    )
    ap.add_argument(
        "--colmap",
        nargs="+",
        choices=["default", "cap"],
        default=["default", "cap"],
        help="COLMAP settings: its default SIFT cap (method colmap) and/or ours (colmap-cap<N>)",
    )
    ap.add_argument(
        "--json", type=Path, default=None, help="write one JSON object per (scene, method)"
    )
    ap.add_argument(
        "--results",
        type=Path,
        default=None,
        help="write (replace) the '## SfM' section of this markdown file",
    )
    args = ap.parse_args()
    colmaps = colmap_methods(args.colmap)
    caps = {**colmaps, **dict.fromkeys(OURS, our_max_features())}

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="sfm_bench_"))
    try:
        for scene in args.scenes:
            folder = tmp / scene / "images"
            if scene in SYNTHETIC:
                tiles = tuple(args.handheld_tiles)
                ref = render_synthetic(scene, args.views, folder, args.seed, tiles)
                names = sorted(ref)
                ref_kind = "ground truth"
            else:
                folder, ref = real_images(scene, args.max_images, folder)
                names = sorted(p.name for p in folder.iterdir())
                ref_kind = "reference poses" if ref else None
            n = len(names)
            res = {
                m: run_colmap(folder, tmp / scene / m, args.max_image_size, cap)
                for m, cap in colmaps.items()
            }
            for method in args.ours:
                res[method] = run_ours(
                    folder, tmp / scene / method, args.max_image_size, OURS[method]
                )
            for method, r in res.items():
                row = {
                    "scene": scene,
                    "method": method,
                    "max_features": caps[method],
                    "registered": r["registered"],
                    "num_images": n,
                    "mean_reproj_px": r["mean_reproj_px"],
                    "points": r["points"],
                    "wall_s": r["wall_s"],
                    "cpu_s": r["cpu_s"],
                }
                if ref:
                    row.update(auc_with_missing(r["poses"], ref, names))
                    row["reference"] = ref_kind
                else:
                    row.update({f"auc{t}": None for t in (3, 5, 10, 30)})
                if method in OURS:
                    row["registered_by"] = r.get("registered_by")
                    row["timings"] = r.get("timings")
                    if "error" in r:
                        row["error"] = r["error"]
                    cm = res[next(iter(colmaps))]["poses"] if colmaps else {}
                    if scene not in SYNTHETIC and cm:
                        agree = auc_with_missing(r["poses"], cm, names)
                        row.update({f"vs_colmap_{k}": v for k, v in agree.items()})
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "timings"}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = format_table(rows, args)
    print(table)
    if args.results:
        heading, _, body = table.partition("\n")
        replace_section(args.results, heading, body)


def _f(v, fmt="{:.3f}") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def format_table(rows: list[dict], args) -> str:
    lines = [
        "## SfM",
        "",
        f"`python benchmarks/sfm.py --scenes {' '.join(args.scenes)} --views {args.views} "
        f"--seed {args.seed} --handheld-tiles {' '.join(args.handheld_tiles)} --max-images {args.max_images} --max-image-size "
        f"{args.max_image_size} --ours {' '.join(args.ours)} --colmap {' '.join(args.colmap)}`. "
        "All methods: SIFT at the same feature image size, one "
        "shared camera when all images have one size, else one per image (COLMAP: "
        "CameraMode.SINGLE / AUTO). COLMAP = pycolmap extract (2 threads) + exhaustive match + "
        "incremental mapping: `colmap` at pycolmap's default SIFT cap, `colmap-cap<N>` at ours "
        "(`max feat.` = features kept per image). sceneforge = the default `sceneforge "
        "reconstruct` setup (OpenCV SIFT); sceneforge-colmap-sift = the same with COLMAP's SIFT "
        "extractor (`--sift-backend pycolmap`). AUC against ground truth (synthetic) or the "
        "reference poses (blowtorch); pairs with an unregistered image count as failures. `vs "
        "COLMAP AUC@5`: our poses against the first COLMAP row's on the real sets. Ratios = "
        "ours / the first COLMAP row of the scene.",
        "",
        "| scene | method | max feat. | registered | AUC@3 | AUC@5 | AUC@10 | AUC@30 | vs COLMAP AUC@5 | reproj px | points | wall s | CPU s | wall ratio | CPU ratio | global / incremental / PnP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    colmap_cpu: dict[str, float] = {}
    colmap_wall: dict[str, float] = {}
    for r in rows:
        if r["method"] not in OURS:
            colmap_cpu.setdefault(r["scene"], r["cpu_s"])
            colmap_wall.setdefault(r["scene"], r["wall_s"])
    for r in rows:
        ours = r["method"] in OURS
        base = ours and r["scene"] in colmap_cpu
        ratio = r["cpu_s"] / colmap_cpu[r["scene"]] if base else None
        wall_ratio = r["wall_s"] / colmap_wall[r["scene"]] if base else None
        by = r.get("registered_by") or {}
        lines.append(
            f"| {r['scene']} | {r['method']} | {r.get('max_features', '—')} | "
            f"{r['registered']}/{r['num_images']} | "
            f"{_f(r.get('auc3'))} | {_f(r.get('auc5'))} | {_f(r.get('auc10'))} | {_f(r.get('auc30'))} | "
            f"{_f(r.get('vs_colmap_auc5'))} | {_f(r['mean_reproj_px'], '{:.2f}')} | {r['points']} | "
            f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {_f(wall_ratio, '{:.2f}')} | "
            f"{_f(ratio, '{:.2f}')} | "
            f"{' / '.join(str(by.get(k, 0)) for k in ('global', 'incremental', 'pnp')) if ours else ''} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
