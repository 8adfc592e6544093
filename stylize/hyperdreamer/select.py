"""Click selection: pixel clicks on rendered views pick a 3D region of a mesh.

A click ``(view, x, y)`` names pixel column ``x``, row ``y`` of view ``view``. Its ray goes
through the pixel's centre ``(x + 0.5, y + 0.5)``, exactly where the rasterizer
(:func:`sceneforge.core.raster.render_view`) reports its face buffer, so the hit face is the
face the user saw under the cursor. The selection then grows from the hit face over the mesh's
face adjacency, within the hit face's semantic label (:mod:`.regions`):

* ``scope="component"``: the connected piece of the label that holds the hit face;
* ``scope="label"``: every face of the label, connected or not (a label like "legs" spans
  several disjoint pieces).

Several clicks give the union of their selections. A click that hits no surface raises
:class:`ClickMissError`, naming the pixel and the view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh
from sceneforge.core.raster import Shading, cast_pixels, render_view
from sceneforge.stylize.hyperdreamer.regions import connected_regions, face_adjacency

_SCOPES = ("component", "label")


class ClickMissError(ValueError):
    """A click whose ray hits no surface (the message names the pixel and the view)."""


@dataclass(frozen=True)
class Click:
    """A click on pixel column ``x``, row ``y`` of view ``view`` (integers; the ray goes
    through the pixel's centre)."""

    view: int
    x: int
    y: int


@dataclass
class SelectionConfig:
    """How a click's hit face grows into a region."""

    #: "component" (connected piece of the hit label) or "label" (all faces of the label).
    scope: str = "component"


def click_faces(
    mesh: Mesh,
    cameras: Cameras,
    clicks: list[Click],
    face_maps: Int[Tensor, "N H W"] | None = None,
) -> Int[Tensor, " K"]:
    """The face under each click: read from the views' rasterized face buffers when given
    (what the user saw), else an exact ray cast through the pixel centre (the same ray; only
    exact depth ties between coincident faces may resolve differently).

    Raises :class:`ClickMissError` for a click outside the image or on the background.
    """
    out = []
    for c in clicks:
        if not 0 <= c.view < len(cameras):
            raise ClickMissError(f"click ({c.x}, {c.y}): view {c.view} does not exist")
        w, h = int(cameras.width[c.view]), int(cameras.height[c.view])
        if not (0 <= c.x < w and 0 <= c.y < h):
            raise ClickMissError(
                f"click at pixel ({c.x}, {c.y}) of view {c.view} is outside the {w}x{h} image"
            )
        if face_maps is not None:
            face = int(face_maps[c.view, c.y, c.x])
        else:
            pix = torch.tensor([[c.x + 0.5, c.y + 0.5]], dtype=torch.float64)
            face = int(cast_pixels(mesh, cameras, c.view, pix).face[0])
        if face < 0:
            raise ClickMissError(
                f"click at pixel ({c.x}, {c.y}) of view {c.view} hits no surface (background)"
            )
        out.append(face)
    return torch.tensor(out, dtype=torch.long)


def grow_selection(
    seeds: Int[Tensor, " K"],
    labels: Int[Tensor, " F"],
    adjacency: Int[Tensor, "E 2"],
    scope: str = "component",
) -> Bool[Tensor, " F"]:
    """Faces reached from the ``seeds`` faces within their labels (see the module doc for
    ``scope``); the union over seeds."""
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    if scope == "label":
        return torch.isin(labels, labels[seeds])
    pieces = connected_regions(labels, adjacency)
    return torch.isin(pieces, pieces[seeds])


def select_region(
    mesh: Mesh,
    cameras: Cameras,
    clicks: list[Click],
    labels: Int[Tensor, " F"],
    config: SelectionConfig | None = None,
    adjacency: Int[Tensor, "E 2"] | None = None,
    face_maps: Int[Tensor, "N H W"] | None = None,
) -> Bool[Tensor, " F"]:
    """Faces selected by ``clicks`` on views of ``cameras``, grown within ``labels``
    (``face_maps``: the views' face buffers, see :func:`click_faces`)."""
    if not clicks:
        raise ValueError("select_region needs at least one click")
    config = config or SelectionConfig()
    if labels.shape != (mesh.num_faces,):
        raise ValueError(f"labels must be ({mesh.num_faces},), got {tuple(labels.shape)}")
    seeds = click_faces(mesh, cameras, clicks, face_maps)
    adjacency = face_adjacency(mesh) if adjacency is None else adjacency
    return grow_selection(seeds, labels, adjacency, config.scope)


def region_iou(
    selected: Bool[Tensor, " F"],
    truth: Bool[Tensor, " F"],
    weights: Float[Tensor, " F"] | None = None,
) -> float:
    """Intersection over union of two face sets (counted per face, or weighted, e.g. by
    face area)."""
    w = torch.ones(selected.shape[0], dtype=torch.float64) if weights is None else weights
    union = float(w[selected | truth].sum())
    if union == 0:
        raise ValueError("region_iou: both face sets are empty")
    return float(w[selected & truth].sum()) / union


def next_click(
    face_map: Int[Tensor, "H W"],
    truth: Bool[Tensor, " F"],
    selected: Bool[Tensor, " F"],
    view: int,
) -> Click | None:
    """The deterministic benchmark click (the usual interactive-segmentation protocol): in one
    view's face buffer, the pixel of the truth region not yet selected that lies farthest from
    the edge of that missed area (ties: first in row-major order); None when nothing of the
    truth is missed in this view."""
    hit = face_map >= 0
    f = face_map.clamp_min(0)
    missed = hit & truth[f] & ~selected[f]
    if not bool(missed.any()):
        return None
    padded = torch.nn.functional.pad(missed, (1, 1, 1, 1))  # the image edge is an edge too
    dist = torch.from_numpy(distance_transform_edt(padded.numpy()))[1:-1, 1:-1]
    idx = int(torch.argmax(dist.reshape(-1)))
    y, x = divmod(idx, face_map.shape[1])
    return Click(view, x, y)


def face_buffers(mesh: Mesh, cameras: Cameras) -> Int[Tensor, "N H W"]:
    """The rasterizer's face buffer (-1 = background) of every view (all of one size)."""
    plain = Mesh(mesh.vertices, mesh.faces)  # faces only: no textures to shade
    shading = Shading(mode="albedo")
    return torch.stack(
        [render_view(plain, cameras, i, shading=shading).face for i in range(len(cameras))]
    )


@dataclass
class ClickRun:
    """Clicks placed by :func:`simulate_clicks`, the final selection and the IoU after each
    click."""

    clicks: list[Click]
    selected: Bool[Tensor, " F"]
    ious: list[float]


def simulate_clicks(
    mesh: Mesh,
    cameras: Cameras,
    face_maps: Int[Tensor, "N H W"],
    labels: Int[Tensor, " F"],
    truth: Bool[Tensor, " F"],
    max_clicks: int = 3,
    stop_iou: float = 0.8,
    config: SelectionConfig | None = None,
) -> ClickRun:
    """A deterministic user: click (:func:`next_click`) in the view where the most pixels of
    ``truth`` are still unselected (ties: lowest view id), grow, repeat until the face IoU
    reaches ``stop_iou``, nothing of ``truth`` is missed in any view, or ``max_clicks``."""
    config = config or SelectionConfig()
    adjacency = face_adjacency(mesh)
    selected = torch.zeros(mesh.num_faces, dtype=torch.bool)
    clicks: list[Click] = []
    ious: list[float] = []
    f = face_maps.clamp_min(0)
    if not bool(((face_maps >= 0) & truth[f]).any()):
        raise ValueError("simulate_clicks: the true region is visible in no view")
    while len(clicks) < max_clicks and (not ious or ious[-1] < stop_iou):
        missed = ((face_maps >= 0) & truth[f] & ~selected[f]).flatten(1).sum(1)
        if int(missed.max()) == 0:
            break
        view = int(torch.argmax(missed))
        click = next_click(face_maps[view], truth, selected, view)
        clicks.append(click)
        selected = select_region(mesh, cameras, clicks, labels, config, adjacency, face_maps)
        ious.append(region_iou(selected, truth))
    return ClickRun(clicks, selected, ious)
