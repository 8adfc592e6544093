"""Export: PLY writer, depth maps, point cloud and marching-cubes mesh vs the ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sceneforge.core.synthetic import sample_surface, turntable_scene
from sceneforge.fields.api import TrainConfig, train
from sceneforge.fields.export import ExportConfig, export, ply_bytes
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.trainer import TrainerConfig

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("skimage")


def chamfer(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean distance a -> b (accuracy) and b -> a (completeness)."""
    d = torch.cdist(a.double(), b.double())
    return float(d.min(1).values.mean()), float(d.min(0).values.mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 64x64 turntable trained for 300 steps on one thread (~25 s)."""
    torch.set_num_threads(1)
    scene = turntable_scene(num_views=16, size=64)
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        max_steps=300,
        trainer=TrainerConfig(
            batch_rays=1024,
            nerf=NerfConfig(grid_lr=0.5),
            scene_box="bounded",
            use_masks=False,
            progress=False,
            tensorboard=False,
            num_threads=1,
        ),
        save_eval_images=False,
    )
    train(None, run, cfg, scene=scene)
    return scene, run


def test_ply_roundtrip_through_trimesh(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    f = np.array([[0, 2, 1], [0, 1, 3]])
    c = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    (tmp_path / "m.ply").write_bytes(ply_bytes(v, c, f))
    m = trimesh.load(tmp_path / "m.ply", process=False)
    np.testing.assert_allclose(m.vertices, v)
    np.testing.assert_array_equal(m.faces, f)
    np.testing.assert_array_equal(m.visual.vertex_colors[:, :3], c)


def test_mesh_close_to_ground_truth(trained, tmp_path):
    scene, run = trained
    res = export(run, tmp_path, ExportConfig(what="mesh", mesh_resolution=96), scene=scene)
    assert json.loads((tmp_path / "export.json").read_text())["mesh_faces"] == res["mesh_faces"]
    mesh = trimesh.load(tmp_path / "mesh.ply", process=False)
    assert len(mesh.faces) > 100
    gt = scene.metadata["mesh"]
    lo, hi = gt.bounds()
    extent = float((hi - lo).max())
    pg, _, _ = sample_surface(gt, 4000, torch.Generator().manual_seed(0))
    pm = torch.from_numpy(trimesh.sample.sample_surface(mesh, 4000, seed=0)[0])
    acc, comp = chamfer(pm, pg)
    assert acc < 0.05 * extent and comp < 0.03 * extent, (acc, comp, extent)
    # the same check rejects a misplaced mesh
    acc_bad, comp_bad = chamfer(pm + 0.1 * extent, pg)
    assert acc_bad + comp_bad > 2 * (acc + comp)


def test_pointcloud_and_depth(trained, tmp_path):
    scene, run = trained
    cfg = ExportConfig(what="pointcloud", min_accumulation=0.3)
    res = export(run, tmp_path, cfg, scene=scene)
    pc = trimesh.load(tmp_path / "pointcloud.ply")
    assert len(pc.vertices) == res["num_points"] > 500
    assert pc.colors.shape == (len(pc.vertices), 4)
    gt = scene.metadata["mesh"]
    pg, _, _ = sample_surface(gt, 4000, torch.Generator().manual_seed(0))
    d = torch.cdist(torch.from_numpy(pc.vertices).double(), pg.double()).min(1).values
    lo, hi = gt.bounds()
    assert float(d.median()) < 0.05 * float((hi - lo).max())

    res = export(run, tmp_path, ExportConfig(what="depth", min_accumulation=0.3), scene=scene)
    assert res["num_depth_maps"] == 14
    import cv2

    d_np = np.load(tmp_path / "depth" / "view_001.npy")
    d_png = cv2.imread(str(tmp_path / "depth" / "view_001.png"), cv2.IMREAD_UNCHANGED)
    assert d_np.shape == (64, 64) and d_png.dtype == np.uint16
    np.testing.assert_allclose(d_png / 1000.0, d_np, atol=1e-3)
    gt_d = scene.depths[1].numpy()
    both = (d_np > 0) & (gt_d > 0)
    assert both.sum() > 50
    # a soft 300-step field: rendered depth is plausible, not exact
    assert np.median(np.abs(d_np[both] - gt_d[both])) < 0.1 * float((hi - lo).max())


def test_tsdf_mesh(trained, tmp_path):
    pytest.importorskip("open3d")
    scene, run = trained
    cfg = ExportConfig(what="tsdf", min_accumulation=0.3)
    res = export(run, tmp_path, cfg, scene=scene)
    assert res["tsdf_faces"] > 100, res
    mesh = trimesh.load(tmp_path / "tsdf_mesh.ply", process=False)
    gt = scene.metadata["mesh"]
    pg, _, _ = sample_surface(gt, 4000, torch.Generator().manual_seed(0))
    pm = torch.from_numpy(trimesh.sample.sample_surface(mesh, 4000, seed=0)[0])
    acc, _ = chamfer(pm, pg)
    lo, hi = gt.bounds()
    assert acc < 0.05 * float((hi - lo).max())


def test_bad_config_errors(trained, tmp_path):
    scene, run = trained
    with pytest.raises(ValueError, match="unknown export"):
        export(run, tmp_path, ExportConfig(what="voxels"), scene=scene)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="never crosses"):
        export(run, tmp_path, ExportConfig(what="mesh", mesh_level=1e9), scene=scene)
