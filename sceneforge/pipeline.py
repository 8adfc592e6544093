"""The main job: photos or a video in, a reconstructed, trained and (optionally) completed
scene out.

``run`` first puts its input inside ``OUT_DIR/images`` (downscaled copies of the photos, or
the sharpest frames of a video, :mod:`sceneforge.core.video_input`), so that every path the run
writes (``transforms.json``, the COLMAP model) stays inside ``OUT_DIR`` and the folder can be
moved or shared. It then makes its plan (:mod:`sceneforge.plan`: working resolution, steps,
render size and an estimated time, printed and logged; explicit settings win) and chains
reconstruct → train → complete → render/export. Every stage writes into its own sub-folder of
``OUT_DIR`` and is recorded in ``OUT_DIR/stages.json`` (atomically) only when it finished, so
re-running skips finished stages and a killed training continues from its last checkpoint. A
final ``report.html`` shows the camera frusta and points, the bundle-adjustment convergence,
the training curve with the held-out PSNR, before/after completion and the video (camera path
``auto``: a spiral for forward-facing captures, else an orbit), and the run ends by printing
the report's and the video's paths.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sceneforge.core import run_files
from sceneforge.core.atomic import atomic_write_json
from sceneforge.core.devices import resolve_device
from sceneforge.core.progress import RunLog, format_seconds, task_progress, trainer_progress
from sceneforge.core.timing import cpu_seconds
from sceneforge.core.video_input import VideoConfig
from sceneforge.fields.api import RenderConfig, TrainConfig
from sceneforge.fields.trainer import TrainerConfig
from sceneforge.inpaint.complete import CompleteConfig
from sceneforge.plan import Plan, PlanOverrides, Quality, plan_run
from sceneforge.recon.reconstruct import ReconstructConfig, neighbor_frames
from sceneforge.report import STAGES, write_report

#: The run's log (``OUT_DIR/log.txt``): stage messages and periodic progress lines (step, loss,
#: ETA) whether or not stdout is a terminal. Appended to by every (re)run.


def _default_train() -> TrainConfig:
    # own photos: per-image colour transforms (TrainerConfig.real_capture; eval.json labels the
    # held-out protocol). Camera refinement stays off: on fern (SfM poses, benchmarks/fields.py
    # --scenes fern, 2 CPU minutes) it lowered held-out PSNR from 19.5 to 14.7 dB (camera lr
    # 1e-2; 16.4 with 1e-3), training PSNR too (see benchmarks/RESULTS.md)
    trainer = TrainerConfig(
        use_masks=False, checkpoint_every=200, real_capture=True, camera_opt="off"
    )
    return TrainConfig(trainer=trainer)


def _default_render() -> RenderConfig:
    return RenderConfig(num_frames=24, depth=False, path="auto")


@dataclass
class RunConfig:
    """``sceneforge run PHOTOS_OR_VIDEO OUT_DIR``: reconstruct, train, complete, render, report."""

    # On CUDA the qualities are nerfstudio-like: 5k / 30k / 60k steps at up to 1600 px.
    quality: Quality = "default"
    """Plan: fast (~4 min on 2 CPU cores), default (~10 min) or high (~30 min)."""
    steps: int | None = None
    """Training steps (default: the plan's; wins over it, as does --train.max-steps)."""
    downscale: int | None = None
    """Training downscale of the images in OUT/images (default: the plan's)."""
    render_downscale: int | None = None
    """Video frame downscale of the images in OUT/images (default: the plan's)."""
    num_frames: int | None = None
    """Frames of the orbit video (default: the plan's)."""
    video: VideoConfig = field(default_factory=VideoConfig)
    """Frames taken from a video input."""
    mask_box: tuple[float, float, float, float, float, float] | None = None
    """World box XMIN YMIN ZMIN XMAX YMAX ZMAX to remove and complete (none: no completion)."""
    # A stage's own train.device / complete.device / render.device, when given, wins.
    device: str = "auto"
    """Torch device of every stage: auto (CUDA when available), cpu, cuda or cuda:N."""
    model: Literal["nerf", "gaussians"] | None = None
    """Scene model to train (default: train.trainer.model, NeRF)."""
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    """Structure from motion."""
    train: TrainConfig = field(default_factory=_default_train)
    """Field training on the reconstructed cameras (every 8th image held out)."""
    complete: CompleteConfig = field(default_factory=CompleteConfig)
    """Scene completion (used when ``mask_box`` is given)."""
    render: RenderConfig = field(default_factory=_default_render)
    """Video of the final field (path auto: spiral for a forward-facing capture, else orbit)."""


class RunError(ValueError):
    """Bad input to ``sceneforge run`` (folders, stage records): the message names the path."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: unreadable stage record ({e}); delete it to redo the run") from e


class _Stages:
    """``stages.json``: which stages finished, with their timings and results."""

    def __init__(self, out: Path) -> None:
        self.path = out / run_files.STAGE_RECORD
        self.done: dict = _read_json(self.path) if self.path.exists() else {}

    def finished(self, name: str) -> bool:
        return name in self.done

    def mark(self, name: str, seconds: float, result: dict | None = None) -> None:
        self.done[name] = {"seconds": seconds, **(result or {})}
        # e.g. a full disk: the previous record stays, no temp file
        atomic_write_json(self.path, self.done, default=str)


def run(
    images_dir: str | Path,
    out_dir: str | Path,
    config: RunConfig | None = None,
    log: Callable[[str], None] = print,
    stop_after: str | None = None,
) -> dict:
    """Run (or resume) the main job on a folder of photos or a video file (``images_dir``);
    returns ``stages.json``'s content.

    ``stop_after`` ends the run after that stage (e.g. ``"reconstruct"``, to place a mask
    box in the reconstruction's frame before completing).

    ``OUT_DIR`` gets ``images/`` (the photos scaled to at most ``reconstruct.max_image_size``,
    or the video's frames), ``plan.json`` (see :func:`make_plan`), ``sfm/`` (COLMAP model,
    transforms.json), ``field/`` (the trained run), ``complete/`` (with ``mask_box``),
    ``render/`` (frames of the camera path + video), ``points.ply``, ``report.html`` and ``log.txt``
    (``log``'s messages, the reconstruction's result and the training / completion /
    rendering progress lines, see
    :class:`sceneforge.core.progress.RunLog`). The user's photos or video are only read.
    """
    from sceneforge.core.image_io import IMAGE_EXTENSIONS, list_images

    cfg = config or RunConfig()
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES}, got {stop_after!r}")
    device = str(resolve_device(cfg.device))  # a clear error before any work
    src = Path(images_dir)
    out = Path(out_dir)
    is_file = src.is_file()
    if is_file and src.suffix.lower() in IMAGE_EXTENSIONS:
        raise RunError(f"{src}: a single image; give a folder of photos or a video file")
    if is_file:
        if out.resolve() == src.resolve():
            raise RunError(f"{out}: the output folder may not be the video file")
    else:
        list_images(src)  # clear error for a missing / empty folder before any work
        if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
            raise RunError(f"{out}: the output folder may not be inside the image folder")
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(log, RunLog):
        log = RunLog(out / run_files.LOG_FILE, console=log)
    stages = _Stages(out)
    images_dir, sizes, rcfg = _prepare_images(src, out, cfg, log)
    plan = make_plan(cfg, sizes, cfg.train.device or device)
    matching = sfm_matching(rcfg, is_file, len(sizes))
    for line in plan.lines() + ["  " + matching["line"]]:
        log(line)
    atomic_write_json(out / run_files.PLAN, {**plan.to_dict(), "sfm_matching": matching})
    train_cfg, render_cfg = planned_configs(cfg, plan)
    t_start = time.perf_counter()

    def stage(name: str, fn: Callable[[], dict | None]) -> None:
        if stages.finished(name):
            log(f"[{name}] already finished ({stages.done[name]['seconds']:.1f} s); skipped")
            return
        log(f"[{name}] ...")
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = fn() or {}
        dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        stages.mark(name, dt, {**result, "cpu_seconds": cpu})
        log(f"[{name}] done in {dt:.1f} s ({cpu:.1f} CPU s)")

    sfm_dir, field_dir = out / run_files.SFM_DIR, out / run_files.FIELD_DIR
    complete_dir = out / run_files.COMPLETE_DIR

    def do_reconstruct() -> dict:
        from sceneforge.recon.reconstruct import reconstruct

        if sfm_dir.exists():  # an interrupted attempt: SfM has no partial state worth keeping
            shutil.rmtree(sfm_dir)
        n = len(sizes)
        log(
            f"reconstruct: {n} images in {images_dir} (features {rcfg.features}, at most "
            f"{rcfg.max_image_size} px)"
        )
        # every message of the reconstruction into log.txt; the console has its own display
        s = reconstruct(images_dir, sfm_dir, rcfg, log=lambda m: log.write(m, echo=False))
        for line in _sfm_lines(s):
            log(line)
        return {
            k: s[k]
            for k in ("num_images", "num_registered", "registered_by", "unregistered_images")
            + ("num_points", "mean_track_length", "mean_reproj_error_px", "image_groups")
            + ("unreadable_images", "skipped_non_image_files", "matching")
            if k in s
        }

    def do_train() -> dict:
        from sceneforge.fields.api import train, train_hooks

        tc = dataclasses.replace(
            train_cfg, device=cfg.train.device or device, model=cfg.model or cfg.train.model
        )
        with log.task("train", 0, own_bar=tc.trainer.progress) as task:
            with train_hooks((1, trainer_progress(task))):
                res = train(sfm_dir, field_dir, tc)
        return {
            k: res[k]
            for k in (
                "psnr",
                "ssim",
                "num_eval_images",
                "steps",
                "wall_s",
                "model",
                "num_gaussians",
            )
            if k in res
        }

    def do_complete() -> dict:
        from sceneforge.core.io import load_scene
        from sceneforge.fields.api import scene_source
        from sceneforge.inpaint.complete import complete

        dev = cfg.complete.device or device
        c = dataclasses.replace(cfg.complete, mask_box=cfg.mask_box, device=dev)
        total = c.update.warmup_steps + c.update.final_steps
        total += max(c.update.num_rounds - 1, 0) * c.update.update_every
        box = " ".join(f"{x:.3g}" for x in c.mask_box)
        log(f"complete: {c.inpainter} inpainting of the box {box}; building the fill masks")
        with log.task("complete", total, own_bar=c.progress) as task:
            # the scene found relative to field/ (OUT may have moved since training)
            scene = load_scene(scene_source(field_dir))
            s = complete(field_dir, complete_dir, c, scene=scene, progress=task_progress(task))
        return {k: v for k, v in s.items() if isinstance(v, int | float | str)}

    final_dir = complete_dir if cfg.mask_box is not None else field_dir

    def do_render() -> dict:
        from sceneforge.core.io import load_scene
        from sceneforge.core.io_nerfstudio import write_ply_points
        from sceneforge.fields.api import choose_path, render

        rc = dataclasses.replace(render_cfg, device=cfg.render.device or device)
        scene = load_scene(sfm_dir / run_files.SFM_MODEL_DIR, images_dir=images_dir)
        if rc.path == "auto":
            rc = dataclasses.replace(rc, path=choose_path(scene.cameras))
            why = "forward-facing" if rc.path == "spiral" else "not forward-facing"
            log(f"render: {rc.path} camera path (the registered cameras are {why})")
        with log.task("render", rc.num_frames, unit="frame") as task:

            def frame_done(done: int, total: int) -> None:
                task.total = total
                task.update(done)

            res = render(final_dir, out / run_files.RENDER_DIR, rc, progress=frame_done)
        if scene.points is not None:
            write_ply_points(out / run_files.POINTS_PLY, scene.points, scene.point_colors)
        return {k: res[k] for k in ("video", "frames", "num_frames", "path") if k in res}

    todo = [("reconstruct", do_reconstruct), ("train", do_train)]
    if cfg.mask_box is not None:
        todo.append(("complete", do_complete))
    todo.append(("render", do_render))
    for name, fn in todo:
        stage(name, fn)
        if name == stop_after:
            return stages.done
    write_report(out)
    spent = time.perf_counter() - t_start
    log(f"run took {format_seconds(spent)} (estimated {format_seconds(plan.total_s)})")
    log(f"report: {out / run_files.REPORT_HTML}")
    mp4 = out / run_files.RENDER_DIR / run_files.VIDEO
    video = next((p for p in (mp4, mp4.with_suffix(".gif")) if p.is_file()), None)
    if video is not None:
        log(f"video: {video}")
    log(f"log: {out / run_files.LOG_FILE}")
    return stages.done


def _prepare_images(
    src: Path, out: Path, cfg: RunConfig, log: Callable[[str], None]
) -> tuple[Path, list[tuple[int, int]], ReconstructConfig]:
    """Put the input inside ``OUT/images`` (photos: copies scaled to at most
    ``reconstruct.max_image_size``; a video: its sharpest frames) and return that folder, the
    images' sizes and the reconstruction config (its masks copied alongside when given; for a
    video, sequential matching unless ``reconstruct.sequential`` is given).

    A photo folder already inside ``OUT`` is used as it is. ``OUT/images`` made from another
    input (a video record that does not match) is an error, never overwritten.
    """
    from sceneforge.core.image_io import scan_folder
    from sceneforge.core.video_input import copy_images, image_size, video_frames_folder

    rcfg = cfg.reconstruct
    max_size = rcfg.max_image_size
    images = out / run_files.IMAGES_DIR
    record_path = out / run_files.VIDEO_RECORD
    if src.is_file():
        want = {
            "video": str(src.resolve()),
            "video_bytes": src.stat().st_size,
            "num_frames": cfg.video.num_frames,
            "max_size": max_size,
        }
        record = _read_json(record_path) if record_path.exists() else None
        same = record is not None and all(record.get(k) == v for k, v in want.items())
        if same and all((images / f["file"]).is_file() for f in record["frames"]):
            log(f"video: frames already in {images}; kept")
        else:
            if not same and images.exists() and any(images.iterdir()):
                raise RunError(f"{images}: holds images of another input; use a new output folder")
            images, record = video_frames_folder(src, out, cfg.video, max_size, log)
        files = [images / f["file"] for f in record["frames"]]
        if rcfg.sequential is None:  # frame_NNNNN.jpg: sorted by name = in temporal order
            rcfg = dataclasses.replace(rcfg, sequential=True)
    elif src.resolve() == out.resolve() or out.resolve() in src.resolve().parents:
        files = scan_folder(src)[0]  # already inside OUT: nothing to copy
        images = src
    else:
        if record_path.exists():
            raise RunError(f"{images}: holds the frames of a video; use a new output folder")
        masks_out = out / run_files.INPUT_MASKS_DIR if rcfg.masks_dir is not None else None
        info = copy_images(src, images, max_size, rcfg.masks_dir, masks_out, log)
        if masks_out is not None:
            masks_out.mkdir(parents=True, exist_ok=True)
            rcfg = dataclasses.replace(rcfg, masks_dir=masks_out)
        files = [images / n for n in info["sizes"]]
    sizes = [wh for wh in (image_size(p) for p in files) if wh is not None]
    return images, sizes, rcfg


def sfm_matching(rcfg: ReconstructConfig, video: bool, num_images: int) -> dict:
    """Which image pairs the reconstruction matches (recorded in ``plan.json``), with a line
    for the log."""
    from sceneforge.recon.reconstruct import pair_selection
    from sceneforge.recon.retrieval import resolve_method

    seq = bool(rcfg.sequential)
    nbr = neighbor_frames(rcfg)
    nq = "every image" if rcfg.num_query_frames <= 0 else f"{rcfg.num_query_frames} query images"
    ps = pair_selection(rcfg)
    method = resolve_method(ps, num_images)
    why = " (video frames, in order)" if video else ""
    if method == "sequential":
        line = (
            f"sfm matching: sequential{why}, {num_images} images: each frame with its next "
            f"{ps.overlap} + {ps.loop_neighbors} loop-closure candidates by retrieval"
        )
    elif method == "retrieval":
        line = (
            f"sfm matching: retrieval, {num_images} images: each image with its "
            f"{ps.retrieval_neighbors} most similar (VLAD)"
        )
    elif method == "exhaustive":
        line = f"sfm matching: exhaustive: every pair of the {num_images} images"
    elif seq:
        line = f"sfm matching: sequential{why}: each frame with its next {nbr}, plus {nq}"
    else:
        line = f"sfm matching: unordered photos: {nq} with every image"
    return {
        "sequential": seq,
        "pair_selection": method,
        "neighbor_frames": nbr,
        "num_query_frames": rcfg.num_query_frames,
        "video": video,
        "line": line,
    }


def plan_overrides(cfg: RunConfig) -> PlanOverrides:
    """The settings given explicitly (they win over the plan): the run's own ``steps``,
    ``downscale``, ``render_downscale`` and ``num_frames``, else the stage settings they stand
    for when they differ from the run's defaults (``--train.max-steps``,
    ``--train.trainer.max-steps`` / ``downscale``, ``--render.downscale`` / ``num-frames``)."""
    base_train, base_render = _default_train(), _default_render()

    def first(*values):
        return next((v for v in values if v is not None), None)

    trainer = cfg.train.trainer

    def given(value, default):
        return value if value != default else None

    return PlanOverrides(
        steps=first(
            cfg.steps, cfg.train.max_steps, given(trainer.max_steps, base_train.trainer.max_steps)
        ),
        downscale=first(cfg.downscale, given(trainer.downscale, base_train.trainer.downscale)),
        render_downscale=first(cfg.render_downscale, cfg.render.downscale),
        num_frames=first(cfg.num_frames, given(cfg.render.num_frames, base_render.num_frames)),
    )


def make_plan(cfg: RunConfig, sizes: list[tuple[int, int]], device: str) -> Plan:
    """The run's :class:`~sceneforge.plan.Plan` for images of ``sizes`` (the largest counts)."""
    if not sizes:
        raise RunError("no readable image to plan the run from")
    w, h = max(sizes, key=lambda wh: (max(wh), wh[0] * wh[1]))
    model = cfg.model or cfg.train.model or cfg.train.trainer.model
    steps = rounds = 0
    if cfg.mask_box is not None:
        u = cfg.complete.update
        rounds = u.num_rounds
        steps = u.warmup_steps + u.num_rounds * u.update_every + u.final_steps
    return plan_run(
        len(sizes),
        (w, h),
        device,
        cfg.quality,
        plan_overrides(cfg),
        model=model,
        sfm_max_image_size=cfg.reconstruct.max_image_size,
        complete_steps=steps,
        complete_rounds=rounds,
    )


def planned_configs(cfg: RunConfig, plan: Plan) -> tuple[TrainConfig, RenderConfig]:
    """The train and render configs with the plan's steps, downscales and frames."""
    trainer = dataclasses.replace(cfg.train.trainer, downscale=plan.downscale, max_steps=plan.steps)
    train = dataclasses.replace(cfg.train, max_steps=plan.steps, trainer=trainer)
    render = dataclasses.replace(
        cfg.render, downscale=plan.render_downscale, num_frames=plan.num_frames
    )
    return train, render


def _sfm_lines(summary: dict) -> list[str]:
    """The reconstruction's result as log lines: registered images, points, error, timings."""
    n, reg = summary.get("num_images", 0), summary.get("num_registered", 0)
    by = summary.get("registered_by") or {}
    how = ", ".join(f"{k} {v}" for k, v in by.items())
    lines = [
        f"reconstruct: registered {reg}/{n} images"
        + (f" ({how})" if how else "")
        + f", {summary.get('num_points', 0)} points, mean track length "
        f"{summary.get('mean_track_length', math.nan):.2f}, mean reprojection error "
        f"{summary.get('mean_reproj_error_px', math.nan):.2f} px"
    ]
    tracks = summary.get("tracks") or {}
    if tracks:
        lines.append(
            f"reconstruct: {tracks.get('num_tracks')} tracks, mean length "
            f"{tracks.get('mean_length', math.nan):.2f}"
        )
    t = summary.get("timings_s") or {}
    parts = [
        f"{k[:-2]} {v:.1f} s"
        for k, v in t.items()
        if k.endswith("_s") and not k.endswith("cpu_s") and k != "total_s"
    ]
    if parts:
        lines.append(
            f"reconstruct: time {t.get('total_s', math.nan):.1f} s (" + ", ".join(parts) + ")"
        )
    if summary.get("unregistered_images"):
        names = summary["unregistered_images"]
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        lines.append(f"reconstruct: not registered: {', '.join(names[:10])}{more}")
    groups = summary.get("image_groups") or []
    if len(groups) > 1:
        sizes = ", ".join(str(len(g)) for g in groups)
        lines.append(
            f"reconstruct: the images form {len(groups)} disconnected groups ({sizes} images); "
            "the largest was reconstructed"
        )
    return lines


# ----------------------------------------------------------------------------- report
