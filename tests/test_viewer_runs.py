"""The viewer on real run folders: a trained field (NeRF and Gaussians) renders like its
trainer, a completion run's image sets, and a ``sceneforge run`` output folder opening its last
stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_viewer import _wait

from sceneforge.core.io import save_scene
from sceneforge.viewer import (
    ProgressiveRenderer,
    ViewCamera,
    Viewer,
    ViewerConfig,
    find_run,
    frustum_pose,
    vertical_fov,
)


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    """A real fields run (3 steps) on a saved scene, and a completion of it (telea)."""
    from dataclasses import replace

    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.field import FieldConfig, TriPlaneConfig
    from sceneforge.fields.nerf_model import NerfConfig
    from sceneforge.fields.sampling import SamplerConfig
    from sceneforge.fields.trainer import TrainerConfig
    from sceneforge.inpaint.complete import CompleteConfig, complete
    from sceneforge.inpaint.dataset_update import DatasetUpdateConfig

    root = tmp_path_factory.mktemp("viewer_run")
    scene = replace(turntable_scene(num_views=4, size=16, num_points=10), masks=None)
    scene_dir = save_scene(scene, root / "scene", "nerfstudio")
    tcfg = TrainerConfig(
        max_steps=3,
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=0,
        nerf=NerfConfig(
            sampler=SamplerConfig(num_samples=16, grid_resolution=16),
            field=FieldConfig(
                triplane=TriPlaneConfig(resolutions=(16, 32), features=4),
                density_grid_resolution=32,
                hidden_dim=16,
                color_hidden_dim=16,
                sh_degree=2,
                appearance_dim=4,
            ),
        ),
    )
    train(scene_dir, root / "run", TrainConfig(trainer=tcfg, save_eval_images=False))
    mesh = scene.metadata["mesh"]
    v = mesh.vertices[mesh.faces[mesh.face_object == 0].reshape(-1)]
    cfg = CompleteConfig(
        mask_box=tuple(v.min(0).values.tolist() + v.max(0).values.tolist()),
        inpainter="telea",
        progress=False,
        update=DatasetUpdateConfig(warmup_steps=2, update_every=1, num_rounds=2, final_steps=1),
    )
    complete(root / "run", root / "out", cfg, scene=scene)
    return root


def test_run_folder_field_renders_like_the_trainer(completed_run):
    c = find_run(completed_run / "run")
    assert c.field.available and "step 3" in c.field.status and c.image_sets == []
    tr = c.field.trainer
    wxyz, pos = frustum_pose(c.scene.cameras)
    fov = vertical_fov(c.scene.cameras)
    vc = ViewCamera(tuple(wxyz[2]), tuple(pos[2]), float(fov[2]), 16, 16)
    got = ProgressiveRenderer(c.field.render_rays, lambda *a: None).render(vc, 16)
    want = tr.render_camera(c.scene.cameras, 2)["rgb"]
    assert got.shape == (16, 16, 3)
    np.testing.assert_allclose(got / 255.0, want.numpy(), atol=1 / 255 + 1e-6)


def test_a_gaussian_run_renders_whole_views_like_the_trainer(completed_run, tmp_path):
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.gaussian_model import GaussiansConfig
    from sceneforge.fields.trainer import TrainerConfig

    tcfg = TrainerConfig(
        model="gaussians",
        max_steps=3,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        scene_box="bounded",
        gaussians=GaussiansConfig(num_random=200, sh_degree=0),
    )
    train(completed_run / "scene", tmp_path / "gs", TrainConfig(trainer=tcfg))
    c = find_run(tmp_path / "gs")
    assert c.field.available and c.field.render_rays is None and "200 Gaussians" in c.field.status
    tr = c.field.trainer
    wxyz, pos = frustum_pose(c.scene.cameras)
    fov = vertical_fov(c.scene.cameras)
    vc = ViewCamera(tuple(wxyz[1]), tuple(pos[1]), float(fov[1]), 16, 16)
    r = ProgressiveRenderer(None, lambda *a: None, render_camera=c.field.render_camera)
    got = r.render(vc, 16)
    want = tr.render_camera(c.scene.cameras, 1)["rgb"]
    assert got.shape == (16, 16, 3)
    np.testing.assert_allclose(got / 255.0, want.numpy(), atol=1 / 255 + 1e-5)


def test_completion_run_image_sets(completed_run):
    out = completed_run / "out"
    v = Viewer(out, ViewerConfig(port=0))
    try:
        assert v.contents.field.available
        names = v.image_set_names()
        assert names == [
            "original",
            "fill mask",
            "completed v001",
            "completed v002",
            "completed render",
        ]
        assert v.image_set.options == tuple(names)
        for n in names:
            img = v.image(n, 1, 96)
            assert img is not None and img.shape == (16, 16, 3) and img.dtype == np.uint8
        # fill mask: filled pixels (white in masks/) are tinted magenta, the rest untouched
        from sceneforge.core.image_io import read_mask

        fill = read_mask(out / "masks" / f"{Path(v.scene.image_names[1]).stem}.png").numpy()
        assert fill.any() and (~fill).any()
        orig, tinted = v.image("original", 1, 96), v.image("fill mask", 1, 96)
        np.testing.assert_array_equal(orig[~fill], tinted[~fill])
        assert (tinted[fill][:, 1] < tinted[fill][:, [0, 2]].min(1)).all()
        v.image_set.value = "completed v002"
        _wait(
            lambda: all(
                np.array_equal(f.image, v.image("completed v002", i, 96))
                for i, f in enumerate(v.frustums)
            ),
            5,
            "the frustum thumbnails to switch",
        )
    finally:
        v.stop()


def test_view_of_a_run_output_folder_opens_its_last_stage(completed_run, tmp_path):
    """``sceneforge view OUT`` on a ``sceneforge run`` output folder: the completed field
    when there is one, else the trained field, else the reconstruction; still after OUT has
    been moved; the mask box goes to OUT; a scene or a train run opens itself."""
    import json

    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.trainer import TrainerConfig
    from sceneforge.viewer import folder_to_show, is_run_output

    out = tmp_path / "out"
    shutil.copytree(completed_run / "scene", out / "sfm")  # a run output stopped after SfM
    (out / "stages.json").write_text(json.dumps({"reconstruct": {"seconds": 1.0}}))
    assert is_run_output(out) and folder_to_show(out) == out / "sfm"
    c = find_run(out)
    assert c.shown == out / "sfm" and len(c.scene) == 4 and not c.field.available
    tcfg = TrainerConfig(max_steps=2, batch_rays=64, progress=False, tensorboard=False)
    tcfg.holdout_every, tcfg.checkpoint_every, tcfg.log_every = 0, 0, 0
    train(out / "sfm", out / "field", TrainConfig(trainer=tcfg, save_eval_images=False))
    assert folder_to_show(out) == out / "field"
    moved = tmp_path / "moved" / "out"
    moved.parent.mkdir()
    shutil.move(out, moved)
    c = find_run(moved)
    assert c.shown == moved / "field" and c.root == moved
    assert c.field.available and c.field.status.startswith("field/: field: checkpoint.pt")
    assert all(str(moved) in str(p) for p in c.scene.image_paths)
    # a finished completion wins (checkpoint and source.json, as `complete` writes them)
    (moved / "complete").mkdir()
    for name in ("checkpoint.pt", "source.json"):
        shutil.copy(completed_run / "out" / name, moved / "complete" / name)
    assert folder_to_show(moved) == moved / "complete"
    (moved / "complete" / "source.json").unlink()  # an unfinished completion does not
    assert folder_to_show(moved) == moved / "field"
    # the folders a run output holds, and plain ones, open themselves
    for d in (moved / "field", moved / "sfm", completed_run / "run", completed_run / "out"):
        assert not is_run_output(d) and folder_to_show(d) == d
    v = Viewer(moved, ViewerConfig(port=0, field=False))
    try:
        assert v.mask_box_path == moved / "mask_box.txt"
        assert v.cfg.host == "127.0.0.1" and len(v.frustums) == 4
    finally:
        v.stop()
