"""Synthetic-scene rendering benchmark (issue 2): time to render a 20-view 256x256 scene with
exact ground truth (images, depth, masks, face ids) plus the exact 2D-3D observations of
2000 surface points, for procedural scenes and meshes from ../shared/data/meshes.

    .venv/bin/python benchmarks/synthetic_render.py
    .venv/bin/python benchmarks/synthetic_render.py --views 20 --size 256 --threads 1 2 --ssaa 3

Columns: faces of the scene mesh, seconds to build the scene (mesh load + textures), to render
all views, to cast the observations, total, per view, and the speed ratio against the first
thread count (the rasterizer's default is one torch thread; see meshes.RENDER_THREADS).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from sceneforge.core import meshes, raster
from sceneforge.core.synthetic import (
    SyntheticSceneConfig,
    build_scene_mesh,
    make_scene,
    observe_points,
    sample_surface,
    scene_cameras,
)

DATA = Path(
    os.environ.get("SCENEFORGE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def scenes(views: int, size: int, ssaa: int) -> list[tuple[str, SyntheticSceneConfig]]:
    base = dict(num_views=views, width=size, height=size, ssaa=ssaa, num_points=2000)
    out = [
        ("objects / orbit", SyntheticSceneConfig(scene="objects", rig="orbit", **base)),
        ("objects / forward", SyntheticSceneConfig(scene="objects", rig="forward", **base)),
        ("room / walk", SyntheticSceneConfig(scene="room", rig="walk", fov_deg=70.0, **base)),
        (
            "room / handheld (20 obj, tiles)",
            SyntheticSceneConfig(
                scene="room",
                rig="handheld",
                fov_deg=70.0,
                num_objects=20,
                tiled_surfaces=("floor", "wall_y+"),
                **base,
            ),
        ),
    ]
    meshes = DATA / "meshes"
    for name in ("duck/duck.dae", "glmark2/bunny.obj"):
        if (meshes / name).is_file():
            out.append(
                (f"{name} / orbit", SyntheticSceneConfig(scene=f"mesh:{meshes / name}", **base))
            )
    return out


def time_scene(cfg: SyntheticSceneConfig) -> dict:
    t0 = time.perf_counter()
    mesh, rig = build_scene_mesh(cfg)
    cams = scene_cameras(cfg, mesh, rig)
    normals = raster.vertex_normals(mesh.vertices, mesh.faces)
    for m in range(len(mesh.materials)):
        if mesh.materials[m].noise_seed is not None:
            mesh.noise_lattice(m)
    t1 = time.perf_counter()
    for i in range(len(cams)):
        raster.render_view(mesh, cams, i, ssaa=cfg.ssaa, normals=normals)
    t2 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    pts, _, _ = sample_surface(mesh, cfg.num_points, gen)
    obs = observe_points(mesh, cams, pts, near=1e-3)
    t3 = time.perf_counter()
    return {
        "faces": mesh.num_faces,
        "build": t1 - t0,
        "render": t2 - t1,
        "observe": t3 - t2,
        "total": t3 - t0,
        "per_view": (t3 - t0) / len(cams),
        "obs": len(obs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ssaa", type=int, default=1)
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="torch threads to compare, e.g. 1 2"
    )
    args = ap.parse_args()
    # warm up torch's kernels so the first row is not charged for it
    make_scene(SyntheticSceneConfig(num_views=2, width=32, height=32, num_points=50))
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.views} views {args.size}x{args.size}, ssaa {args.ssaa}"
    )
    head = f"{'scene':34s} {'faces':>7s} {'thr':>3s} {'build s':>8s} {'render s':>9s} {'observe s':>10s} {'total s':>8s} {'s/view':>7s} {'obs':>7s} {'speed':>6s}"
    print(head)
    print("-" * len(head))
    for name, cfg in scenes(args.views, args.size, args.ssaa):
        ref = None
        for th in args.threads:
            meshes.RENDER_THREADS = th
            r = time_scene(cfg)
            ref = ref or r["total"]
            print(
                f"{name:34s} {r['faces']:7d} {th:3d} {r['build']:8.2f} {r['render']:9.2f} "
                f"{r['observe']:10.2f} {r['total']:8.2f} {r['per_view']:7.3f} {r['obs']:7d} {ref / r['total']:5.2f}x"
            )
    meshes.RENDER_THREADS = 1


if __name__ == "__main__":
    main()
