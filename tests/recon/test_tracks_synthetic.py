"""Track accuracy against exact ground truth on synthetic renders (issue 4 acceptance)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sceneforge.core.synthetic import forward_scene
from sceneforge.recon.features import FeaturesConfig
from sceneforge.recon.refine import PatchRefiner
from sceneforge.recon.track_eval import (
    apply_homography,
    epipolar_errors,
    gt_tracks_from_depth,
    gt_tracks_from_homographies,
    gt_tracks_from_synthetic,
    procedural_texture,
    random_homographies,
    render_homography_sequence,
    track_errors,
)
from sceneforge.recon.tracking import TracksConfig, build_tracks, resolve_config


@pytest.fixture(scope="module")
def scene():
    """Forward-facing objects on a ground plane before a backdrop, 256 x 192, 8 views."""
    return forward_scene(num_views=8, size=256, seed=0)


def _config(**kw) -> TracksConfig:
    return TracksConfig(features=FeaturesConfig(method="sift"), num_query_frames=3, **kw)


@pytest.fixture(scope="module")
def unmasked_tracks(scene):
    s = replace(scene, masks=None)
    raw = build_tracks(s, _config(refine_enabled=False))
    refine_cfg = resolve_config(_config()).refine
    refined = PatchRefiner(refine_cfg)(raw, s.load_image).filter(2)  # as build_tracks does
    return s, raw, refined


def test_refined_tracks_meet_subpixel_accuracy(unmasked_tracks):
    s, raw, refined = unmasked_tracks
    assert refined.num_tracks > 150 and refined.mean_length() > 3.0
    gt, valid = gt_tracks_from_synthetic(refined, s)
    err = track_errors(refined, gt, valid)
    assert err.numel() > 500
    assert float(err.median()) < 0.3
    assert float(err.quantile(0.9)) < 0.5
    gt0, valid0 = gt_tracks_from_synthetic(raw, s)
    err0 = track_errors(raw, gt0, valid0)
    assert float(err.median()) < 0.7 * float(err0.median())
    assert float(err.quantile(0.9)) < 0.7 * float(err0.quantile(0.9))


@pytest.mark.parametrize("search_levels", [(), (4, 2, 1)])
def test_frames_refined_concurrently_equal_one_at_a_time(scene, search_levels):
    s = replace(scene, masks=None)
    raw = build_tracks(s, _config(refine_enabled=False))
    cfg = replace(resolve_config(_config()).refine, search_levels=search_levels)
    one = PatchRefiner(replace(cfg, num_threads=1))(raw, s.load_image)
    three = PatchRefiner(replace(cfg, num_threads=3))(raw, s.load_image)
    assert torch.equal(one.visible, three.visible) and int(one.visible.sum()) > 500
    assert torch.equal(one.xy, three.xy) and torch.equal(one.confidence, three.confidence)
    assert not torch.equal(one.xy, raw.xy)  # it did refine


def test_no_track_claims_two_points_in_one_frame(unmasked_tracks):
    _, raw, refined = unmasked_tracks
    for tr in (raw, refined):
        tr.check()
        for f in range(tr.num_frames):
            k = tr.keypoint_idx[tr.visible[:, f], f]
            assert k.unique().numel() == k.numel()


def test_masks_remove_points(scene):
    # The scene's masks keep only the objects (ground and backdrop are False).
    tr = build_tracks(scene, _config())
    assert tr.num_tracks > 20
    fi, ti, xy = tr.observations()
    for f in range(len(scene)):
        m = scene.load_mask(f)
        p = xy[fi == f].long()
        assert bool(m[p[:, 1], p[:, 0]].all()), f"frame {f}: a track point lies on a masked pixel"
    # an explicit mask over the left half of every image removes every point there
    imgs = [scene.load_image(i) for i in range(len(scene))]
    masks = []
    for im in imgs:
        m = torch.ones(im.shape[:2], dtype=torch.bool)
        m[:, : im.shape[1] // 2] = False
        masks.append(m)
    tr2 = build_tracks(imgs, _config(), masks=masks)
    assert tr2.num_tracks > 20
    fi, _, xy = tr2.observations()
    half = torch.tensor([im.shape[1] // 2 for im in imgs])[fi]
    assert bool((xy[:, 0] >= half).all())


def test_images_of_different_sizes():
    h, w, n = 160, 200, 5
    tex = procedural_texture(2 * h, 2 * w, seed=4)
    hs = random_homographies(n, w, h, seed=4, strength=0.7)
    imgs = render_homography_sequence(tex, hs, h, w)
    # frame 2 is rendered at another size: pixel p of the new frame is pixel p / s of the old
    s = 1.25
    scale = torch.diag(torch.tensor([1 / s, 1 / s, 1.0], dtype=torch.float64))
    hs[2] = hs[2] @ scale
    imgs[2] = render_homography_sequence(tex, hs[2:3], int(h * s), int(w * s))[0]
    tr = build_tracks(imgs, _config())
    assert tr.image_sizes[2].tolist() == [int(h * s), int(w * s)]
    assert int(tr.visible[:, 2].sum()) > 30
    gt, valid = gt_tracks_from_homographies(tr, hs)
    err = track_errors(tr, gt, valid)
    assert float(err.median()) < 0.1 and float(err.quantile(0.9)) < 0.3
    # sanity of the ground truth itself
    p = torch.tensor([[50.0, 40.0]])
    back = apply_homography(torch.linalg.inv(hs[0]), apply_homography(hs[0], p))
    assert torch.allclose(back, p, atol=1e-4)


def test_depth_ground_truth_and_epipolar_error_agree_with_ray_casting(unmasked_tracks):
    s, _, refined = unmasked_tracks
    gt, valid = gt_tracks_from_synthetic(refined, s)
    gt_d, valid_d = gt_tracks_from_depth(refined, s.cameras, s.depths)
    both = valid & valid_d
    assert int(both.sum()) > 0.5 * int(valid.sum())
    assert float((gt[both] - gt_d[both]).norm(dim=-1).quantile(0.95)) < 0.05
    # with exact cameras, epipolar errors are bounded by the position errors
    epi = epipolar_errors(refined, s.cameras)
    pos = track_errors(refined, gt, valid)
    assert epi.numel() == int(refined.visible.sum()) - refined.num_tracks
    assert float(epi.median()) <= float(pos.median()) + 1e-3
