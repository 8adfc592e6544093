"""Input preparation of ``sceneforge run``: frames sampled from a video, or downscaled copies of
photos, written inside the output folder (``OUT/images``) so that the reconstruction's
``transforms.json`` points inside ``OUT`` and ``OUT`` can be moved or shared.

Video frames: the video is cut into ``num_frames`` equal windows of consecutive frames and the
sharpest frame of each window is kept (sharpness = variance of the Laplacian of the grey
frame, compared only with the neighbouring candidates of the same window, so a dark or
textureless stretch of the video still gives a frame). Frames are read with imageio-ffmpeg
(its bundled ffmpeg), one at a time.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: File name endings read as videos.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
#: Longest side of the grey frame whose Laplacian is measured (speed; blur shows at any size).
_SHARPNESS_SIZE = 640


class VideoError(ValueError):
    """A video that cannot be used (not a video, unreadable, too few frames); names the file."""


@dataclass
class VideoConfig:
    """Frames taken from a video given to ``sceneforge run`` or ``sceneforge reconstruct``."""

    num_frames: int = 40
    """Frames to keep: the sharpest of each of this many equal windows of the video."""
    min_frames: int = 3
    """A video with fewer decodable frames than this is an error."""
    jpeg_quality: int = 95
    """JPEG quality of the written frames."""


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file by its ending."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian of the grey ``H W 3`` uint8 frame (larger = sharper),
    measured at most :data:`_SHARPNESS_SIZE` pixels on the longest side."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    if max(h, w) > _SHARPNESS_SIZE:
        s = _SHARPNESS_SIZE / max(h, w)
        grey = cv2.resize(grey, (max(round(w * s), 1), max(round(h * s), 1)), cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _resize(image, max_size: int, resample):
    """A PIL image scaled (down only) so that its longest side is at most ``max_size``."""
    w, h = image.size
    if max(w, h) <= max_size:
        return image
    s = max_size / max(w, h)
    return image.resize((max(round(w * s), 1), max(round(h * s), 1)), resample, reducing_gap=3.0)


def _write_pil(path: Path, image, quality: int = 95) -> None:
    from PIL import Image

    from sceneforge.core.atomic import atomic_open

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension")
    opts = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_open(path, "wb") as f:
        image.save(f, format=fmt, **opts)


def _open_video(path: Path):
    """``(frame generator, width, height, frame count)``; errors name the file."""
    import imageio_ffmpeg

    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    try:
        count, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration, ValueError) as e:
        raise VideoError(f"{path}: not a readable video ({str(e).splitlines()[0][:200]})") from e
    w, h = (int(v) for v in meta.get("size", (0, 0)))
    if w < 1 or h < 1:
        gen.close()
        raise VideoError(f"{path}: not a readable video (no frame size)")
    return gen, w, h, int(count)


def sample_video_frames(
    video: str | Path,
    out_dir: str | Path,
    config: VideoConfig | None = None,
    max_size: int = 1600,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the sharpest frame of each of ``config.num_frames`` equal windows of ``video`` into
    ``out_dir`` (``frame_NNNNN.jpg``, NNNNN = the frame's index in the video: sorted by name =
    in temporal order, which ``sceneforge run`` relies on to match them sequentially), scaled
    so that the longest side is at most ``max_size``; returns ``{"video", "num_video_frames",
    "frames": [{"index", "file", "sharpness", "window_median_sharpness"}], ...}``.

    Raises :class:`VideoError` (naming the file) for a file that is not a readable video or
    that has fewer than ``config.min_frames`` frames.
    """
    from PIL import Image

    cfg = config or VideoConfig()
    if cfg.num_frames < 1:
        raise ValueError(f"video.num_frames must be at least 1, got {cfg.num_frames}")
    video, out = Path(video), Path(out_dir)
    gen, w, h, count = _open_video(video)
    if count < cfg.min_frames:
        gen.close()
        raise VideoError(
            f"{video}: has {count} frame(s); need at least {cfg.min_frames} to reconstruct"
        )
    windows = min(cfg.num_frames, count)
    chosen: list[dict] = []
    best: tuple[float, int, np.ndarray] | None = None
    scores: list[float] = []
    window = 0

    def flush() -> None:
        nonlocal best, scores
        if best is None:
            return
        score, index, frame = best
        name = f"frame_{index:05d}.jpg"
        image = _resize(Image.fromarray(frame), max_size, Image.Resampling.LANCZOS)
        _write_pil(out / name, image, cfg.jpeg_quality)
        chosen.append(
            {
                "index": index,
                "file": name,
                "sharpness": score,
                "window_median_sharpness": float(np.median(scores)),
            }
        )
        best, scores = None, []

    decoded = 0
    try:
        for i, data in enumerate(gen):
            if len(data) != w * h * 3:
                raise VideoError(f"{video}: frame {i} has an unexpected size")
            decoded = i + 1
            win = min(i * windows // count, windows - 1)  # frames past the count: last window
            if win != window:
                flush()
                window = win
            frame = np.frombuffer(data, np.uint8).reshape(h, w, 3)
            s = sharpness(frame)
            scores.append(s)
            if best is None or s > best[0]:
                best = (s, i, frame.copy())
        flush()
    except RuntimeError as e:
        raise VideoError(f"{video}: decoding failed ({str(e).splitlines()[0][:200]})") from e
    finally:
        gen.close()
    if len(chosen) < cfg.min_frames:
        raise VideoError(
            f"{video}: decoded {decoded} frame(s), kept {len(chosen)}; need at least "
            f"{cfg.min_frames} to reconstruct"
        )
    log(
        f"video: {video.name}: {decoded} frames of {w}x{h}; kept the sharpest of each of "
        f"{windows} windows -> {out}"
    )
    return {
        "video": str(video.resolve()),
        "video_bytes": video.stat().st_size,
        "num_video_frames": decoded,
        "video_size": [w, h],
        "num_frames": cfg.num_frames,
        "max_size": max_size,
        "frames": chosen,
    }


def video_frames_folder(
    video: str | Path,
    out_dir: str | Path,
    config: VideoConfig | None = None,
    max_size: int = 1600,
    log: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """The frames of ``video`` (:func:`sample_video_frames`) in ``out_dir/images`` and their
    record in ``out_dir/video.json`` (``run_files.IMAGES_DIR`` / ``VIDEO_RECORD``); returns the
    frames folder and the record.

    The folder is written whole or not at all: frames go into a temporary folder that replaces
    ``out_dir/images`` (a previous one included) only once every frame is written, and the
    record is written (atomically) after it. Errors name the video (:class:`VideoError`).
    """
    from sceneforge.core import run_files
    from sceneforge.core.atomic import atomic_dir, atomic_write_json

    out = Path(out_dir)
    images = out / run_files.IMAGES_DIR
    with atomic_dir(images) as tmp:
        record = sample_video_frames(
            video, tmp, config, max_size, lambda m: log(m.replace(str(tmp), str(images)))
        )
    atomic_write_json(out / run_files.VIDEO_RECORD, record)
    return images, record


def image_size(path: str | Path) -> tuple[int, int] | None:
    """Width and height of an image file as read (EXIF orientation applied), from its header;
    None when it cannot be opened."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def copy_images(
    src_dir: str | Path,
    out_dir: str | Path,
    max_size: int = 1600,
    masks_dir: str | Path | None = None,
    masks_out: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Copies of the images of ``src_dir`` in ``out_dir``, same file names, scaled down so that
    their longest side is at most ``max_size`` (EXIF orientation applied then); images already
    small enough (and files that cannot be decoded, so that reconstruction reports them) are
    copied byte for byte. A copy that exists is kept (a resumed run). With ``masks_dir``, each
    image's mask is copied into ``masks_out``, scaled to its copy's size (nearest neighbour)
    when the image was scaled.

    Returns ``{"num_images", "num_resized", "sizes": {name: [w, h] of the copy}}`` (unreadable
    files have no size). The source is only read.
    """
    from PIL import Image, ImageOps

    from sceneforge.core.atomic import atomic_open
    from sceneforge.core.image_io import scan_folder
    from sceneforge.core.io_common import find_mask

    src, out = Path(src_dir), Path(out_dir)
    files, others = scan_folder(src)
    if others:
        log(f"skipping {len(others)} non-image file(s): {', '.join(p.name for p in others[:10])}")
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, list[int]] = {}
    resized = 0

    def copy_bytes(a: Path, b: Path) -> None:
        with open(a, "rb") as fa, atomic_open(b, "wb") as fb:
            shutil.copyfileobj(fa, fb)

    def scaled(im, resample):
        im = ImageOps.exif_transpose(im)
        if im.mode not in ("RGB", "L", "I;16", "I", "1"):
            im = im.convert("RGB")
        return _resize(im, max_size, resample)

    for p in files:
        dst = out / p.name
        size = image_size(p)
        if not dst.exists():
            if size is not None and max(size) > max_size:
                with Image.open(p) as im:
                    _write_pil(dst, scaled(im, Image.Resampling.LANCZOS))
                resized += 1
            else:  # small enough, or unreadable: reconstruction reports it
                copy_bytes(p, dst)
        copy_size = image_size(dst)
        if copy_size is not None:
            sizes[p.name] = list(copy_size)
        m = find_mask(Path(masks_dir), p.name) if masks_dir is not None else None
        if m is not None and masks_out is not None:
            mdst = Path(masks_out) / m.name
            if not mdst.exists():
                if size is not None and copy_size != size and image_size(m) == size:
                    with Image.open(m) as mim:
                        _write_pil(mdst, scaled(mim, Image.Resampling.NEAREST))
                else:  # same size, or a mask of the wrong size: reconstruction names it
                    copy_bytes(m, mdst)
    if resized:
        log(f"images: {resized} of {len(files)} scaled to at most {max_size} px -> {out}")
    return {"num_images": len(files), "num_resized": resized, "sizes": sizes}


__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoConfig",
    "VideoError",
    "copy_images",
    "image_size",
    "is_video",
    "sample_video_frames",
    "sharpness",
    "video_frames_folder",
]
