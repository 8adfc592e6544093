"""``sceneforge novel-views IMAGE OUT --model PATH``: novel views of one image with Free3D,
written as a posed image set, optionally continued into a field.

The job (:func:`novel_views`):

1. **Input** (:func:`sceneforge.stylize.free3d.foreground.prepare_input`): the object's
   alpha from the image's alpha channel, a given mask file or simple matting; centred on
   white at the model's image size.
2. **Cameras** (:mod:`sceneforge.stylize.free3d.poses`): the canonical source camera and the
   targets of ``poses`` (``orbit:16``, ``orbit:8,elevation=20``, ``file:cameras.json``, ...).
3. **Views** (:class:`sceneforge.stylize.free3d.prior.Free3DPrior`): the targets are sampled
   in **sets**. The views of one set are denoised together: they attend to each other
   (cross-view attention) and, with ``share_noise``, start from one noise draw, so they agree
   with each other best. By default (``views_per_set = 0``) all targets form one set; with
   ``views_per_set = K`` and more than ``K`` targets they are split into
   ``ceil(N / K)`` sets of near-equal size, sampled one after the other. Every set is
   conditioned on the same source image (the source is the conditioning input, never one of
   the set's views) and uses the same seed, so with ``share_noise`` every target starts from
   the same noise whichever set it is in. Memory and time of the cross-view attention grow
   with the views per set: lower ``views_per_set`` when a GPU runs out of memory.
4. **Output**: the source view and the generated views with their cameras in the source
   frame (:func:`sceneforge.stylize.free3d.views_to_scene.assemble_views`).

Layout of ``OUT``::

    OUT/scene/transforms.json, images/, masks/   the posed views (source = source.png)
    OUT/views.png                                contact sheet (source first)
    OUT/novel_views.json                         what was done: model, poses, seed, timings
    OUT/log.txt                                  messages and progress lines
    OUT/field/checkpoint.pt, eval.json, ...      with ``train``: the field and its eval

Nothing is half-written: every input (image, mask, pose spec, cameras file, model folder) is
checked before any work, ``OUT`` is built in a temporary sibling folder and renamed into
place at the end (:func:`sceneforge.core.atomic.atomic_dir`), so a failure leaves no ``OUT``.
An existing non-empty ``OUT`` is refused unless ``overwrite`` (then it is replaced only once
the new one is complete); an ``OUT`` holding the input image, mask or model is always refused.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from sceneforge.core.atomic import atomic_dir, atomic_write_json
from sceneforge.core.cameras import Cameras
from sceneforge.core.devices import resolve_device
from sceneforge.core.diffusion import pick_dtype
from sceneforge.core.progress import RunLog, Task, format_seconds, trainer_progress
from sceneforge.core.run_files import LOG_FILE, SOURCE
from sceneforge.core.scene import SceneData

from .foreground import ForegroundConfig, matte_from_border, prepare_input
from .poses import ZERO123_FOV_DEG, parse_target_spec, source_camera, target_cameras
from .sampler import SamplerConfig
from .views_to_scene import ViewsFieldConfig, assemble_views, views_to_field, write_views

#: Files and folders of the job's output folder (module doc).
SCENE_DIR = "scene"
FIELD_DIR = "field"
SHEET = "views.png"
RECORD = "novel_views.json"


class NovelViewsError(ValueError):
    """The job cannot run as asked (output folder, options); the message names the path."""


@dataclass
class NovelViewsConfig:
    """Options of :func:`novel_views` (``sceneforge novel-views IMAGE OUT``)."""

    model: Path | None = None
    """Free3D model folder (written by ``Free3DPipeline.save_pretrained``); required."""
    poses: str = "orbit:16"
    """Target cameras: ``orbit:N[,elevation=E,radius=R,arc=A,fov=F]`` or a cameras file
    (``file:PATH[,frame=source|first]`` or ``PATH.json``)."""
    mask: Path | None = None
    """Foreground mask of the image (nonzero = object); default: its alpha, else matting."""
    foreground: ForegroundConfig = dataclasses.field(default_factory=ForegroundConfig)
    """How the object is found and framed (its ``size`` is replaced by ``image_size``)."""
    image_size: int = 0
    """Side of the input and written views in pixels (0 = the model's image size)."""
    fov_deg: float = ZERO123_FOV_DEG
    """Horizontal field of view of the source camera (Zero-1-to-3's renders by default)."""
    radius: float = 1.5
    """Distance of the source camera from the object's centre."""
    elevation_deg: float = 0.0
    """Elevation of the source camera above the object's horizon (degrees)."""
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    """Denoising steps, guidance, multi-view noise sharing (on by default) and seed."""
    views_per_set: int = 0
    """Target views denoised together in one set (0 = all of them; module doc)."""
    device: str = "auto"
    """Torch device of the model (auto, cpu, cuda, cuda:N); the field's too when its is auto."""
    precision: str = "auto"
    """Model dtype: auto (fp32 on CPU, bf16/fp16 on CUDA), fp32, fp16 or bf16."""
    train: bool = False
    """Continue into a field trained on the views (``OUT/field`` with its eval.json)."""
    field: ViewsFieldConfig = dataclasses.field(default_factory=ViewsFieldConfig)
    """How the field is trained with ``train`` (steps, model, held-out views, device)."""
    overwrite: bool = False
    """Replace an existing non-empty output folder (once the new one is complete)."""
    sheet_thumb: int = 128
    """Side in pixels of each view in the ``views.png`` contact sheet (at most the views')."""
    log_interval_s: float = 10.0
    """Seconds between two progress lines of a stage (the last one is always written)."""


# ----------------------------------------------------------------------------- helpers


def view_sets(num_targets: int, views_per_set: int = 0) -> list[list[int]]:
    """Target indices of each set: all in one set (``views_per_set`` 0 or >= ``num_targets``),
    else ``ceil(N / K)`` consecutive sets of near-equal size (e.g. 16 by 6: 6, 5, 5)."""
    if num_targets < 1:
        raise ValueError(f"need at least one target view, got {num_targets}")
    if views_per_set < 0:
        raise ValueError(f"views_per_set must be >= 0, got {views_per_set}")
    if views_per_set == 0 or views_per_set >= num_targets:
        return [list(range(num_targets))]
    n_sets = math.ceil(num_targets / views_per_set)
    return [a.tolist() for a in np.array_split(np.arange(num_targets), n_sets)]


def _is_within(path: Path, folder: Path) -> bool:
    p, f = path.resolve(), folder.resolve()
    return p == f or f in p.parents


def check_output_folder(
    out: Path, overwrite: bool, inputs: dict[str, Path | None] | None = None
) -> None:
    """Refuse an ``out`` that is a file, holds one of ``inputs`` (``{what: path}``), or is a
    non-empty folder without ``overwrite`` (:class:`FileExistsError`); all name ``out``."""
    if out.exists() and not out.is_dir():
        raise NovelViewsError(f"{out}: the output path exists and is not a folder")
    for what, p in (inputs or {}).items():
        if p is not None and _is_within(Path(p), out):
            raise NovelViewsError(f"{out}: the output folder may not hold the {what} {p}")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{out}: output folder exists and is not empty; not overwriting it (choose another "
            "folder or pass overwrite)"
        )


def generated_alpha(
    images: Float[Tensor, "N 3 H W"],
    names: list[str],
    cfg: ForegroundConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> Float[Tensor, "N 1 H W"]:
    """Foreground of generated views on white (border matting); a view where none is found
    keeps its whole image as foreground (so it still trains, without a mask), said in ``log``."""
    cfg = cfg or ForegroundConfig()
    out = []
    for i in range(images.shape[0]):
        a = matte_from_border(images[i].float().cpu(), cfg)
        if not bool((a > 0.5).any()):
            if log is not None:
                log(f"{names[i]}: no foreground found on white; its whole image is its mask")
            a = torch.ones_like(a)
        out.append(a)
    return torch.stack(out)


def contact_sheet(scene: SceneData, thumb: int = 128, gap: int = 2) -> Image.Image:
    """The scene's views side by side (the source first), each at most ``thumb`` pixels."""
    order = sorted(range(len(scene)), key=lambda i: (scene.image_names[i] != "source.png", i))
    tiles = []
    for i in order:
        img = scene.images[i]
        arr = img.numpy() if isinstance(img, Tensor) else np.asarray(img)
        im = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
        scale = min(1.0, thumb / max(im.size))
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        tiles.append(im.resize(size, Image.LANCZOS) if size != im.size else im)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    tw = max(t.width for t in tiles)
    th = max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * tw + (cols + 1) * gap, rows * th + (rows + 1) * gap), 200)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet.paste(t, (gap + c * (tw + gap), gap + r * (th + gap)))
    return sheet


class _StepCounter:
    """Counts the denoiser's forward passes (one per denoising step, guided or not) into a
    progress task, through a forward hook removed on exit."""

    def __init__(self, model: torch.nn.Module, task: Task) -> None:
        self.model, self.task, self.done = model, task, 0
        self.info = ""
        self._handle = None

    def __enter__(self) -> _StepCounter:
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()

    def _hook(self, module, args, output) -> None:
        self.done += 1
        if self.done > self.task.total:  # a scheduler with more model calls than steps
            self.task.total = self.done
        self.task.update(self.done, self.info)


class _BufferedLog(RunLog):
    """A :class:`RunLog` without a file that keeps every line it writes (for the file later)."""

    def __init__(self, console: Callable[[str], None], interval_s: float) -> None:
        super().__init__(None, console=console, interval_s=interval_s)
        self.lines: list[str] = []

    def write(self, message: str, echo: bool = True) -> None:
        self.lines.append(message)
        super().write(message, echo)


def _camera_record(cams: Cameras) -> dict:
    return {
        "width": int(cams.width[0]),
        "height": int(cams.height[0]),
        "params": [float(x) for x in cams.params[0]],
    }


# ----------------------------------------------------------------------------- the job


def novel_views(
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: NovelViewsConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Novel views of the object in ``image_path`` written to ``out_dir`` (module doc).

    ``progress`` receives the messages and progress lines (default ``print``); they also go
    to ``OUT/log.txt``. Returns ``novel_views.json``'s content with ``out_dir``,
    ``scene_dir`` (and with ``train``: ``field_dir`` and the field's ``eval``).

    Raises (before anything is written; every message names the file, folder or spec):
        ImageReadError / ForegroundError: the image or mask is missing, unreadable, or
            without a usable foreground.
        TargetSpecError: a bad ``poses`` spec or cameras file.
        DiffusionModelError: the model folder is missing or lacks components (all named).
        FileExistsError / NovelViewsError: the output folder cannot be used.
    """
    from sceneforge.fields.api import source_record, train_hooks

    from .model import read_config
    from .pipeline import load_free3d, pipeline_missing
    from .prior import Free3DPrior

    cfg = cfg or NovelViewsConfig()
    console = progress or print
    t_start = time.perf_counter()
    # messages and progress lines until OUT's temporary folder exists, then replayed into it
    log = _BufferedLog(console, cfg.log_interval_s)

    image_path, out = Path(image_path), Path(out_dir)
    if cfg.model is None:
        raise NovelViewsError("no model folder given: pass --model PATH (a Free3D folder)")
    if cfg.image_size < 0 or cfg.views_per_set < 0 or cfg.sheet_thumb < 1:
        raise NovelViewsError(
            f"image_size and views_per_set must be >= 0 and sheet_thumb >= 1 (got "
            f"{cfg.image_size}, {cfg.views_per_set}, {cfg.sheet_thumb})"
        )
    model_path = Path(cfg.model).expanduser()
    inputs = {"input image": image_path, "mask": cfg.mask, "model folder": model_path}
    check_output_folder(out, cfg.overwrite, inputs)
    device = resolve_device(cfg.device)
    dtype = pick_dtype(device, cfg.precision)
    spec = parse_target_spec(cfg.poses)
    if not model_path.is_dir() or pipeline_missing(model_path):
        load_free3d(model_path, device, dtype)  # raises, naming everything that is missing
    size = cfg.image_size or read_config(model_path).image_size

    # input and cameras: every error names its file or spec, and nothing is written yet
    t0 = time.perf_counter()
    fg_cfg = dataclasses.replace(cfg.foreground, size=size)
    prep = prepare_input(image_path, cfg.mask, fg_cfg)
    src_cam = source_camera(size, cfg.fov_deg, cfg.radius, cfg.elevation_deg)
    tgt_cams = target_cameras(spec, src_cam)
    sets = view_sets(len(tgt_cams), cfg.views_per_set)
    prepare_s = time.perf_counter() - t0
    log(
        f"novel-views: {image_path} (foreground from {prep.source}) -> {len(tgt_cams)} views "
        f"({cfg.poses}) at {size}x{size}, {len(sets)} set(s) of at most "
        f"{max(len(s) for s in sets)} views"
    )

    t0 = time.perf_counter()
    log(f"loading the Free3D model {model_path} on {device} ({str(dtype).removeprefix('torch.')})")
    pipe = load_free3d(model_path, device, dtype)
    load_s = time.perf_counter() - t0

    scfg = cfg.sampler
    prior = Free3DPrior(pipe, scfg)
    t0 = time.perf_counter()
    views = []
    with log.task("generate", len(sets) * scfg.num_steps) as task:
        with _StepCounter(pipe.model, task) as counter:
            for k, idx in enumerate(sets):
                counter.info = f"set {k + 1}/{len(sets)} ({len(idx)} views)"
                sub = tgt_cams[idx]
                views.append(
                    prior.generate_for_cameras(
                        prep.image,
                        src_cam.K[0],
                        src_cam.cam_from_world[0],
                        sub.cam_from_world,
                        sub.K,
                        seed=scfg.seed,
                    ).cpu()
                )
    images = torch.cat(views).float()
    generate_s = time.perf_counter() - t0
    log(f"generated {images.shape[0]} views in {format_seconds(generate_s)}")

    names = [f"view_{i:03d}.png" for i in range(images.shape[0])]
    alpha = generated_alpha(images, names, fg_cfg, log)
    scene = assemble_views(prep.image, src_cam, images, tgt_cams, prep.alpha, alpha)

    record = {
        "image": str(image_path.resolve()),
        "mask": None if cfg.mask is None else str(Path(cfg.mask).resolve()),
        "foreground": prep.source,
        "crop_box": [float(x) for x in prep.crop_box],
        "model": str(model_path.resolve()),
        "poses": cfg.poses,
        "num_views": int(images.shape[0]),
        "image_size": size,
        "source_camera": {
            **_camera_record(src_cam),
            "fov_deg": cfg.fov_deg,
            "radius": cfg.radius,
            "elevation_deg": cfg.elevation_deg,
        },
        "seed": scfg.seed,
        "share_noise": scfg.share_noise,
        "num_steps": scfg.num_steps,
        "guidance_scale": scfg.guidance_scale,
        "eta": scfg.eta,
        "views_per_set": cfg.views_per_set,
        "sets": [len(s) for s in sets],
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "train": cfg.train,
    }
    timings = {"prepare_s": prepare_s, "load_s": load_s, "generate_s": generate_s}
    with atomic_dir(out) as tmp:
        rl = RunLog(tmp / LOG_FILE, console=console, interval_s=cfg.log_interval_s)
        for line in log.lines:
            rl.write(line, echo=False)
        t0 = time.perf_counter()
        if cfg.train:
            field_cfg = cfg.field
            if field_cfg.device == "auto":
                field_cfg = dataclasses.replace(field_cfg, device=str(device))
            rl(f"training a {cfg.field.model} field on the views ({cfg.field.max_steps} steps)")
            with rl.task("train", cfg.field.max_steps, own_bar=cfg.field.progress) as task:
                with train_hooks((1, trainer_progress(task))):
                    res = views_to_field(scene, tmp, field_cfg)
            timings["train_s"] = time.perf_counter() - t0
            # the run's source.json as it will be once OUT is in place
            atomic_write_json(
                tmp / FIELD_DIR / SOURCE, source_record(out / SCENE_DIR, out / FIELD_DIR)
            )
            ev = {k: v for k, v in res.items() if k not in ("scene_dir", "run_dir")}
            record["eval"] = ev
            rl(
                f"field: PSNR {ev.get('psnr', math.nan):.2f} dB, SSIM "
                f"{ev.get('ssim', math.nan):.3f} on {ev.get('num_eval_images', 0)} held-out views"
            )
        else:
            write_views(scene, tmp / SCENE_DIR)
        t1 = time.perf_counter()
        contact_sheet(scene, min(cfg.sheet_thumb, size)).save(tmp / SHEET)
        timings["write_s"] = time.perf_counter() - t1
        timings["total_s"] = time.perf_counter() - t_start
        record["timings"] = timings
        atomic_write_json(tmp / RECORD, record, default=str)
        # a folder that appeared meanwhile is still never replaced without overwrite
        check_output_folder(out, cfg.overwrite)
        rl(f"writing {out}")
    result = {**record, "out_dir": str(out), "scene_dir": str(out / SCENE_DIR)}
    if cfg.train:
        result["field_dir"] = str(out / FIELD_DIR)
    RunLog(out / LOG_FILE, console=console)(
        f"novel-views: done in {format_seconds(timings['total_s'])}: {out / SCENE_DIR}"
        + (f", {out / FIELD_DIR}" if cfg.train else "")
    )
    return result


__all__ = [
    "FIELD_DIR",
    "RECORD",
    "SCENE_DIR",
    "SHEET",
    "NovelViewsConfig",
    "NovelViewsError",
    "check_output_folder",
    "contact_sheet",
    "generated_alpha",
    "novel_views",
    "view_sets",
]
