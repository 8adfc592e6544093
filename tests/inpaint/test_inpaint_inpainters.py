"""Weight-free inpainters, fill masks and dataset-update helpers (no field training)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sceneforge.core.metrics import psnr
from sceneforge.core.synthetic import SyntheticSceneConfig, make_scene
from sceneforge.fields.datasets import scale_cameras
from sceneforge.inpaint.dataset_update import depth_ranking_loss, masked_training_scene
from sceneforge.inpaint.inpainters import (
    MultiViewConfig,
    MultiViewInpainter,
    TeleaInpainter,
    fill_hole_depth,
    harmonic_fill,
    telea_fill,
)
from sceneforge.inpaint.masks import (
    box_fill_mask,
    box_fill_masks,
    parse_box,
    ray_box_intervals,
    read_fill_masks,
)
from sceneforge.inpaint.synthetic import tiles_removal_scene


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
    fwd = MultiViewConfig(mode="forward", warp_background=True)  # the hole's own depth is exact
    res = MultiViewInpainter(fwd).inpaint(src, fill, depths[[0, 0]], cams)
    assert (res.images[0] - imgs[0]).abs().max() < 1e-5
    hole_depth = depths[0][fill[0]]
    assert (res.depths[0][fill[0]] - hole_depth).abs().max() < 1e-4 * hole_depth.max()


def test_multiview_beats_telea_and_is_exact_outside(orbit):
    scene, imgs, depths, fill = orbit
    # exact depth, holes over objects (not background): forward splatting, sky warped too
    mv_cfg = MultiViewConfig(mode="forward", warp_background=True)
    mv = MultiViewInpainter(mv_cfg).inpaint(imgs, fill, depths, scene.cameras)
    te = TeleaInpainter().inpaint(imgs, fill, depths, scene.cameras)
    assert torch.equal(mv.images[~fill], imgs[~fill])

    def score(out):
        return sum(psnr(out[i], imgs[i], fill[i]) for i in range(len(scene))) / len(scene)

    assert score(mv.images) > score(te.images) + 2.0
    err_mv = (mv.depths - depths)[fill].abs().mean()
    err_te = (te.depths - depths)[fill].abs().mean()
    assert err_mv < 0.5 * err_te


def test_harmonic_fill_reproduces_planes():
    v, u = torch.meshgrid(torch.arange(24.0), torch.arange(30.0), indexing="ij")
    plane = 0.3 + 0.01 * u - 0.02 * v
    hole = torch.zeros(24, 30, dtype=torch.bool)
    hole[5:15, 8:20] = True
    out = harmonic_fill(torch.where(hole, 7.0, plane), hole)
    assert (out - plane).abs().max() < 1e-6
    border = hole.clone()
    border[0:3, 25:30] = True  # touching the image border (Neumann there: not exact)
    out = harmonic_fill(torch.where(border, 7.0, plane), border)
    assert (out[hole] - plane[hole]).abs().max() < 0.02
    assert plane.min() <= out.min() and out.max() <= plane.max()  # maximum principle
    # the inverse depth of a plane is affine in the pixel coordinates: its depth comes back,
    # whatever the depth inside the hole (the removed object's) and with unknown pixels
    depth = 1.0 / plane
    seen = torch.where(hole, 0.5, depth)
    seen[20, 3] = float("nan")
    est = fill_hole_depth(seen, hole)
    assert (est[hole] - depth[hole]).abs().max() < 1e-5
    assert torch.isnan(est[20, 3]) and torch.equal(
        est[~hole & ~est.isnan()], seen[~hole & ~est.isnan()]
    )


def test_backward_multiview_is_robust_to_rendered_depth():
    """Object removal with a field-like depth (9 % short, 5 % noise, the removed object's
    depth inside the holes): the default (backward) mode calibrates the depth scale on the
    observed pixels, beats Telea and the forward splatting by far, and its hole depth is the
    background's. Depth that is no geometry at all falls back to Telea."""
    rs = tiles_removal_scene(12, 32, num_points=0)
    cams = rs.scene.cameras
    fill = torch.stack(box_fill_masks(cams, rs.box, depths=rs.scene.depths))
    imgs = torch.stack([rs.scene.load_image(i) for i in range(12)])
    exact = torch.stack(rs.scene.depths)
    g = torch.Generator().manual_seed(0)
    rendered = exact * 0.91 * (1 + 0.05 * torch.randn(exact.shape, generator=g))
    truth, tdepth = torch.stack(rs.truth_images), torch.stack(rs.truth_depths)
    views = [i for i in range(12) if bool(fill[i].any())]

    def score(out):
        return sum(psnr(out[i], truth[i], fill[i]) for i in views) / len(views)

    te = score(TeleaInpainter().inpaint(imgs, fill).images)
    fwd = MultiViewInpainter(MultiViewConfig(mode="forward"))
    bwd = MultiViewInpainter()
    res = bwd.inpaint(imgs, fill, rendered, cams)
    assert torch.equal(res.images[~fill], imgs[~fill])
    assert abs(bwd.depth_factor * 0.91 - 1.0) < 0.03
    assert score(res.images) > te + 3.0
    assert score(res.images) > score(fwd.inpaint(imgs, fill, rendered, cams).images) + 3.0
    sel = fill & (tdepth > 0)
    assert ((res.depths - tdepth).abs() / tdepth)[sel].median() < 0.05
    # without the calibration the bias costs most of the gain
    raw = MultiViewInpainter(MultiViewConfig(calibrate_depth=False))
    assert score(raw.inpaint(imgs, fill, rendered, cams).images) < score(res.images) - 2.0
    # exact depth: factor 1, the hole's background depth is near exact
    ex = bwd.inpaint(imgs, fill, exact, cams)
    assert bwd.depth_factor == 1.0 and score(ex.images) > te + 3.0
    assert ((ex.depths - tdepth).abs() / tdepth)[sel].median() < 0.02
    # a depth 60x too far (a field that painted everything at infinity): per-image Telea
    bad = bwd.inpaint(imgs, fill, exact * 60, cams)
    assert bwd.depth_factor is None and score(bad.images) == te
    with pytest.raises(ValueError, match="unknown multi-view mode"):
        MultiViewInpainter(MultiViewConfig(mode="sideways")).inpaint(imgs, fill, exact, cams)


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
