"""The main job's ``report.html``: camera frusta and points, bundle-adjustment convergence,
the training curve with the held-out PSNR, before/after completion and the video; every link
relative and inside the output folder."""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

from sceneforge.core import run_files
from sceneforge.core.atomic import atomic_write_text
from sceneforge.core.report_html import html_table, read_run_json

#: The main job's stages in order (``stages.json`` records each when it finished).
STAGES = ("reconstruct", "train", "complete", "render", "report")


def _plot_ba_costs(summary: dict, path: Path) -> bool:
    costs = (summary.get("stats") or {}).get("ba_costs") or []
    if not costs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for r, c in enumerate(costs):
        ax.semilogy(range(len(c)), [max(v, 1e-12) for v in c], marker=".", label=f"round {r}")
    ax.set_xlabel("LM iteration")
    ax.set_ylabel("cost (0.5 Σ r², px²)")
    ax.set_title("Bundle adjustment")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_training(history: list[dict], heldout: dict | None, path: Path) -> bool:
    """Training PSNR and loss per logged step, held-out PSNR where the history has it
    (``eval_psnr``) and the final held-out PSNR of ``eval.json`` (``heldout``)."""
    rows = [h for h in history if isinstance(h.get("psnr"), int | float)]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=100)
    steps = [h["step"] for h in rows]
    ax.plot(steps, [h["psnr"] for h in rows], label="train PSNR (batch)", lw=1)
    ev = [h for h in rows if isinstance(h.get("eval_psnr"), int | float)]
    if ev:
        ax.plot([h["step"] for h in ev], [h["eval_psnr"] for h in ev], "o-", label="held-out PSNR")
    final = (heldout or {}).get("psnr")
    if isinstance(final, int | float) and math.isfinite(final):
        at = (heldout or {}).get("steps") or steps[-1]
        label = f"held-out PSNR at the end: {final:.2f} dB"
        ax.plot([at], [final], "*", ms=12, color="C3", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")
    losses = [(h["step"], h["loss"]) for h in rows if isinstance(h.get("loss"), int | float)]
    if losses:
        ax2 = ax.twinx()
        ax2.semilogy(*zip(*losses), color="0.6", lw=0.8, label="loss")
        ax2.set_ylabel("loss", color="0.4")
    ax.set_title("Field training")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_cameras(scene, path: Path, max_points: int = 5000) -> bool:
    """A 3D plot of the registered cameras as frusta (apex at the centre, the image's
    corners at 6% of the scene's extent, the image's top edge in red) and the sparse points
    in their colours."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cams = scene.cameras
    if len(cams) == 0:
        return False
    centers = cams.centers.double()
    pts = None if scene.points is None else scene.points.double()
    lo, hi = centers.min(0).values, centers.max(0).values
    if pts is not None and len(pts):  # every camera, the points but their 2% outliers
        lo = torch.minimum(lo, pts.quantile(0.02, dim=0))
        hi = torch.maximum(hi, pts.quantile(0.98, dim=0))
    extent = float((hi - lo).norm()) or 1.0
    size = 0.06 * extent
    K = cams.K.double()
    world_from_cam = cams.world_from_cam.double()
    fig = plt.figure(figsize=(6, 5), dpi=100)
    ax = fig.add_subplot(projection="3d")
    if pts is not None and len(pts):
        sel = torch.linspace(0, len(pts) - 1, min(max_points, len(pts))).long()
        p = pts[sel]
        inside = ((p >= lo - 0.5 * (hi - lo)) & (p <= hi + 0.5 * (hi - lo))).all(1)
        col = None
        if scene.point_colors is not None:
            col = (scene.point_colors[sel][inside].double() / 255).numpy()
        p = p[inside].numpy()
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1, c=col if col is not None else "0.5")
    for i in range(len(cams)):
        w, h = float(cams.width[i]), float(cams.height[i])
        corners = torch.tensor([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=torch.float64)
        rays = corners @ torch.linalg.inv(K[i]).T
        rays = rays / rays[:, 2:].clamp(min=1e-9) * size
        world = rays @ world_from_cam[i, :, :3].T + world_from_cam[i, :, 3]
        c = centers[i]
        segs = [(c, world[k]) for k in range(4)] + [
            (world[k], world[(k + 1) % 4]) for k in range(4)
        ]
        for a, b in segs:
            ax.plot(*[[float(a[d]), float(b[d])] for d in range(3)], color="C0", lw=0.7)
        ax.plot(*[[float(world[0, d]), float(world[1, d])] for d in range(3)], color="C3", lw=1.2)
    mid, half = 0.5 * (lo + hi), 0.6 * float((hi - lo).max())
    ax.set_xlim(float(mid[0]) - half, float(mid[0]) + half)
    ax.set_ylim(float(mid[1]) - half, float(mid[1]) + half)
    ax.set_zlim(float(mid[2]) - half, float(mid[2]) + half)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    n_pts = 0 if pts is None else len(pts)
    ax.set_title(f"{len(cams)} cameras (red edge: image top), {n_pts} points", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(out_dir: str | Path) -> Path:
    """``report.html`` (+ PNGs under ``report/``) from whatever stages have finished.

    Sections (each an ``<h2>`` with an ``id``): ``stages`` (timings and results),
    ``reconstruction`` (a 3D plot of the camera frusta and points, COLMAP-style summary
    numbers, the bundle-adjustment cost per iteration of every BA round), ``training``
    (training PSNR / loss and held-out PSNR), ``completion`` (before / after strips, when a
    completion ran) and ``video`` (the render, embedded). Every file it shows lies inside
    ``OUT`` and is linked relative to it, so the report survives moving ``OUT``.
    """
    from sceneforge.core.image_io import list_images

    out = Path(out_dir)
    rep = out / run_files.REPORT_DIR
    rep.mkdir(exist_ok=True)
    stages_file = out / run_files.STAGE_RECORD
    stages = read_run_json(stages_file) if stages_file.exists() else {}
    parts = ["<h1>sceneforge run</h1>", '<h2 id="stages">Stages</h2><table border=1 cellpadding=4>']
    parts.append("<tr><th>stage</th><th>seconds</th><th>result</th></tr>")
    for name in STAGES:
        if name in stages:
            info = {k: v for k, v in stages[name].items() if k != "seconds"}
            parts.append(
                f"<tr><td>{name}</td><td>{stages[name]['seconds']:.1f}</td>"
                f"<td><code>{html.escape(json.dumps(info, default=str))}</code></td></tr>"
            )
    parts.append("</table>")

    def img(rel: str, caption: str) -> None:
        parts.append(
            f'<figure><img src="{rel}" width="560"><figcaption>{caption}</figcaption></figure>'
        )

    url = run_files.REPORT_DIR
    sfm = out / run_files.SFM_DIR
    if sfm.is_dir():
        parts.append('<h2 id="reconstruction">Reconstruction</h2>')
        summary = (
            read_run_json(sfm / run_files.SFM_SUMMARY)
            if (sfm / run_files.SFM_SUMMARY).exists()
            else {}
        )
        keys = ("num_images", "num_registered", "num_points", "mean_track_length")
        keys += ("mean_reproj_error_px", "unregistered_images")
        parts.append(html_table([(k, summary[k]) for k in keys if k in summary]))
        if (sfm / run_files.TRANSFORMS).is_file() or (sfm / run_files.SFM_MODEL_DIR).is_dir():
            from sceneforge.core.io import load_scene

            scene = load_scene(sfm)
            if _plot_cameras(scene, rep / "cameras.png"):
                img(f"{url}/cameras.png", "Registered cameras (frusta) and sparse points")
        if (sfm / run_files.RECONSTRUCTION_PNG).exists():
            shutil.copyfile(sfm / run_files.RECONSTRUCTION_PNG, rep / "reconstruction.png")
            img(f"{url}/reconstruction.png", "Cameras and sparse points, top and front views")
        if _plot_ba_costs(summary, rep / "ba_cost.png"):
            rounds = len(summary["stats"]["ba_costs"])
            img(
                f"{url}/ba_cost.png",
                f"Bundle-adjustment convergence: cost per LM iteration, {rounds} round(s)",
            )
        else:
            parts.append("<p>The reconstruction recorded no bundle-adjustment costs.</p>")
    field_dir = out / run_files.FIELD_DIR
    hist = field_dir / run_files.HISTORY
    ev_path = field_dir / run_files.EVAL
    ev = read_run_json(ev_path) if ev_path.exists() else None
    if hist.exists() or ev is not None:
        parts.append('<h2 id="training">Training</h2>')
        history = read_run_json(hist).get("history", []) if hist.exists() else []
        if _plot_training(history, ev, rep / "training.png"):
            img(f"{url}/training.png", "Training curve and held-out PSNR")
        if ev is not None:
            psnr = ev.get("psnr", math.nan)
            parts.append(
                f"<p>Held-out PSNR: {psnr:.2f} dB, SSIM {ev.get('ssim', math.nan):.3f} over "
                f"{ev.get('num_eval_images')} views never trained on, "
                "at the training resolution; <code>sceneforge eval {html.escape(out.name)}</code> "
                "scores them at full size.</p>"
            )
    ba = out / run_files.COMPLETE_DIR / run_files.BEFORE_AFTER_DIR
    if ba.is_dir():
        strips = sorted(ba.glob("*.png"))[:6]
        parts.append('<h2 id="completion">Completion</h2>')
        parts.append(
            "<p>Each strip: the photo | the region to fill (magenta) | the completed render.</p>"
        )
        for p in strips:
            shutil.copyfile(p, rep / f"before_after_{p.name}")
            img(f"{url}/before_after_{p.name}", f"Before / after completion: {p.stem}")
    render_dir = out / run_files.RENDER_DIR
    video = render_dir / run_files.VIDEO
    gif = video.with_suffix(".gif")
    frames_dir = render_dir / run_files.FRAMES_DIR
    frames = list_images(frames_dir) if frames_dir.is_dir() and any(frames_dir.iterdir()) else []
    if video.is_file() or gif.is_file() or frames:
        parts.append('<h2 id="video">Video</h2>')
        info = stages.get("render", {})
        path_name = info.get("path")
        if video.is_file():
            rel = video.relative_to(out).as_posix()
            parts.append(
                f'<video controls loop muted autoplay playsinline width="560" src="{rel}">'
                f'<a href="{rel}">{rel}</a></video>'
            )
        elif gif.is_file():
            img(gif.relative_to(out).as_posix(), "Render of the final field")
        if path_name:
            parts.append(f"<p>Camera path: {html.escape(str(path_name))}.</p>")
        if frames:
            shutil.copyfile(frames[0], rep / "render.png")
            img(f"{url}/render.png", "First frame of the render of the final field")
    return atomic_write_text(
        out / run_files.REPORT_HTML,
        "<!doctype html><meta charset=utf-8><title>sceneforge run</title>\n" + "\n".join(parts),
    )
