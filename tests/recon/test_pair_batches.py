"""Bounded-memory pair stage (issue 25): each pair's shared tracks sampled a batch of pairs at a
time (the sample does not depend on the batch size), correspondences gathered per batch, and
two-view geometry estimated in batches of pairs with one seeded sampler per batch."""

import pytest
import torch

from sceneforge.core.rotations import angle_axis_to_matrix
from sceneforge.recon.two_view import TwoViewConfig, estimate_two_view, estimate_two_view_batched
from sceneforge.recon.view_graph import gather_correspondences, shared_track_sample

pytestmark = pytest.mark.usefixtures("one_thread")
D64 = dict(dtype=torch.float64)


def _visibility(T=300, N=12, p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    vis = torch.rand(T, N, generator=g) < p
    pairs = torch.triu_indices(N, N, 1).T
    return vis, pairs


@pytest.mark.parametrize("cap", [10, 1000])
def test_sample_is_the_shared_tracks_whatever_the_batch_size(cap):
    vis, pairs = _visibility()
    idx, valid = shared_track_sample(vis, pairs, cap, seed=3, batch_pairs=1000)
    shared = (vis[:, pairs[:, 0]] & vis[:, pairs[:, 1]]).sum(0)
    assert idx.dtype == torch.int32 and idx.shape == valid.shape
    assert idx.shape[1] == min(cap, int(shared.max()))
    # exactly min(cap, shared) valid entries per pair, first, all distinct shared tracks
    assert torch.equal(valid.sum(1), shared.clamp(max=cap))
    for p in range(pairs.shape[0]):
        k = int(valid[p].sum())
        assert bool(valid[p, :k].all()) and not bool(valid[p, k:].any())
        t = idx[p, :k].long()
        assert t.unique().numel() == k
        assert bool(vis[t, pairs[p, 0]].all() & vis[t, pairs[p, 1]].all())
    # batch size changes nothing; another seed changes the order (a random sample)
    for b in (1, 7, 64):
        idx_b, valid_b = shared_track_sample(vis, pairs, cap, seed=3, batch_pairs=b)
        assert torch.equal(idx_b, idx) and torch.equal(valid_b, valid)
    other, _ = shared_track_sample(vis, pairs, cap, seed=4)
    assert not torch.equal(other, idx)


def test_sample_of_no_pairs_and_no_shared_tracks():
    vis = torch.zeros(5, 3, dtype=torch.bool)
    idx, valid = shared_track_sample(vis, torch.zeros(0, 2, dtype=torch.long), 10)
    assert idx.shape == (0, 0) and valid.shape == (0, 0)
    idx, valid = shared_track_sample(vis, torch.tensor([[0, 1]]), 10)
    assert idx.shape == (1, 0) and not bool(valid.any())


def test_gather_reads_each_pairs_two_images():
    data = torch.arange(4 * 3 * 2, **D64).reshape(4, 3, 2)  # (T, N, 2)
    pairs = torch.tensor([[0, 2], [1, 2]])
    idx = torch.tensor([[3, 1], [0, 0]], dtype=torch.int32)
    x1, x2 = gather_correspondences(data, pairs, idx)
    assert torch.equal(x1[0, 0], data[3, 0]) and torch.equal(x2[0, 0], data[3, 2])
    assert torch.equal(x1[1, 1], data[0, 1]) and torch.equal(x2[1, 1], data[0, 2])


def _pairs(P, M, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, M, 3, generator=g, **D64) + torch.tensor([0.0, 0.0, 6.0], **D64)
    R = angle_axis_to_matrix(torch.randn(P, 3, generator=g, **D64) * 0.2)
    t = torch.nn.functional.normalize(torch.randn(P, 3, generator=g, **D64), dim=-1)
    X2 = X @ R.transpose(-1, -2) + t[:, None]
    x1 = X[..., :2] / X[..., 2:] + 1e-3 * torch.randn(P, M, 2, generator=g, **D64)
    x2 = X2[..., :2] / X2[..., 2:] + 1e-3 * torch.randn(P, M, 2, generator=g, **D64)
    out = torch.rand(P, M, generator=g) < 0.2
    x2[out] = torch.rand(int(out.sum()), 2, generator=g, **D64) - 0.5
    valid = torch.rand(P, M, generator=g) < 0.9
    return x1, x2, valid


def _same(a, b):
    for name in ("matrix", "inliers", "num_inliers", "success", "R", "t", "config"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_batches_are_independent_estimates_with_their_own_seed():
    x1, x2, valid = _pairs(5, 60)
    f = torch.tensor([500.0, 510.0, 520.0, 530.0, 540.0], **D64)
    cfg = TwoViewConfig(num_hypotheses=128, batch_pairs=2, seed=7)
    asked: list[slice] = []

    def batch(sl):
        asked.append(sl)
        return x1[sl], x2[sl], valid[sl]

    geo = estimate_two_view_batched(batch, 5, f, cfg)
    assert [(s.start, s.stop) for s in asked] == [(0, 2), (2, 4), (4, 5)]
    assert geo.inliers.shape == (5, 60) and geo.R.shape == (5, 3, 3)
    assert bool(geo.success.all())
    for k, s in enumerate(asked):
        one = TwoViewConfig(num_hypotheses=128, batch_pairs=1000, seed=7 + k * 104729)
        part = estimate_two_view(x1[s], x2[s], valid[s], f[s], one)
        for name in ("matrix", "inliers", "R", "t", "num_inliers", "config"):
            assert torch.equal(getattr(geo, name)[s], getattr(part, name)), name
    # one batch of all pairs is the unbatched estimate; the same config repeats exactly
    whole = estimate_two_view(x1, x2, valid, f, TwoViewConfig(num_hypotheses=128, seed=7))
    one_batch = TwoViewConfig(num_hypotheses=128, seed=7, batch_pairs=5)
    _same(whole, estimate_two_view_batched(lambda s: (x1[s], x2[s], valid[s]), 5, f, one_batch))
    _same(geo, estimate_two_view(x1, x2, valid, f, cfg))


def test_batches_of_pixels_pad_their_masks_to_the_widest():
    x1, x2, valid = _pairs(3, 50, seed=1)
    pp = torch.tensor([320.0, 240.0], **D64)
    widths = {0: 50, 1: 40, 2: 30}

    def batch(sl):  # batches of different widths (as per-batch padding would give)
        w = widths[sl.start]
        return x1[sl, :w] * 500 + pp, x2[sl, :w] * 500 + pp, valid[sl, :w]

    geo = estimate_two_view_batched(batch, 3, None, TwoViewConfig(num_hypotheses=64, batch_pairs=1))
    assert geo.inliers.shape == (3, 50) and geo.h_inliers.shape == (3, 50)
    assert not bool(geo.inliers[1, 40:].any()) and not bool(geo.inliers[2, 30:].any())
    assert torch.equal(geo.num_inliers, geo.inliers.sum(1))
