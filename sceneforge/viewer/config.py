"""Settings of ``sceneforge view`` and the import of viser (an optional dependency).

Imports neither torch nor viser: the CLI imports :class:`ViewerConfig` for ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: viser versions this module is written and tested against.
VISER_REQUIREMENT = "viser>=1.1,<1.2"


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
    device: str = "auto"
    """Torch device for field rendering: auto (CUDA when available), cpu, cuda or cuda:N."""
    mask_box_file: Path | None = None
    """Where the box control writes its ``--mask-box`` (default: ``mask_box.txt`` in the folder)."""
    camera_path_dir: Path | None = None
    """Where the camera path panel saves paths (default: ``camera_paths/`` in the folder)."""
    verbose: bool = False
    """Print viser's connection messages."""


__all__ = ["VISER_REQUIREMENT", "ViewerConfig", "import_viser"]
