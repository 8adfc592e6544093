"""Captured mesh + photos -> relightable asset (stylize/hyperdreamer/capture.py): the fit
starts from the vertex colours and beats that start on fit and held-out views of a sphere
whose photos are Monte Carlo renders (not the fitted shader); outputs are versioned; named
maps and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import sphere_mesh
from sceneforge.core.raster import vertex_normals
from sceneforge.core.synthetic import orbit_rig
from sceneforge.stylize.hyperdreamer.brdf import BRDFInputs
from sceneforge.stylize.hyperdreamer.capture import (
    NAMED_ENVMAPS,
    CaptureFitConfig,
    CaptureMaterialsError,
    PosedImages,
    fit_capture,
    named_envmap,
    write_capture,
)
from sceneforge.stylize.hyperdreamer.envlight import shade_monte_carlo, sky_envmap
from sceneforge.stylize.hyperdreamer.export import linear_to_srgb, load_glb
from sceneforge.stylize.hyperdreamer.inverse import render_reference, surface_buffers

D64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _cams(n: int, size: int, elevation=(-10.0, 40.0)) -> Cameras:
    return Cameras(
        "PINHOLE",
        torch.tensor([[45.0, 45.0, size / 2, size / 2]] * n, dtype=D64),
        torch.full((n,), size),
        torch.full((n,), size),
        orbit_rig(n, (0.0, 0.0, 0.0), 2.0, elevation_deg=elevation),
    )


@pytest.fixture(scope="module")
def capture():
    """A 224-face sphere (top shiny red, bottom matte blue) photographed (Monte Carlo, 64
    samples per lobe, sRGB) under a sky: 5 fit views and 2 held-out views at 24x24."""
    torch.set_num_threads(1)
    mesh = sphere_mesh(0.5, segments=16)
    top = (mesh.vertices[:, 2:] > 0).to(D64)
    red, blue = torch.tensor([0.7, 0.2, 0.15], dtype=D64), torch.tensor([0.15, 0.3, 0.6])
    truth = BRDFInputs(top * red + (1 - top) * blue.double(), 0.3 + 0.5 * (1 - top), 0.3 * top)
    env = sky_envmap(16)

    def photos(cams: Cameras) -> PosedImages:
        surf = surface_buffers(mesh, cams)
        rgb = render_reference(surf, truth, env, num_samples=64)
        return PosedImages(cams, linear_to_srgb(surf.to_images(rgb)).float())

    views = photos(_cams(5, 24))
    held = photos(_cams(2, 24, (5.0, 25.0)))
    # what a field's vertex colours are: the surface's colour seen along its normal
    normal = vertex_normals(mesh.vertices, mesh.faces)
    colours = linear_to_srgb(shade_monte_carlo(env, normal, normal, truth, 64))
    return mesh, colours, views, held


def test_fit_beats_its_vertex_colour_start(capture):
    mesh, colours, views, held = capture
    grey = torch.full((mesh.vertices.shape[0], 3), 0.5, dtype=D64)
    cfg = CaptureFitConfig(steps=150)
    fit = fit_capture(mesh, colours, views, held, cfg)
    s = fit.scores
    assert s["fit_psnr"] > s["initial_psnr"] + 5.0, s
    assert s["fit_psnr"] > s["vertex_color_psnr"] + 5.0, s
    assert s["heldout_psnr"] > s["heldout_initial_psnr"] + 4.0, s
    assert len(fit.result.losses) == 150
    # the start really is the vertex colours: true colours start better than uniform grey
    start_grey = fit_capture(mesh, grey, views, None, CaptureFitConfig(steps=0)).scores
    assert s["initial_psnr"] > start_grey["initial_psnr"] + 3.0, (s, start_grey)


def test_write_capture_versions_and_reloads(capture, tmp_path):
    mesh, colours, views, _ = capture
    cfg = CaptureFitConfig(steps=5, relight_views=2, relight_maps=("noon", "studio"))
    fit = fit_capture(mesh, colours, views, None, cfg)
    first = write_capture(tmp_path, fit, views, cfg, {"source": "test"})
    assert first["summary"] == str(tmp_path / "materials.json")
    saved = json.loads((tmp_path / "materials.json").read_text())
    assert saved["source"] == "test" and saved["faces"] == mesh.num_faces
    assert set(saved["files"]) == {
        "glb",
        "envmap",
        "envmap_png",
        "fit",
        "relit_noon",
        "relit_studio",
    }
    asset = load_glb(saved["files"]["glb"])
    assert asset.faces.shape[0] == mesh.num_faces
    second = write_capture(tmp_path, fit, views, cfg)
    assert second["summary"] == str(tmp_path / "materials.v002.json")
    assert all(".v002." in p for p in second["files"].values())
    assert json.loads((tmp_path / "materials.json").read_text()) == saved


def test_named_maps_and_bad_inputs(capture):
    mesh, colours, views, _ = capture
    maps = {name: named_envmap(name, 8) for name in NAMED_ENVMAPS}
    assert len(maps) >= 3
    for m in maps.values():
        assert m.shape == (8, 16, 3) and bool((m > 0).all())
    assert not torch.allclose(maps["noon"], maps["sunset"])
    with pytest.raises(CaptureMaterialsError, match="unknown environment map 'moon'.*noon"):
        named_envmap("moon")
    with pytest.raises(CaptureMaterialsError, match="init_specular"):
        fit_capture(mesh, colours, views, None, CaptureFitConfig(steps=0, init_specular=0.0))
    with pytest.raises(CaptureMaterialsError, match="vertex colours must be"):
        fit_capture(mesh, colours[:-1], views, None, CaptureFitConfig(steps=0))
    wrong = PosedImages(views.cameras, views.images[:, :20])
    with pytest.raises(CaptureMaterialsError, match="every camera must be"):
        fit_capture(mesh, colours, wrong, None, CaptureFitConfig(steps=0))
