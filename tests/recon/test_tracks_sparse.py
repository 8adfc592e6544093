"""Sparse track storage (issue 25): per-observation arrays, the pixel lookup that replaces the
dense ``T x N x 2`` table in the SfM, selection, files of the earlier dense format, and that
merging writes no dense pixel table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sceneforge.recon.tracks import Tracks, TracksError, merge_matches


def _random_dense(t: int = 40, n: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vis = torch.rand(t, n, generator=g) < 0.4
    ref = torch.randint(0, n, (t,), generator=g)
    vis[torch.arange(t), ref] = True
    xy = torch.rand(t, n, 2, generator=g) * 50
    conf = torch.rand(t, n, generator=g)
    kp = torch.arange(t * n).reshape(t, n)
    sizes = torch.tensor([[60, 60]] * n)
    return xy, vis, conf, ref, kp, sizes


def test_dense_round_trip_and_observation_order():
    xy, vis, conf, ref, kp, sizes = _random_dense()
    tr = Tracks.from_dense(xy, vis, conf, ref, kp, sizes)
    assert tr.num_observations == int(vis.sum())
    assert torch.equal(tr.xy, torch.where(vis[..., None], xy, torch.zeros(())))
    assert torch.equal(tr.confidence, torch.where(vis, conf, torch.zeros(())))
    assert torch.equal(tr.keypoint_idx, torch.where(vis, kp, torch.full((), -1)))
    ti, fi = tr.observation_tracks_frames()
    key = ti * tr.num_frames + fi
    assert bool((key[1:] > key[:-1]).all())  # row-major: track, then frame
    fi2, ti2, obs = tr.observations()
    assert torch.equal(obs, xy[ti2, fi2]) and torch.equal(fi2, fi)


def test_pixels_index_like_the_dense_table():
    xy, vis, conf, ref, kp, sizes = _random_dense(seed=1)
    tr = Tracks.from_dense(xy, vis, conf, ref, kp, sizes)
    dense = tr.xy.double()
    px = tr.pixels()
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, tr.num_tracks, (5, 9), generator=g)
    cols = torch.randint(0, tr.num_frames, (5, 9), generator=g)
    assert torch.equal(px[rows, cols], dense[rows, cols])
    assert torch.equal(px[rows[:, :1], cols[:1]], dense[rows[:, :1], cols[:1]])  # broadcast
    assert torch.equal(px[rows[0], 3], dense[rows[0], 3])  # an int column
    tid, ids = torch.tensor([5, 0, 17, 39]), torch.tensor([6, 2, 0])
    blk = px.block(tid, ids)
    assert torch.equal(blk.dense(), dense[tid][:, ids]) and blk.shape == (4, 3, 2)
    pi, vi = torch.tensor([0, 3, 2]), torch.tensor([2, 0, 1])
    assert torch.equal(blk[pi, vi], dense[tid[pi], ids[vi]])
    assert blk.dtype == torch.float64 and px.shape == (40, 7, 2)
    empty = Tracks.from_dense(xy[:0], vis[:0], conf[:0], ref[:0], kp[:0], sizes).pixels()
    assert empty[torch.tensor([0]), torch.tensor([1])].shape == (1, 2)


def test_select_reorders_tracks_with_their_observations():
    xy, vis, conf, ref, kp, sizes = _random_dense(seed=2)
    tr = Tracks.from_dense(xy, vis, conf, ref, kp, sizes)
    idx = torch.tensor([30, 2, 2, 11, 0])  # reordered, repeated
    sub = tr.select(idx)
    assert torch.equal(sub.xy, tr.xy[idx]) and torch.equal(sub.keypoint_idx, tr.keypoint_idx[idx])
    assert torch.equal(sub.ref_frame, ref[idx])
    mask = tr.lengths() >= 3
    assert torch.equal(tr.filter(3).confidence, tr.confidence[mask])
    assert tr.select(torch.zeros(tr.num_tracks, dtype=torch.bool)).num_observations == 0


def test_inconsistent_arrays_and_legacy_dense_files(tmp_path):
    xy, vis, conf, ref, kp, sizes = _random_dense(seed=4)
    tr = Tracks.from_dense(xy, vis, conf, ref, kp, sizes)
    with pytest.raises(TracksError, match="inconsistent"):
        Tracks(vis, tr.obs_xy[1:], tr.obs_confidence, tr.obs_keypoint_idx, ref, sizes)
    # a file written by the dense format of earlier versions still loads
    np.savez_compressed(
        tmp_path / "old.npz",
        xy=xy.numpy(),
        visible=vis.numpy(),
        confidence=conf.numpy(),
        ref_frame=ref.numpy(),
        keypoint_idx=kp.numpy(),
        image_sizes=sizes.numpy(),
    )
    old = Tracks.load(tmp_path / "old.npz")
    assert torch.equal(old.obs_xy, tr.obs_xy) and torch.equal(old.visible, vis)
    tr.save(tmp_path / "new.npz")
    new = Tracks.load(tmp_path / "new.npz")
    assert torch.equal(new.obs_keypoint_idx, tr.obs_keypoint_idx)
    assert torch.equal(new.obs_confidence, tr.obs_confidence)


def test_merge_keeps_memory_per_observation():
    """Many frames, short tracks: the track arrays are the observations' size, not T x N."""
    n, per = 400, 30  # frames, keypoints per frame
    g = torch.Generator().manual_seed(5)
    kps = [torch.rand(per, 2, generator=g) * 100 for _ in range(n)]
    ar = torch.arange(per)
    pairs = {(i, i + 1): (torch.stack([ar, ar], 1), torch.ones(per)) for i in range(n - 1)}
    pairs.update(
        {(i, i + 2): (torch.stack([ar, ar], 1), torch.ones(per)) for i in range(0, n - 2, 7)}
    )
    # chains of matches along the sequence: each keypoint index is one track through all frames
    # unless broken: break every 5th frame so tracks stay short
    for i in range(4, n - 1, 5):
        pairs.pop((i, i + 1))
    sizes = torch.tensor([[100, 100]] * n)
    tr = merge_matches(pairs, kps, sizes, list(range(n)))
    tr.check()
    assert tr.num_observations == int(tr.visible.sum()) and tr.num_tracks > n
    nbytes = sum(
        x.element_size() * x.numel()
        for x in (tr.obs_xy, tr.obs_confidence, tr.obs_keypoint_idx, tr.ref_frame)
    )
    dense_bytes = tr.num_tracks * n * (8 + 4 + 8)  # the xy / confidence / keypoint tables
    assert nbytes * 20 < dense_bytes
    # every observation sits at its keypoint, and the anchor has confidence 1
    ti, fi = tr.observation_tracks_frames()
    for o in range(0, tr.num_observations, 97):
        assert torch.equal(tr.obs_xy[o], kps[int(fi[o])][int(tr.obs_keypoint_idx[o])])
    anchor = fi == tr.ref_frame[ti]
    assert int(anchor.sum()) == tr.num_tracks and bool((tr.obs_confidence[anchor] == 1).all())


def test_triangulation_reads_a_pixel_window_like_the_dense_table():
    """The SfM triangulates from a lazy window of the track pixels; same points as from the
    dense table, bit for bit (plain and RANSAC)."""
    from sceneforge.core.cameras import Cameras, make_rigid
    from sceneforge.core.rotations import angle_axis_to_matrix
    from sceneforge.recon.sfm import tracks_from_observations
    from sceneforge.recon.triangulation import triangulate, triangulate_ransac

    g = torch.Generator().manual_seed(7)
    n, p = 6, 50
    R = angle_axis_to_matrix(torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.1)
    T = make_rigid(R, torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3)
    K = torch.tensor([[100.0, 100.0, 64.0, 48.0]], dtype=torch.float64).expand(n, -1)
    cams = Cameras("PINHOLE", K, torch.full((n,), 128), torch.full((n,), 96), T)
    X = torch.randn(p, 3, generator=g, dtype=torch.float64) * 0.5 + torch.tensor([0, 0, 4.0])
    pix, _ = cams.project(X)  # (n, p, 2)
    seen = torch.rand(p, n, generator=g) < 0.7
    seen[:, :2] = True
    pi, ii = seen.nonzero(as_tuple=True)
    obs = pix[ii, pi] + 0.3 * torch.randn(pi.numel(), 2, generator=g, dtype=torch.float64)
    tr = tracks_from_observations(ii, pi, obs.float(), torch.tensor([[96, 128]] * n))
    tid, ids = torch.tensor([3, 0, 41, 17, 8]), torch.tensor([5, 1, 0, 2])
    block = tr.pixels().block(tid, ids)
    dense = tr.xy.double()[tid][:, ids]
    sub = Cameras("PINHOLE", K[ids], cams.width[ids], cams.height[ids], T[ids])
    m = tr.visible[tid][:, ids]
    for fn in (triangulate, triangulate_ransac):
        a, b = fn(sub, block, m), fn(sub, dense, m)
        assert torch.equal(a.points, b.points) and torch.equal(a.valid, b.valid), fn.__name__
