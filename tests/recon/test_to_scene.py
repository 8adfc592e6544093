"""``Reconstruction.to_scene``: the scene that loading the written SfM folder gives, in memory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_sfm import FAST, _synthetic

from sceneforge.core.image_io import read_image
from sceneforge.core.io import load_scene
from sceneforge.core.scene import SceneData
from sceneforge.recon.reconstruct import _point_colors, write_reconstruction
from sceneforge.recon.sfm import Reconstruction, SfMConfig, reconstruct_from_tracks


@pytest.fixture(scope="module")
def reconstruction() -> Reconstruction:
    """SfM on a synthetic orbit's exact tracks (unknown focal length: SIMPLE_RADIAL)."""
    _, tracks = _synthetic("orbit", num_views=6)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rec = reconstruct_from_tracks(tracks, SfMConfig(refinement=FAST, num_threads=1))
    finally:
        torch.set_num_threads(old)
    assert bool(rec.registered.all()) and rec.points.shape[0] > 100
    return rec


def _images(rec: Reconstruction, folder: Path) -> list[Path]:
    """A random PNG of its camera's size for every image (the tracks are synthetic)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(len(rec.cameras)):
        w, h = int(rec.cameras.width[i]), int(rec.cameras.height[i])
        paths.append(folder / f"view{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _assert_same_cameras(a: SceneData, b: SceneData) -> None:
    assert a.cameras.model == b.cameras.model
    torch.testing.assert_close(a.cameras.params, b.cameras.params, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        a.cameras.cam_from_world, b.cameras.cam_from_world, rtol=0, atol=1e-6
    )
    assert torch.equal(a.cameras.width.long(), b.cameras.width.long())
    assert torch.equal(a.cameras.height.long(), b.cameras.height.long())


@pytest.mark.parametrize("unregistered", [None, 2])
def test_to_scene_equals_the_written_folder_loaded(reconstruction, tmp_path, unregistered):
    """``to_scene`` against the folder ``write_reconstruction`` writes, loaded as the field
    trainer loads it (``transforms.json`` + ``sparse_pc.ply``) and as a COLMAP model
    (observations): same images, cameras, points and colours; one image left unregistered
    drops out of both, with its observations."""
    rec = reconstruction
    if unregistered is not None:
        registered = rec.registered.clone()
        registered[unregistered] = False
        by = [b if bool(r) else None for b, r in zip(rec.registered_by, registered)]
        rec = replace(rec, registered=registered, registered_by=by)
    paths = _images(rec, tmp_path / "images")
    colors = _point_colors([read_image(p) for p in paths], rec)
    out = tmp_path / "sfm"
    out.mkdir()
    write_reconstruction(rec, paths, out, colors, write_png=False)

    mem = rec.to_scene(paths, colors)
    disk = load_scene(out)
    assert disk.metadata["format"] == "nerfstudio"
    n_reg = int(rec.registered.sum())
    assert len(mem) == len(disk) == n_reg
    assert mem.image_names == disk.image_names
    assert [p.resolve() for p in mem.image_paths] == [p.resolve() for p in disk.image_paths]
    for i in range(n_reg):
        assert torch.equal(mem.load_image(i), disk.load_image(i))
        assert mem.load_mask(i) is None and disk.load_mask(i) is None
    _assert_same_cameras(mem, disk)
    assert mem.points.dtype == disk.points.dtype == torch.float64
    assert torch.equal(mem.points, disk.points)
    assert torch.equal(mem.point_colors, disk.point_colors)
    assert mem.images is None and disk.images is None and mem.depths is None
    assert disk.observations is None  # transforms.json has none: the COLMAP model has them

    colmap = load_scene(out / "sparse" / "0", images_dir=paths[0].parent)
    assert colmap.image_names == mem.image_names
    _assert_same_cameras(mem, colmap)
    torch.testing.assert_close(colmap.points, mem.points, rtol=0, atol=1e-9)
    assert torch.equal(colmap.point_colors, mem.point_colors)

    def observations(s: SceneData) -> list[tuple[int, int, float, float]]:
        o = s.observations
        xy = o.xy.double().tolist()
        return sorted(
            (int(i), int(p), *xy[k]) for k, (i, p) in enumerate(zip(o.image_idx, o.point_idx))
        )

    assert observations(mem) == observations(colmap)
    if unregistered is not None:
        assert len(mem.observations) < rec.obs_image.numel()
        assert f"view{unregistered:02d}.png" not in mem.image_names
