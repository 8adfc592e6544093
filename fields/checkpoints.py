"""Trainer checkpoints: the file format, safe reading (``weights_only``), atomic writing, config
(de)serialisation and the upgrade of format-1 files (written before the scene-model seam).

A checkpoint is one ``torch.save`` dict: ``format``, ``step``, ``wall_s``, ``config`` (the
trainer config as plain data), ``model_name``, ``model`` (the scene model's state), ``box``,
``optimizer``, ``rng`` (the trainer's generator and its torch RNG), ``dataset`` (version, plus
its pixels once updated), ``train_indices``, ``eval_indices``, ``image_names`` and
``world_size`` (the processes of the data-parallel run that wrote it, 1 without torchrun; absent
in older files; informative only: a checkpoint resumes at any world size, with the same global
batches, not bit-exactly, see :mod:`sceneforge.fields.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from pathlib import Path

import torch

from sceneforge.core.atomic import atomic_open, remove_stale_temps

CHECKPOINT_FORMAT = 2


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt or incompatible; the message names the file."""


class TrainingDivergedError(RuntimeError):
    """The loss (or a parameter) became NaN/inf: training stopped; the message names the last
    good checkpoint, which is never overwritten with non-finite parameters."""


def config_to_dict(cfg) -> dict:
    """A dataclass config as plain JSON/``weights_only``-safe types."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls, d: dict):
    """Rebuild a (nested) dataclass config from :func:`config_to_dict` output."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        proto = sub() if sub is not None and isinstance(v, dict) else None
        if dataclasses.is_dataclass(proto):  # a section (its factory may be a lambda)
            built = config_from_dict(type(proto), v)
            given = {
                g.name: getattr(built, g.name) for g in dataclasses.fields(built) if g.name in v
            }
            kwargs[f.name] = dataclasses.replace(proto, **given)  # absent keys: the factory's
        elif isinstance(v, list):
            kwargs[f.name] = tuple(v)
        else:
            kwargs[f.name] = v
    return cls(**kwargs)


_V1_NERF_KEYS = ("lr", "grid_lr", "color_affine_weight", "density_tv_weight", "chunk_rays")
_V1_NERF_CONFIGS = ("field", "sampler")


def upgrade_checkpoint(s: dict) -> dict:
    """A format-1 checkpoint (field + grid + background beside the trainer) as format 2 (one
    ``model`` state; NeRF settings under ``config['nerf']``). Format 2 is returned as is."""
    if s.get("format") != 1:
        return s
    cfg = dict(s["config"])
    nerf = {k: cfg.pop(k) for k in (*_V1_NERF_KEYS, *_V1_NERF_CONFIGS) if k in cfg}
    cfg["nerf"], cfg["model"] = nerf, "nerf"
    model = {f"field.{k}": v for k, v in s["field"].items()}
    model.update({f"grid.{k}": v for k, v in s["grid"].items()})
    model["bg_param"] = s["background"]
    rest = {k: v for k, v in s.items() if k not in ("field", "grid", "background", "config")}
    return {**rest, "format": 2, "config": cfg, "model_name": "nerf", "model": model}


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` with a clear error naming a missing or corrupt file;
    format-1 files are upgraded (:func:`upgrade_checkpoint`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(
                f"{path}: refusing to load: the file holds pickled Python objects other than "
                "tensors and plain data (only weights_only=True loading is allowed; the file "
                "may have been tampered with)"
                + "".join(
                    f" [{ln.strip()}]" for ln in str(e).splitlines() if "unsupported" in ln.lower()
                )
            ) from e
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({e})") from e
    except (
        RuntimeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        IndexError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
    ) as e:  # what torch's weights-only unpickler raises on damaged files
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({e})") from e
    if not isinstance(s, dict) or "step" not in s or not ("model" in s or "field" in s):
        raise CheckpointError(f"{path}: not a sceneforge field checkpoint")
    if s.get("format") not in (1, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{path}: unsupported checkpoint format {s.get('format')!r}")
    try:
        return upgrade_checkpoint(s)
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: damaged format-1 checkpoint ({e})") from e


def write_checkpoint(path: str | Path, state: dict) -> Path:
    """``torch.save`` to ``path`` atomically (fsynced temp file + ``os.replace``): a failed write
    (disk full) raises an OSError naming the file and leaves the previous one untouched."""
    path = Path(path)
    remove_stale_temps(path)  # left by a process killed while writing
    try:
        with atomic_open(path, "wb", fsync=True) as f:
            torch.save(state, f)
    except OSError as e:
        raise OSError(
            e.errno,
            f"cannot write checkpoint {path} ({e.strerror or e}); the previous checkpoint "
            "there (if any) is unchanged",
        ) from e
    return path


__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "TrainingDivergedError",
    "config_from_dict",
    "config_to_dict",
    "read_checkpoint",
    "upgrade_checkpoint",
    "write_checkpoint",
]
