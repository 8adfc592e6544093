"""4D human capture (issue 20): body models, skinning and (later) pose from video and the
canonical human field.

Body models share one interface (:class:`BodyModel`, axis-angle pose per joint, one shape per
subject, canonical->posed bone transforms): :class:`AnnyModel` (default; the optional
``anny`` package, ``pip install 'sceneforge[human]'``, imported only when built) and
:class:`SMPLModel` (the user's own SMPL/SMPL-X file). :mod:`.lbs` has the kinematic chain and
forward/inverse linear blend skinning; :class:`SkinningGrid` the canonical skinning-weight grid
that maps observation-space samples back to the canonical body.

Caches (anny's model data, skinning grids) go to the user cache folder
(:func:`sceneforge_cache_dir`: ``$SCENEFORGE_CACHE``, default ``~/.cache/sceneforge``).
"""

from .anny_model import ANNY_KEYPOINT_JOINTS, AnnyModel, anny_cache_dir, build_anny
from .body_model import MEDIAPIPE_POSE_LANDMARKS, BodyModel, BodyOutput, sceneforge_cache_dir
from .lbs import (
    batch_rigid_transform,
    blend_transforms,
    invert_bone_transforms,
    lbs_forward,
    lbs_inverse,
    rigid_4x4,
)
from .motions import ANNY_RIG, MOTIONS, SMPL_RIG, BodyRig, Motion, body_rig, make_motion
from .skinning_grid import SkinningGrid
from .smpl_model import SMPL_JOINT_NAMES, SMPLModel, find_smpl_file, load_smpl_arrays
from .synthetic import (
    HumanFrames,
    HumanVideo,
    HumanVideoConfig,
    make_human_video,
    read_human_video,
    render_person_in_room,
    write_human_video,
)

__all__ = [
    "ANNY_KEYPOINT_JOINTS",
    "ANNY_RIG",
    "MEDIAPIPE_POSE_LANDMARKS",
    "MOTIONS",
    "SMPL_JOINT_NAMES",
    "SMPL_RIG",
    "AnnyModel",
    "BodyModel",
    "BodyOutput",
    "BodyRig",
    "HumanFrames",
    "HumanVideo",
    "HumanVideoConfig",
    "Motion",
    "SMPLModel",
    "SkinningGrid",
    "anny_cache_dir",
    "batch_rigid_transform",
    "blend_transforms",
    "body_rig",
    "build_anny",
    "find_smpl_file",
    "invert_bone_transforms",
    "lbs_forward",
    "lbs_inverse",
    "load_smpl_arrays",
    "make_human_video",
    "make_motion",
    "read_human_video",
    "render_person_in_room",
    "rigid_4x4",
    "sceneforge_cache_dir",
    "write_human_video",
]
from .fit import FitConfig, FitResult, fit_body, read_fit, to_landmarks, write_fit  # noqa: E402
from .metrics import mpjpe, pa_mpjpe, person_psnr, procrustes_align  # noqa: E402

__all__ += ["FitConfig", "FitResult", "fit_body", "read_fit", "to_landmarks", "write_fit"]
__all__ += ["mpjpe", "pa_mpjpe", "person_psnr", "procrustes_align"]
from .detect import DetectConfig, detect_pose  # noqa: E402
from .detections import PoseDetections, read_detections, write_detections  # noqa: E402

__all__ += ["DetectConfig", "PoseDetections", "detect_pose", "read_detections", "write_detections"]
