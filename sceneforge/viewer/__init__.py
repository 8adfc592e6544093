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
  ``mask_box.txt`` in the run folder;
- a camera path panel: browser views added as keyframes, saved as a smooth nerfstudio
  ``camera_path.json`` under ``camera_paths/`` in the folder (never replacing a file), with
  the ``sceneforge render RUN OUT --path file:PATH`` command that renders it.

Modules: :mod:`.app` (the server and ``sceneforge view``), :mod:`.config` (settings),
:mod:`.run_folder` (what a folder holds), :mod:`.progressive` (field rendering),
:mod:`.cameras` (browser <-> sceneforge cameras), :mod:`.images` (thumbnails),
:mod:`.mask_box`, :mod:`.camera_path` (keyframes -> path file) and :mod:`.camera_path_panel`
(its widgets). viser and torch are imported lazily, so importing this package (the CLI does,
for ``sceneforge view --help``) costs neither.
"""

from __future__ import annotations

from sceneforge.viewer.app import Viewer, view
from sceneforge.viewer.camera_path import (
    CAMERA_PATHS_DIR,
    CameraPathRecorder,
    CameraPathRecordError,
    CameraPathSettings,
    SavedPath,
)
from sceneforge.viewer.camera_path_panel import CameraPathPanel
from sceneforge.viewer.cameras import (
    ViewCamera,
    frustum_pose,
    render_size,
    scene_extent,
    scene_up,
    vertical_fov,
)
from sceneforge.viewer.config import VISER_REQUIREMENT, ViewerConfig, import_viser
from sceneforge.viewer.images import fill_preview, mask_preview
from sceneforge.viewer.mask_box import MASK_BOX_FILE, MaskBox
from sceneforge.viewer.progressive import ProgressiveRenderer, RaysRenderer, resolution_levels
from sceneforge.viewer.run_folder import (
    FieldSource,
    ImageSet,
    RunContents,
    find_field,
    find_image_sets,
    find_run,
    find_scene,
    folder_to_show,
    is_run_output,
)

__all__ = [
    "CAMERA_PATHS_DIR",
    "MASK_BOX_FILE",
    "VISER_REQUIREMENT",
    "CameraPathPanel",
    "CameraPathRecordError",
    "CameraPathRecorder",
    "CameraPathSettings",
    "FieldSource",
    "ImageSet",
    "MaskBox",
    "ProgressiveRenderer",
    "RaysRenderer",
    "RunContents",
    "SavedPath",
    "ViewCamera",
    "Viewer",
    "ViewerConfig",
    "fill_preview",
    "find_field",
    "find_image_sets",
    "find_run",
    "find_scene",
    "folder_to_show",
    "frustum_pose",
    "import_viser",
    "is_run_output",
    "mask_preview",
    "render_size",
    "resolution_levels",
    "scene_extent",
    "scene_up",
    "vertical_fov",
    "view",
]
