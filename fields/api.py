"""Functions behind ``sceneforge train`` and ``sceneforge render``.

``train(scene_dir, out_dir, config)`` trains (resuming from ``OUT_DIR/checkpoint.pt`` when
present), evaluates on held-out views (every 8th image) and writes ``OUT_DIR/eval.json``.
``render(run_dir, out_dir, config)`` renders a camera path (:mod:`sceneforge.fields.camera_paths`)
from a trained run to PNG frames and a video. ``source.json`` records the scene a run was
trained on, relative to the run folder when it lies beside it (:func:`source_record`,
:func:`scene_source`), so a moved output folder still finds its scene.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from sceneforge.core.atomic import atomic_write_json
from sceneforge.core.cameras import Cameras
from sceneforge.core.run_files import (
    CHECKPOINT,
    CONFIG,
    DEPTH_DIR,
    EVAL,
    EVAL_DIR,
    FRAMES_DIR,
    HISTORY,
    HUMAN_STAGES,
    RENDER_INFO,
    SOURCE,
    VIDEO,
)
from sceneforge.core.scene import SceneData
from sceneforge.fields.camera_paths import (
    PATH_NAMES,
    CameraPathError,
    interpolate_cameras,
    is_forward_facing,
    orbit_cameras,
    read_camera_path,
    scene_depth_range,
    spiral_cameras,
)
from sceneforge.fields.trainer import (
    CheckpointError,
    Trainer,
    TrainerConfig,
    config_to_dict,
)

TIME_BUDGET_MAX_STEPS = 10**9
"""``max_steps`` of a run given only ``max_seconds`` (no step cap in practice)."""


@dataclass
class TrainConfig:
    """``sceneforge train SCENE_DIR OUT_DIR``: train a field and evaluate it on held-out views."""

    max_steps: int | None = None
    """Training steps (overrides ``trainer.max_steps``; also sets the learning-rate decay)."""
    max_seconds: float | None = None
    """Training time budget in seconds (overrides ``trainer.max_seconds``); without
    ``max_steps`` the run trains for that long and its schedules follow the time used."""
    device: str | None = None
    """Torch device: auto (CUDA when available), cpu, cuda, cuda:N (overrides
    ``trainer.device``; a resumed run keeps its own unless this is given)."""
    model: Literal["nerf", "gaussians"] | None = None
    """Scene model (overrides ``trainer.model``; settings under ``trainer.nerf`` /
    ``trainer.gaussians``)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Trainer settings (steps, time budget, field, sampler, ...)."""
    resume: bool = True
    """Continue from ``OUT_DIR/checkpoint.pt`` when it exists."""
    save_eval_images: bool = True
    """Write held-out predictions next to their ground truth under ``OUT_DIR/eval``."""


@dataclass
class RenderConfig:
    """``sceneforge render RUN_DIR OUT_DIR``: render a camera path from a trained field."""

    path: str = "orbit"
    """orbit, spiral (forward-facing scenes), interpolate (through the training cameras),
    auto (spiral when forward-facing, else orbit), train, eval, or file:PATH (a nerfstudio
    camera_path.json)."""
    num_frames: int = 60
    """Frames of an orbit, spiral or interpolated path."""
    fps: int = 24
    """Video frame rate."""
    downscale: int | None = None
    """Image downscale (default: the training downscale)."""
    video: bool = True
    """Also write ``video.mp4`` (``video.gif`` when no mp4 writer is installed)."""
    depth: bool = True
    """Also write colour-mapped depth frames."""
    device: str | None = None
    """Torch device: auto, cpu, cuda, cuda:N (default: the run's)."""


Hook = Callable[[Trainer], None]
_TRAIN_HOOKS: ContextVar[tuple[tuple[int, Hook], ...]] = ContextVar("train_hooks", default=())


@contextmanager
def train_hooks(*hooks: tuple[int, Hook]) -> Iterator[None]:
    """Inside the ``with`` block, :func:`train` adds these ``(every, fn)`` hooks to its trainer
    (``Trainer.add_hook``): how an app reports training progress without wrapping ``train``."""
    token = _TRAIN_HOOKS.set(_TRAIN_HOOKS.get() + tuple(hooks))
    try:
        yield
    finally:
        _TRAIN_HOOKS.reset(token)


def _load(scene_dir: str | Path) -> SceneData:
    from sceneforge.core.io import load_scene

    return load_scene(scene_dir)


def source_record(scene_dir: str | Path, run_dir: str | Path) -> dict:
    """``source.json`` of a run in ``run_dir`` trained on ``scene_dir``.

    ``scene_dir`` is the absolute path (what older readers take). When the scene lies inside
    the run folder's parent (``OUT/sfm`` beside ``OUT/field``), ``scene_dir_relative`` holds
    it relative to the run folder and ``run_dir`` the folder it is relative to, so that a
    moved or shared ``OUT`` still finds its scene (:func:`scene_source`).
    """
    scene = Path(scene_dir).resolve()
    run = Path(run_dir).resolve()
    rec = {"scene_dir": str(scene)}
    if run.parent == scene or run.parent in scene.parents:
        rec["scene_dir_relative"] = Path(os.path.relpath(scene, run)).as_posix()
        rec["run_dir"] = str(run)
    return rec


def scene_source(run_dir: str | Path) -> Path:
    """The scene folder a run was trained on, from ``RUN_DIR/source.json``.

    A relative entry (:func:`source_record`) is resolved against the folder it was written
    for when that still exists elsewhere (a ``source.json`` copied into another run folder, as
    completion does), else against ``RUN_DIR`` (the run folder was moved); the absolute entry
    (all that older runs have) is used when the relative one does not resolve. Errors name
    the file and the folders tried.
    """
    run = Path(run_dir)
    src = run / SOURCE
    if not src.is_file():
        for capture in (run, run.parent):
            if (capture / HUMAN_STAGES).is_file():
                raise CheckpointError(
                    f"{capture} is a `sceneforge human` capture (its scene is built from the "
                    "video, the fit and the camera): run `sceneforge human VIDEO "
                    f"{capture}` again with other render options (finished stages are kept), "
                    "or load it in Python with sceneforge.stylize.human.capture_run.load_capture"
                )
        raise CheckpointError(f"{src}: missing; pass the scene explicitly")
    try:
        rec = json.loads(src.read_text())
        absolute = Path(rec["scene_dir"])
        rel = rec.get("scene_dir_relative")
        written = rec.get("run_dir")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{src}: not a run's source file ({type(e).__name__} {e})") from e
    tried = []
    if isinstance(rel, str) and rel:
        base = run
        if isinstance(written, str) and Path(written).is_dir():
            if Path(written).resolve() != run.resolve():
                base = Path(written)
        cand = Path(os.path.normpath(base / rel))
        if cand.exists():
            return cand
        tried.append(cand)
    if absolute.exists():
        return absolute
    tried.append(absolute)
    raise CheckpointError(
        f"{src}: the scene folder it names does not exist (tried {', '.join(map(str, tried))})"
    )


def train(
    scene_dir: str | Path | None,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    scene: SceneData | None = None,
) -> dict:
    """Train on a scene folder (COLMAP / transforms.json / LLFF) or an in-memory ``scene``.

    Writes ``OUT_DIR/checkpoint.pt``, ``config.json``, ``eval.json`` (``psnr``, ``ssim``,
    ``num_eval_images``, ``steps``, ``wall_s``, ...) and returns the eval dict. Hooks given
    with :func:`train_hooks` around the call are added to the trainer (e.g. progress). Under
    ``torchrun`` every rank trains its share (:mod:`sceneforge.fields.distributed`), rank 0
    alone writes and evaluates, and every rank returns rank 0's eval dict.
    """
    config = config or TrainConfig()
    overrides = {}
    if config.max_steps is not None:
        overrides["max_steps"] = config.max_steps
    if config.max_seconds is not None:
        overrides["max_seconds"] = config.max_seconds
        if config.max_steps is None:  # a time budget alone: train for that long
            overrides.update(schedule="time", max_steps=TIME_BUDGET_MAX_STEPS)
    if config.device is not None:
        overrides["device"] = config.device
    if config.model is not None:
        overrides["model"] = config.model
    if overrides:
        config = dataclasses.replace(
            config, trainer=dataclasses.replace(config.trainer, **overrides)
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if scene is None:
        if scene_dir is None:
            raise ValueError("train needs a scene folder or an in-memory scene")
        scene = _load(scene_dir)
    ckpt = out / CHECKPOINT
    t0 = time.perf_counter()
    if config.resume and ckpt.exists():
        trainer = Trainer.from_checkpoint(
            ckpt,
            scene,
            out,
            max_steps=config.trainer.max_steps,
            max_seconds=config.trainer.max_seconds,
            progress=config.trainer.progress,
            **({"schedule": "time"} if overrides.get("schedule") == "time" else {}),
            **({"device": config.device} if config.device is not None else {}),
        )
    else:
        trainer = Trainer(scene, config.trainer, out)
    for every, fn in _TRAIN_HOOKS.get():
        trainer.add_hook(fn, every)
    main = trainer.dist.is_main  # under torchrun only rank 0 writes and evaluates
    if main:
        atomic_write_json(out / CONFIG, config_to_dict(trainer.config))
    if scene_dir is not None and main:
        atomic_write_json(out / SOURCE, source_record(scene_dir, out))
    last = trainer.train()
    trainer.save_checkpoint(ckpt)
    train_s = time.perf_counter() - t0
    if not main:
        return trainer.dist.share_object(None)  # rank 0's eval dict
    if trainer.eval_indices:
        res = trainer.evaluate(save_dir=out / EVAL_DIR if config.save_eval_images else None)
    else:
        res = {"psnr": math.nan, "ssim": math.nan, "num_eval_images": 0, "steps": trainer.step}
    res.update(
        {
            "wall_s": time.perf_counter() - t0,
            "train_s": train_s,
            "train_step_s_total": trainer.wall_s,
            "train_psnr": last.get("psnr", math.nan),
            "samples_per_ray": last.get("samples_per_ray", math.nan),
            "num_train_images": len(trainer.train_indices),
            "dataset_version": trainer.dataset_version,
            **trainer.describe(),
        }
    )
    atomic_write_json(out / EVAL, res)
    # Training curve (loss / PSNR per logged step) for reports; rewritten on every run.
    atomic_write_json(out / HISTORY, {"history": trainer.history})
    return trainer.dist.share_object(res)


def load_trained(
    run_dir: str | Path, scene: SceneData | None = None, device: str | None = None
) -> Trainer:
    """A trainer restored from ``RUN_DIR/checkpoint.pt`` (scene from ``source.json`` via
    :func:`scene_source` if not given)."""
    run = Path(run_dir)
    ckpt = run / CHECKPOINT
    if scene is None:
        scene = _load(scene_source(run))
    extra = {"device": device} if device is not None else {}
    return Trainer.from_checkpoint(ckpt, scene, run, progress=False, tensorboard=False, **extra)


def _depth_colormap(depth: torch.Tensor) -> torch.Tensor:
    valid = depth > 0
    if not valid.any():
        return torch.zeros(*depth.shape, 3)
    lo, hi = depth[valid].quantile(0.02), depth[valid].quantile(0.98)
    d = ((depth - lo) / (hi - lo).clamp(min=1e-9)).clamp(0, 1)
    import matplotlib

    rgb = torch.from_numpy(matplotlib.colormaps["turbo"](d.numpy())[..., :3]).float()
    return torch.where(valid[..., None], rgb, torch.zeros_like(rgb))


def _even_frames(arr):
    """``N H W 3`` frames padded by one edge-replicated row / column where ``H`` / ``W`` is odd
    (H.264 in yuv420p needs even sizes)."""
    import numpy as np

    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if not (pad_h or pad_w):
        return arr
    return np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _mp4_writer() -> str | None:
    """The installed mp4 writer: ``imageio_ffmpeg`` (a dependency, ships ffmpeg) or ``av``."""
    return next(
        (m for m in ("imageio_ffmpeg", "av") if importlib.util.find_spec(m) is not None), None
    )


def write_video(frames: list[torch.Tensor], path: Path, fps: int) -> Path:
    """Write frames (``H W 3`` in [0, 1]) as an H.264 mp4 at ``path`` and return its path.

    Odd frame sizes are padded by one pixel to even ones. The file is encoded in memory and
    written atomically (an existing video is replaced whole or left as it was). Without an
    mp4 writer (``imageio-ffmpeg`` or ``av``) it writes ``path`` with a ``.gif`` suffix and
    prints a warning to stderr.
    """
    import sys

    import imageio.v3 as iio
    import numpy as np

    from sceneforge.core.atomic import atomic_write_bytes

    if not frames:
        raise ValueError(f"{path}: no frames to write")
    if fps <= 0:
        raise ValueError(f"{path}: the frame rate must be positive, got {fps}")
    arr = np.stack([(f.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8) for f in frames])
    writer = _mp4_writer()
    if writer is not None:
        arr = _even_frames(arr)
        if writer == "imageio_ffmpeg":
            opts = {"plugin": "FFMPEG", "codec": "libx264", "macro_block_size": 1}
            opts["pixelformat"] = "yuv420p"
        else:
            opts = {"plugin": "pyav", "codec": "libx264"}
        data = iio.imwrite("<bytes>", arr, extension=".mp4", fps=fps, **opts)
        return atomic_write_bytes(path, data)
    gif = path.with_suffix(".gif")
    print(
        f"warning: no mp4 writer installed (pip install imageio-ffmpeg); writing {gif} instead",
        file=sys.stderr,
    )
    data = iio.imwrite(
        "<bytes>", arr, extension=".gif", duration=1000 / fps, loop=0, plugin="pillow"
    )
    return atomic_write_bytes(gif, data)


def choose_path(cameras: Cameras) -> str:
    """``spiral`` for a forward-facing capture (:func:`is_forward_facing`), else ``orbit``
    (what ``sceneforge run`` renders)."""
    return "spiral" if is_forward_facing(cameras) else "orbit"


def path_cameras(trainer: Trainer, path: str, num_frames: int) -> tuple[Cameras, str]:
    """The cameras of camera path ``path`` (see :attr:`RenderConfig.path`) for a trained run,
    and the path's name (``auto`` resolved; ``file`` for ``file:PATH``). Orbit, spiral and
    ``auto`` are shaped by every registered camera, ``interpolate`` passes through the
    training cameras (held-out views excluded) in the scene's order."""
    cams = trainer.scene.cameras
    train_cams = cams[list(trainer.train_indices)]
    if path.startswith("file:"):
        return read_camera_path(path[len("file:") :]), "file"
    if path not in PATH_NAMES:
        names = ", ".join(PATH_NAMES)
        raise CameraPathError(f"unknown camera path {path!r}; use {names} or file:PATH")
    if path == "auto":
        path = choose_path(cams)
    if path == "orbit":
        aabb = trainer.scene_box.aabb
        center = (0.5 * (aabb[0] + aabb[1])).cpu()
        return orbit_cameras(cams, center, num_frames), path
    if path == "spiral":
        points = trainer.scene.points
        near, far = scene_depth_range(cams, points, trainer.scene_box.aabb.cpu())
        return spiral_cameras(cams, num_frames, near, far), path
    if path == "interpolate":
        return interpolate_cameras(train_cams, num_frames), path
    if path == "train":
        return train_cams, path
    if not trainer.eval_indices:
        raise CameraPathError("this run has no held-out views")
    return cams[list(trainer.eval_indices)], path


def render(
    run_dir: str | Path,
    out_dir: str | Path,
    config: RenderConfig | None = None,
    scene: SceneData | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render a camera path from ``RUN_DIR`` into ``OUT_DIR`` (``frames/``, ``depth/``, video);
    ``progress(done, total)`` is called after each frame."""
    from sceneforge.core.image_io import write_image_atomic

    config = config or RenderConfig()
    trainer = load_trained(run_dir, scene, config.device)
    cams, name = path_cameras(trainer, config.path, config.num_frames)
    # a path file gives its own image size: downscale it only when asked to
    ds = (config.downscale or 1) if name == "file" else config.downscale
    out = Path(out_dir)
    frames, t0 = [], time.perf_counter()
    for k in range(len(cams)):
        r = trainer.render_camera(cams, k, downscale=ds)
        frames.append(r["rgb"])
        write_image_atomic(out / FRAMES_DIR / f"{k:04d}.png", r["rgb"])
        if config.depth:
            write_image_atomic(out / DEPTH_DIR / f"{k:04d}.png", _depth_colormap(r["depth"]))
        if progress is not None:
            progress(k + 1, len(cams))
    result = {
        "path": name,
        "num_frames": len(frames),
        "wall_s": time.perf_counter() - t0,
        "frames": str(out / FRAMES_DIR),
    }
    if config.video and frames:
        result["video"] = str(write_video(frames, out / VIDEO, config.fps))
    atomic_write_json(out / RENDER_INFO, result)
    return result
