"""3D Gaussians on the scene-model seam: initialisation, training in the one trainer,
densification with exact resume, export to the 3DGS PLY, eval.json facts and bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.checkpoints import TrainingDivergedError
from sceneforge.fields.densify import DensifyConfig
from sceneforge.fields.gaussian_model import SH_C0, GaussianModel, GaussiansConfig
from sceneforge.fields.trainer import Trainer, TrainerConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return turntable_scene(num_views=10, size=32)


def gs_config(**kw) -> TrainerConfig:
    densify = kw.pop("densify", DensifyConfig(refine_start_iter=10, refine_every=10))
    cfg = TrainerConfig(
        model="gaussians",
        max_steps=40,
        progress=False,
        tensorboard=False,
        device="cpu",
        scene_box="bounded",
        render=dataclasses.replace(TrainerConfig().render, background="black"),
        gaussians=GaussiansConfig(sh_degree=1, sh_degree_interval=20, densify=densify),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def gparams(tr: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items() if torch.is_tensor(v)}


def test_initialised_from_the_scene_points(scene):
    tr = Trainer(scene, gs_config())
    m = tr.model
    assert isinstance(m, GaussianModel) and m.num_gaussians == scene.points.shape[0]
    p = m.params
    torch.testing.assert_close(p["means"].detach(), scene.points.float())
    rgb = SH_C0 * p["sh0"].detach()[:, 0] + 0.5
    torch.testing.assert_close(rgb, scene.point_colors.float() / 255, atol=1e-6, rtol=0)
    assert p["shN"].shape == (m.num_gaussians, 3, 3)
    scales = p["scales"].detach()
    assert bool(torch.isfinite(scales).all()) and float(scales.exp().max()) < 1.0


def test_random_init_in_a_bounded_box_and_a_clear_error_without_one(scene):
    bare = dataclasses.replace(scene, points=None, point_colors=None, observations=None)
    cfg = gs_config()
    cfg.gaussians.num_random = 500
    tr = Trainer(bare, cfg)
    lo, hi = tr.scene_box.aabb
    means = tr.model.params["means"].detach()
    assert tr.model.num_gaussians == 500 and bool(((means >= lo) & (means <= hi)).all())
    unbounded = dataclasses.replace(bare, metadata={})
    with pytest.raises(ValueError, match="need a bounded scene box"):
        Trainer(unbounded, gs_config(scene_box="unbounded"))
    cfg = gs_config()
    cfg.gaussians.init = "points"
    with pytest.raises(ValueError, match="has no sparse points"):
        Trainer(bare, cfg)


def test_distorted_cameras_train_on_the_undistorted_scene(scene):
    from sceneforge.core.cameras import Cameras
    from sceneforge.fields.gaussian_model import camera_matrices

    c = scene.cameras
    p = torch.cat([c.params[:, :1], c.params[:, 2:4], torch.full((len(c), 1), 0.05)], 1)
    cams = Cameras("SIMPLE_RADIAL", p.to(c.params), c.width, c.height, c.cam_from_world)
    distorted = dataclasses.replace(scene, cameras=cams)
    tr = Trainer(distorted, gs_config(max_steps=2))
    assert tr.scene.cameras.model == "PINHOLE" and tr.scene.observations is None
    # the pixels moved: the undistorted image differs from the capture away from the centre
    assert not torch.equal(tr.scene.load_image(1), distorted.load_image(1))
    tr.train()
    with pytest.raises(ValueError, match="undistorted pinhole"):
        camera_matrices(cams, 0)


def test_trains_densifies_and_resumes_exactly(scene, tmp_path):
    straight = Trainer(scene, gs_config())
    n0 = straight.model.num_gaussians
    first = straight.train(max_steps=1)["loss"]
    last = straight.train()
    assert last["loss"] < first
    assert straight.model.num_gaussians != n0  # densification changed the set
    assert straight.model.sh_degree_now == 1
    half = Trainer(scene, gs_config(), tmp_path)
    half.train(max_steps=25)
    half.save_checkpoint(tmp_path / "c.pt")
    back = Trainer.from_checkpoint(tmp_path / "c.pt", scene)
    assert back.model.num_gaussians == half.model.num_gaussians
    back.train()
    a, b = gparams(straight), gparams(back)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_eval_json_names_the_model_and_counts_gaussians(scene, tmp_path):
    from sceneforge.fields.api import TrainConfig, train

    res = train(None, tmp_path, TrainConfig(trainer=gs_config(max_steps=5)), scene=scene)
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["model"] == "gaussians" and ev["num_gaussians"] > 0 and ev["device"] == "cpu"
    assert res["psnr"] == pytest.approx(ev["psnr"])


def test_export_writes_a_3dgs_ply_that_reads_back(scene, tmp_path):
    from sceneforge.fields.export import ExportConfig, export_trainer
    from sceneforge.fields.gaussian_ply import read_gaussian_ply

    tr = Trainer(scene, gs_config(max_steps=3))
    tr.train()
    res = export_trainer(tr, tmp_path, ExportConfig())
    ply = read_gaussian_ply(res["gaussians"])
    p = tr.model.params
    assert res["num_gaussians"] == tr.model.num_gaussians and ply.sh_degree == 1
    torch.testing.assert_close(ply.means, p["means"].detach())
    torch.testing.assert_close(ply.shN, p["shN"].detach())
    with pytest.raises(ValueError, match="cannot export 'mesh'"):
        export_trainer(tr, tmp_path, ExportConfig(what="mesh"))


def test_nan_parameters_stop_training_and_keep_the_last_checkpoint(scene, tmp_path):
    tr = Trainer(scene, gs_config(checkpoint_every=2), tmp_path)
    tr.train(max_steps=2)
    with torch.no_grad():
        tr.model.params["opacities"][0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        tr.train(max_steps=4)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2


def test_cli_trains_gaussians_and_renders(scene, tmp_path):
    from sceneforge.cli import main
    from sceneforge.core.io import save_scene

    scene_dir = save_scene(scene, tmp_path / "scene", "colmap")
    run = tmp_path / "run"
    flags = ["--model", "gaussians", "--max-steps", "4", "--trainer.scene-box", "bounded"]
    flags += ["--trainer.no-progress", "--trainer.no-tensorboard", "--no-save-eval-images"]
    assert main(["train", str(scene_dir), str(run), *flags]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["model"] == "gaussians" and ev["steps"] == 4 and ev["num_gaussians"] >= 100
    out = tmp_path / "render"
    assert main(["render", str(run), str(out), "--path", "train", "--no-video"]) == 0
    assert len(list((out / "frames").glob("*.png"))) == 8  # views 0 and 8 are held out


def test_init_from_a_3dgs_ply_and_a_clear_error_for_a_plain_point_cloud(scene, tmp_path):
    from sceneforge.fields.export import ExportConfig, export_trainer
    from sceneforge.fields.gaussian_ply import GaussianPlyError

    tr = Trainer(scene, gs_config(max_steps=3))
    tr.train()
    ply = export_trainer(tr, tmp_path / "exp", ExportConfig())["gaussians"]
    cfg = gs_config()
    cfg.gaussians.init, cfg.gaussians.ply = "ply", ply
    again = Trainer(scene, cfg)
    for k in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        torch.testing.assert_close(again.model.params[k].detach(), tr.model.params[k].detach())
    plain = tmp_path / "cloud.ply"
    header = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
    header += "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
    plain.write_text(header + "end_header\n0 0 0 255 0 0\n")
    cfg.gaussians.ply = str(plain)
    with pytest.raises(GaussianPlyError, match="cloud.ply.*f_dc_0"):
        Trainer(scene, cfg)


def test_object_captures_start_inside_the_visual_hull(scene):
    from sceneforge.fields.masks import in_visual_hull

    bare = dataclasses.replace(scene, points=None, point_colors=None, observations=None)
    cfg = gs_config(object_masks=True, scene_box="auto")
    cfg.gaussians.num_random = 400
    tr = Trainer(bare, cfg)
    means = tr.model.params["means"].detach().double()
    idx = tr.train_indices
    masks = [tr.scene.load_mask(i) for i in idx]
    assert tr.model.num_gaussians == 400
    assert bool(in_visual_hull(tr.scene.cameras[idx], masks, means).all())
    rgb = SH_C0 * tr.model.params["sh0"].detach()[:, 0] + 0.5
    assert float(rgb.std()) > 0.01  # coloured from the images, not one grey
