"""Free3D as a :class:`~sceneforge.core.novel_view_prior.NovelViewPrior`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.novel_view_prior import NovelViewPrior

from .pipeline import Free3DPipeline, load_free3d
from .sampler import SamplerConfig, sample_views


class Free3DPrior(NovelViewPrior):
    """Novel views from a Free3D pipeline (all target views of a request sampled jointly)."""

    def __init__(self, pipe: Free3DPipeline, config: SamplerConfig | None = None) -> None:
        self.pipe = pipe
        self.config = config or SamplerConfig()

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        config: SamplerConfig | None = None,
        dtype: torch.dtype | None = None,
    ) -> Free3DPrior:
        """Load the model of a local folder (``--model PATH``; nothing is downloaded)."""
        return cls(load_free3d(path, device, dtype), config)

    def generate(
        self,
        source_image: Float[Tensor, "3 H W"],
        source_K: Float[Tensor, "3 3"],
        target_from_source: Float[Tensor, "V R 4"],
        target_K: Float[Tensor, "V 3 3"] | None = None,
        *,
        seed: int = 0,
    ) -> Float[Tensor, "V 3 H W"]:
        if source_image.ndim != 3 or source_image.shape[0] != 3:
            raise ValueError(f"source_image must be [3, H, W], got {tuple(source_image.shape)}")
        if target_from_source.ndim != 3:
            raise ValueError(
                f"target_from_source must be [V, 3, 4] or [V, 4, 4], got "
                f"{tuple(target_from_source.shape)}"
            )
        cfg = replace(self.config, seed=seed)
        out = sample_views(
            self.pipe,
            source_image[None],
            source_K[None],
            target_from_source[None],
            None if target_K is None else target_K[None],
            cfg,
        )
        return out[0].to(source_image.device)


__all__ = ["Free3DPrior"]
