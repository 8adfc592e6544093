"""Names of the files and folders that sceneforge's output folders hold, in one place.

Each name is relative to the folder its section names. Paths are built with ``/`` as usual
(``run_dir / CHECKPOINT``); ``SFM_MODEL_DIR`` holds a slash and works the same way.
"""

from __future__ import annotations

# -- a fields run (``sceneforge train OUT_DIR``; ``sceneforge complete OUT_DIR`` too)

#: The full training state (field, optimiser, sampler grid, step).
CHECKPOINT = "checkpoint.pt"
#: The trainer configuration the run was trained with.
CONFIG = "config.json"
#: ``{"scene_dir": ...}``: the scene folder the run was trained on.
SOURCE = "source.json"
#: Held-out evaluation (``psnr``, ``ssim``, ``num_eval_images``, timings).
EVAL = "eval.json"
#: Held-out predictions next to their ground truth (``NAME_pred.png``, ``NAME_gt.png``).
EVAL_DIR = "eval"
#: The training curve (``{"history": [...]}``).
HISTORY = "history.json"
#: TensorBoard event files.
TENSORBOARD_DIR = "tensorboard"

# -- a main-job output folder (``sceneforge run ... OUT``; the demo's run folder too)

#: Progress of every stage (step, loss, ETA), written whether or not stdout is a terminal.
LOG_FILE = "log.txt"

# -- a completion run (``sceneforge complete OUT_DIR``; ``ns-train sceneforge-complete``)

#: Completion summary (inpainter, steps, rounds, fill fraction, config).
COMPLETE_INFO = "complete.json"
#: Renders of every view by the completed field (``NAME.png``).
RENDERS_DIR = "renders"
#: Image | fill hole | completed render strips (``NAME.png``).
BEFORE_AFTER_DIR = "before_after"
#: Fill masks, white = filled (``NAME.png``).
MASKS_DIR = "masks"
#: Versioned training images of the Inpaint Dataset Update (``vNNN/``).
DATASETS_DIR = "datasets"
#: The images of one dataset version (``datasets/vNNN/images/NAME.png``).
DATASET_IMAGES_DIR = "images"
#: The manifest of one dataset version (``datasets/vNNN/manifest.json``).
DATASET_MANIFEST = "manifest.json"

# -- a render (``sceneforge render OUT_DIR``)

#: Rendered colour frames (``NNNN.png``).
FRAMES_DIR = "frames"
#: Colour-mapped depth frames (render) or raw depth maps (export), per frame or view.
DEPTH_DIR = "depth"
#: The video of the frames (``video.gif`` beside it when no mp4 writer is installed).
VIDEO = "video.mp4"
#: Render summary (number of frames, wall time, video path).
RENDER_INFO = "render.json"

# -- an export (``sceneforge export OUT_DIR``)

#: Coloured point cloud of the rendered views.
POINTCLOUD = "pointcloud.ply"
#: Marching-cubes mesh of the density.
MESH = "mesh.ply"
#: Mesh of the open3d TSDF fusion of the rendered depth.
TSDF_MESH = "tsdf_mesh.ply"
#: The 3D Gaussians in the standard 3DGS PLY layout (splat viewers open it).
GAUSSIANS_PLY = "gaussians.ply"
#: Export summary (what was written, sizes, timings).
EXPORT_INFO = "export.json"

# -- a reconstruction (``sceneforge reconstruct OUT_DIR``)

#: The COLMAP model of the registered images.
SFM_MODEL_DIR = "sparse/0"
#: The sparse points, as nerfstudio's ``sparse_pc.ply`` next to ``transforms.json``.
SPARSE_PC = "sparse_pc.ply"
#: The cameras in nerfstudio's ``transforms.json`` format.
TRANSFORMS = "transforms.json"
#: Top and front views of the cameras and points.
RECONSTRUCTION_PNG = "reconstruction.png"
#: Reconstruction summary (registered images, points, errors, timings, config).
SFM_SUMMARY = "summary.json"

# -- the main job (``sceneforge run OUT_DIR``)

#: Finished stages with their timings and results.
STAGE_RECORD = "stages.json"
#: The run's input inside the output folder: the photos scaled to the reconstruction's image
#: size, or the frames taken from a video (``transforms.json`` points here).
IMAGES_DIR = "images"
#: The masks of ``reconstruct.masks_dir``, at the size of the images in ``IMAGES_DIR``.
INPUT_MASKS_DIR = "input_masks"
#: Which frames were taken from the input video (index, sharpness), and from which video.
VIDEO_RECORD = "video.json"
#: The run's plan: resolution, steps, render size and estimated seconds per stage.
PLAN = "plan.json"
#: The reconstruction stage's output (a reconstruction folder, see above).
SFM_DIR = "sfm"
#: The training stage's output (a fields run).
FIELD_DIR = "field"
#: The completion stage's output (a completion run, with ``mask_box``).
COMPLETE_DIR = "complete"
#: The render stage's output (a render of the final field).
RENDER_DIR = "render"
#: The sparse points of the reconstruction as a coloured PLY.
POINTS_PLY = "points.ply"
#: The HTML report of the finished stages.
REPORT_HTML = "report.html"
#: The report's images.
REPORT_DIR = "report"

# -- the demo (``sceneforge demo OUT_DIR``)

#: The procedural scene's inputs.
DEMO_INPUT_DIR = "input"
#: The rendered photos inside ``DEMO_INPUT_DIR``.
DEMO_IMAGES_DIR = "images"
#: The main job's output folder.
DEMO_RUN_DIR = "run"
#: Demo summary (registered views, held-out PSNR, stage timings, ``ok``).
DEMO_SUMMARY = "demo.json"

# -- the viewer (``sceneforge view FOLDER``)

#: The ``--mask-box`` string the viewer's box control writes (run or scene folder).
MASK_BOX = "mask_box.txt"

# -- a 4D human capture (``sceneforge human VIDEO OUT``)

#: Per stage its key, seconds and results (frames, detections, fit, scene, train, render).
HUMAN_STAGES = "human_stages.json"
#: The capture's trained ``human4d`` run (checkpoint, config, history), inside ``OUT``.
HUMAN_TRAIN_DIR = "train"
