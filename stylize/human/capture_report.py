"""The fitted-body overlay and ``OUT/report.html`` of ``sceneforge human`` (:mod:`.capture`).

- :func:`overlay_fit`: each kept frame with its fitted body mesh (rendered from the capture's
  static camera, lambert-shaded in one tint) alpha-blended over it and the detector's confident
  2D keypoints as small red dots: whether the fit matches the person, at a glance.
- :func:`write_fit_overlays`: those images as ``OUT/renders/fit_overlay/NNNN.png`` (kept-frame
  order, as ``renders/input``) with ``overlay.json`` (the frame names and a key of the fit,
  detections, camera and frames). The render stage writes them, and :func:`~.capture.capture_human`
  calls it again at its end, where it is a no-op when the key matches: with ``render`` False
  (or a render stage of an older version) the report still gets overlays of the current fit.
  They are cheap (one rasterised mesh per frame).
- :func:`write_capture_report`: ``OUT/report.html`` (written atomically) from ``OUT/human.json``
  and ``OUT/human_stages.json``: the summary (frames used and dropped with their reasons, notes,
  focal length and whether it was guessed, fit reprojection error, training steps, held-out
  PSNRs), seconds per stage, a strip of the overlays and the renders (videos and first frames)
  that exist. Every link is relative to ``OUT`` and every text escaped.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from sceneforge.core.atomic import atomic_dir, atomic_write_text
from sceneforge.core.cameras import Cameras
from sceneforge.core.image_io import write_image_atomic
from sceneforge.core.meshes import Mesh
from sceneforge.core.raster import Shading, render_view
from sceneforge.core.report_html import html_table, read_run_json

from .body_model import BodyModel
from .detections import PoseDetections, read_detections
from .fit import FitResult

#: Names inside ``OUT`` (the same as :mod:`.capture`'s; not imported from there: it imports this).
REPORT = "report.html"
OVERLAY_DIR = "renders/fit_overlay"
OVERLAY_RECORD = "overlay.json"
_SUMMARY, _STAGES_FILE, _DETECTIONS, _FIT = (
    "human.json",
    "human_stages.json",
    "detections.npz",
    "fit.json",
)
_RENDERS = ("input", "orbit", "new_pose")
_STAGES = ("frames", "detections", "fit", "scene", "train", "render")
#: Overlay look: the body's tint (before lambert shading), its opacity, the dots' colour.
TINT = (0.25, 0.8, 1.0)
ALPHA = 0.5
DOT_COLOR = (255, 40, 40)
MIN_CONFIDENCE = 0.5
MAX_STRIP = 12


def esc(value: object) -> str:
    """``value`` as HTML text (``&``, ``<``, ``>`` and both quotes escaped)."""
    return html.escape(str(value), quote=True)


def _url(rel: str) -> str:
    """A relative path as an escaped attribute value (spaces, ``#``, ``?`` percent-encoded)."""
    return esc(quote(rel))


# ----------------------------------------------------------------------------- overlay


def _dots(img: np.ndarray, points: np.ndarray, radius: int) -> None:
    """Filled discs of ``DOT_COLOR`` at ``points`` ``[N, 2]`` (pixel centres at +0.5)."""
    h, w = img.shape[:2]
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    disc = dx**2 + dy**2 <= radius**2 + radius  # a plus sign at radius 1
    dy, dx = dy[disc], dx[disc]
    for x, y in points:
        px, py = int(math.floor(x)) + dx, int(math.floor(y)) + dy
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        img[py[ok], px[ok]] = DOT_COLOR


def overlay_fit(
    frames: np.ndarray | torch.Tensor,
    body: BodyModel,
    fit: FitResult,
    camera: Cameras,
    detections: PoseDetections | None = None,
    alpha: float = ALPHA,
) -> np.ndarray:
    """``[F, H, W, 3]`` uint8: frame ``f`` with the fitted body of fit frame ``f`` seen by
    ``camera`` (view 0, the capture's static camera) blended in with opacity ``alpha`` (the
    pixels the mesh covers change, no others) and, when ``detections`` (of the same frames) are
    given, their keypoints of confidence at least 0.5 drawn as dots."""
    imgs = np.array(frames.numpy() if isinstance(frames, torch.Tensor) else frames, np.uint8)
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or len(imgs) != len(fit):
        raise ValueError(f"frames {imgs.shape}: need [F, H, W, 3] with F = {len(fit)} fit frames")
    h, w = imgs.shape[1:3]
    if (int(camera.width[0]), int(camera.height[0])) != (w, h):
        raise ValueError(f"camera {int(camera.width[0])}x{int(camera.height[0])}, frames {w}x{h}")
    if detections is not None and len(detections) != len(imgs):
        raise ValueError(f"{len(detections)} detections for {len(imgs)} frames")
    faces = body.faces
    tint = torch.tensor(TINT, dtype=torch.float32)
    radius = max(1, round(min(h, w) / 200))
    for f in range(len(imgs)):
        verts = fit.bodies(body, slice(f, f + 1)).vertices[0]
        mesh = Mesh(verts.double(), faces, vertex_colors=tint.expand(verts.shape[0], 3))
        out = render_view(mesh, camera, 0, shading=Shading(mode="lambert"))
        cover = (out.face >= 0).numpy()
        col = out.color.numpy()[cover] * 255.0
        imgs[f][cover] = np.clip((1 - alpha) * imgs[f][cover] + alpha * col + 0.5, 0, 255)
        if detections is not None:
            kp = detections.keypoints[f].double().numpy()
            conf = torch.nan_to_num(detections.confidence[f].double(), nan=0.0).numpy()
            ok = (conf >= MIN_CONFIDENCE) & np.isfinite(kp).all(-1)
            _dots(imgs[f], kp[ok], radius)
    return imgs


def _file_key(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def write_fit_overlays(
    out_dir: str | Path,
    body: BodyModel,
    fit: FitResult,
    camera: Cameras,
    frames: np.ndarray | torch.Tensor,
    names: list[str],
) -> dict:
    """The overlays of the kept frames ``frames`` (``names``, fit order) of the capture in
    ``out_dir`` -> ``OUT/renders/fit_overlay`` (a temporary folder swapped in whole), the
    keypoints from ``OUT/detections.npz``; nothing is redone when ``overlay.json``'s key (the
    fit and detection files, the camera, the frames) matches. Returns ``{"fit_overlay": folder,
    "frames": names}``."""
    out = Path(out_dir)
    folder = out / OVERLAY_DIR
    arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    inputs = [_file_key(out / _FIT), _file_key(out / _DETECTIONS), list(names)]
    inputs += [camera.params[0].tolist(), int(camera.width[0]), int(camera.height[0])]
    inputs.append(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
    key = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    rec = {"fit_overlay": str(folder), "frames": list(names)}
    try:
        if json.loads((folder / OVERLAY_RECORD).read_text()).get("key") == key:
            return rec
    except (OSError, ValueError, AttributeError):
        pass
    det = None
    try:
        all_names = read_run_json(out / _STAGES_FILE)["frames"]["files"]
        det = read_detections(out / _DETECTIONS).subset([all_names.index(n) for n in names])
    except (OSError, KeyError, TypeError, ValueError):
        det = None  # no keypoints to draw: the body alone
    imgs = overlay_fit(arr, body, fit, camera, det)
    with atomic_dir(folder) as tmp:
        for k, img in enumerate(imgs):
            write_image_atomic(tmp / f"{k:04d}.png", img)
        atomic_write_text(
            tmp / OVERLAY_RECORD,
            json.dumps({"key": key, "frames": list(names), "keypoints": det is not None}),
        )
    return rec


# ----------------------------------------------------------------------------- report


def _fmt(v: object, unit: str = "", digits: int = 2) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}{unit}"
    return "n/a" if v is None else f"{v}{unit}"


def _strip(out: Path, parts: list[str]) -> None:
    folder = out / OVERLAY_DIR
    pngs = sorted(folder.glob("[0-9][0-9][0-9][0-9].png")) if folder.is_dir() else []
    if not pngs:
        parts.append("<p>No fit overlays (renders/fit_overlay) in this capture.</p>")
        return
    try:
        names = json.loads((folder / OVERLAY_RECORD).read_text())["frames"]
    except (OSError, ValueError, KeyError, TypeError):
        names = []
    try:  # per-frame fit error in the captions (fit.json: the kept frames in order)
        errors = [float(e) for e in json.loads((out / _FIT).read_text())["reprojection_error_px"]]
    except (OSError, ValueError, KeyError, TypeError):
        errors = []
    pick = np.linspace(0, len(pngs) - 1, min(MAX_STRIP, len(pngs))).round().astype(int)
    parts.append(
        f"<p>The fitted body (blue, {ALPHA:.0%} opaque) over the frame and the detected "
        f"keypoints (red dots); {len(pick)} of {len(pngs)} kept frames, all in "
        f'<a href="{_url(folder.relative_to(out).as_posix())}/">'
        f"{esc(folder.relative_to(out).as_posix())}</a>.</p><div>"
    )
    for i in sorted(set(pick.tolist())):
        rel = pngs[i].relative_to(out).as_posix()
        k = int(pngs[i].stem)
        cap = names[k] if k < len(names) else pngs[i].name
        if k < len(errors) and len(errors) == len(names):
            cap = f"{cap}: fit error {errors[k]:.1f} px"
        parts.append(
            f'<figure style="display:inline-block;margin:4px"><a href="{_url(rel)}">'
            f'<img src="{_url(rel)}" width="256"></a><figcaption>{esc(cap)}</figcaption></figure>'
        )
    parts.append("</div>")


def _renders(out: Path, parts: list[str]) -> None:
    titles = {
        "input": "The kept frames rendered from the trained field",
        "orbit": "An orbit around the person",
        "new_pose": "A new motion on the fitted subject",
    }
    shown = False
    for name in _RENDERS:
        folder = out / "renders" / name
        if not folder.is_dir():
            continue
        if not shown:
            parts.append('<h2 id="renders">Renders</h2>')
            shown = True
        parts.append(f"<h3>{esc(titles[name])} ({esc(name)})</h3>")
        video, gif = folder / "video.mp4", folder / "video.gif"
        first = sorted(folder.glob("[0-9][0-9][0-9][0-9].png"))[:1]
        if video.is_file():
            rel = _url(video.relative_to(out).as_posix())
            parts.append(
                f'<video controls loop muted autoplay playsinline width="512" src="{rel}">'
                f'<a href="{rel}">{rel}</a></video>'
            )
        elif gif.is_file():
            parts.append(f'<img src="{_url(gif.relative_to(out).as_posix())}" width="512">')
        if first:
            rel = _url(first[0].relative_to(out).as_posix())
            parts.append(
                f'<figure><a href="{rel}"><img src="{rel}" width="256"></a>'
                f"<figcaption>First frame; all in "
                f'<a href="{_url(folder.relative_to(out).as_posix())}/">'
                f"{esc(folder.relative_to(out).as_posix())}</a></figcaption></figure>"
            )
    if not shown:
        parts.append("<p>No renders (the render stage did not run).</p>")


def write_capture_report(out_dir: str | Path) -> Path:
    """``OUT/report.html`` of the human capture in ``out_dir`` (see the module docstring) from
    ``OUT/human.json`` (an error names it when missing) and what lies in ``OUT``."""
    out = Path(out_dir)
    if not (out / _SUMMARY).is_file():
        raise FileNotFoundError(f"{out / _SUMMARY}: no such file; {out} is no finished capture")
    s = read_run_json(out / _SUMMARY)
    stages = read_run_json(out / _STAGES_FILE) if (out / _STAGES_FILE).is_file() else {}
    used, dropped = s.get("frames_used") or [], s.get("frames_dropped") or {}
    focal = _fmt(s.get("focal_px"), " px", 1)
    focal += " (guessed from the default field of view)" if s.get("focal_guessed") else " (given)"
    rows = [
        ("input", s.get("input")),
        ("frames extracted", s.get("frames")),
        ("frames used", len(used)),
        ("frames dropped", len(dropped)),
        ("detector", s.get("detector")),
        ("camera", s.get("camera")),
        ("focal length", focal),
        ("image size", "x".join(str(v) for v in s.get("image_size") or [])),
        ("body model", s.get("body_model")),
        (
            "fit reprojection error",
            f"{_fmt(s.get('fit_reprojection_error_px'), ' px')} mean, "
            f"{_fmt(s.get('fit_reprojection_error_px_max'), ' px')} worst frame",
        ),
        ("training steps", s.get("train_steps")),
        ("training PSNR (last batch)", _fmt(s.get("train_psnr"), " dB")),
        ("held-out frames", ", ".join(s.get("heldout_frames") or []) or "none"),
        ("held-out PSNR, person", _fmt(s.get("heldout_person_psnr"), " dB")),
        ("held-out PSNR, whole frame", _fmt(s.get("heldout_psnr"), " dB")),
    ]
    parts = ["<h1>sceneforge human capture</h1>", '<h2 id="summary">Summary</h2>', html_table(rows)]
    parts.append('<h2 id="frames">Frames</h2>')
    parts.append(f"<p>Used ({len(used)}): {esc(', '.join(used)) or 'none'}.</p>")
    if dropped:
        parts.append(f"<p>Dropped ({len(dropped)}):</p>")
        parts.append(html_table(list(dropped.items())))
    else:
        parts.append("<p>Dropped: none.</p>")
    notes = s.get("notes") or []
    if notes:
        parts.append('<h2 id="notes">Notes</h2><ul>')
        parts.extend(f"<li>{esc(n)}</li>" for n in notes)
        parts.append("</ul>")
    if stages:
        parts.append('<h2 id="stages">Stages</h2>')
        parts.append(
            html_table(
                [
                    (k, f"{stages[k].get('seconds', math.nan):.1f} s")
                    for k in _STAGES
                    if isinstance(stages.get(k), dict)
                ]
            )
        )
    parts.append('<h2 id="fit">Body fit over the frames</h2>')
    _strip(out, parts)
    _renders(out, parts)
    return atomic_write_text(
        out / REPORT,
        "<!doctype html><meta charset=utf-8><title>sceneforge human capture</title>\n"
        + "\n".join(parts)
        + "\n",
    )


__all__ = ["esc", "overlay_fit", "write_capture_report", "write_fit_overlays"]
