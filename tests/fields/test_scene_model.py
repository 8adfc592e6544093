"""The scene-model seam: the registry, patch batches, the editing interface (render any view at
any resolution without touching the config), format-1 checkpoints, and a trainer that leaves
the process's torch state as it found it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fields_analytic import sphere_scene
from test_trainer import params_of, tiny_config

from sceneforge.fields.checkpoints import CheckpointError, read_checkpoint, upgrade_checkpoint
from sceneforge.fields.nerf_model import NerfModel
from sceneforge.fields.scene_model import MODELS, SceneModel, model_class
from sceneforge.fields.trainer import Trainer


@pytest.fixture(scope="module")
def scene():
    return sphere_scene(n_views=9, size=16)


def torch_state() -> tuple:
    return (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.get_rng_state().clone(),
    )


def same_state(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_registry_names_every_model_and_rejects_unknown_names():
    assert model_class("nerf") is NerfModel and issubclass(NerfModel, SceneModel)
    assert set(MODELS) >= {"nerf", "gaussians"}
    # the error lists every registered model, sorted (stylize packages may have added theirs)
    names = ", ".join(sorted(MODELS))
    with pytest.raises(ValueError, match=f"unknown model .splat.; registered: {names}$"):
        model_class("splat")


def test_trainer_leaves_process_torch_state_as_found(scene, tmp_path):
    torch.manual_seed(1234)
    threads = torch.get_num_threads()
    want_threads = 1 if threads != 1 else 2
    before = torch_state()
    cfg = tiny_config(num_threads=want_threads, deterministic=True, max_steps=4)
    tr = Trainer(scene, cfg, tmp_path)
    assert same_state(torch_state(), before), "construction changed the process's torch state"
    seen = []
    tr.add_hook(lambda t: seen.append(torch_state()))
    tr.train()
    assert seen and seen[0][0] == want_threads and seen[0][1]  # the trainer's own, inside
    assert same_state(torch_state(), before), "train() changed the process's torch state"
    tr.evaluate()
    tr.render_view(0)
    tr.save_checkpoint(tmp_path / "c.pt")
    assert same_state(torch_state(), before)
    # its own random stream is unaffected by what the process draws in between
    a = Trainer(scene, tiny_config(max_steps=8))
    b = Trainer(scene, tiny_config(max_steps=8))
    a.train()
    b.train(max_steps=4)
    torch.rand(1000)  # the process uses its global RNG
    b.train()
    pa, pb = params_of(a), params_of(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_render_view_at_any_resolution_leaves_the_config_alone(scene):
    tr = Trainer(scene, tiny_config(max_steps=2, downscale=1))
    tr.train()
    cfg0 = dataclasses.asdict(tr.config)
    full = tr.render_view(0)
    half = tr.render_view(0, downscale=2)
    h, w = tr.view_shape(0)
    assert full["rgb"].shape == (h, w, 3)
    assert half["rgb"].shape == (h // 2, w // 2, 3) and half["depth"].shape == (h // 2, w // 2)
    assert dataclasses.asdict(tr.config) == cfg0
    # config is a copy: changing it changes nothing
    tr.config.downscale = 4
    assert tr.downscale == 1


def test_patch_batches_are_image_crops_and_nerf_trains_on_them(scene):
    tr = Trainer(scene, tiny_config(max_steps=30, batch="patches", patch_size=8, batch_rays=256))
    g = torch.Generator().manual_seed(0)
    b = tr.dataset.sample_patches(5, 8, g)
    lay = b.patches
    assert b.rgb.shape == (5 * 64, 3) and lay.view.shape == (5,)
    rgb = b.rgb.view(5, 8, 8, 3)
    for p in range(5):
        img = tr.view_image(int(lay.view[p]))
        y, x = int(lay.y0[p]), int(lay.x0[p])
        assert torch.equal(rgb[p], img[y : y + 8, x : x + 8])
    assert b.valid is not None and bool(b.valid.all())
    first = tr.train(max_steps=1)["loss"]
    last = tr.train(max_steps=30)["loss"]
    assert last < first
    with pytest.raises(Exception, match="patch size 64 is larger than every training image"):
        tr.dataset.sample_patches(1, 64, g)


def test_patch_pixels_outside_the_masks_do_not_count(scene):
    masks = [torch.zeros(16, 16, dtype=torch.bool) for _ in range(len(scene))]
    for m in masks:
        m[:, :8] = True  # left half usable
    masked = dataclasses.replace(scene, masks=masks, mask_paths=None)
    tr = Trainer(masked, tiny_config(batch="patches", patch_size=16))
    b = tr.dataset.sample_patches(2, 16, torch.Generator().manual_seed(0))
    v = b.valid.view(2, 16, 16)
    assert bool(v[:, :, :8].all()) and not bool(v[:, :, 8:].any())


def v1_checkpoint(tr: Trainer) -> dict:
    """``tr``'s state as the pre-seam trainer wrote it (format 1)."""
    s = tr.state_dict()
    model = s.pop("model")
    cfg = dict(s["config"])
    nerf = cfg.pop("nerf")
    cfg.pop("model")
    cfg.update(nerf)
    s.pop("model_name")
    s.update(
        format=1,
        config=cfg,
        field={k[6:]: v for k, v in model.items() if k.startswith("field.")},
        grid={k[5:]: v for k, v in model.items() if k.startswith("grid.")},
        background=model["bg_param"],
    )
    return s


def test_format1_checkpoints_load_into_the_nerf_model(scene, tmp_path):
    tr = Trainer(scene, tiny_config(max_steps=6))
    tr.train()
    path = tmp_path / "v1.pt"
    torch.save(v1_checkpoint(tr), path)
    back = Trainer.from_checkpoint(path, scene)
    assert back.step == 6 and back.model_name == "nerf"
    a, b = params_of(tr), params_of(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # both continue identically
    tr.train(max_steps=10)
    back.train(max_steps=10)
    a, b = params_of(tr), params_of(back)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert upgrade_checkpoint(read_checkpoint(path))["format"] == 2
    bad = v1_checkpoint(tr)
    del bad["grid"]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt: damaged format-1 checkpoint"):
        read_checkpoint(tmp_path / "bad.pt")


def test_a_checkpoint_of_another_model_is_refused(scene, tmp_path):
    tr = Trainer(scene, tiny_config(max_steps=1))
    s = tr.state_dict()
    s["model_name"] = "gaussians"
    torch.save(s, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="holds a 'gaussians' model"):
        tr.load_checkpoint(tmp_path / "g.pt")


def test_eval_json_facts_name_model_device_and_encoding(scene):
    tr = Trainer(scene, tiny_config(max_steps=1))
    d = tr.describe()
    assert d == {"model": "nerf", "device": "cpu", "encoding": "triplane", "density": "grid"}


def test_render_rays_matches_render_camera(scene):
    tr = Trainer(scene, tiny_config(max_steps=3))
    tr.train()
    cams = scene.cameras
    o, d, z = cams.rays(1)
    rays = tr.render_rays(o.float(), d.float(), z.float())
    img = tr.render_camera(cams, 1, downscale=1)
    assert torch.allclose(rays["rgb"].clamp(0, 1).view_as(img["rgb"]), img["rgb"])


def test_stored_config_names_the_model_built_so_it_rebuilds_on_any_device(scene, tmp_path):
    cfg = tiny_config(max_steps=1)
    cfg.nerf.field.encoding = cfg.nerf.field.density = "auto"
    cfg.nerf.field.density_grid_resolution = 0
    tr = Trainer(scene, cfg)
    f = tr.config.nerf.field
    assert (f.encoding, f.density) == ("triplane", "grid") and f.density_grid_resolution == 64
    tr.save_checkpoint(tmp_path / "c.pt")
    s = torch.load(tmp_path / "c.pt", weights_only=True)
    assert s["config"]["nerf"]["field"]["encoding"] == "triplane"
