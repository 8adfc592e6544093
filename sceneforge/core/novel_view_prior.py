"""The novel-view prior interface: images of new viewpoints from one source image.

Editing modules that need a novel-view prior (score distillation for single-image 3D, view
completion, ...) depend on :class:`NovelViewPrior` only, never on the module implementing it
(e.g. ``sceneforge.stylize.free3d``'s Free3D adapter), so any implementation can be passed in.

Conventions are sceneforge's: OpenCV cameras, ``cam_from_world`` / ``target_from_source``
``[3, 4]`` or ``[4, 4]``, intrinsics ``K [3, 3]`` for the images' pixel grid, images
``[3, H, W]`` in [0, 1].
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import compose_rigid, invert_rigid


def _rigid(T: Tensor, what: str) -> Tensor:
    if T.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"{what} must be [..., 3, 4] or [..., 4, 4], got {tuple(T.shape)}")
    return T[..., :3, :]


class NovelViewPrior(ABC):
    """Generates views of the scene of one image from other cameras.

    Subclasses implement :meth:`generate`; :meth:`generate_for_cameras` is the same request
    with both cameras given in a world frame.
    """

    @abstractmethod
    def generate(
        self,
        source_image: Float[Tensor, "3 H W"],
        source_K: Float[Tensor, "3 3"],
        target_from_source: Float[Tensor, "V R 4"],
        target_K: Float[Tensor, "V 3 3"] | None = None,
        *,
        seed: int = 0,
    ) -> Float[Tensor, "V 3 H W"]:
        """``V`` views in [0, 1], ``H x W`` like the source, seen by cameras whose pose
        relative to the source camera is ``target_from_source`` (maps source-camera points
        into the target camera) and whose intrinsics are ``target_K`` (default ``source_K``).
        The same ``seed`` gives the same views."""

    def generate_for_cameras(
        self,
        source_image: Float[Tensor, "3 H W"],
        source_K: Float[Tensor, "3 3"],
        source_cam_from_world: Float[Tensor, "R 4"],
        target_cam_from_world: Float[Tensor, "V R 4"],
        target_K: Float[Tensor, "V 3 3"] | None = None,
        *,
        seed: int = 0,
    ) -> Float[Tensor, "V 3 H W"]:
        """:meth:`generate` with the cameras' ``cam_from_world`` in any common world frame."""
        src = _rigid(source_cam_from_world, "source_cam_from_world")
        tgt = _rigid(target_cam_from_world, "target_cam_from_world")
        rel = compose_rigid(tgt, invert_rigid(src).expand_as(tgt))
        return self.generate(source_image, source_K, rel, target_K, seed=seed)


__all__ = ["NovelViewPrior"]
