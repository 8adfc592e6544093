"""Region-limited edits (stylize/hyperdreamer/edit.py): the oracle inpainter's target is reached
inside the clicked region, nothing outside changes, and edited fields are saved as new
numbered versions that never overwrite."""

from __future__ import annotations

import pytest
import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import load_mesh, sphere_mesh
from sceneforge.core.synthetic import orbit_rig
from sceneforge.stylize.hyperdreamer.edit import (
    EditConfig,
    Inpainter,
    MaskedCornerField,
    OracleInpainter,
    corner_values_from_mesh,
    corner_values_from_vertices,
    edit_region,
    edit_scores,
    fit_region,
    latest_field_version,
    load_field_version,
    region_masks,
    render_corner_views,
    save_field_version,
    view_buffers,
)
from sceneforge.stylize.hyperdreamer.regions import cluster_segment
from sceneforge.stylize.hyperdreamer.select import (
    Click,
    SelectionConfig,
    face_buffers,
    select_region,
    simulate_clicks,
)

D64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _scene(num_views: int = 4, size: int = 40):
    """A 224-face sphere with a smooth per-vertex albedo; its upper cap (centroid z > 0.15) is
    a separate label (part 1) from the rest (part 0)."""
    mesh = sphere_mesh(0.5, segments=16)
    v = mesh.vertices
    vertex_albedo = torch.stack(
        [0.5 + 0.3 * v[:, 0], 0.4 + 0.2 * v[:, 1], 0.6 - 0.3 * v[:, 2]], -1
    ).float()
    labels = (mesh.vertices[mesh.faces].mean(1)[:, 2] > 0.15).long()
    cams = Cameras(
        "PINHOLE",
        torch.tensor([[1.3 * size, 1.3 * size, size / 2, size / 2]] * num_views, dtype=D64),
        torch.full((num_views,), size),
        torch.full((num_views,), size),
        orbit_rig(num_views, (0.0, 0.0, 0.0), 2.0, elevation_deg=(25.0, 55.0)),
    )
    return mesh, cams, corner_values_from_vertices(vertex_albedo, mesh.faces), labels


def _click_cap(mesh, cams, labels):
    """Select the cap with one click at its first visible pixel of view 0."""
    buffers = view_buffers(mesh, cams)
    on_cap = (buffers.face[0] >= 0) & (labels[buffers.face[0].clamp_min(0)] == 1)
    y, x = on_cap.nonzero()[len(on_cap.nonzero()) // 2].tolist()
    return select_region(mesh, cams, [Click(0, x, y)], labels), buffers


def test_corner_views_match_vertex_interpolation():
    mesh, cams, values, _ = _scene(2, 24)
    buffers = view_buffers(mesh, cams)
    views = render_corner_views(values, buffers, background=-1.0)
    hit = buffers.hit
    f, b = buffers.face[hit], buffers.bary[hit].float()
    vertex = values[:, 0].new_zeros(mesh.vertices.shape[0], 3)
    vertex[mesh.faces.reshape(-1)] = values.reshape(-1, 3)
    expect = (vertex[mesh.faces[f]] * b[..., None]).sum(1)
    assert torch.allclose(views[hit], expect, atol=1e-6)
    assert bool((views[~hit] == -1).all())


def test_masked_field_only_trains_the_region():
    mesh, _, values, labels = _scene(1, 8)
    sel = labels == 1
    model = MaskedCornerField(values, sel)
    assert [p.shape for p in model.parameters()] == [(int(sel.sum()), 3, 3)]
    assert torch.equal(model(), values)
    model().sum().backward()
    assert model.free.grad is not None and bool((model.free.grad == 1).all())


def test_oracle_edit_reaches_a_colour_inside_and_changes_nothing_outside():
    mesh, cams, values, labels = _scene()
    selected, buffers = _click_cap(mesh, cams, labels)
    assert torch.equal(selected, labels == 1)
    colour = torch.tensor([0.9, 0.15, 0.55])
    oracle = OracleInpainter(colour)
    assert isinstance(oracle, Inpainter)
    result = edit_region(mesh, cams, values, selected, oracle, "pink cap", buffers=buffers)
    target = torch.where(result.masks[..., None], colour.expand_as(result.before), result.before)
    scores = edit_scores(result, buffers, target)
    assert scores["edit_inside_psnr"] >= 30.0, scores
    assert scores["edit_outside_change"] < 1.0 / 255.0
    assert torch.equal(result.values[~selected], values[~selected])  # bit for bit
    assert result.losses[-1] < 1e-2 * result.losses[0]
    # the edit did change the region
    assert float((result.values[selected] - values[selected]).abs().mean()) > 0.1


def test_oracle_edit_reaches_a_textured_target():
    """A target pattern (stripes over the sphere, rendered from a known corner field) is
    written into the region's pixels by the oracle; the update must reproduce it."""
    mesh, cams, values, labels = _scene()
    selected, buffers = _click_cap(mesh, cams, labels)
    v = mesh.vertices
    stripes = torch.stack(
        [0.5 + 0.4 * torch.sin(9 * v[:, 0]), 0.5 + 0.4 * torch.cos(7 * v[:, 1]), 0.3 + 0 * v[:, 2]],
        -1,
    ).float()
    target_views = render_corner_views(corner_values_from_vertices(stripes, mesh.faces), buffers)
    result = edit_region(
        mesh,
        cams,
        values,
        selected,
        OracleInpainter(target_views),
        "stripes",
        EditConfig(300),
        buffers=buffers,
    )
    scores = edit_scores(result, buffers, target_views)
    assert scores["edit_inside_psnr"] >= 30.0, scores
    assert scores["edit_outside_change"] == 0.0
    assert torch.equal(result.masks, region_masks(buffers, selected))


def test_edit_errors():
    mesh, cams, values, labels = _scene(2, 16)
    sel = labels == 1
    oracle = OracleInpainter(torch.zeros(3))
    with pytest.raises(ValueError, match="prompt is empty"):
        edit_region(mesh, cams, values, sel, oracle, "  ")
    with pytest.raises(ValueError, match="selection is empty"):
        edit_region(mesh, cams, values, torch.zeros_like(sel), oracle, "x")
    buffers = view_buffers(mesh, cams)
    with pytest.raises(ValueError, match="visible in no view"):
        fit_region(
            values, sel, buffers, torch.zeros(2, 16, 16, 3), torch.zeros(2, 16, 16, dtype=bool)
        )


def test_versioned_save_never_overwrites(tmp_path):
    a, b = torch.zeros(4, 3, 3), torch.ones(4, 3, 3)
    assert latest_field_version(tmp_path) is None
    p1 = save_field_version(tmp_path, a, {"prompt": "first"})
    p2 = save_field_version(tmp_path, b, {"prompt": "second"})
    assert (p1.name, p2.name) == ("albedo.v001.pt", "albedo.v002.pt")
    first = p1.read_bytes()
    # a version written by someone else is skipped, not replaced
    (tmp_path / "albedo.v003.pt").write_bytes(b"foreign")
    p4 = save_field_version(tmp_path, b + 1, {"prompt": "third"})
    assert p4.name == "albedo.v004.pt"
    assert (tmp_path / "albedo.v003.pt").read_bytes() == b"foreign"
    assert p1.read_bytes() == first
    values, info = load_field_version(p1)
    assert torch.equal(values, a) and info == {"prompt": "first"}
    assert torch.equal(load_field_version(p4)[0], b + 1)
    assert latest_field_version(tmp_path) == p4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "albedo.v001.pt",
        "albedo.v002.pt",
        "albedo.v003.pt",
        "albedo.v004.pt",
    ]  # no temporary file left behind


def test_spider_segment_click_edit(shared_data):
    """End to end on the shared spider: offline segmenter, clicks on its eyes (Augentex), an
    oracle colour written into them; the eyes reach it, every other face keeps its texture."""
    path = shared_data / "meshes" / "spider.obj"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    mesh = load_mesh(path)
    size, n = 64, 6
    cams = Cameras(
        "PINHOLE",
        torch.tensor([[1.2 * size, 1.2 * size, size / 2, size / 2]] * n, dtype=D64),
        torch.full((n,), size),
        torch.full((n,), size),
        orbit_rig(n, (0.0, 0.0, 0.0), 1.5, elevation_deg=(10.0, 40.0)),
    )
    values = corner_values_from_mesh(mesh)
    assert values.shape == (mesh.num_faces, 3, 3) and 0 <= float(values.min()) < 1
    buffers = view_buffers(mesh, cams)
    labels = cluster_segment(mesh).labels
    eyes = mesh.face_material == 0
    run = simulate_clicks(
        mesh, cams, face_buffers(mesh, cams), labels, eyes, 3, config=SelectionConfig("label")
    )
    assert run.ious[-1] >= 0.8
    colour = torch.tensor([0.1, 0.9, 0.2])
    result = edit_region(
        mesh, cams, values, run.selected, OracleInpainter(colour), "green eyes", buffers=buffers
    )
    target = torch.where(result.masks[..., None], colour.expand_as(result.before), result.before)
    scores = edit_scores(result, buffers, target)
    assert scores["edit_inside_psnr"] >= 30.0, scores
    assert scores["edit_outside_change"] < 1.0 / 255.0
    assert torch.equal(result.values[~run.selected], values[~run.selected])
