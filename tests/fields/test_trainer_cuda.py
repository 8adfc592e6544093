"""The trainer on CUDA against its CPU reference (``gpu``-marked; run by benchmarks/gpu_check.py):
the same checkpoint renders the same images on both devices, a CUDA run resumes exactly, patch
batches and a completion round run there."""

from __future__ import annotations

import pytest
import torch
from fields_analytic import sphere_scene
from test_trainer import params_of, tiny_config

from sceneforge.fields.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def scene():
    return sphere_scene(n_views=9, size=16)


def test_a_cpu_checkpoint_renders_the_same_on_cuda(scene, tmp_path):
    cpu = Trainer(scene, tiny_config(max_steps=20, device="cpu"))
    cpu.train()
    cpu.save_checkpoint(tmp_path / "c.pt")
    gpu = Trainer.from_checkpoint(tmp_path / "c.pt", scene, device="cuda")
    assert gpu.device.type == "cuda" and gpu.describe()["encoding"] == "triplane"
    for i in range(3):
        a = cpu.render_camera(scene.cameras, i, downscale=1)
        b = gpu.render_camera(scene.cameras, i, downscale=1)
        assert (a["rgb"] - b["rgb"]).abs().max() < 1e-3
        assert (a["accumulation"] - b["accumulation"]).abs().max() < 1e-3
    assert cpu.evaluate()["psnr"] == pytest.approx(gpu.evaluate()["psnr"], abs=0.01)


def test_cuda_training_resumes_where_it_stopped(scene, tmp_path):
    straight = Trainer(scene, tiny_config(max_steps=12, device="cuda"))
    straight.train()
    half = Trainer(scene, tiny_config(max_steps=12, device="cuda"), tmp_path)
    half.train(max_steps=6)
    half.save_checkpoint(tmp_path / "c.pt")
    back = Trainer.from_checkpoint(tmp_path / "c.pt", scene)
    assert back.device.type == "cuda" and back.step == 6
    back.train()
    assert torch.equal(back.generator.get_state(), straight.generator.get_state())
    a, b = params_of(straight), params_of(back)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5, msg=k)


def test_patch_batches_train_on_cuda(scene):
    tr = Trainer(scene, tiny_config(max_steps=20, device="cuda", batch="patches", patch_size=8))
    first = tr.train(max_steps=1)["loss"]
    assert tr.train()["loss"] < first


def test_a_completion_round_runs_on_cuda(tmp_path):
    from sceneforge.fields.nerf_model import NerfConfig
    from sceneforge.fields.sampling import SamplerConfig
    from sceneforge.fields.trainer import TrainerConfig
    from sceneforge.inpaint.dataset_update import (
        DatasetUpdateConfig,
        InpaintDatasetUpdate,
        masked_training_scene,
    )
    from sceneforge.inpaint.inpainters import TeleaInpainter
    from sceneforge.inpaint.masks import box_fill_masks
    from sceneforge.inpaint.synthetic import tiles_removal_scene

    rs = tiles_removal_scene(num_views=3, size=16, num_points=200)
    fill = box_fill_masks(rs.scene.cameras, rs.box, depths=rs.scene.depths)
    cfg = TrainerConfig(
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        device="cuda",
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=16)),
    )
    tr = Trainer(masked_training_scene(rs.scene, fill), cfg)
    upd = InpaintDatasetUpdate(
        tr,
        fill,
        TeleaInpainter(),
        DatasetUpdateConfig(warmup_steps=4, update_every=4, num_rounds=2, final_steps=4),
        tmp_path,
    )
    upd.run()
    assert tr.dataset_version == 2 and tr.step == 12
    assert (tmp_path / "datasets" / "v002" / "manifest.json").is_file()


def _gaussians_config(device: str, **kw):
    import dataclasses

    from sceneforge.fields.densify import DensifyConfig
    from sceneforge.fields.gaussian_model import GaussiansConfig
    from sceneforge.fields.trainer import TrainerConfig

    cfg = TrainerConfig(
        model="gaussians",
        max_steps=30,
        progress=False,
        tensorboard=False,
        device=device,
        scene_box="bounded",
        gaussians=GaussiansConfig(
            sh_degree=1, densify=DensifyConfig(refine_start_iter=10, refine_every=10)
        ),
    )
    return dataclasses.replace(cfg, **kw)


def test_gaussians_cpu_checkpoint_renders_the_same_with_gsplat(tmp_path):
    pytest.importorskip("gsplat")
    from sceneforge.core.synthetic import turntable_scene

    scene = turntable_scene(num_views=10, size=32)
    cpu = Trainer(scene, _gaussians_config("cpu"))
    cpu.train()
    cpu.save_checkpoint(tmp_path / "g.pt")
    gpu = Trainer.from_checkpoint(tmp_path / "g.pt", scene, device="cuda")
    assert gpu.describe()["rasterizer"] == "gsplat"
    for i in range(3):
        a = cpu.render_camera(scene.cameras, i, downscale=1)["rgb"]
        b = gpu.render_camera(scene.cameras, i, downscale=1)["rgb"]
        diff = (a - b).abs()
        # gsplat's fast-math exp can tip a pixel's skip / stop decision: a few pixels differ more
        assert float((diff > 1e-3).float().mean()) < 1e-3 and float(diff.max()) < 2e-2


def test_gaussians_train_and_densify_on_cuda_with_gsplat():
    pytest.importorskip("gsplat")
    from sceneforge.core.synthetic import turntable_scene

    scene = turntable_scene(num_views=10, size=32)
    tr = Trainer(scene, _gaussians_config("cuda"))
    n0 = tr.model.num_gaussians
    first = tr.train(max_steps=1)["loss"]
    assert tr.train()["loss"] < first and tr.model.num_gaussians != n0
