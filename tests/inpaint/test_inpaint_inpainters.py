"""Weight-free inpainters, fill masks and dataset-update helpers (no field training)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sceneforge.core.metrics import psnr
from sceneforge.core.synthetic import SyntheticSceneConfig, make_scene
from sceneforge.inpaint.dataset_update import (
    depth_ranking_loss,
    masked_training_scene,
    scale_cameras,
)
from sceneforge.inpaint.inpainters import (
    MultiViewConfig,
    MultiViewInpainter,
    TeleaInpainter,
    telea_fill,
)
from sceneforge.inpaint.masks import box_fill_mask, parse_box, ray_box_intervals, read_fill_masks


@pytest.fixture(scope="module")
def orbit():
    cfg = SyntheticSceneConfig(
        scene="objects",
        rig="orbit",
        num_views=10,
        width=40,
        height=40,
        seed=1,
        ground_plane=True,
        azimuth_deg=(0.0, 120.0),
        num_points=10,
        ssaa=3,
    )
    scene = make_scene(cfg)
    imgs = torch.stack([scene.load_image(i) for i in range(len(scene))])
    g = torch.Generator().manual_seed(0)
    fill = torch.zeros(imgs.shape[:3], dtype=torch.bool)
    for i in range(len(scene)):
        y, x = torch.randint(4, 22, (2,), generator=g).tolist()
        fill[i, y : y + 12, x : x + 14] = True
    return scene, imgs, torch.stack(scene.depths), fill


def test_telea_keeps_unmasked_and_fills_smoothly():
    img = torch.linspace(0, 1, 32)[None, :, None].expand(32, 32, 3).contiguous()
    fill = torch.zeros(32, 32, dtype=torch.bool)
    fill[10:20, 10:20] = True
    out = telea_fill(img, fill)
    assert (out[fill] - img[fill]).abs().max() < 0.1  # a ramp is continued, not 8-bit garbage
    res = TeleaInpainter().inpaint(img[None], fill[None], depths=img[None, ..., 0] + 1)
    assert torch.equal(res.images[0][~fill], img[~fill])
    assert (res.depths[0] - (img[..., 0] + 1)).abs().max() < 0.1


def test_multiview_copies_exactly_from_a_coincident_view(orbit):
    scene, imgs, depths, _ = orbit
    cams = scene.cameras[[0, 0]]
    fill = torch.zeros(2, 40, 40, dtype=torch.bool)
    fill[0, 8:30, 5:35] = True
    src = imgs[[0, 0]].clone()
    src[0][fill[0]] = 0.5  # garbage in the hole of view 0; view 1 is the same camera
    res = MultiViewInpainter(MultiViewConfig(warp_background=True)).inpaint(
        src, fill, depths[[0, 0]], cams
    )
    assert (res.images[0] - imgs[0]).abs().max() < 1e-5
    hole_depth = depths[0][fill[0]]
    assert (res.depths[0][fill[0]] - hole_depth).abs().max() < 1e-4 * hole_depth.max()


def test_multiview_beats_telea_and_is_exact_outside(orbit):
    scene, imgs, depths, fill = orbit
    mv_cfg = MultiViewConfig(warp_background=True)  # exact depth: the sky can be warped too
    mv = MultiViewInpainter(mv_cfg).inpaint(imgs, fill, depths, scene.cameras)
    te = TeleaInpainter().inpaint(imgs, fill, depths, scene.cameras)
    assert torch.equal(mv.images[~fill], imgs[~fill])

    def score(out):
        return sum(psnr(out[i], imgs[i], fill[i]) for i in range(len(scene))) / len(scene)

    assert score(mv.images) > score(te.images) + 2.0
    err_mv = (mv.depths - depths)[fill].abs().mean()
    err_te = (te.depths - depths)[fill].abs().mean()
    assert err_mv < 0.5 * err_te


def test_multiview_needs_depth_and_cameras(orbit):
    scene, imgs, depths, fill = orbit
    with pytest.raises(ValueError, match="depths and cameras"):
        MultiViewInpainter().inpaint(imgs, fill)
    with pytest.raises(ValueError, match="fill masks must be bool"):
        MultiViewInpainter().inpaint(imgs, fill.float(), depths, scene.cameras)
    with pytest.raises(ValueError, match="cameras must match"):
        MultiViewInpainter(MultiViewConfig()).inpaint(
            imgs[:, :20, :20], fill[:, :20, :20], depths[:, :20, :20], scene.cameras
        )


def test_box_mask_covers_the_object_and_respects_occluders(orbit):
    scene, _, depths, _ = orbit
    obj = scene.metadata["object_ids"]
    mesh = scene.metadata["mesh"]
    v = mesh.vertices[mesh.faces[mesh.face_object == 0].reshape(-1)]
    box = (v.min(0).values - 0.01).tolist() + (v.max(0).values + 0.01).tolist()
    for i in range(len(scene)):
        m = box_fill_mask(scene.cameras, i, box, depth=depths[i])
        assert bool(m[obj[i] == 0].all())
        # pixels showing another object nearer than the box entry are kept
        plain = box_fill_mask(scene.cameras, i, box)
        assert bool((m <= plain).all())
    lo, hi = parse_box([0, 0, 0, 1, 1, 1])
    o = torch.tensor([[-1.0, 0.5, 0.5], [-1.0, 2.0, 0.5]], dtype=torch.float64)
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    tn, tf = ray_box_intervals(o, d, lo, hi)
    assert torch.allclose(tn[:1], torch.tensor([1.0], dtype=torch.float64))
    assert torch.allclose(tf[:1], torch.tensor([2.0], dtype=torch.float64))
    assert tn[1] > tf[1]
    with pytest.raises(ValueError, match="6 numbers"):
        parse_box([0, 1])
    with pytest.raises(ValueError, match="max must exceed"):
        parse_box([0, 0, 0, 1, -1, 1])


def test_mask_folder_and_training_masks(orbit, tmp_path):
    from sceneforge.core.image_io import write_image_atomic

    scene, _, _, fill = orbit
    write_image_atomic(tmp_path / "view_003.png", fill[3][..., None].float().expand(-1, -1, 3))
    masks = read_fill_masks(tmp_path, scene)
    assert torch.equal(masks[3], fill[3]) and not masks[0].any()
    with pytest.raises(Exception, match="no mask file"):
        read_fill_masks(tmp_path, scene.subset([0, 1]))
    ts = masked_training_scene(scene, list(fill))
    assert torch.equal(ts.load_mask(2), scene.masks[2] & ~fill[2])
    ts = masked_training_scene(replace(scene, masks=None), list(fill))
    assert torch.equal(ts.load_mask(2), ~fill[2])


def test_scaled_cameras_project_consistently(orbit):
    scene, _, _, _ = orbit
    pts = scene.points[:5]
    uv, _ = scene.cameras.project(pts)
    uv2, _ = scale_cameras(scene.cameras, 2).project(pts)
    assert torch.allclose(uv2, uv / 2, atol=1e-9)


def test_depth_ranking_loss_orders():
    g = torch.Generator().manual_seed(0)
    target = torch.linspace(1, 2, 50)
    assert depth_ranking_loss(target.clone(), target, g, 1e-4) < 1e-3
    assert depth_ranking_loss(-target, target, g, 1e-4) > 0.1
