"""The ``sceneforge`` command line (tyro subcommands).

Importing this module must stay cheap: ``sceneforge --help`` imports no torch. Each
command is a small dataclass whose ``run`` imports the engine lazily.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

Pos = tyro.conf.Positional


@dataclass
class Info:
    """Load a scene (COLMAP model, transforms.json or LLFF folder) and print a summary."""

    scene_dir: Pos[Path]
    """Scene folder."""
    check_images: bool = False
    """Open every image header and report unreadable files."""

    def run(self) -> int:
        from sceneforge.core.io import load_scene, validate_scene

        scene = load_scene(self.scene_dir)
        if self.check_images:
            validate_scene(scene)
        cams = scene.cameras
        sizes = sorted({(int(w), int(h)) for w, h in zip(cams.width, cams.height)})
        print(f"scene: {self.scene_dir}")
        print(f"images: {len(scene)}  camera model: {cams.model}  sizes: {sizes[:5]}")
        print(f"masks: {'yes' if scene.has_masks else 'no'}")
        n_pts = 0 if scene.points is None else scene.points.shape[0]
        print(f"sparse points: {n_pts}")
        return 0


COMMANDS: dict[str, type] = {"info": Info}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sceneforge`` console script."""
    cmd = tyro.extras.subcommand_cli_from_dict(
        COMMANDS,
        prog="sceneforge",
        description="sceneforge: photos in, a complete editable 3D scene out.",
        args=argv,
    )
    return int(cmd.run() or 0)


if __name__ == "__main__":
    sys.exit(main())
