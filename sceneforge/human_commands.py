"""The 4D human verb of the ``sceneforge`` command line (registered in :mod:`sceneforge.cli`):
``human VIDEO OUT`` (one video of a person in, a fitted body, a 4D human field and renders
out; resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from sceneforge.commands import Flat, table
from sceneforge.stylize.human.capture import HumanCaptureConfig

Pos = tyro.conf.Positional


@dataclass
class Human:
    """4D human capture from one video of a person seen by a static camera: frames, 2D pose,
    body fit, a human4d field; OUT/renders holds the input frames re-rendered, an orbit around
    the person and a new-pose motion; OUT/human.json the summary. Re-running resumes."""

    video: Pos[Path]
    """Video file (mp4, mov, ...) or a folder of its frames (sorted by name = in time)."""
    out_dir: Pos[Path]
    """Output folder: frames/, detections.npz, fit.json, scene.json, train/, renders/,
    human.json, log.txt."""
    config: Annotated[HumanCaptureConfig, Flat] = field(default_factory=HumanCaptureConfig)
    resume: bool = True
    """Skip the finished stages whose inputs and settings match and continue training from
    OUT/train's checkpoint; --no-resume redoes every stage."""

    def run(self) -> int:
        from sceneforge.stylize.human.capture import capture_human

        summary = capture_human(self.video, self.out_dir, self.config, resume=self.resume)
        keys = ("focal_px", "focal_guessed", "fit_reprojection_error_px", "train_steps")
        keys += ("heldout_person_psnr", "heldout_psnr")
        print(table(summary, keys))
        print(f"frames used: {len(summary['frames_used'])} of {summary['frames']}")
        for name, why in summary["frames_dropped"].items():
            print(f"dropped {name}: {why}")
        for name, path in summary["renders"].items():
            print(f"{name}: {path}")
        return 0
