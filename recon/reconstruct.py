"""``sceneforge reconstruct``: an image folder (or a video) in, an output folder out.

Samples a video's sharpest frames into the output folder (:mod:`sceneforge.core.video_input`),
loads the images (and masks), tracks them (:mod:`sceneforge.recon.tracking`), runs the SfM
(:func:`sceneforge.recon.sfm.reconstruct_from_tracks`; tracking again with every image pair
matched when its global poses are in doubt) and writes a COLMAP model, ``transforms.json``
(+ ``sparse_pc.ply``), a PNG of cameras and points and ``summary.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sceneforge.core import run_files
from sceneforge.core.timing import cpu_seconds
from sceneforge.core.video_input import VideoConfig
from sceneforge.recon.retrieval import PairSelectionConfig, resolve_method
from sceneforge.recon.sfm import Reconstruction, SfMConfig, reconstruct_from_tracks
from sceneforge.recon.sfm_error import SfMError


@dataclass
class ReconstructConfig:
    """``sceneforge reconstruct``: image folder in, COLMAP model + transforms.json out."""

    sfm: SfMConfig = field(default_factory=SfMConfig)
    """Camera initialisation, triangulation and bundle adjustment."""
    features: Literal["auto", "sift", "aliked", "xfeat"] = "auto"
    """Query-point features (auto: SIFT on CPU, ALIKED on CUDA)."""
    max_image_size: int = 1600
    """Images are downscaled to this longest side for feature extraction."""
    feature_workers: int = -1
    """Images whose SIFT is extracted at once (OpenCV: threads, pycolmap: processes; -1 = one
    per core, at most 8; 0 = one at a time)."""
    sift_backend: Literal["opencv", "pycolmap"] = "opencv"
    """SIFT implementation: OpenCV (~4x less CPU) or pycolmap (COLMAP's own extractor)."""
    num_query_frames: int = 8
    """Query frames of the tracker (0 = every frame)."""
    sequential: bool | None = None
    """Images are frames in capture order (sorted by name, e.g. sampled from a video): match
    every image also with its next ``sequential_overlap`` images (None: on for a video given to
    ``sceneforge run`` or ``sceneforge reconstruct``, off otherwise)."""
    sequential_overlap: int = 3
    """With ``sequential``: following images matched with each image (otherwise 1), so that one
    blurred or poorly matched frame does not break the chain of matches along the video."""
    pair_selection: PairSelectionConfig = field(
        default_factory=lambda: PairSelectionConfig(method="auto")
    )
    """Which image pairs are matched. ``auto``: the query frames above up to
    ``exhaustive_max_images`` (100) images; beyond, ``sequential`` (each frame with its next
    ``overlap`` frames + loop-closure candidates by retrieval) with ``sequential``, else
    ``retrieval`` (each image with its ``retrieval_neighbors`` most similar images by VLAD)."""
    retrack_on_doubt: bool = True
    """When the global poses cannot be trusted (see :attr:`IncrementalConfig.min_rotation_inliers`)
    or the reconstruction fails, track again with every image as a query frame (all pairs
    matched, like COLMAP's exhaustive matching) and reconstruct from those tracks: blowtorch's
    67 images, 15 -> 19 registered (COLMAP's 19) for 2.5x the tracking time."""
    retrack_max_images: int = 200
    """No re-tracking above this many images (all pairs grow with the square of the count;
    raise ``num_query_frames`` instead)."""
    masks_dir: Path | None = None
    """Folder of masks (``<image name>.png`` or same stem; True/255 = usable pixel)."""
    max_images: int = 0
    """Use only the first N images (sorted by name); 0 = all."""
    write_png: bool = True
    """Write ``reconstruction.png`` (cameras and points)."""
    overwrite: bool = False
    """Replace a non-empty output folder."""
    progress: bool = True
    """Show a progress display per stage."""


def _load_inputs(images_dir: Path, cfg: ReconstructConfig, log) -> tuple[list, ...]:
    """Readable images (paths, arrays), their masks, the unreadable files (named, with why)
    and the skipped non-image files.

    Policy: non-image files are skipped with a note; unreadable (corrupt, truncated) images are
    skipped with a warning and listed in the summary; a mask folder that is missing or holds no
    mask for any image, and a mask that is unreadable or not its image's size, are errors.
    """
    from sceneforge.core.image_io import ImageReadError, read_image, read_mask, scan_folder
    from sceneforge.core.io_common import find_mask

    try:
        files, others = scan_folder(images_dir)
    except ImageReadError as e:
        raise SfMError(str(e)) from e
    if others:
        log(f"skipping {len(others)} non-image file(s): {', '.join(p.name for p in others[:10])}")
    if cfg.max_images > 0:
        files = files[: cfg.max_images]
    if len(files) < 2:
        raise SfMError(f"{images_dir}: need at least 2 images, found {len(files)}")
    masks_dir = Path(cfg.masks_dir) if cfg.masks_dir is not None else None
    if masks_dir is not None:
        if not masks_dir.is_dir():
            raise SfMError(f"{masks_dir}: masks folder does not exist or is not a folder")
        if not any(find_mask(masks_dir, p.name) is not None for p in files):
            raise SfMError(
                f"{masks_dir}: masks folder holds no mask for any of the {len(files)} images "
                f"(expected e.g. {files[0].name}.png or {files[0].stem}.png)"
            )
    paths, images, masks, unreadable = [], [], [], []
    for p in files:
        try:
            img = read_image(p, keep_8bit=True)  # uint8: 1,000 frames in 0.5 GB, not 2.1
        except (ImageReadError, OSError, ValueError) as e:
            unreadable.append(f"{p.name}: {e}")
            log(f"[yellow]skipping unreadable image {p}: {e}")
            continue
        mask = None
        mp = find_mask(masks_dir, p.name) if masks_dir is not None else None
        if mp is not None:
            try:
                mask = read_mask(mp)
            except (ImageReadError, OSError, ValueError) as e:
                raise SfMError(f"{mp}: unreadable mask ({e})") from e
            if tuple(mask.shape) != tuple(img.shape[:2]):
                raise SfMError(
                    f"{mp}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {p.name} is "
                    f"{img.shape[1]}x{img.shape[0]}"
                )
        paths.append(p)
        images.append(img)
        masks.append(mask)
    if len(paths) < 2:
        raise SfMError(
            f"{images_dir}: fewer than 2 readable images ({len(unreadable)} unreadable: "
            f"{'; '.join(unreadable[:5])})"
        )
    return paths, images, masks, unreadable, [p.name for p in others]


def _point_colors(images: list[Tensor], rec: Reconstruction) -> Tensor:
    """uint8 colour of every point from its first observation."""
    cols = torch.zeros(rec.points.shape[0], 3, dtype=torch.uint8)
    if rec.points.shape[0] == 0:
        return cols
    n_obs = rec.obs_point.numel()
    first = torch.full((rec.points.shape[0],), n_obs, dtype=torch.long)
    first = first.scatter_reduce(0, rec.obs_point, torch.arange(n_obs), "amin")
    first = first.clamp(max=max(0, n_obs - 1))
    img_of = rec.obs_image[first]
    for i in img_of.unique().tolist():
        sel = (img_of == i).nonzero()[:, 0]
        img = images[i]
        if img.dtype == torch.uint8:  # what the float image would give, exactly (test)
            img = img.float() / 255.0
        h, w = img.shape[:2]
        uv = rec.obs_xy[first[sel]]
        u = uv[:, 0].long().clamp(0, w - 1)
        v = uv[:, 1].long().clamp(0, h - 1)
        cols[sel] = (img[v, u].clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return cols


def write_reconstruction(
    rec: Reconstruction,
    image_paths: list[Path],
    out_dir: Path,
    colors: Tensor | None = None,
    write_png: bool = True,
) -> None:
    """COLMAP model (``sparse/0``), ``transforms.json`` (+ its ``sparse_pc.ply``) and
    ``reconstruction.png`` of the registered images into ``out_dir`` (which must exist)."""
    import os

    from sceneforge.core.atomic import atomic_dir, atomic_write_json
    from sceneforge.core.io_colmap import write_colmap
    from sceneforge.core.io_nerfstudio import transforms_dict, write_ply_points

    reg = rec.registered.nonzero()[:, 0]
    scene = rec.to_scene(image_paths, colors)
    # Built in a temporary folder, then renamed: a crash never leaves a half-written model.
    with atomic_dir(out_dir / run_files.SFM_MODEL_DIR) as tmp:
        write_colmap(scene, tmp)
    rel = [os.path.relpath(image_paths[i], out_dir) for i in reg.tolist()]
    # The sparse points travel with transforms.json (as nerfstudio's sparse_pc.ply): fields
    # trained on this folder fit their bounded box to them instead of to the cameras.
    write_ply_points(out_dir / run_files.SPARSE_PC, scene.points, colors)
    tj = transforms_dict(scene, rel, ply_file_path=run_files.SPARSE_PC)
    atomic_write_json(out_dir / run_files.TRANSFORMS, tj)
    if write_png:
        plot_reconstruction(rec, out_dir / run_files.RECONSTRUCTION_PNG, colors)


def plot_reconstruction(
    rec: Reconstruction, path: Path, colors: Tensor | None = None, panel: int = 600
) -> None:
    """Top (x-z) and front (x-y) views of the points and the camera centres with their viewing
    directions, drawn directly with PIL (matplotlib's import and layout cost seconds, more than
    the rest of writing the model)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    from sceneforge.core.atomic import atomic_write_bytes

    reg = rec.registered
    wfc = rec.cameras.world_from_cam[reg].double()
    c, fwd = wfc[:, :, 3], wfc[:, :, 2]
    pts = rec.points.double()
    cols = colors if colors is not None else torch.full((pts.shape[0], 3), 128, dtype=torch.uint8)
    if pts.shape[0]:
        lo, hi = torch.quantile(pts, 0.02, 0), torch.quantile(pts, 0.98, 0)
        inside = ((pts >= lo) & (pts <= hi)).all(1)
        pts, cols = pts[inside], cols[inside]
    scale = float(max(1e-9, (c - c.mean(0)).abs().max())) * 0.15 if c.shape[0] else 1.0
    tips = c + fwd * scale
    margin, title_h = 20, 24
    img = Image.new("RGB", (2 * panel, panel + title_h), "white")
    draw = ImageDraw.Draw(img)
    for k, (a, b, name) in enumerate([(0, 2, "top (x-z)"), (0, 1, "front (x-y)")]):
        every = torch.cat([pts[:, [a, b]], c[:, [a, b]], tips[:, [a, b]]])
        if every.shape[0] == 0:
            continue
        lo2, hi2 = every.min(0).values, every.max(0).values
        s = (panel - 2 * margin) / float(max(1e-12, (hi2 - lo2).max()))  # equal aspect
        mid = 0.5 * (lo2 + hi2)

        def to_px(xy: Tensor, a=a, b=b, s=s, mid=mid, k=k) -> np.ndarray:
            u = (xy[:, 0] - mid[0]) * s + k * panel + panel / 2
            v = (xy[:, 1] - mid[1]) * s
            v = v if b == 1 else -v  # y points down in images; z up in the top view
            return torch.stack([u, v + title_h + panel / 2], 1).round().long().numpy()

        if pts.shape[0]:  # one pixel per point, written straight into the pixel array
            px = to_px(pts[:, [a, b]])
            arr = np.asarray(img).copy()
            ok = (px[:, 0] >= 0) & (px[:, 0] < 2 * panel) & (px[:, 1] >= 0)
            ok &= px[:, 1] < panel + title_h
            arr[px[ok, 1], px[ok, 0]] = cols.numpy()[ok]
            img = Image.fromarray(arr)
            draw = ImageDraw.Draw(img)
        pc, pt = to_px(c[:, [a, b]]), to_px(tips[:, [a, b]])
        for (x0, y0), (x1, y1) in zip(pc.tolist(), pt.tolist()):
            draw.line([(x0, y0), (x1, y1)], fill=(220, 0, 0), width=1)
            draw.ellipse([x0 - 3, y0 - 3, x0 + 3, y0 + 3], fill=(220, 0, 0))
        draw.text((k * panel + margin, 4), name, fill="black")
    draw.text(
        (2 * panel - 220, 4),
        f"{int(reg.sum())} cameras, {int(rec.points.shape[0])} points",
        fill="black",
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def plain_text(message: str) -> str:
    """``message`` without its rich markup (``[yellow]...`` -> ``...``); as it is when it is
    not valid markup."""
    from rich.errors import MarkupError
    from rich.markup import render

    try:
        return render(message).plain
    except MarkupError:
        return message


def neighbor_frames(cfg: ReconstructConfig) -> int:
    """Following images the tracker matches with each image (``TracksConfig.neighbor_frames``):
    ``sequential_overlap`` with ``sequential``, else the tracker's default (1)."""
    from sceneforge.recon.tracking import TracksConfig

    if not cfg.sequential:
        return TracksConfig().neighbor_frames
    if cfg.sequential_overlap < 1:
        raise ValueError(f"sequential_overlap must be at least 1, got {cfg.sequential_overlap}")
    return cfg.sequential_overlap


def pair_selection(cfg: ReconstructConfig) -> PairSelectionConfig:
    """The pair selection a reconstruction with ``cfg`` uses: ``sequential`` marks the
    images as frames in capture order."""
    ps = cfg.pair_selection
    return replace(ps, ordered=bool(cfg.sequential) or ps.ordered)


def reconstruct(
    images_dir: str | Path,
    out_dir: str | Path,
    config: ReconstructConfig | None = None,
    log: Callable[[str], None] | None = None,
    video: VideoConfig | None = None,
) -> dict:
    """Images in, COLMAP model + ``transforms.json`` + PNG + ``summary.json`` out.

    ``images_dir`` may be a video file instead: the sharpest frame of each of
    ``video.num_frames`` windows (:mod:`sceneforge.core.video_input`) is written to
    ``out_dir/images`` (at most ``max_image_size`` px), which frames were kept to
    ``out_dir/video.json``, and the frames are matched in order (``sequential`` unless given).

    ``log`` receives every message shown on the console (loading, tracking, SfM, the result)
    as plain text (rich markup removed), also when ``config.progress`` is off, e.g. to put them
    into a run's log file.

    Returns the summary: registered images (and by which step), unregistered and unreadable
    images, points, mean track length, mean reprojection error, the matching used and time per
    stage.
    """
    from rich.console import Console

    from sceneforge.core.atomic import atomic_write_json
    from sceneforge.recon.features import FeaturesConfig
    from sceneforge.recon.matching import MatchingConfig
    from sceneforge.recon.tracking import TracksConfig, build_tracks, extract_features

    cfg = config or ReconstructConfig()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    console = Console(stderr=True, quiet=not cfg.progress)
    sink = log
    nbr = neighbor_frames(cfg)

    def log(message: str) -> None:
        # A quiet console still renders every message (~7 ms each): skip them entirely.
        if cfg.progress:
            console.log(message, _stack_offset=2)
        if sink is not None:
            sink(plain_text(message))

    from_video = _is_video_input(images_dir)
    if not from_video and not images_dir.is_dir():
        raise SfMError(f"{images_dir}: images folder does not exist or is not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise SfMError(f"{out_dir}: the output folder is a file")
    if out_dir.exists() and any(out_dir.iterdir()) and not cfg.overwrite:
        raise SfMError(f"{out_dir}: output folder exists and is not empty (use overwrite)")
    if out_dir.resolve() == images_dir.resolve():
        raise SfMError(f"{out_dir}: the output folder must not be the images folder")
    t_all, c_all = time.perf_counter(), cpu_seconds()
    timings: dict[str, float] = {}
    video_record: dict | None = None

    with console.status("[bold]loading images") as status:
        t0 = time.perf_counter()
        if from_video:
            from sceneforge.core.video_input import video_frames_folder

            status.update("[bold]sampling video frames")
            images_dir, video_record = video_frames_folder(
                images_dir, out_dir, video, cfg.max_image_size, log
            )
            if cfg.sequential is None:  # frame_NNNNN.jpg: sorted by name = in temporal order
                cfg = replace(cfg, sequential=True)
                nbr = neighbor_frames(cfg)
            timings["video_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
        paths, images, masks, unreadable, skipped = _load_inputs(images_dir, cfg, log)
        timings["load_s"] = time.perf_counter() - t0
        log(f"{len(paths)} images loaded from {images_dir}")

        status.update("[bold]tracking")
        t0, c0 = time.perf_counter(), cpu_seconds()
        tcfg = TracksConfig(
            features=FeaturesConfig(
                method=cfg.features,
                max_image_size=cfg.max_image_size,
                num_workers=cfg.feature_workers,
                sift_backend=cfg.sift_backend,
            ),
            matching=MatchingConfig(method="auto"),
            num_query_frames=cfg.num_query_frames,
            neighbor_frames=nbr,
            pair_selection=pair_selection(cfg),
        )
        pair_method = resolve_method(tcfg.pair_selection, len(images))
        if cfg.sequential and pair_method == "query":
            log(f"sequential matching: every image also with its next {nbr} image(s)")
        mask_list = masks if any(m is not None for m in masks) else None
        with _tracking_threads(cfg):
            feats = extract_features(images, tcfg, mask_list)
            tracks = build_tracks(images, tcfg, mask_list, log=log, features=feats)
        timings["tracks_s"] = time.perf_counter() - t0
        # CPU seconds of this process (all its threads): comparable on a busy machine.
        timings["tracks_cpu_s"] = cpu_seconds() - c0
        c0 = cpu_seconds()
        log(f"tracks: {tracks.num_tracks}, mean length {tracks.mean_length():.2f}")

        status.update("[bold]structure from motion")

        def sfm_log(msg: str) -> None:
            status.update(f"[bold]sfm: {msg}")
            log(msg)

        if pair_method == "query":  # not every pair matched yet
            some_pairs = 0 < cfg.num_query_frames < len(images)
        else:
            some_pairs = pair_method != "exhaustive"
        retrack = some_pairs and cfg.retrack_on_doubt and len(images) <= cfg.retrack_max_images
        first: Reconstruction | None = None
        try:
            rec = reconstruct_from_tracks(tracks, cfg.sfm, sfm_log)
            why = "; ".join(rec.stats.get("global_doubts", []))
            first = rec
        except SfMError as e:
            if not retrack:
                raise
            why = str(e)
        if why and retrack:
            log(f"[yellow]{why}: matching every image pair and reconstructing again")
            status.update("[bold]tracking (all pairs)")
            t0 = time.perf_counter()
            with _tracking_threads(cfg):
                # every pair: also the frames farther apart than the sequential overlap
                tcfg = replace(
                    tcfg,
                    num_query_frames=0,
                    max_frame_distance=None,
                    pair_selection=replace(tcfg.pair_selection, method="query"),
                )
                tracks = build_tracks(images, tcfg, mask_list, log=log, features=feats)
            timings["retrack_s"] = time.perf_counter() - t0
            status.update("[bold]structure from motion")
            try:
                rec = reconstruct_from_tracks(tracks, cfg.sfm, sfm_log)
            except SfMError as e:
                if first is None:
                    raise
                log(f"[yellow]with all pairs: {e}; keeping the first reconstruction")
                rec = first
            rec.stats["retracked"] = rec is not first
            if first is not None and rec is not first:
                rec.stats["first_pass"] = {
                    "registered": int(first.registered.sum()),
                    "init": first.stats.get("init"),
                    "global_doubts": first.stats.get("global_doubts"),
                }
                for k, v in first.timings.items():
                    timings[f"first_{k}"] = v
        elif why and some_pairs and first is not None:
            log(
                f"[yellow]global poses in doubt ({why}); not matching all pairs (retrack_on_doubt "
                f"off or more than retrack_max_images = {cfg.retrack_max_images} images)"
            )
        for k, v in rec.timings.items():
            timings[k] = v

        status.update("[bold]writing outputs")
        t0 = time.perf_counter()
        colors = _point_colors(images, rec)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_reconstruction(rec, paths, out_dir, colors, cfg.write_png)
        timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    timings["sfm_and_write_cpu_s"] = cpu_seconds() - c0
    timings["total_cpu_s"] = cpu_seconds() - c_all
    summary = make_summary(rec, [p.name for p in paths], timings)
    summary["unreadable_images"] = unreadable
    summary["skipped_non_image_files"] = skipped
    summary["config"] = asdict(cfg)
    summary["tracks"] = {"num_tracks": tracks.num_tracks, "mean_length": tracks.mean_length()}
    summary["matching"] = {
        "sequential": bool(cfg.sequential),
        "neighbor_frames": tcfg.neighbor_frames,
        "num_query_frames": tcfg.num_query_frames,
        "query_frames": tracks.info.get("query_frames"),
        "num_pairs": tracks.info.get("num_pairs"),
    }
    summary["pair_selection"] = tracks.info.get("pair_selection")
    if video_record is not None:
        summary["video"] = {
            "video": video_record["video"],
            "record": run_files.VIDEO_RECORD,
            "num_video_frames": video_record["num_video_frames"],
            "frames": [f["file"] for f in video_record["frames"]],
        }
    atomic_write_json(out_dir / run_files.SFM_SUMMARY, summary, default=str)
    log(
        f"[green]registered {summary['num_registered']}/{summary['num_images']} images, "
        f"{summary['num_points']} points, {summary['mean_reproj_error_px']:.2f} px "
        f"in {timings['total_s']:.1f} s → {out_dir}"
    )
    return summary


def _is_video_input(path: Path) -> bool:
    """Whether ``path`` is given as a video (a file, or a missing path with a video ending);
    a single image is an error."""
    from sceneforge.core.image_io import IMAGE_EXTENSIONS
    from sceneforge.core.video_input import is_video

    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        raise SfMError(f"{path}: a single image; give a folder of images or a video file")
    return path.is_file() or (is_video(path) and not path.exists())


@contextmanager
def _tracking_threads(cfg: ReconstructConfig):
    """torch threads while tracking (images and pairs run in parallel themselves)."""
    old_threads = torch.get_num_threads()
    if cfg.sfm.num_threads is not None:
        torch.set_num_threads(max(1, cfg.sfm.num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)


def make_summary(rec: Reconstruction, names: list[str], timings: dict[str, float]) -> dict:
    """The ``summary.json`` content."""
    err = rec.reprojection_errors()
    by: dict[str, int] = {}
    for b in rec.registered_by:
        if b is not None:
            by[b] = by.get(b, 0) + 1
    return {
        "num_images": len(names),
        "num_registered": int(rec.registered.sum()),
        "registered_by": by,
        "registered_images": {
            names[i]: rec.registered_by[i] for i in range(len(names)) if rec.registered[i]
        },
        "unregistered_images": [names[i] for i in range(len(names)) if not rec.registered[i]],
        "image_groups": [[names[i] for i in g] for g in rec.stats.get("image_groups", [])],
        "num_points": int(rec.points.shape[0]),
        "num_observations": int(rec.obs_image.numel()),
        "mean_track_length": rec.mean_track_length(),
        "mean_reproj_error_px": float(err.mean()) if err.numel() else math.nan,
        "camera_model": rec.cameras.model,
        "intrinsics": rec.cameras.params[rec.registered].mean(0).tolist()
        if bool(rec.registered.any())
        else [],
        "stats": rec.stats,
        "timings_s": timings,
        "config": None,
    }
