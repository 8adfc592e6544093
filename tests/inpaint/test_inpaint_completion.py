"""End-to-end completion on a synthetic object-removal scene (trains a small field)."""

from __future__ import annotations

import json

import pytest
import torch

from sceneforge.core.metrics import psnr
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import Trainer, TrainerConfig
from sceneforge.inpaint.dataset_update import (
    DatasetUpdateConfig,
    InpaintDatasetUpdate,
    masked_training_scene,
)
from sceneforge.inpaint.inpainters import MultiViewInpainter
from sceneforge.inpaint.masks import box_fill_masks
from sceneforge.inpaint.synthetic import tiles_removal_scene

WARMUP, FINAL = 150, 60


# the fields occupancy grid empties itself at the first update when the initial density is
# uniform (reported to the lead); a low alpha threshold keeps it occupied
SAMPLER = dict(num_samples=48, grid_alpha_threshold=1e-3)


@pytest.fixture(scope="module")
def removal():
    torch.set_num_threads(1)
    rs = tiles_removal_scene(num_views=12, size=32)
    fill = box_fill_masks(rs.scene.cameras, rs.box, depths=rs.scene.depths)
    return rs, fill


def _eval(trainer, rs, fill):
    ps, derr = [], []
    for i in range(len(rs.scene)):
        if not bool(fill[i].any()):
            continue
        r = trainer.render_camera(rs.scene.cameras, i)
        ps.append(psnr(r["rgb"], rs.truth_images[i], fill[i]))
        d = r["depth"] / r["accumulation"].clamp(min=1e-6)
        sel = fill[i] & (rs.truth_depths[i] > 0)
        derr.append((d - rs.truth_depths[i])[sel].abs().median())  # robust to empty rays
    return sum(ps) / len(ps), float(torch.stack(derr).mean())


def test_multiview_completion_beats_masked_field_and_depth_loss_helps(removal, tmp_path):
    """Photos only (the realistic path): the multi-view backend warps with the field's own
    rendered depth (calibrated on the observed pixels) and the depth loss uses the completed
    depth made from it."""
    rs, fill = removal
    before = [im.clone() for im in rs.scene.images]
    tcfg = TrainerConfig(
        max_steps=WARMUP + FINAL,
        batch_rays=512,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=0,
        scene_box="bounded",  # from the scene's sparse (SfM-like) points
        nerf=NerfConfig(sampler=SamplerConfig(**SAMPLER)),
    )
    trainer = Trainer(masked_training_scene(rs.scene, fill), tcfg)
    trainer.train(max_steps=WARMUP)
    base_psnr, base_derr = _eval(trainer, rs, fill)  # the masked-only field
    snapshot = {k: v for k, v in trainer.state_dict().items()}
    snapshot = torch.utils._pytree.tree_map(
        lambda x: x.clone() if isinstance(x, torch.Tensor) else x, snapshot
    )
    results = {}
    for loss in ("none", "l1"):
        trainer.load_state_dict(snapshot)
        trainer.loss_hooks.clear()
        upd_cfg = DatasetUpdateConfig(
            warmup_steps=0,
            num_rounds=1,
            final_steps=FINAL,
            depth_loss=loss,
            depth_source="render",  # photos only: warp with the field's rendered depth
            depth_loss_weight=0.5,
        )
        upd = InpaintDatasetUpdate(trainer, fill, MultiViewInpainter(), upd_cfg, tmp_path / loss)
        upd.run()
        results[loss] = _eval(trainer, rs, fill)
        manifest = json.loads((tmp_path / loss / "datasets" / "v001" / "manifest.json").read_text())
        assert manifest["inpainter"] == "multiview" and len(manifest["images"]) == 12
    print("masked-only", base_psnr, base_derr, "ours", results)
    assert results["none"][0] >= base_psnr + 1.0
    assert results["l1"][0] >= base_psnr + 1.0
    assert results["l1"][1] < results["none"][1]
    # the capture itself is untouched (updates live in the dataset and the version folders)
    assert all(torch.equal(a, b) for a, b in zip(rs.scene.images, before))


@pytest.mark.parametrize("model", ["nerf", "gaussians"])
def test_complete_run_dir_writes_outputs(tmp_path, model):
    """The same completion code path (run folder -> fill masks -> dataset update rounds ->
    outputs) for every scene model."""
    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.gaussian_model import GaussiansConfig
    from sceneforge.inpaint.complete import CompleteConfig, complete

    torch.set_num_threads(1)
    scene = turntable_scene(num_views=4, size=16, num_points=10)
    from dataclasses import replace

    scene = replace(scene, masks=None)
    tcfg = TrainerConfig(
        model=model,
        max_steps=3,
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=0,
        # Gaussians start uniformly in a bounded box here (10 sparse points are too few)
        scene_box="bounded" if model == "gaussians" else "auto",
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=16, grid_alpha_threshold=1e-3)),
        gaussians=GaussiansConfig(num_random=300, sh_degree=0),
    )
    train(None, tmp_path / "run", TrainConfig(trainer=tcfg, save_eval_images=False), scene=scene)
    mesh = scene.metadata["mesh"]
    v = mesh.vertices[mesh.faces[mesh.face_object == 0].reshape(-1)]
    box = tuple(v.min(0).values.tolist() + v.max(0).values.tolist())
    cfg = CompleteConfig(
        mask_box=box,
        inpainter="telea",
        progress=False,
        update=DatasetUpdateConfig(warmup_steps=2, update_every=1, num_rounds=2, final_steps=1),
    )
    info = complete(tmp_path / "run", tmp_path / "out", cfg, scene=scene)
    out = tmp_path / "out"
    assert info["steps"] == 4 and len(info["rounds"]) == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["model_name"] == model
    assert (out / "checkpoint.pt").is_file() and (out / "complete.json").is_file()
    for sub in ("renders", "before_after", "masks"):
        assert len(list((out / sub).glob("*.png"))) == 4
    assert sorted(p.name for p in (out / "datasets").iterdir()) == ["v001", "v002"]
    strengths = [r["strength"] for r in info["rounds"]]
    assert strengths == [1.0, 0.4]
    with pytest.raises(ValueError, match="nothing to fill"):
        complete(tmp_path / "run", tmp_path / "out2", CompleteConfig(), scene=scene)
