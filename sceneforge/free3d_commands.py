"""The Free3D verbs of the ``sceneforge`` command line (registered in :mod:`sceneforge.cli`):
``novel-views`` (one image in, posed novel views out, optionally a field) and ``free3d-train``
(train or fine-tune the novel-view model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from sceneforge.commands import Flat, table
from sceneforge.stylize.free3d.novel_views import NovelViewsConfig
from sceneforge.stylize.free3d.train import Free3DTrainConfig

Pos = tyro.conf.Positional


@dataclass
class NovelViews:
    """Novel views of one object photo with a local Free3D model: OUT/scene (transforms.json,
    images, masks), OUT/views.png, OUT/novel_views.json; --train continues into OUT/field."""

    image: Pos[Path]
    """The object's photo (RGBA, or RGB with --mask or a plain background)."""
    out_dir: Pos[Path]
    """Output folder (must be empty or absent unless --overwrite)."""
    config: Annotated[NovelViewsConfig, Flat] = field(default_factory=NovelViewsConfig)

    def run(self) -> int:
        from sceneforge.stylize.free3d.novel_views import novel_views

        info = novel_views(self.image, self.out_dir, self.config)
        keys = ("out_dir", "scene_dir", "field_dir", "num_views", "share_noise", "seed")
        print(table({k: info[k] for k in keys if k in info}))
        if "eval" in info:
            print(table({f"eval {k}": v for k, v in info["eval"].items()}, ("eval psnr",)))
        return 0


@dataclass
class Free3DTrain:
    """Train (or fine-tune) a Free3D novel-view model on posed multi-view sets: procedural
    objects rendered here, the shared meshes or a folder of renders; OUT_DIR/model loads with
    `novel-views --model OUT_DIR/model`; --resume continues exactly."""

    out_dir: Pos[Path]
    """Output folder: checkpoint.pt, model/, metrics.json, log.txt."""
    config: Annotated[Free3DTrainConfig, Flat] = field(default_factory=Free3DTrainConfig)
    resume: bool = False
    """Continue the run in OUT_DIR from its checkpoint (the same config but steps, device and
    the validation / checkpoint intervals)."""

    def run(self) -> int:
        from sceneforge.core import run_files
        from sceneforge.core.progress import RunLog
        from sceneforge.stylize.free3d.train import train_free3d

        log = RunLog(self.out_dir / run_files.LOG_FILE)
        with log.task("free3d-train", self.config.steps) as task:

            def progress(info: dict) -> None:
                if "val_loss" in info:
                    log(
                        f"[free3d-train] step {info['step']}: validation loss {info['val_loss']:.4f}"
                    )
                else:
                    task.update(info["step"], f"loss {info['loss']:.4f}")

            metrics = train_free3d(self.config, self.out_dir, progress=progress, resume=self.resume)
        keys = ("steps", "initial_val_loss", "final_val_loss", "wall_s", "model_dir")
        log(table(metrics, keys))
        return 0
