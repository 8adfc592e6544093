"""Browser viewer (viser): training cameras, sparse points, field renders and scene edits.

``view(path, ViewerConfig())`` serves a scene folder or a run folder on localhost:

- training cameras as frustums carrying image thumbnails, and the sparse points in colour;
- a radiance field rendered from the browser's camera when the run holds a trained field:
  progressive, a small preview (``preview_px`` on the long side) right after every camera
  move, then sharper passes while the camera rests (:class:`ProgressiveRenderer`);
- thumbnails switchable between original images, masks and completed images (when a
  completion run wrote them);
- a 3D box (translation gizmo + size sliders) whose ``--mask-box xmin ymin zmin xmax ymax zmax``
  string, the one ``sceneforge complete`` takes, is shown in the panel and written to
  ``mask_box.txt`` in the run folder.

The viewer binds to 127.0.0.1 unless told otherwise: a field checkpoint and the user's photos
should not be on the network by default. viser is an optional dependency imported lazily.
The viser camera convention is OpenCV (x right, y down, z forward), as ours, so poses go
across unchanged.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# torch and the engine are imported where used, so that ``ViewerConfig`` (the CLI imports it
# for ``sceneforge view --help``) costs no torch import.
if TYPE_CHECKING:
    from torch import Tensor

    from sceneforge.core.cameras import Cameras
    from sceneforge.core.scene import SceneData

#: viser versions this module is written and tested against.
VISER_REQUIREMENT = "viser>=1.1,<1.2"

#: Default name of the file the box control writes, inside the run (or scene) folder.
MASK_BOX_FILE = "mask_box.txt"


def import_viser():
    """``import viser`` with an error that says how to install it."""
    try:
        import viser
    except ImportError as e:
        raise ImportError(
            f"the viewer needs viser, which is not installed ({e}); install it with "
            f"`pip install '{VISER_REQUIREMENT}'`"
        ) from e
    return viser


@dataclass
class ViewerConfig:
    """Settings of ``sceneforge view``."""

    host: str = "127.0.0.1"
    """Address to bind; the default keeps the viewer on this machine (0.0.0.0 = all interfaces)."""
    port: int = 8080
    """Port to bind (0 = any free port); viser tries the next ports when it is taken."""
    max_points: int = 200_000
    """Show at most this many sparse points (a fixed random subset beyond that)."""
    point_size: float = 0.0
    """Point size in world units (0 = 0.4% of the scene extent)."""
    frustum_scale: float = 0.0
    """Camera frustum size in world units (0 = 4% of the scene extent)."""
    thumbnail_px: int = 96
    """Long side of the image thumbnails shown on the frustums."""
    field: bool = True
    """Render the run's trained field from the browser camera when there is one."""
    preview_px: int = 64
    """Long side of the preview rendered right after each camera move."""
    preview_samples: int = 24
    """Candidate samples per ray in the preview pass (0 = the field's own count)."""
    max_render_px: int = 512
    """Long side of the sharpest pass rendered while the camera rests."""
    rest_s: float = 0.3
    """Seconds the camera must rest before the sharper passes start."""
    chunk_rays: int = 4096
    """Rays per field evaluation (a camera move cancels the pass between chunks)."""
    device: str = "cpu"
    """Torch device for field rendering."""
    mask_box_file: Path | None = None
    """Where the box control writes its ``--mask-box`` (default: ``mask_box.txt`` in the folder)."""
    verbose: bool = False
    """Print viser's connection messages."""


# ----------------------------------------------------------------------------- mask box


@dataclass(frozen=True)
class MaskBox:
    """Axis-aligned world box, as ``sceneforge complete --mask-box`` takes it."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.lo) != 3 or len(self.hi) != 3:
            raise ValueError("a mask box has 3 minima and 3 maxima")
        vals = (*self.lo, *self.hi)
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"mask box values must be finite, got {vals}")
        if any(a >= b for a, b in zip(self.lo, self.hi)):
            raise ValueError(f"mask box needs min < max on every axis, got {self.lo} {self.hi}")

    @classmethod
    def from_center_size(cls, center, size) -> MaskBox:
        c = [float(v) for v in center]
        s = [abs(float(v)) for v in size]
        return cls(
            tuple(ci - si / 2 for ci, si in zip(c, s)), tuple(ci + si / 2 for ci, si in zip(c, s))
        )

    @classmethod
    def parse(cls, text: str, source: str = "mask box") -> MaskBox:
        """Read ``xmin ymin zmin xmax ymax zmax`` (a leading ``--mask-box`` is allowed)."""
        parts = text.replace(",", " ").split()
        if parts and parts[0] == "--mask-box":
            parts = parts[1:]
        if len(parts) != 6:
            raise ValueError(f"{source}: expected 6 numbers xmin ymin zmin xmax ymax zmax")
        try:
            v = [float(p) for p in parts]
        except ValueError as e:
            raise ValueError(f"{source}: not a number ({e})") from e
        try:
            return cls(tuple(v[:3]), tuple(v[3:]))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    @property
    def center(self) -> tuple[float, float, float]:
        return tuple((a + b) / 2 for a, b in zip(self.lo, self.hi))

    @property
    def size(self) -> tuple[float, float, float]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))

    def to_arg(self) -> str:
        """``xmin ymin zmin xmax ymax zmax`` with 6 significant digits."""
        return " ".join(f"{v:.6g}" for v in (*self.lo, *self.hi))

    def write(self, path: str | Path) -> Path:
        """Write ``to_arg()`` plus a newline atomically (temp file + ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_arg() + "\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path


# ----------------------------------------------------------------------------- browser camera


def render_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """``(w, h)`` with the aspect of ``width x height`` and ``max(w, h) == long_side``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    s = long_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


@dataclass(frozen=True)
class ViewCamera:
    """A browser camera: OpenCV ``world_from_cam`` rotation (``wxyz``) and centre, vertical
    field of view in radians and the canvas size in pixels."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov_y: float
    width: int
    height: int

    @classmethod
    def from_viser(cls, camera) -> ViewCamera:
        """Snapshot of a ``viser.CameraHandle``."""
        return cls(
            tuple(float(v) for v in camera.wxyz),
            tuple(float(v) for v in camera.position),
            float(camera.fov),
            int(camera.image_width),
            int(camera.image_height),
        )

    def cameras(self, long_side: int | None = None) -> Cameras:
        """A PINHOLE :class:`Cameras` of this view, resized to ``long_side`` (float64)."""
        w, h = (
            (self.width, self.height)
            if long_side is None
            else render_size(self.width, self.height, long_side)
        )
        f = 0.5 * h / math.tan(0.5 * self.fov_y)
        import torch

        from sceneforge.core.cameras import Cameras, invert_rigid, make_rigid
        from sceneforge.core.rotations import quat_wxyz_to_matrix

        R = quat_wxyz_to_matrix(torch.tensor(self.wxyz, dtype=torch.float64))
        t = torch.tensor(self.position, dtype=torch.float64)
        cam_from_world = invert_rigid(make_rigid(R, t))
        params = torch.tensor([[f, f, w / 2, h / 2]], dtype=torch.float64)
        return Cameras(
            "PINHOLE", params, torch.tensor([w]), torch.tensor([h]), cam_from_world[None]
        )


def frustum_pose(cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 4)`` wxyz and ``(N, 3)`` positions of the cameras' ``world_from_cam``."""
    from sceneforge.core.rotations import matrix_to_quat_wxyz

    T = cameras.world_from_cam.double()
    return matrix_to_quat_wxyz(T[:, :, :3]).numpy(), T[:, :, 3].numpy()


def vertical_fov(cameras: Cameras) -> np.ndarray:
    """``(N,)`` vertical field of view (radians) of the pinhole part of each camera."""
    import torch

    fy = cameras.K[:, 1, 1].double()
    return (2.0 * torch.atan(0.5 * cameras.height.double() / fy)).numpy()


# ----------------------------------------------------------------------------- progressive render

#: ``render_rays(origins, unit directions, z_per_t[, num_samples=n]) -> rgb`` (``R 3``, rgb in
#: [0, 1]); ``num_samples`` (fewer candidate samples per ray) is passed for the preview only.
RaysRenderer = Callable[["Tensor", "Tensor", "Tensor"], "Tensor"]


def resolution_levels(preview_px: int, max_px: int) -> list[int]:
    """Long sides of the passes: the preview, then doubling up to ``max_px`` (included)."""
    if preview_px <= 0 or max_px <= 0:
        raise ValueError("render sizes must be positive")
    levels = [preview_px]
    while levels[-1] < max_px:
        levels.append(min(levels[-1] * 2, max_px))
    return levels


class ProgressiveRenderer:
    """Renders the newest camera of one browser: a preview at once, sharper passes once the
    camera has rested ``rest_s``; a newer camera cancels the running pass between chunks.

    ``publish(image_uint8_HW3, long_side, seconds)`` receives every finished pass, newest
    camera only. Runs in its own daemon thread (:meth:`start` / :meth:`stop`).
    """

    def __init__(
        self,
        render_rays: RaysRenderer,
        publish: Callable[[np.ndarray, int, float], None],
        preview_px: int = 64,
        max_px: int = 512,
        rest_s: float = 0.3,
        chunk_rays: int = 4096,
        on_error: Callable[[BaseException], None] | None = None,
        preview_samples: int = 0,
    ) -> None:
        self.render_rays = render_rays
        self.publish = publish
        self.levels = resolution_levels(preview_px, max(max_px, preview_px))
        self.rest_s = rest_s
        self.chunk_rays = chunk_rays
        self.on_error = on_error
        self.preview_samples = preview_samples
        self._cond = threading.Condition()
        self._camera: ViewCamera | None = None
        self._version = 0
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="sceneforge-viewer-render", daemon=True
        )
        self.passes: list[tuple[int, float]] = []
        """(long side, seconds) of every published pass, for status and tests."""

    def start(self) -> ProgressiveRenderer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def update_camera(self, camera: ViewCamera) -> None:
        """Queue a new camera (thread-safe); cancels the pass in progress."""
        with self._cond:
            self._camera = camera
            self._version += 1
            self._cond.notify_all()

    def _current(self, version: int) -> bool:
        return not self._stopped and self._version == version

    def render(
        self,
        camera: ViewCamera,
        long_side: int,
        version: int | None = None,
        num_samples: int | None = None,
    ):
        """Render ``camera`` at ``long_side``; None when cancelled by a newer camera."""
        import torch

        cams = camera.cameras(long_side)
        w, h = int(cams.width[0]), int(cams.height[0])
        o, d, z = cams.rays(0)
        o, d, z = o.float(), d.float(), z.float()
        out = []
        with torch.no_grad():
            for s in range(0, o.shape[0], self.chunk_rays):
                if version is not None and not self._current(version):
                    return None
                sl = slice(s, s + self.chunk_rays)
                kw = {} if not num_samples else {"num_samples": num_samples}
                out.append(self.render_rays(o[sl], d[sl], z[sl], **kw).float().cpu())
        rgb = torch.cat(out).reshape(h, w, 3).clamp(0, 1)
        return (rgb * 255 + 0.5).to(torch.uint8).numpy()

    def _run(self) -> None:
        seen = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda s=seen: self._stopped or self._version != s)
                if self._stopped:
                    return
                camera, version = self._camera, self._version
            seen = version
            try:
                for k, px in enumerate(self.levels):
                    if k == 1:  # sharper passes only once the camera rests
                        with self._cond:
                            self._cond.wait_for(
                                lambda v=version: not self._current(v), timeout=self.rest_s
                            )
                    if not self._current(version):
                        break
                    t0 = time.perf_counter()
                    ns = self.preview_samples if k == 0 else None
                    img = self.render(camera, px, version, ns)
                    if img is None:
                        break
                    dt = time.perf_counter() - t0
                    self.passes.append((px, dt))
                    self.publish(img, px, dt)
            except Exception as e:  # reported to the GUI; the viewer keeps running
                if self.on_error is None:
                    raise
                self.on_error(e)
                return


# ----------------------------------------------------------------------------- run folders


@dataclass
class FieldSource:
    """A trained field that can render rays, or the reason there is none."""

    render_rays: RaysRenderer | None
    status: str
    """One line for the panel: what was loaded, or why nothing was."""
    trainer: object | None = None
    """The restored :class:`~sceneforge.fields.trainer.Trainer` when loaded from a run."""

    @property
    def available(self) -> bool:
        return self.render_rays is not None


@dataclass
class ImageSet:
    """A named set of per-camera images for the frustum thumbnails (e.g. a completion version).

    ``paths[i]`` is camera i's image file, or None where the set has none.
    """

    name: str
    paths: list[Path | None]


@dataclass
class RunContents:
    """What the viewer found in a folder."""

    root: Path
    scene: SceneData
    field: FieldSource
    image_sets: list[ImageSet] = dc_field(default_factory=list)


def find_scene(path: Path) -> SceneData:
    """The posed scene of ``path``: the folder itself when it is a scene (any format
    :func:`load_scene` reads), else the scene a fields run names in ``source.json``."""
    import json

    from sceneforge.core.io import detect_format, load_scene
    from sceneforge.core.scene import SceneDataError

    src = path / "source.json"
    if path.is_dir() and src.is_file() and not (path / "transforms.json").is_file():
        try:
            scene_dir = Path(json.loads(src.read_text())["scene_dir"])
        except (ValueError, KeyError, TypeError) as e:
            raise SceneDataError(f"{src}: not a run's source file ({e})") from e
        if not scene_dir.exists():
            raise SceneDataError(f"{src}: names scene folder {scene_dir}, which does not exist")
        return load_scene(scene_dir)
    try:
        detect_format(path)
    except SceneDataError as e:
        raise SceneDataError(
            f"{e}; nor is it a run folder (no source.json naming the scene it was trained on)"
        ) from e
    return load_scene(path)


def find_field(path: Path, scene: SceneData, device: str = "cpu") -> FieldSource:
    """The trained field of a run folder (``checkpoint.pt``), or why there is none.

    Rendering goes through :meth:`sceneforge.fields.trainer.Trainer.render_rays` with the
    checkpoint's own settings (background, sampler); calls are serialised by a lock since
    every browser tab renders from its own thread.
    """
    ckpt = path / "checkpoint.pt"
    if not path.is_dir() or not ckpt.is_file():
        return FieldSource(None, f"no trained field (no checkpoint.pt in {path})")
    import torch

    from sceneforge.fields.rendering import render_rays as field_render_rays
    from sceneforge.fields.trainer import Trainer

    tr = Trainer.from_checkpoint(
        ckpt, scene, None, progress=False, tensorboard=False, device=device
    )
    tr.field.eval()
    lock = threading.Lock()

    def render_rays(o: Tensor, d: Tensor, z: Tensor, num_samples: int | None = None) -> Tensor:
        # as Trainer.render_rays (no appearance embedding: image index -1), plus num_samples
        dev = tr.device
        with lock, torch.no_grad():
            idx = torch.full((o.shape[0],), -1, dtype=torch.long, device=dev)
            r = field_render_rays(
                tr.field,
                tr.grid,
                tr.cfg.sampler,
                o.to(dev),
                d.to(dev),
                idx,
                tr.background,
                None,
                z.to(dev),
                num_samples=num_samples,
            )
            return r["rgb"].cpu()

    status = f"field: {ckpt.name}, step {tr.step}"
    ev = path / "eval.json"
    if ev.is_file():
        import json

        try:
            psnr = float(json.loads(ev.read_text())["psnr"])
            status += f", held-out PSNR {psnr:.2f} dB"
        except (ValueError, KeyError, TypeError):
            pass  # eval.json is informative only
    return FieldSource(render_rays, status, tr)


def find_image_sets(path: Path, scene: SceneData) -> list[ImageSet]:
    """Image sets a completion run (``sceneforge complete``) wrote into ``path``.

    ``masks/<stem>.png`` (fill masks, white = filled) as ``fill mask``, every dataset version
    ``datasets/vNNN/images`` (the images the completed field trained on) as
    ``completed vNNN``, and ``renders/<stem>.png`` as ``completed render``.
    """
    import json

    from sceneforge.core.scene import SceneDataError

    if not (path / "complete.json").is_file():
        return []
    stems = [Path(n).stem for n in scene.image_names]

    def by_stem(folder: Path, name: str) -> ImageSet | None:
        paths = [folder / f"{s}.png" for s in stems]
        paths = [p if p.is_file() else None for p in paths]
        return ImageSet(name, paths) if any(p is not None for p in paths) else None

    sets = [by_stem(path / "masks", "fill mask")]
    versions = sorted((path / "datasets").glob("v[0-9]*")) if (path / "datasets").is_dir() else []
    for v in versions:
        man = v / "manifest.json"
        try:
            names = set(json.loads(man.read_text())["images"]) if man.is_file() else None
        except (ValueError, KeyError, TypeError) as e:
            raise SceneDataError(f"{man}: unreadable dataset manifest ({e})") from e
        paths = []
        for n in scene.image_names:
            f = Path(n).with_suffix(".png").name
            p = v / "images" / f
            paths.append(p if p.is_file() and (names is None or f in names) else None)
        if any(p is not None for p in paths):
            sets.append(ImageSet(f"completed {v.name}", paths))
    sets.append(by_stem(path / "renders", "completed render"))
    return [s for s in sets if s is not None]


def find_run(path: str | Path, cfg: ViewerConfig | None = None) -> RunContents:
    """Scene, field and image sets of a run folder or a plain scene folder."""
    from sceneforge.core.scene import SceneDataError

    cfg = cfg or ViewerConfig()
    path = Path(path)
    if not path.exists():
        raise SceneDataError(f"{path}: folder does not exist")
    scene = find_scene(path)
    fld = (
        find_field(path, scene, cfg.device)
        if cfg.field
        else FieldSource(None, "field rendering off (--no-field)")
    )
    sets = find_image_sets(path, scene) if path.is_dir() else []
    return RunContents(path, scene, fld, sets)


# ----------------------------------------------------------------------------- images


def _resize_long_side(img: np.ndarray, long_side: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    nw, nh = render_size(w, h, min(long_side, max(w, h)))
    if (nw, nh) == (w, h):
        return img
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)


def _to_uint8(img: Tensor) -> np.ndarray:
    import torch

    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def mask_preview(mask: Tensor) -> np.ndarray:
    """A boolean mask (True = usable) as a uint8 RGB image: usable white, ignored red."""
    m = mask.numpy().astype(bool)
    out = np.empty((*m.shape, 3), np.uint8)
    out[m] = (255, 255, 255)
    out[~m] = (220, 30, 30)
    return out


def fill_preview(image: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``image`` with the pixels a completion fills (``fill`` True) tinted magenta."""
    import cv2

    if fill.shape != image.shape[:2]:
        fill = cv2.resize(
            fill.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    out = image.copy()
    out[fill] = (0.4 * out[fill] + 0.6 * np.array([255, 0, 255])).astype(np.uint8)
    return out


def scene_extent(scene: SceneData) -> tuple[np.ndarray, float]:
    """A robust centre and size of the scene (camera centres and sparse points)."""
    import torch

    pts = [scene.cameras.centers.double()]
    if scene.points is not None and scene.points.shape[0] > 0:
        pts.append(scene.points.double())
    p = torch.cat(pts)
    lo, hi = torch.quantile(p, 0.02, dim=0), torch.quantile(p, 0.98, dim=0)
    size = float((hi - lo).norm())
    if scene.points is not None and scene.points.shape[0] > 0:
        center = scene.points.double().median(dim=0).values
    else:
        center = (lo + hi) / 2
    return center.numpy(), max(size, 1e-3)


def scene_up(cameras: Cameras) -> np.ndarray:
    """Mean camera up vector (OpenCV -y), the viewer's up direction."""
    up = -cameras.world_from_cam[:, :, 1].double().mean(0)
    n = float(up.norm())
    return (up / n).numpy() if n > 1e-6 else np.array([0.0, 0.0, 1.0])


# ----------------------------------------------------------------------------- viewer


class Viewer:
    """A running viser server showing one run or scene folder (see the module docstring).

    ``Viewer(path, cfg)`` starts serving at once; :attr:`url` is its address and
    :meth:`stop` shuts it down. ``renderers`` maps connected client ids to their
    :class:`ProgressiveRenderer` when a field is shown.
    """

    def __init__(self, path: str | Path | RunContents, cfg: ViewerConfig | None = None) -> None:
        self.cfg = cfg = cfg or ViewerConfig()
        viser = import_viser()
        self.contents = path if isinstance(path, RunContents) else find_run(path, cfg)
        self.scene = self.contents.scene
        self.root = self.contents.root
        self.mask_box_path = cfg.mask_box_file or (self.root / MASK_BOX_FILE)
        self.center, self.extent = scene_extent(self.scene)
        self._lock = threading.RLock()
        self._moving_controls = False
        self._thumb_cache: dict[tuple[str, int, int], np.ndarray | None] = {}
        self.renderers: dict[int, ProgressiveRenderer] = {}
        self._camera_hooked: set[int] = set()
        self.server = viser.ViserServer(host=cfg.host, port=cfg.port, verbose=cfg.verbose)
        try:
            self._build()
        except BaseException:
            self.server.stop()
            raise

    # -- properties ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self.cfg.host if self.cfg.host not in ("0.0.0.0", "::") else "localhost"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        for r in list(self.renderers.values()):
            r.stop()
        self.renderers.clear()
        self.server.stop()

    # -- scene -----------------------------------------------------------------------------

    def image_set_names(self) -> list[str]:
        names = ["original"]
        if self.scene.has_masks:
            names.append("mask")
        names += [s.name for s in self.contents.image_sets]
        return names

    def image(self, set_name: str, i: int, long_side: int) -> np.ndarray | None:
        """Camera ``i``'s image of ``set_name`` as uint8 RGB, long side at most ``long_side``."""
        key = (set_name, i, long_side)
        if key in self._thumb_cache:
            return self._thumb_cache[key]
        if set_name == "original":
            img = self.scene.to_numpy_image(i)
        elif set_name == "mask":
            m = self.scene.load_mask(i)
            img = None if m is None else mask_preview(m)
        else:
            from sceneforge.core.image_io import read_image, read_mask

            sets = [s for s in self.contents.image_sets if s.name == set_name]
            if not sets:
                raise KeyError(f"no image set {set_name!r}; have {self.image_set_names()}")
            p = sets[0].paths[i]
            if p is None:
                img = None
            elif set_name == "fill mask":
                img = fill_preview(self.scene.to_numpy_image(i), read_mask(p).numpy())
            else:
                img = _to_uint8(read_image(p))
        if img is not None:
            img = _resize_long_side(img, long_side)
        self._thumb_cache[key] = img
        return img

    def _build(self) -> None:
        scene, server = self.scene, self.server
        server.gui.configure_theme(show_share_button=False)
        up = scene_up(scene.cameras)
        server.scene.set_up_direction(tuple(float(v) for v in up))
        wxyz, pos = frustum_pose(scene.cameras)
        # start behind the first training camera, looking at the scene centre
        start = self.center + 1.3 * (pos[0] - self.center)
        if np.linalg.norm(start - self.center) < 1e-6:
            start = self.center - 0.5 * self.extent * np.asarray(wxyz[0][1:])
        server.initial_camera.position = tuple(float(v) for v in start)
        server.initial_camera.look_at = tuple(float(v) for v in self.center)
        server.initial_camera.up = tuple(float(v) for v in up)

        self._add_points()
        self._add_cameras(wxyz, pos)
        self._add_gui()
        self._add_mask_box()
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)

    def _add_points(self) -> None:
        import torch

        scene, cfg = self.scene, self.cfg
        self.points_handle = None
        if scene.points is None or scene.points.shape[0] == 0:
            return
        pts = scene.points.float()
        cols = (
            scene.point_colors
            if scene.point_colors is not None
            else torch.full_like(pts, 200, dtype=torch.uint8)
        )
        if pts.shape[0] > cfg.max_points:
            g = torch.Generator().manual_seed(0)
            keep = torch.randperm(pts.shape[0], generator=g)[: cfg.max_points]
            pts, cols = pts[keep], cols[keep]
        self.point_size = cfg.point_size or 0.004 * self.extent
        self.points_handle = self.server.scene.add_point_cloud(
            "/points",
            pts.numpy().astype(np.float32),
            cols.to(torch.uint8).numpy(),
            point_size=self.point_size,
            point_shading="flat",
            precision="float32",
        )

    def _add_cameras(self, wxyz: np.ndarray, pos: np.ndarray) -> None:
        scene, cfg = self.scene, self.cfg
        fov = vertical_fov(scene.cameras)
        aspect = (scene.cameras.width.double() / scene.cameras.height.double()).numpy()
        scale = cfg.frustum_scale or 0.04 * self.extent
        self.frustums = []
        for i in range(len(scene)):
            h = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}",
                fov=float(fov[i]),
                aspect=float(aspect[i]),
                scale=scale,
                thickness=0.03 * scale,
                color=(40, 90, 200),
                image=self.image("original", i, cfg.thumbnail_px),
                format="jpeg",
                jpeg_quality=85,
                wxyz=wxyz[i],
                position=pos[i],
            )
            h.on_click(lambda event, i=i: self._select_camera(event.client, i))
            self.frustums.append(h)

    def _add_gui(self) -> None:
        gui, scene = self.server.gui, self.scene
        n_pts = 0 if scene.points is None else int(scene.points.shape[0])
        gui.add_markdown(
            f"**{self.root.name}**: {len(scene)} cameras, {n_pts} points  \n"
            f"{self.contents.field.status}"
        )
        with gui.add_folder("Display"):
            self.show_cameras = gui.add_checkbox("Cameras", True)
            self.show_points = gui.add_checkbox("Points", self.points_handle is not None)
            self.image_set = gui.add_dropdown(
                "Frustum images", self.image_set_names(), initial_value="original"
            )
            self.selected_text = gui.add_text("Selected", "(click a camera)", disabled=True)
            self.selected_image = gui.add_image(
                np.zeros((8, 8, 3), np.uint8), label="image", visible=False
            )
            self.goto_button = gui.add_button("View from selected camera", visible=False)

        @self.show_cameras.on_update
        def _(_) -> None:
            for f in self.frustums:
                f.visible = self.show_cameras.value

        @self.show_points.on_update
        def _(_) -> None:
            if self.points_handle is not None:
                self.points_handle.visible = self.show_points.value

        @self.image_set.on_update
        def _(_) -> None:
            self._set_thumbnails(self.image_set.value)

        @self.goto_button.on_click
        def _(event) -> None:
            if event.client is not None and self._selected is not None:
                self.goto_camera(event.client, self._selected)

        self._selected: int | None = None
        fld = self.contents.field
        with gui.add_folder("Field"):
            self.field_toggle = gui.add_checkbox(
                "Render field", fld.available, disabled=not fld.available
            )
            self.field_status = gui.add_text(
                "Last pass", "-" if fld.available else fld.status, disabled=True
            )

        @self.field_toggle.on_update
        def _(_) -> None:
            for client in self.server.get_clients().values():
                if self.field_toggle.value:
                    self._start_renderer(client)
                else:
                    self._stop_renderer(client.client_id)
                    client.scene.set_background_image(None)

    def _set_thumbnails(self, set_name: str) -> None:
        for i, f in enumerate(self.frustums):
            img = self.image(set_name, i, self.cfg.thumbnail_px)
            f.image = img if img is not None else self.image("original", i, self.cfg.thumbnail_px)
        if self._selected is not None:
            self._show_selected(self._selected)

    def _select_camera(self, client, i: int) -> None:
        self._selected = i
        self._show_selected(i)

    def _show_selected(self, i: int) -> None:
        img = self.image(self.image_set.value, i, 320)
        if img is None:
            img = self.image("original", i, 320)
        self.selected_text.value = f"{i}: {self.scene.image_names[i]} ({self.image_set.value})"
        self.selected_image.image = img
        self.selected_image.visible = True
        self.goto_button.visible = True

    def goto_camera(self, client, i: int) -> None:
        """Move ``client``'s browser camera to training camera ``i`` (pose and field of view)."""
        wxyz, pos = frustum_pose(self.scene.cameras[i])
        with client.atomic():
            client.camera.wxyz = wxyz[0]
            client.camera.position = pos[0]
            client.camera.fov = float(vertical_fov(self.scene.cameras[i])[0])

    # -- mask box ----------------------------------------------------------------------------

    def _initial_box(self) -> MaskBox:
        if self.mask_box_path.is_file():
            try:
                return MaskBox.parse(self.mask_box_path.read_text(), str(self.mask_box_path))
            except ValueError as e:
                print(f"ignoring {e}")
        return MaskBox.from_center_size(self.center, [0.2 * self.extent] * 3)

    def _add_mask_box(self) -> None:
        gui = self.server.gui
        box = self._initial_box()
        self.mask_box = box
        s_max = max(float(self.extent), *box.size) * 1.5
        step = s_max / 1000
        with gui.add_folder("Mask box (sceneforge complete)"):
            self.box_toggle = gui.add_checkbox("Edit mask box", False)
            self.box_size = [
                gui.add_slider(f"Size {a}", step, s_max, step, float(v), visible=False)
                for a, v in zip("xyz", box.size)
            ]
            self.box_text = gui.add_text("--mask-box", box.to_arg(), disabled=True)
            self.box_file_text = gui.add_text(
                "Written to", str(self.mask_box_path), disabled=True, visible=False
            )
        self.box_gizmo = self.server.scene.add_transform_controls(
            "/mask_box",
            scale=0.15 * self.extent,
            disable_rotations=True,
            position=box.center,
            visible=False,
        )
        self.box_mesh = self.server.scene.add_box(
            "/mask_box/box",
            color=(255, 140, 0),
            dimensions=box.size,
            opacity=0.25,
            visible=False,
        )

        def changed(_) -> None:
            if self._moving_controls:  # our own update of the sliders / gizmo
                return
            self.set_mask_box(
                MaskBox.from_center_size(self.box_gizmo.position, [s.value for s in self.box_size]),
                move_controls=False,
            )

        self.box_gizmo.on_update(changed)
        for s in self.box_size:
            s.on_update(changed)

        @self.box_toggle.on_update
        def _(_) -> None:
            on = self.box_toggle.value
            for h in (self.box_gizmo, self.box_mesh, *self.box_size, self.box_file_text):
                h.visible = on
            if on:
                self.set_mask_box(self.mask_box, move_controls=False)

    def set_mask_box(self, box: MaskBox, move_controls: bool = True) -> None:
        """Show ``box`` and write its ``--mask-box`` string to :attr:`mask_box_path`.

        The file is written only while box editing is on (the checkbox), so opening a folder
        never writes into it by itself.
        """
        with self._lock:
            self.mask_box = box
            if move_controls:
                # viser runs on_update callbacks synchronously for server-side assignments
                self._moving_controls = True
                try:
                    self.box_gizmo.position = box.center
                    for s, v in zip(self.box_size, box.size):
                        s.value = float(v)
                finally:
                    self._moving_controls = False
            self.box_mesh.dimensions = box.size
            self.box_text.value = box.to_arg()
            if self.box_toggle.value:
                box.write(self.mask_box_path)

    # -- clients -----------------------------------------------------------------------------

    def _on_connect(self, client) -> None:
        if self.contents.field.available and self.field_toggle.value:
            self._start_renderer(client)

    def _on_disconnect(self, client) -> None:
        self._stop_renderer(client.client_id)

    def _start_renderer(self, client) -> None:
        cid = client.client_id
        if cid in self.renderers:
            return
        cfg = self.cfg

        def publish(img: np.ndarray, px: int, seconds: float) -> None:
            client.scene.set_background_image(img, format="jpeg", jpeg_quality=90)
            self.field_status.value = f"{img.shape[1]}x{img.shape[0]} in {seconds * 1000:.0f} ms"

        def on_error(e: BaseException) -> None:
            self.field_status.value = f"render failed: {type(e).__name__}: {e}"
            self.renderers.pop(cid, None)

        r = ProgressiveRenderer(
            self.contents.field.render_rays,
            publish,
            cfg.preview_px,
            cfg.max_render_px,
            cfg.rest_s,
            cfg.chunk_rays,
            on_error,
            cfg.preview_samples,
        )
        self.renderers[cid] = r.start()

        def camera_moved(camera) -> None:
            rr = self.renderers.get(cid)
            if rr is not None and camera.image_width > 0 and camera.image_height > 0:
                rr.update_camera(ViewCamera.from_viser(camera))

        if cid not in self._camera_hooked:  # once per client, across field toggles
            self._camera_hooked.add(cid)
            client.camera.on_update(camera_moved)
        if client.camera.image_width > 0:
            r.update_camera(ViewCamera.from_viser(client.camera))

    def _stop_renderer(self, cid: int) -> None:
        r = self.renderers.pop(cid, None)
        if r is not None:
            r.stop()


def view(
    path: str | Path,
    cfg: ViewerConfig | None = None,
    on_ready: Callable[[Viewer], None] | None = None,
) -> int:
    """Serve ``path`` (run or scene folder) until Ctrl-C; returns an exit code.

    ``on_ready(viewer)`` is called once the scene is built (e.g. to open a browser).
    """
    cfg = cfg or ViewerConfig()
    v = None
    try:
        v = Viewer(path, cfg)
        print(f"sceneforge viewer: {v.url}  (Ctrl-C to stop)", flush=True)
        if cfg.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: bound to {cfg.host}: other machines on the network can open it")
        if on_ready is not None:
            on_ready(v)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if v is not None:
            v.stop()
    return 0


__all__ = [
    "MASK_BOX_FILE",
    "FieldSource",
    "ImageSet",
    "MaskBox",
    "ProgressiveRenderer",
    "RunContents",
    "ViewCamera",
    "Viewer",
    "ViewerConfig",
    "fill_preview",
    "find_field",
    "find_image_sets",
    "find_run",
    "find_scene",
    "frustum_pose",
    "import_viser",
    "mask_preview",
    "render_size",
    "resolution_levels",
    "scene_extent",
    "view",
]
