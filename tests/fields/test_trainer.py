"""Trainer: exact resume, live dataset updates, masks, checkpoint errors, API outputs."""

from __future__ import annotations

import json

import pytest
import torch
from fields_analytic import sphere_scene

from sceneforge.fields.api import RenderConfig, TrainConfig, render, train
from sceneforge.fields.datasets import RayDataset
from sceneforge.fields.encodings import TriPlaneConfig
from sceneforge.fields.field import FieldConfig
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import CheckpointError, Trainer, TrainerConfig, read_checkpoint


def tiny_config(**kw) -> TrainerConfig:
    cfg = TrainerConfig(
        max_steps=40,
        batch_rays=128,
        progress=False,
        tensorboard=False,
        device="cpu",
        nerf=NerfConfig(
            field=FieldConfig(
                triplane=TriPlaneConfig(resolutions=(16, 32), features=4),
                density_grid_resolution=32,
                hidden_dim=16,
                color_hidden_dim=16,
                sh_degree=2,
                appearance_dim=4,
            ),
            sampler=SamplerConfig(num_samples=32, grid_resolution=16, grid_update_every=8),
        ),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def scene():
    return sphere_scene(n_views=9, size=16)


def params_of(tr: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


def test_resume_is_bit_exact(scene, tmp_path):
    a = Trainer(scene, tiny_config())
    a.train(max_steps=20)  # crosses occupancy-grid updates at steps 0, 8, 16
    b = Trainer(scene, tiny_config())
    b.train(max_steps=10)
    b.save_checkpoint(tmp_path / "ckpt.pt")
    torch.manual_seed(123)  # the resumed trainer must not depend on the global RNG state
    c = Trainer.from_checkpoint(tmp_path / "ckpt.pt", scene)
    assert c.step == 10
    c.train(max_steps=20)
    pa, pc = params_of(a), params_of(c)
    assert pa.keys() == pc.keys()
    for k in pa:
        assert torch.equal(pa[k], pc[k]), k
    assert torch.equal(a.generator.get_state(), c.generator.get_state())


def test_dataset_update_is_used_by_the_next_batches(scene, tmp_path):
    tr = Trainer(scene, tiny_config())
    tr.train(max_steps=3)
    seen = []
    tr.add_loss(
        lambda t, batch, out: seen.append((batch.image_idx, batch.rgb)) or out["rgb"].sum() * 0
    )
    red = torch.zeros(16, 16, 3)
    red[..., 0] = 1.0
    v = tr.dataset.update_images([0, 2], [red, red])
    assert v == 1 and tr.dataset.version == 1
    tr.train(max_steps=8)
    assert len(seen) == 5
    for idx, rgb in seen:
        upd = (idx == 0) | (idx == 2)
        assert upd.any()
        assert (rgb[upd] == red[0, 0]).all()  # every ray of an updated image is red now
        assert not (rgb[~upd] == red[0, 0]).all(-1).all()
    # the updated pixels travel with the checkpoint (the scene on disk is unchanged)
    tr.save_checkpoint(tmp_path / "ckpt.pt")
    back = Trainer.from_checkpoint(tmp_path / "ckpt.pt", scene)
    assert back.dataset.version == 1 and torch.equal(back.dataset.image(2), red)


def test_replace_and_bad_update(scene):
    ds = RayDataset(scene, [1, 2, 3])
    with pytest.raises(ValueError, match="expected"):
        ds.update_images([0], [torch.zeros(8, 8, 3)])
    assert ds.replace(scene, [4, 5]) == 1 and len(ds) == 2


def test_training_uses_only_usable_pixels(scene):
    masks = []
    for _ in range(len(scene)):
        m = torch.zeros(16, 16, dtype=torch.bool)
        m[:, :8] = True
        masks.append(m)
    masked = type(scene)(**{**scene.__dict__, "masks": masks})
    ds = RayDataset(masked, [1, 2])
    b = ds.sample(2000, torch.Generator().manual_seed(0))
    local = b.pixel_idx - ds.offsets[b.image_idx]
    assert ((local % 16) < 8).all()
    assert ds.num_rays == 2 * 16 * 8


def test_corrupt_checkpoint_names_the_file(scene, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt"):
        read_checkpoint(bad)
    tr = Trainer(scene, tiny_config())
    good = tr.save_checkpoint(tmp_path / "good.pt")
    data = good.read_bytes()
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        Trainer.from_checkpoint(trunc, scene)
    with pytest.raises(CheckpointError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")
    # a checkpoint from another scene is refused
    other = sphere_scene(n_views=10, size=16)
    with pytest.raises(CheckpointError, match="good.pt"):
        Trainer.from_checkpoint(good, other)


def test_train_and_render_api_write_outputs(scene, tmp_path):
    cfg = TrainConfig(trainer=tiny_config(max_steps=12, checkpoint_every=5, tensorboard=True))
    res = train(None, tmp_path / "run", cfg, scene=scene)
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    for k in ("psnr", "ssim", "num_eval_images", "steps", "wall_s"):
        assert k in ev and k in res
    assert ev["steps"] == 12 and ev["num_eval_images"] == 2
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    # resume: more steps continue from the checkpoint
    cfg2 = TrainConfig(max_steps=15, trainer=tiny_config())
    assert train(None, tmp_path / "run", cfg2, scene=scene)["steps"] == 15
    out = render(tmp_path / "run", tmp_path / "render", RenderConfig(num_frames=3), scene=scene)
    assert out["num_frames"] == 3
    assert len(list((tmp_path / "render" / "frames").glob("*.png"))) == 3
    assert (tmp_path / "render" / "depth" / "0000.png").is_file()
    assert "video" in out


def test_hash_grid_mlp_density_field_trains(scene):
    """The CUDA-default combination (hash grid + MLP density) runs and lowers the loss on CPU."""
    cfg = tiny_config(max_steps=30)
    cfg.nerf.field.encoding = "hash"
    cfg.nerf.field.density = "mlp"
    cfg.nerf.field.hash.num_levels = 4
    cfg.nerf.field.hash.log2_hashmap_size = 12
    cfg.nerf.field.hash.max_resolution = 64
    tr = Trainer(scene, cfg)
    assert tr.model.field.encoding_kind == "hash" and tr.model.field.density_kind == "mlp"
    first = tr.train_step()["loss"]
    last = tr.train(max_steps=30)["loss"]
    assert last < first


def test_a_batch_that_meets_no_occupied_cell_is_skipped_not_a_crash(scene):
    from sceneforge.fields import rendering

    tr = Trainer(scene, tiny_config(render=rendering.RenderConfig(background="black")))
    tr.train(max_steps=2)
    before = params_of(tr)
    tr.model.grid.occupied.zero_()  # every sample pruned until the next grid update (step 8)
    stats = tr.train_step()
    assert tr.step == 3 and stats["samples_per_ray"] == 0
    after = params_of(tr)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("grid."))
    tr.train(max_steps=12)  # the update at step 8 re-opens cells and training goes on
    assert tr.model.grid.occupancy_fraction > 0
