"""What the viewer shows of a folder: the scene, a run's trained field and the image sets a
completion run wrote (file names from :mod:`sceneforge.core.run_files`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import TYPE_CHECKING

from sceneforge.core import run_files
from sceneforge.viewer.config import ViewerConfig
from sceneforge.viewer.progressive import CameraRenderer, RaysRenderer

if TYPE_CHECKING:
    from torch import Tensor

    from sceneforge.core.scene import SceneData


@dataclass
class FieldSource:
    """A trained field that can render rays, or the reason there is none."""

    render_rays: RaysRenderer | None
    status: str
    """One line for the panel: what was loaded, or why nothing was."""
    trainer: object | None = None
    """The restored :class:`~sceneforge.fields.trainer.Trainer` when loaded from a run."""

    render_camera: CameraRenderer | None = None
    """Whole-view renderer of models that rasterise (Gaussians) instead of rays."""

    @property
    def available(self) -> bool:
        return self.render_rays is not None or self.render_camera is not None


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
    """The folder asked for (``mask_box.txt`` is written here)."""
    scene: SceneData
    field: FieldSource
    image_sets: list[ImageSet] = dc_field(default_factory=list)
    shown: Path | None = None
    """The folder shown (:func:`folder_to_show`): ``root`` itself, or a stage folder of a
    ``sceneforge run`` output folder (None: ``root``)."""


def is_run_output(path: Path) -> bool:
    """True for a ``sceneforge run`` output folder: it holds ``stages.json`` or a
    reconstruction in ``sfm/``, and is neither a scene folder nor a fields run itself."""
    if not path.is_dir():
        return False
    if (path / run_files.SOURCE).is_file() or (path / run_files.TRANSFORMS).is_file():
        return False
    return (path / run_files.STAGE_RECORD).is_file() or (
        path / run_files.SFM_DIR / run_files.TRANSFORMS
    ).is_file()


def folder_to_show(path: Path) -> Path:
    """The folder the viewer opens for ``path``.

    A ``sceneforge run`` output folder (:func:`is_run_output`) opens its completed field
    (``complete/``) when a completion finished there, else its trained field (``field/``),
    else its reconstruction (``sfm/``, cameras and points only); any other folder (a scene, a
    ``train`` or ``complete`` run) opens itself. A stage folder counts when it holds a
    checkpoint and the ``source.json`` naming its scene.
    """
    if not is_run_output(path):
        return path
    for stage in (run_files.COMPLETE_DIR, run_files.FIELD_DIR):
        d = path / stage
        if (d / run_files.CHECKPOINT).is_file() and (d / run_files.SOURCE).is_file():
            return d
    return path / run_files.SFM_DIR


def find_scene(path: Path) -> SceneData:
    """The posed scene of ``path``: the folder itself when it is a scene (any format
    :func:`load_scene` reads), else the scene a fields run names in ``source.json``."""
    from sceneforge.core.io import detect_format, load_scene
    from sceneforge.core.scene import SceneDataError

    src = path / run_files.SOURCE
    if path.is_dir() and src.is_file() and not (path / run_files.TRANSFORMS).is_file():
        from sceneforge.fields.api import scene_source
        from sceneforge.fields.checkpoints import CheckpointError

        try:  # relative to the run folder when it was written so: the folder may have moved
            scene_dir = scene_source(path)
        except CheckpointError as e:
            raise SceneDataError(str(e)) from e
        return load_scene(scene_dir)
    try:
        detect_format(path)
    except SceneDataError as e:
        raise SceneDataError(
            f"{e}; nor is it a run folder (no source.json naming the scene it was trained on)"
        ) from e
    return load_scene(path)


def find_field(path: Path, scene: SceneData, device: str = "auto") -> FieldSource:
    """The trained field of a run folder (``checkpoint.pt``), or why there is none.

    Rendering goes through :meth:`sceneforge.fields.trainer.Trainer.render_rays` with the
    checkpoint's own settings (background, sampler); calls are serialised by a lock since
    every browser tab renders from its own thread.
    """
    ckpt = path / run_files.CHECKPOINT
    if not path.is_dir() or not ckpt.is_file():
        return FieldSource(None, f"no trained field (no {run_files.CHECKPOINT} in {path})")
    from sceneforge.fields.trainer import Trainer

    tr = Trainer.from_checkpoint(
        ckpt, scene, None, progress=False, tensorboard=False, device=device
    )
    lock = threading.Lock()

    def render_rays(o: Tensor, d: Tensor, z: Tensor, num_samples: int | None = None) -> Tensor:
        # the mean appearance (image index -1); num_samples caps the preview's samples per ray
        with lock:
            return tr.render_rays(o, d, z, num_samples=num_samples)["rgb"]

    def render_camera(cameras) -> Tensor:
        with lock:
            return tr.render_camera(cameras, 0, downscale=1)["rgb"]

    status = f"field: {ckpt.name}, step {tr.step}"
    ev = path / run_files.EVAL
    if ev.is_file():
        import json

        try:
            psnr = float(json.loads(ev.read_text())["psnr"])
            status += f", held-out PSNR {psnr:.2f} dB"
        except (ValueError, KeyError, TypeError):
            pass  # eval.json is informative only
    facts = tr.describe()
    if "num_gaussians" in facts:
        status += f", {facts['num_gaussians']} Gaussians"
    if not tr.renders_rays:  # rasterised models render whole views
        return FieldSource(None, status, tr, render_camera)
    return FieldSource(render_rays, status, tr)


def find_image_sets(path: Path, scene: SceneData) -> list[ImageSet]:
    """Image sets a completion run (``sceneforge complete``) wrote into ``path``.

    ``masks/<stem>.png`` (fill masks, white = filled) as ``fill mask``, every dataset version
    ``datasets/vNNN/images`` (the images the completed field trained on) as
    ``completed vNNN``, and ``renders/<stem>.png`` as ``completed render``.
    """
    import json

    from sceneforge.core.scene import SceneDataError

    if not (path / run_files.COMPLETE_INFO).is_file():
        return []
    stems = [Path(n).stem for n in scene.image_names]

    def by_stem(folder: Path, name: str) -> ImageSet | None:
        paths = [folder / f"{s}.png" for s in stems]
        paths = [p if p.is_file() else None for p in paths]
        return ImageSet(name, paths) if any(p is not None for p in paths) else None

    sets = [by_stem(path / run_files.MASKS_DIR, "fill mask")]
    datasets = path / run_files.DATASETS_DIR
    versions = sorted(datasets.glob("v[0-9]*")) if datasets.is_dir() else []
    for v in versions:
        man = v / run_files.DATASET_MANIFEST
        try:
            names = set(json.loads(man.read_text())["images"]) if man.is_file() else None
        except (ValueError, KeyError, TypeError) as e:
            raise SceneDataError(f"{man}: unreadable dataset manifest ({e})") from e
        paths = []
        for n in scene.image_names:
            f = Path(n).with_suffix(".png").name
            p = v / run_files.DATASET_IMAGES_DIR / f
            paths.append(p if p.is_file() and (names is None or f in names) else None)
        if any(p is not None for p in paths):
            sets.append(ImageSet(f"completed {v.name}", paths))
    sets.append(by_stem(path / run_files.RENDERS_DIR, "completed render"))
    return [s for s in sets if s is not None]


def find_run(path: str | Path, cfg: ViewerConfig | None = None) -> RunContents:
    """Scene, field and image sets of a run folder, a ``sceneforge run`` output folder (the
    stage :func:`folder_to_show` picks) or a plain scene folder."""
    from sceneforge.core.scene import SceneDataError

    cfg = cfg or ViewerConfig()
    path = Path(path)
    if not path.exists():
        raise SceneDataError(f"{path}: folder does not exist")
    shown = folder_to_show(path)
    scene = find_scene(shown)
    fld = (
        find_field(shown, scene, cfg.device)
        if cfg.field
        else FieldSource(None, "field rendering off (--no-field)")
    )
    if shown != path:  # say which stage of the run output is shown
        fld.status = f"{shown.name}/: {fld.status}"
    sets = find_image_sets(shown, scene) if shown.is_dir() else []
    return RunContents(path, scene, fld, sets, shown)


__all__ = [
    "FieldSource",
    "ImageSet",
    "RunContents",
    "find_field",
    "find_image_sets",
    "find_run",
    "find_scene",
    "folder_to_show",
    "is_run_output",
]
