"""Subcommands of the ``sceneforge`` CLI: one dataclass each, turned into flags by tyro.

Only the module of the command being run is imported (see :mod:`sceneforge.cli`), so the
engine's configs can be used here directly.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import tyro

from sceneforge.core.video_input import VideoConfig
from sceneforge.demo import DemoConfig
from sceneforge.eval_run import EvalConfig
from sceneforge.fields.api import RenderConfig, TrainConfig
from sceneforge.fields.export import ExportConfig
from sceneforge.inpaint.complete import CompleteConfig
from sceneforge.pipeline import RunConfig
from sceneforge.recon.reconstruct import ReconstructConfig
from sceneforge.viewer import ViewerConfig

if TYPE_CHECKING:
    from sceneforge.core.progress import RunLog

Pos = tyro.conf.Positional


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        text = ", ".join(_cell(v) for v in value[:8])
        return f"[{text}{', ...' if len(value) > 8 else ''}] ({len(value)})"
    return str(value)


def _main_rank() -> bool:
    """Whether this process reports results (not a torchrun rank other than 0)."""
    from sceneforge.fields.distributed import env_world

    return env_world()[0] == 0


def table(values: dict, keys: tuple[str, ...] | None = None) -> str:
    """Results as ``name  value`` rows (``keys``, those present, in order; default: every
    number and string), instead of a dict repr."""
    if keys is None:
        keys = tuple(k for k, v in values.items() if isinstance(v, int | float | str))
    rows = [(k, _cell(values[k])) for k in keys if k in values]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class StageProgress:
    """A ``progress(stage, done, total)`` callback (:data:`sceneforge.fields.export.Progress`)
    showing each stage as a :meth:`RunLog.task <sceneforge.core.progress.RunLog.task>` named
    ``PREFIX STAGE`` (lines with an ETA, or a bar on a terminal); a new stage ends the last.
    The log is made by ``make_log()`` at the first call (no log file, nor its folder, for work
    refused before it starts). Use as a context manager: leaving it ends the last stage."""

    def __init__(self, make_log: Callable[[], RunLog], prefix: str, units: dict[str, str]) -> None:
        self.make_log, self.prefix, self.units = make_log, prefix, units
        self.log: RunLog | None = None
        self.stage: str | None = None
        self.task = None
        self._stack = ExitStack()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.log is None:
            self.log = self.make_log()
        if stage != self.stage or self.task is None:
            self.close()
            self.stage = stage
            unit = self.units.get(stage, "step")
            self.task = self._stack.enter_context(
                self.log.task(f"{self.prefix} {stage}", total, unit=unit)
            )
        self.task.total = total
        self.task.update(done, force=done <= 0)

    def close(self) -> None:
        """End the current stage (its bar, if any)."""
        self._stack.close()
        self._stack, self.task, self.stage = ExitStack(), None, None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def final_field(run_dir: Path) -> Path:
    """The trained run to render for ``run_dir``: itself when it holds a checkpoint, else,
    for a ``sceneforge run`` output folder, its completed field (``complete/``) or its
    trained field (``field/``), whichever finished last (the completion)."""
    from sceneforge.core import run_files

    if (run_dir / run_files.CHECKPOINT).is_file():
        return run_dir
    for stage in (run_files.COMPLETE_DIR, run_files.FIELD_DIR):
        if (run_dir / stage / run_files.CHECKPOINT).is_file():
            return run_dir / stage
    return run_dir  # render names the missing checkpoint


#: A nested config whose flags are not prefixed (``--max-steps`` rather than ``--config.max-steps``).
Flat = tyro.conf.arg(name="")


@dataclass
class Info:
    """Load a scene (COLMAP model, transforms.json or LLFF folder) and print a summary."""

    scene_dir: Pos[Path]
    """Scene folder."""
    check_images: bool = False
    """Open every image header and report unreadable files."""

    def run(self) -> int:
        from sceneforge.core.io import load_scene, validate_scene

        scene = load_scene(self.scene_dir)
        if self.check_images:
            validate_scene(scene)
        cams = scene.cameras
        sizes = sorted({(int(w), int(h)) for w, h in zip(cams.width, cams.height)})
        size_text = ", ".join(f"{w}x{h}" for w, h in sizes[:5])
        size_text += f" (+{len(sizes) - 5} more)" if len(sizes) > 5 else ""
        print(f"scene: {self.scene_dir}")
        print(f"images: {len(scene)}  camera model: {cams.model}  sizes: {size_text}")
        print(f"masks: {'yes' if scene.has_masks else 'no'}")
        n_pts = 0 if scene.points is None else scene.points.shape[0]
        print(f"sparse points: {n_pts}")
        return 0


@dataclass
class BundleAdjust:
    """Solve a BAL bundle-adjustment problem with sceneforge's PyTorch Levenberg-Marquardt."""

    bal_file: Pos[Path]
    """Input problem in the BAL text format."""
    out: Path | None = None
    """Write the solved problem here (BAL format); never over the input."""
    loss: Literal["trivial", "huber", "cauchy", "soft_l1"] = "trivial"
    """Robust loss on each observation's squared residual."""
    loss_scale: float = 1.0
    """Scale of the robust loss, in pixels."""
    max_iterations: int = 100
    """Maximum number of LM iterations."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    device: str = "cpu"
    """torch device (cpu or cuda)."""
    plot: Path | None = None
    """Write a PNG of the cost per iteration here."""

    def run(self) -> int:
        from sceneforge.recon.ba import BAOptions, bundle_adjust, plot_cost
        from sceneforge.recon.bal import bal_cost, read_bal, write_bal

        if self.out is not None and self.out.resolve() == self.bal_file.resolve():
            raise SystemExit(f"{self.out}: refusing to overwrite the input problem")
        problem = read_bal(self.bal_file).to(device=self.device)
        opts = BAOptions(
            loss=self.loss,
            loss_scale=self.loss_scale,
            max_iterations=self.max_iterations,
            num_threads=self.threads,
        )
        result, summary = bundle_adjust(problem, opts)
        print(summary)
        print(f"final cost (BAL formula): {bal_cost(result.detach().to(device='cpu')):.6f}")
        if self.out is not None:
            write_bal(result.detach().to(device="cpu"), self.out)
            print(f"wrote {self.out}")
        if self.plot is not None:
            print(f"wrote {plot_cost(summary, self.plot)}")
        return 0


@dataclass
class Tracks:
    """Build VGGSfM-style point tracks over all images of a folder (SIFT + NN on CPU)."""

    images_dir: Pos[Path]
    """Folder of images."""
    out: Pos[Path]
    """Output file for the tracks (.npz)."""
    masks: Path | None = None
    """Optional folder of masks (nonzero = usable pixel), matched by image name or stem."""
    features: Literal["auto", "sift", "aliked", "xfeat"] = "auto"
    """Query-point features (auto: SIFT on CPU, ALIKED on CUDA)."""
    max_image_size: int = 1024
    """Images are downscaled to this longest side for feature extraction."""

    def run(self) -> int:
        from sceneforge.core.image_io import list_images
        from sceneforge.core.io_common import find_mask
        from sceneforge.recon.tracking import TracksConfig, build_tracks

        paths = list_images(self.images_dir)
        masks = None
        if self.masks is not None:
            masks = [find_mask(self.masks, p.name) for p in paths]
        cfg = TracksConfig(verbose=True)
        cfg.features.method = self.features
        cfg.features.max_image_size = self.max_image_size
        tracks = build_tracks(paths, cfg, masks=masks)
        tracks.save(self.out)
        print(
            f"{len(tracks.lengths())} tracks, mean length {tracks.mean_length():.2f}; wrote {self.out}"
        )
        return 0


@dataclass
class View:
    """Open a run or scene folder in the browser viewer (binds to localhost by default)."""

    run_dir: Pos[Path]
    """A ``sceneforge run`` output folder (its completed or trained field, else its
    reconstruction), a scene folder, a ``sceneforge train`` run or a ``complete`` output."""
    viewer: tyro.conf.OmitArgPrefixes[ViewerConfig] = field(default_factory=ViewerConfig)

    def run(self) -> int:
        from sceneforge.viewer import view

        return view(self.run_dir, self.viewer)


@dataclass
class Train:
    """Train a field on a posed scene (COLMAP model, transforms.json or LLFF folder) and
    evaluate it on held-out views (every 8th image); writes OUT_DIR/eval.json."""

    scene_dir: Pos[Path]
    """Scene folder."""
    out_dir: Pos[Path]
    """Run folder (checkpoints, eval.json, tensorboard logs); resumed when it has a checkpoint."""
    config: Annotated[TrainConfig, Flat] = field(default_factory=TrainConfig)

    def run(self) -> int:
        from sceneforge.fields.api import train

        result = train(self.scene_dir, self.out_dir, self.config)
        if not _main_rank():  # torchrun: rank 0 reports for all ranks
            return 0
        keys = ("psnr", "ssim", "psnr_cc", "ssim_cc", "psnr_masked", "ssim_masked")
        keys += ("num_eval_images", "num_train_images", "steps", "train_s", "model", "device")
        print(table(result, keys))
        print(f"wrote {self.out_dir / 'eval.json'}")
        return 0


@dataclass
class Eval:
    """Held-out PSNR / SSIM (LPIPS with local weights) of a trained run at full size; writes
    RUN_DIR/eval.json, or the next free eval.vNNN.json (nothing is overwritten)."""

    run_dir: Pos[Path]
    """Run folder of ``sceneforge train``, or a ``sceneforge run`` output folder."""
    config: Annotated[EvalConfig, Flat] = field(default_factory=EvalConfig)

    def run(self) -> int:
        from sceneforge.eval_run import evaluate_run, format_table

        result, path = evaluate_run(self.run_dir, self.config)
        print(format_table(result))
        print(f"wrote {path}")
        return 0


@dataclass
class Render:
    """Render a camera path (orbit, spiral, interpolated through the training cameras, a
    camera_path.json, or the training / held-out cameras) from a trained run."""

    run_dir: Pos[Path]
    """Run folder written by ``sceneforge train``, or a ``sceneforge run`` output folder."""
    out_dir: Pos[Path]
    """Folder for the frames and the video."""
    config: Annotated[RenderConfig, Flat] = field(default_factory=RenderConfig)

    def run(self) -> int:
        from sceneforge.core import run_files
        from sceneforge.core.progress import RunLog
        from sceneforge.fields.api import render

        run = final_field(self.run_dir)
        log = RunLog(self.out_dir / run_files.LOG_FILE)  # progress lines also in OUT_DIR/log.txt
        with log.task("render", self.config.num_frames, unit="frame") as task:

            def frame_done(done: int, total: int) -> None:
                task.total = total
                task.update(done)

            out = render(run, self.out_dir, self.config, progress=frame_done)
        log(f"{out['num_frames']} frames ({out['path']} path): {out['frames']}")
        if "video" in out:
            log(f"video: {out['video']}")
        return 0


@dataclass
class Reconstruct:
    """Structure from motion: an image folder or a video in; a COLMAP model (sparse/0),
    transforms.json, reconstruction.png and summary.json out (for a video also images/, its
    sharpest frames, and video.json)."""

    images_dir: Pos[Path]
    """Folder of images, or a video file (the sharpest frame of each of --video.num-frames
    windows, matched in order)."""
    out_dir: Pos[Path]
    """Output folder (must be empty or new unless --overwrite)."""
    masks: Path | None = None
    """Folder of masks (nonzero = usable pixel); same as --masks-dir."""
    camera_model: (
        Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"] | None
    ) = None
    """Camera model to estimate (default: --sfm.camera.model, SIMPLE_RADIAL)."""
    shared_intrinsics: bool | None = None
    """One camera for all images (default: yes when all images have one size)."""
    video: VideoConfig = field(default_factory=VideoConfig)
    """Frames taken from a video input."""
    config: Annotated[ReconstructConfig, Flat] = field(default_factory=ReconstructConfig)

    def run(self) -> int:
        import dataclasses

        from sceneforge.recon.reconstruct import reconstruct

        cfg = self.config
        camera = cfg.sfm.camera
        if self.camera_model is not None:
            camera = dataclasses.replace(camera, model=self.camera_model)
        if self.shared_intrinsics is not None:
            camera = dataclasses.replace(camera, shared=self.shared_intrinsics)
        cfg = dataclasses.replace(cfg, sfm=dataclasses.replace(cfg.sfm, camera=camera))
        if self.masks is not None:
            cfg = dataclasses.replace(cfg, masks_dir=self.masks)
        summary = reconstruct(self.images_dir, self.out_dir, cfg, video=self.video)
        keys = (
            "num_images",
            "num_registered",
            "registered_by",
            "unregistered_images",
            "num_points",
        )
        keys += ("mean_track_length", "mean_reproj_error_px", "timings_s")
        print(table(summary, keys))
        print(f"wrote {self.out_dir}")
        return 0


@dataclass
class Complete:
    """Complete a trained run: remove what a 3D box or per-image masks cover and fill it so
    that every view agrees (NeRFiller-style dataset updates)."""

    run_dir: Pos[Path]
    """Run folder written by ``sceneforge train``."""
    out_dir: Pos[Path]
    """Output folder (completed field, renders, before/after images, versioned datasets)."""
    # --device: auto (CUDA when available), cpu, cuda or cuda:N (None: the run's device)
    config: Annotated[CompleteConfig, Flat] = field(
        default_factory=lambda: CompleteConfig(device="auto")
    )

    def run(self) -> int:
        import dataclasses

        from sceneforge.core.devices import resolve_device
        from sceneforge.inpaint.complete import complete

        if self.config.mask_box is None and self.config.masks is None:
            raise SystemExit(
                "sceneforge complete: give --mask-box XMIN YMIN ZMIN XMAX YMAX ZMAX or --masks DIR"
            )
        from sceneforge.core import run_files
        from sceneforge.core.progress import RunLog, task_progress

        cfg = self.config
        if cfg.device is not None:
            cfg = dataclasses.replace(cfg, device=str(resolve_device(cfg.device)))
        # Progress lines with an ETA (and OUT_DIR/log.txt), made at the first report so that a
        # refused completion leaves no output folder.
        log: RunLog | None = None
        stack = ExitStack()
        report = None

        def progress(done: int, total: int, message: str = "") -> None:
            nonlocal log, report
            if report is None:
                log = RunLog(self.out_dir / run_files.LOG_FILE)
                task = log.task("complete", total, own_bar=cfg.progress)
                report = task_progress(stack.enter_context(task))
            report(done, total, message)

        with stack:
            summary = complete(self.run_dir, self.out_dir, cfg, progress=progress)
        if _main_rank():  # torchrun: rank 0 reports for all ranks
            (log or print)(table(summary))
        return 0


@dataclass
class Run:
    """The main job: photos or a video in; plan, reconstruct -> train -> (complete) ->
    render, resumable; writes OUT_DIR/report.html."""

    photos_or_video: Pos[Path]
    """Folder of photos, or a video file (mp4, mov, avi, ...: its sharpest frames are used)."""
    out_dir: Pos[Path]
    """Output folder (self-contained: holds the images it was made from); re-running skips
    finished stages and resumes training."""
    config: Annotated[RunConfig, Flat] = field(default_factory=RunConfig)

    def run(self) -> int:
        from sceneforge.pipeline import run

        run(self.photos_or_video, self.out_dir, self.config)
        return 0


@dataclass
class Demo:
    """Run the main job on a procedurally generated scene (nothing downloaded) and check the
    quality floor: every view registered and held-out PSNR >= 22 dB."""

    out_dir: Pos[Path] = Path("outputs/demo")
    """Output folder (resumable)."""
    config: Annotated[DemoConfig, Flat] = field(default_factory=DemoConfig)

    def run(self) -> int:
        from sceneforge.demo import demo

        s = demo(self.out_dir, self.config)
        print(f"registered views: {s['registered']}")
        print(f"held-out PSNR: {s['heldout_psnr_db']:.2f} dB (floor {s['min_psnr_db']:.1f} dB)")
        print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s["stage_s"].items()))
        cpu = s["stage_cpu_s"].items()
        print("stage CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu))
        print(f"total: {s['total_s']:.1f} s ({s['total_cpu_s']:.1f} CPU s); report: {s['report']}")
        print("demo: OK" if s["ok"] else "demo: quality floor NOT met")
        return 0 if s["ok"] else 1


@dataclass
class Export:
    """Export a trained run: coloured point cloud (PLY), marching-cubes mesh, TSDF mesh
    (open3d extra) or depth maps (16-bit PNG + .npy); progress goes to OUT_DIR/log.txt."""

    run_dir: Pos[Path]
    """Run folder written by ``sceneforge train`` (or ``complete``)."""
    out_dir: Pos[Path]
    """Output folder."""
    config: Annotated[ExportConfig, Flat] = field(default_factory=ExportConfig)

    def run(self) -> int:
        from sceneforge.core import run_files
        from sceneforge.core.progress import RunLog
        from sceneforge.fields.export import PROGRESS_UNITS, export

        def make_log() -> RunLog:
            return RunLog(self.out_dir / run_files.LOG_FILE)

        with StageProgress(make_log, "export", PROGRESS_UNITS) as progress:
            info = export(self.run_dir, self.out_dir, self.config, progress=progress)
        (progress.log or make_log())(table(info))
        return 0
