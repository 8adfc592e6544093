"""Free3D: consistent novel views from one image (Zheng & Vedaldi, CVPR 2024).

An image-conditioned diffusers UNet (Zero-1-to-3 style) with ray conditioning normalisation
(:mod:`.rcn`), pseudo-3D cross-view attention (:mod:`.cross_view`) and a pose token
(:mod:`.model`), sampled with multi-view noise sharing (:mod:`.sampler`). Models load from
a local folder only (:func:`load_free3d`); :class:`Free3DPrior` exposes the model through
:class:`sceneforge.core.novel_view_prior.NovelViewPrior`.

The heavy libraries (diffusers, transformers) are imported only when a model is built or
loaded.
"""

from .cross_view import CrossViewAttention, CrossViewAttentions
from .model import Free3DConfig, Free3DModel, build_tiny, load_free3d_model
from .novel_views import NovelViewsConfig  # the job: novel_views.novel_views
from .pipeline import Free3DPipeline, build_tiny_pipeline, load_free3d
from .prior import Free3DPrior
from .rays import plucker_rays, rays_for_views, relative_pose, resize_ray_map, scale_intrinsics
from .rcn import RayConditionedNorm
from .sampler import SamplerConfig, denoise, initial_noise, sample_views
from .train import Free3DTrainConfig, train_free3d

__all__ = [
    "CrossViewAttention",
    "CrossViewAttentions",
    "Free3DConfig",
    "Free3DModel",
    "Free3DPipeline",
    "Free3DPrior",
    "Free3DTrainConfig",
    "NovelViewsConfig",
    "RayConditionedNorm",
    "SamplerConfig",
    "build_tiny",
    "build_tiny_pipeline",
    "denoise",
    "initial_noise",
    "load_free3d",
    "load_free3d_model",
    "plucker_rays",
    "rays_for_views",
    "relative_pose",
    "resize_ray_map",
    "sample_views",
    "scale_intrinsics",
    "train_free3d",
]
