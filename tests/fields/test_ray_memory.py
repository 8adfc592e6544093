"""RayDataset at full size: uint8 images, rays from the cameras per batch, a compact usable-
pixel index with the same draws as a per-pixel list, the working resolution, the memory check
and the bounded held-out evaluation."""

from __future__ import annotations

import pytest
import torch
from fields_analytic import sphere_scene

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData, SceneDataError
from sceneforge.fields.datasets import (
    RayDataset,
    border_color,
    check_dataset_memory,
    downscale_image,
    downscale_mask,
    working_downscale,
)
from sceneforge.fields.evaluation import eval_downscale
from sceneforge.fields.trainer import Trainer, TrainerConfig, checkpoint_config


def mixed_scene(masks: bool = False, seed: int = 0) -> SceneData:
    """Four distorted (OPENCV) views of two sizes, random 8-bit images, optional masks."""
    g = torch.Generator().manual_seed(seed)
    sph = sphere_scene(n_views=4, size=8)
    w = torch.tensor([40, 30, 40, 30])
    h = torch.tensor([24, 36, 24, 36])
    k = torch.tensor([[0.05, -0.01, 0.002, 0.001]]) * torch.arange(1, 5)[:, None]
    p = torch.stack([w * 0.9, h * 1.1, w / 2 + 0.3, h / 2 - 0.2], 1).double()
    pose = sph.cameras.cam_from_world.double()
    cams = Cameras("OPENCV", torch.cat([p, k.double()], 1), w, h, pose)
    imgs = [
        torch.randint(0, 256, (int(h[i]), int(w[i]), 3), generator=g, dtype=torch.uint8)
        for i in range(4)
    ]
    ms = None
    if masks:
        ms = [torch.rand(int(h[i]), int(w[i]), generator=g) > 0.3 for i in range(4)]
        ms[1][:] = True  # a view without masked-out pixels
    names = [f"v{i}.png" for i in range(4)]
    return SceneData(cameras=cams, image_names=names, images=imgs, masks=ms)


def reference(scene: SceneData, indices: list[int], ds: int, use_masks: bool = True):
    """The former per-pixel tensors (origin, direction, z_per_t, rgb, mask, image index)."""
    o, d, z, rgb, m, ids = [], [], [], [], [], []
    for j, i in enumerate(indices):
        oo, dd, zz = scene.cameras.rays(i, downscale=ds)
        img = downscale_image(scene.load_image(i), ds)
        mm = scene.load_mask(i) if use_masks else None
        mm = torch.ones(img.shape[:2], dtype=torch.bool) if mm is None else downscale_mask(mm, ds)
        o.append(oo.float())
        d.append(dd.float())
        z.append(zz.float())
        rgb.append(img.reshape(-1, 3))
        m.append(mm.reshape(-1))
        ids.append(torch.full((oo.shape[0],), j))
    return [torch.cat(t) for t in (o, d, z, rgb, m, ids)]


def tensor_bytes(ds: RayDataset) -> int:
    return sum(
        t.numel() * t.element_size() for t in vars(ds).values() if isinstance(t, torch.Tensor)
    )


def test_resident_memory_is_three_bytes_per_pixel():
    n, hh, ww = 6, 48, 64
    sph = sphere_scene(n_views=n, size=8)
    c = sph.cameras
    cams = Cameras(
        c.model, c.params * 8, torch.full((n,), ww), torch.full((n,), hh), c.cam_from_world
    )
    imgs = [torch.full((hh, ww, 3), 7, dtype=torch.uint8) for _ in range(n)]
    scene = SceneData(cameras=cams, image_names=[f"{i}" for i in range(n)], images=imgs)
    ds = RayDataset(scene)
    px = n * hh * ww
    assert px * 3 <= tensor_bytes(ds) <= px * 3 + 1024
    assert ds.nbytes() == tensor_bytes(ds)
    # masks add a packed bit plus a small rank index per pixel, not a per-pixel index list
    m = [torch.rand(hh, ww, generator=torch.Generator().manual_seed(i)) > 0.5 for i in range(n)]
    masked = RayDataset(
        SceneData(cameras=cams, image_names=scene.image_names, images=imgs, masks=m)
    )
    assert px * 3 + px // 8 <= tensor_bytes(masked) <= px * 3 + px // 4 + 1024


@pytest.mark.parametrize("ds_factor", [1, 2])
def test_batches_equal_the_per_pixel_formulas(ds_factor):
    scene = mixed_scene()
    idx = [0, 1, 3]
    ds = RayDataset(scene, idx, ds_factor)
    o, d, z, rgb, _, ids = reference(scene, idx, ds_factor)
    assert ds.num_rays == o.shape[0] == int(ds.offsets[-1])
    g = torch.Generator().manual_seed(3)
    b = ds.sample(500, g)
    k = torch.randint(o.shape[0], (500,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(b.pixel_idx, k)  # the same draws as the former per-pixel list
    p = b.pixel_idx
    assert torch.allclose(b.origins, o[p], atol=1e-6)
    assert torch.allclose(b.directions, d[p], atol=1e-6)
    assert torch.allclose(b.z_per_t, z[p], atol=1e-6)
    assert torch.equal(b.image_idx, ids[p])
    assert (b.rgb - rgb[p]).abs().max() <= 0.5 / 255 + 1e-6
    if ds_factor == 1:  # 8-bit images at full size are kept exactly
        assert torch.equal(b.rgb, rgb[p])
    pb = ds.sample_patches(3, 5, torch.Generator().manual_seed(1))
    assert torch.allclose(pb.directions, d[pb.pixel_idx], atol=1e-6)
    assert pb.valid is not None and bool(pb.valid.all())
    vb = ds.sample_view(torch.Generator().manual_seed(2))
    assert torch.allclose(vb.directions, d[vb.pixel_idx], atol=1e-6)
    assert torch.allclose(vb.origins, o[vb.pixel_idx], atol=1e-6)
    assert torch.equal(vb.image_idx, ids[vb.pixel_idx])
    for j in range(len(idx)):
        oj, dj, zj = ds.rays(j)
        assert torch.allclose(dj, d[ds.pixel_range(j)], atol=1e-6)


def test_several_whole_views_per_step():
    scene = sphere_scene(n_views=6, size=12)
    ds = RayDataset(scene, [0, 1, 2, 3, 4], 1)
    g = torch.Generator().manual_seed(4)
    one = ds.sample_views(1, g)
    assert torch.equal(one.pixel_idx, ds.sample_view(torch.Generator().manual_seed(4)).pixel_idx)
    b = ds.sample_views(3, g)
    views = b.patches.view.tolist()
    assert len(set(views)) == 3 and b.rgb.shape == (3 * 144, 3)
    for k, j in enumerate(views):
        rows = slice(k * 144, (k + 1) * 144)
        o, d, _ = ds.rays(j)
        r = ds.pixel_range(j)
        assert torch.equal(b.pixel_idx[rows], torch.arange(r.start, r.stop))
        assert torch.allclose(b.directions[rows], d) and torch.allclose(b.origins[rows], o)
        assert bool((b.image_idx[rows] == j).all())
    with pytest.raises(ValueError, match="6 views per step, but 5 training views"):
        ds.sample_views(6, g)
    mixed = RayDataset(mixed_scene(), [0, 1, 2, 3], 1)
    with pytest.raises(ValueError, match="need training views of one size"):
        mixed.sample_views(2, g)


def test_masked_sampling_matches_a_per_pixel_pool():
    scene = mixed_scene(masks=True)
    idx = [0, 1, 2, 3]
    for f in (1, 2):
        ds = RayDataset(scene, idx, f)
        *_, mask, _ = reference(scene, idx, f)
        pool = mask.nonzero()[:, 0]
        assert ds.num_rays == pool.numel()
        b = ds.sample(3000, torch.Generator().manual_seed(5))
        k = torch.randint(pool.numel(), (3000,), generator=torch.Generator().manual_seed(5))
        assert torch.equal(b.pixel_idx, pool[k])
        for j in range(4):
            assert torch.equal(ds.image_mask(j).reshape(-1), mask[ds.pixel_range(j)])
        pb = ds.sample_patches(4, 6, torch.Generator().manual_seed(0))
        assert torch.equal(pb.valid, mask[pb.pixel_idx])
        if f == 1:  # the background's start: the same median as from the float images
            ref = border_color((scene.load_image(i), scene.load_mask(i)) for i in idx)
            assert torch.equal(ds.border_color(), ref)
    # updates: new pixels are quantised to uint8, new masks change the draws
    ds = RayDataset(scene, idx)
    img = torch.rand(36, 30, 3, generator=torch.Generator().manual_seed(9))
    new_mask = torch.zeros(36, 30, dtype=torch.bool)
    new_mask[3:9, 4:20] = True
    ds.update_images([1], [img], [new_mask])
    assert (ds.image(1) - img).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(ds.image(1), (img * 255).round() / 255)
    *_, mask, _ = reference(scene, idx, 1)
    mask[ds.pixel_range(1)] = new_mask.reshape(-1)
    pool = mask.nonzero()[:, 0]
    b = ds.sample(2000, torch.Generator().manual_seed(1))
    k = torch.randint(pool.numel(), (2000,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(b.pixel_idx, pool[k])
    # checkpoint round trip, and the former float / per-pixel bool form
    back = RayDataset(scene, idx)
    back.load_state_dict(ds.state_dict())
    assert back.num_rays == ds.num_rays and torch.equal(back.image(1), ds.image(1))
    old = {"version": 3, "indices": idx, "rgb": torch.zeros(ds.num_pixels, 3), "mask": mask}
    back.load_state_dict(old)
    assert back.version == 3 and back.num_rays == pool.numel()
    assert float(back.image(2).max()) == 0.0


def test_all_masked_out_is_an_error():
    scene = mixed_scene(masks=True)
    scene.masks[0][:] = False
    with pytest.raises(SceneDataError, match="no usable pixel"):
        RayDataset(scene, [0])


def test_working_resolution_and_memory_check():
    def cams(w: int, h: int, n: int = 1) -> Cameras:
        p = torch.tensor([[w, w, w / 2, h / 2]], dtype=torch.float64).expand(n, -1)
        pose = torch.eye(3, 4, dtype=torch.float64).expand(n, -1, -1)
        return Cameras("PINHOLE", p, torch.full((n,), w), torch.full((n,), h), pose)

    assert working_downscale(cams(1920, 1080)) == 2
    assert working_downscale(cams(1600, 1200)) == 1
    assert working_downscale(cams(4032, 3024)) == 4
    assert working_downscale(cams(1920, 1080), 3) == 3
    assert working_downscale(cams(1920, 1080), 1, 0) == 1
    assert working_downscale(cams(1080, 1920), 1, 500) == 4
    c = cams(1920, 1080, 200)  # 1.16 GiB at full size
    check_dataset_memory(c, 1, 2 * 1024**3)
    check_dataset_memory(c, 1, 0)  # no check
    with pytest.raises(SceneDataError, match=r"downscale 2 \(960x540, 0\.29 GB\)"):
        check_dataset_memory(c, 1, 1024**3)
    with pytest.raises(SceneDataError, match=r"--trainer.downscale 3"):
        check_dataset_memory(c, 1, 200 * 1024**2)


def test_trainer_refuses_a_too_large_scene_before_loading():
    # the cameras say 1920x1080 but the images are 8x8: loading would fail with another error
    sph = sphere_scene(n_views=3, size=8)
    c = sph.cameras
    big = Cameras(
        c.model, c.params * 200, torch.full((3,), 1920), torch.full((3,), 1080), c.cam_from_world
    )
    scene = SceneData(cameras=big, image_names=sph.image_names, images=sph.images)
    cfg = TrainerConfig(progress=False, tensorboard=False, device="cpu", max_long_side=0)
    cfg.dataset_memory_gb = 0.001
    with pytest.raises(
        SceneDataError, match=r"2 training images need 0\.01 GB at 1920x1080.*--trainer.downscale 4"
    ):
        Trainer(scene, cfg)


def tiny(**kw) -> TrainerConfig:
    from sceneforge.fields.encodings import TriPlaneConfig
    from sceneforge.fields.field import FieldConfig
    from sceneforge.fields.nerf_model import NerfConfig
    from sceneforge.fields.sampling import SamplerConfig

    field = FieldConfig(
        triplane=TriPlaneConfig(resolutions=(16,), features=4),
        density_grid_resolution=16,
        hidden_dim=8,
        color_hidden_dim=8,
        sh_degree=1,
        appearance_dim=0,
    )
    nerf = NerfConfig(field=field, sampler=SamplerConfig(num_samples=8, grid_resolution=8))
    return TrainerConfig(
        max_steps=2, batch_rays=64, progress=False, tensorboard=False, device="cpu", nerf=nerf, **kw
    )


def test_bounded_heldout_evaluation(caplog):
    assert eval_downscale(1080, 1920, 1, 0) == 1
    assert eval_downscale(1080, 1920, 2, 1_000_000) == 2  # 960x540 fits
    assert eval_downscale(1080, 1920, 1, 1_000_000) == 2
    assert eval_downscale(1080, 1920, 1, 200_000) == 4  # 480x270
    scene = sphere_scene(n_views=9, size=32)
    with caplog.at_level("INFO", logger="sceneforge"):
        tr = Trainer(scene, tiny(eval_max_pixels=300, max_long_side=16))
    assert "working resolution 16x16 (downscale 2" in caplog.text
    assert tr.downscale == 2 and tr.config.downscale == 2 and tr.view_shape(0) == (16, 16)
    # a checkpoint written before the cap keeps its downscale as given
    s = tr.state_dict()
    assert checkpoint_config(s, "x").max_long_side == 16
    del s["config"]["max_long_side"]
    assert checkpoint_config(s, "x").max_long_side == 0
    tr.train()
    calls = []
    ev = tr.evaluate(progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    # 16x16 = 256 px fits 300 at the working resolution: no extra downscale
    assert ev["train_downscale"] == 2 and ev["eval_downscale"] == 2
    assert ev["working_size"] == "16x16" and ev["eval_size"] == "16x16"
    tr.cfg.eval_max_pixels = 100
    ev = tr.evaluate(progress=lambda done, total: None)
    assert ev["eval_downscale"] == 4 and ev["eval_size"] == "8x8"
    assert ev["num_eval_images"] == 2
    # with progress bars: evaluation inside training shows on the training bar, the final one
    # has its own bar
    tr.cfg.progress, tr.cfg.eval_every = True, 1
    tr.train(max_steps=3)
    assert tr.evaluate()["eval_downscale"] == 4
