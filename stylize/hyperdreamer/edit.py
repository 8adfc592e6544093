"""Region-limited edits of a surface texture field through a pluggable inpainter.

The edited field stores one value per face *corner* (``(F, 3, C)``, e.g. albedo with C = 3),
interpolated barycentrically inside each face. Unlike per-vertex values, corners belong to
one face only, so a region made of whole faces owns its parameters outright: the dataset
update optimises the region's corners and nothing else, and every value outside the region
stays bit-for-bit what it was (:class:`MaskedCornerField` keeps them in a frozen buffer). A
per-vertex field converts exactly with :func:`corner_values_from_vertices`.

One edit (:func:`edit_region`):

1. render the field's views (unlit: the value itself, e.g. albedo) and the region's pixel
   masks (pixels whose face, at the pixel centre, is selected);
2. the :class:`Inpainter` returns edited views (a diffusion inpainter later; offline tests use
   :class:`OracleInpainter`, which writes a known target into the mask);
3. dataset update: Adam on the region's corners against the edited views, loss inside the
   masks only.

:func:`save_field_version` writes each edited field to a new numbered file, never over one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from sceneforge.core.atomic import write_bytes_versioned
from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh
from sceneforge.core.metrics import psnr
from sceneforge.core.raster import Shading, albedo, render_view

# ----------------------------------------------------------------------------- rendering


@dataclass
class ViewBuffers:
    """The rasterizer's face buffer (-1 = background) and barycentrics of posed views."""

    face: Int[Tensor, "N H W"]
    bary: Float[Tensor, "N H W 3"]

    @property
    def hit(self) -> Bool[Tensor, "N H W"]:
        return self.face >= 0


def view_buffers(mesh: Mesh, cameras: Cameras) -> ViewBuffers:
    """Face ids and barycentrics at the pixel centres of every view (all of one size)."""
    plain = Mesh(mesh.vertices, mesh.faces)  # geometry only: nothing to shade
    outs = [
        render_view(plain, cameras, i, shading=Shading(mode="albedo")) for i in range(len(cameras))
    ]
    return ViewBuffers(torch.stack([o.face for o in outs]), torch.stack([o.bary for o in outs]))


def corner_values_from_vertices(
    vertex_values: Float[Tensor, "V C"], faces: Int[Tensor, "F 3"]
) -> Float[Tensor, "F 3 C"]:
    """Per-vertex values as per-corner values (renders identically)."""
    return vertex_values[faces]


def corner_values_from_mesh(mesh: Mesh) -> Float[Tensor, "F 3 3"]:
    """The mesh's own surface colour (texture, vertex colours or solid noise, as the
    rasterizer shades it with ``Shading(mode="albedo")``) sampled at every face corner: the
    starting albedo field of a loaded asset (detail finer than a face is lost)."""
    nf = mesh.num_faces
    face = torch.arange(nf).repeat_interleave(3)
    bary = torch.eye(3, dtype=torch.float64).repeat(nf, 1)
    return albedo(mesh, face, bary).reshape(nf, 3, 3)


def interpolate_corners(
    values: Float[Tensor, "F 3 C"], face: Int[Tensor, " P"], bary: Float[Tensor, "P 3"]
) -> Float[Tensor, "P C"]:
    """Barycentric blend of each point's face corners."""
    return (values[face] * bary.to(values.dtype)[..., None]).sum(1)


def render_corner_views(
    values: Float[Tensor, "F 3 C"], buffers: ViewBuffers, background: float = 0.0
) -> Float[Tensor, "N H W C"]:
    """Unlit views of a corner field (``background`` where no face is hit)."""
    n, h, w = buffers.face.shape
    out = torch.full((n, h, w, values.shape[-1]), background, dtype=values.dtype)
    hit = buffers.hit
    return out.index_put((hit,), interpolate_corners(values, buffers.face[hit], buffers.bary[hit]))


def region_masks(buffers: ViewBuffers, selected: Bool[Tensor, " F"]) -> Bool[Tensor, "N H W"]:
    """Pixels whose face (at the pixel centre) is in the selected region."""
    return buffers.hit & selected[buffers.face.clamp_min(0)]


# ----------------------------------------------------------------------------- inpainters


@runtime_checkable
class Inpainter(Protocol):
    """Edits rendered views inside masks: ``(N, H, W, C)`` views, ``(N, H, W)`` masks and a
    prompt -> ``(N, H, W, C)`` edited views (only masked pixels are used)."""

    def __call__(
        self, views: Float[Tensor, "N H W C"], masks: Bool[Tensor, "N H W"], prompt: str
    ) -> Float[Tensor, "N H W C"]: ...


class OracleInpainter:
    """Test inpainter: writes a known target into the masks, whatever the prompt.

    ``target`` is a colour ``(C,)`` or full target views ``(N, H, W, C)`` (e.g. the target
    texture rendered with :func:`render_corner_views`)."""

    def __init__(self, target: Tensor) -> None:
        self.target = target

    def __call__(self, views: Tensor, masks: Tensor, prompt: str) -> Tensor:
        target = self.target.to(views.dtype).expand_as(views)
        return torch.where(masks[..., None], target, views)


# ----------------------------------------------------------------------------- dataset update


class MaskedCornerField(nn.Module):
    """A corner field whose editable faces are the only parameters: the other faces' values
    live in a frozen buffer and cannot change."""

    def __init__(self, values: Float[Tensor, "F 3 C"], editable: Bool[Tensor, " F"]) -> None:
        super().__init__()
        self.register_buffer("frozen", values.detach().clone())
        self.register_buffer("editable_faces", editable.nonzero()[:, 0])
        self.free = nn.Parameter(values.detach()[self.editable_faces].clone())

    def forward(self) -> Float[Tensor, "F 3 C"]:
        return self.frozen.index_put((self.editable_faces,), self.free)


@dataclass
class EditConfig:
    """Dataset update of a region from edited views."""

    #: Adam steps.
    steps: int = 200
    #: Initial learning rate (cosine-decayed to 1 % of it).
    lr: float = 0.05
    #: Clamp the values to [low, high] after each step (None: leave unbounded).
    value_range: tuple[float, float] | None = (0.0, 1.0)


@dataclass
class EditResult:
    """The edited field, the views before, the inpainter's views, the region masks and the
    masked loss per step."""

    values: Float[Tensor, "F 3 C"]
    before: Float[Tensor, "N H W C"]
    edited: Float[Tensor, "N H W C"]
    masks: Bool[Tensor, "N H W"]
    losses: list[float] = field(default_factory=list)


def fit_region(
    values: Float[Tensor, "F 3 C"],
    selected: Bool[Tensor, " F"],
    buffers: ViewBuffers,
    edited: Float[Tensor, "N H W C"],
    masks: Bool[Tensor, "N H W"],
    config: EditConfig | None = None,
) -> tuple[Float[Tensor, "F 3 C"], list[float]]:
    """Optimise the selected faces' corners so that the field's views match ``edited``
    inside ``masks``; every other value is returned unchanged (bit for bit)."""
    config = config or EditConfig()
    if not bool(masks.any()):
        raise ValueError("fit_region: the region is visible in no view (empty masks)")
    model = MaskedCornerField(values, selected)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps, config.lr * 0.01)
    face, bary = buffers.face[masks], buffers.bary[masks]
    target = edited[masks].to(values.dtype)
    losses = []
    for _ in range(config.steps):
        opt.zero_grad()
        loss = (interpolate_corners(model(), face, bary) - target).square().mean()
        loss.backward()
        opt.step()
        sched.step()
        if config.value_range is not None:
            with torch.no_grad():
                model.free.clamp_(*config.value_range)
        losses.append(float(loss.detach()))
    return model().detach(), losses


def edit_region(
    mesh: Mesh,
    cameras: Cameras,
    values: Float[Tensor, "F 3 C"],
    selected: Bool[Tensor, " F"],
    inpainter: Inpainter,
    prompt: str,
    config: EditConfig | None = None,
    buffers: ViewBuffers | None = None,
) -> EditResult:
    """Re-texture the selected faces: render, inpaint inside the region's masks, update."""
    if not prompt.strip():
        raise ValueError("edit_region: the prompt is empty; say what the region should become")
    if values.shape[:2] != (mesh.num_faces, 3):
        raise ValueError(f"values must be ({mesh.num_faces}, 3, C), got {tuple(values.shape)}")
    if not bool(selected.any()):
        raise ValueError("edit_region: the selection is empty")
    buffers = view_buffers(mesh, cameras) if buffers is None else buffers
    before = render_corner_views(values, buffers)
    masks = region_masks(buffers, selected)
    edited = inpainter(before, masks, prompt)
    new, losses = fit_region(values, selected, buffers, edited, masks, config)
    return EditResult(new, before, edited, masks, losses)


def edit_scores(
    result: EditResult, buffers: ViewBuffers, target: Float[Tensor, "N H W C"]
) -> dict[str, float]:
    """``edit_inside_psnr`` (re-rendered views vs ``target`` inside the masks, dB) and
    ``edit_outside_change`` (mean absolute change of the views outside the masks)."""
    after = render_corner_views(result.values, buffers)
    n = after.shape[0]
    inside = psnr(
        after.reshape(n, -1, after.shape[-1]),
        target.reshape(n, -1, after.shape[-1]),
        result.masks.reshape(n, -1),
    )
    outside = ~result.masks
    change = float((after - result.before).abs()[outside].mean())
    return {"edit_inside_psnr": inside, "edit_outside_change": change}


# ----------------------------------------------------------------------------- versions


def version_path(folder: Path, stem: str, n: int, suffix: str = ".pt") -> Path:
    """``folder/STEM.vNNN.SUFFIX``."""
    return folder / f"{stem}.v{n:03d}{suffix}"


def save_field_version(
    folder: str | Path, values: Tensor, info: dict | None = None, stem: str = "albedo"
) -> Path:
    """Save ``values`` (and ``info``) as ``folder/STEM.vNNN.pt`` with the first free number.

    Written by :func:`sceneforge.core.atomic.write_bytes_versioned`: no version is ever
    overwritten, even by a concurrent writer, and a failed write leaves nothing."""
    folder = Path(folder)
    buf = io.BytesIO()
    torch.save({"values": values.detach().cpu(), "info": dict(info or {})}, buf)
    return write_bytes_versioned(
        folder / f"{stem}.pt", buf.getvalue(), name=lambda _p, n: version_path(folder, stem, n)
    )


def latest_field_version(folder: str | Path, stem: str = "albedo") -> Path | None:
    """The highest-numbered saved version of ``stem`` in ``folder`` (None if there is none)."""
    found = sorted(Path(folder).glob(f"{stem}.v[0-9][0-9][0-9].pt"))
    return found[-1] if found else None


def load_field_version(path: str | Path) -> tuple[Tensor, dict]:
    """The values and info of a saved version."""
    data = torch.load(Path(path), weights_only=True)
    return data["values"], data["info"]
