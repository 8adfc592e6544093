"""Pair selection without all pairs (issue 25): VLAD retrieval finds the images that truly
overlap on a rendered walk (overlap known from the exact cameras), sequential matching with
loop-closure candidates links the end of a lap to its start, ``auto`` keeps the query-frame
scheme below its threshold, the pair counts grow linearly with the image count, and the same
inputs give the same pairs."""

from __future__ import annotations

import pytest
import torch

from sceneforge.recon.retrieval import (
    PairSelectionConfig,
    RetrievalConfig,
    connect_components,
    exhaustive_pairs,
    global_descriptors,
    kmeans,
    nearest_images,
    resolve_method,
    retrieval_pairs,
    sample_descriptors,
    select_image_pairs,
    sequential_pairs,
    unique_pairs,
    vlad,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_VIEWS = 48  # one full lap: 7.5 degrees of heading per frame
OVERLAP_DEG = 35.0  # optical axes closer than half the 70-degree field of view: true overlap


@pytest.fixture(scope="module")
def walk():
    """A rendered walk around a textured room (camera on a circle looking out, one lap), its
    SIFT features and the angle between every two optical axes (from the exact cameras)."""
    from sceneforge.core.synthetic import room_scene
    from sceneforge.recon.features import FeaturesConfig
    from sceneforge.recon.tracking import TracksConfig, extract_features

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scene = room_scene(num_views=NUM_VIEWS, size=160, num_objects=12)
        cfg = TracksConfig(features=FeaturesConfig(method="sift", num_workers=1))
        feats = extract_features(scene, cfg)
    finally:
        torch.set_num_threads(old)
    z = scene.cameras.cam_from_world[:, 2, :3].double()  # optical axes in the world
    angle = torch.rad2deg(torch.acos((z @ z.T).clamp(-1, 1)))
    return scene, feats, angle


def _descs(feats) -> list[torch.Tensor]:
    return [f.descriptors for f in feats]


def test_retrieval_finds_the_truly_overlapping_images(walk):
    _, feats, angle = walk
    g = global_descriptors(_descs(feats))
    assert g.shape == (NUM_VIEWS, 64 * 128)
    assert torch.allclose(g.norm(dim=1), torch.ones(NUM_VIEWS), atol=1e-4)
    nbr, sim = nearest_images(g, 3)
    assert (nbr != torch.arange(NUM_VIEWS)[:, None]).all()  # never the image itself
    assert (sim[:, :-1] >= sim[:, 1:]).all()  # most similar first
    hit = (angle.gather(1, nbr) < OVERLAP_DEG).double().mean()
    chance = ((angle < OVERLAP_DEG).double().sum(1) - 1).mean() / (NUM_VIEWS - 1)
    assert chance < 0.25  # most frames do not overlap: the test can fail
    assert hit >= 0.65 and hit >= 3 * chance, (float(hit), float(chance))
    # and the retrieval pairs are each image with those neighbours, each pair once
    pairs = retrieval_pairs(g, 3)
    assert torch.equal(pairs, unique_pairs(pairs))
    assert NUM_VIEWS * 3 // 2 <= pairs.shape[0] <= NUM_VIEWS * 3
    assert (angle[pairs[:, 0], pairs[:, 1]] < OVERLAP_DEG).double().mean() >= 0.65


def test_sequential_loop_closure_links_the_end_of_the_lap_to_its_start(walk):
    _, feats, angle = walk
    overlap = 3
    plain = select_image_pairs(
        _descs(feats), PairSelectionConfig(method="sequential", overlap=overlap, loop_neighbors=0)
    )
    assert torch.equal(plain.pairs, sequential_pairs(NUM_VIEWS, overlap))
    assert int((plain.pairs[:, 1] - plain.pairs[:, 0]).max()) == overlap
    sel = select_image_pairs(
        _descs(feats), PairSelectionConfig(method="sequential", overlap=overlap, loop_neighbors=2)
    )
    p = sel.pairs
    # every sequential pair is kept, and candidates farther apart come from retrieval
    assert set(map(tuple, plain.pairs.tolist())) <= set(map(tuple, p.tolist()))
    gap = p[:, 1] - p[:, 0]
    loops = p[gap > overlap]
    assert sel.info["loop_candidates"] == loops.shape[0] > 0
    # a revisit: frames more than half a lap apart in time that look at the same wall
    revisit = (gap > NUM_VIEWS // 2) & (angle[p[:, 0], p[:, 1]] < OVERLAP_DEG)
    assert revisit.any(), p[gap > NUM_VIEWS // 2].tolist()
    # loop-closure candidates overlap (axes within 50 degrees, fields of view of 70) far
    # more often than frames chosen at random outside the sequential window
    far = (torch.arange(NUM_VIEWS)[:, None] - torch.arange(NUM_VIEWS)[None, :]).abs() > overlap
    chance = (angle[far] < 50.0).double().mean()
    hit = (angle[loops[:, 0], loops[:, 1]] < 50.0).double().mean()
    assert hit >= 0.5 and hit >= 3 * chance, (float(hit), float(chance))


def test_auto_keeps_the_query_frames_below_the_threshold_and_picks_by_order_above():
    cfg = PairSelectionConfig(method="auto", exhaustive_max_images=100)
    assert resolve_method(cfg, 2) == resolve_method(cfg, 100) == "query"
    assert resolve_method(cfg, 101) == "retrieval"
    ordered = PairSelectionConfig(method="auto", exhaustive_max_images=100, ordered=True)
    assert resolve_method(ordered, 100) == "query"
    assert resolve_method(ordered, 101) == "sequential"
    for m in ("query", "exhaustive", "sequential", "retrieval"):
        assert resolve_method(PairSelectionConfig(method=m), 5000) == m
    with pytest.raises(ValueError, match="unknown pair selection"):
        resolve_method(PairSelectionConfig(method="vocab_tree"), 10)  # type: ignore[arg-type]
    descs = [torch.nn.functional.normalize(torch.randn(20, 8), dim=1) for _ in range(12)]
    small = select_image_pairs(descs, PairSelectionConfig(method="auto", exhaustive_max_images=12))
    assert small.method == "query" and small.pairs is None  # the tracker picks its pairs
    above = select_image_pairs(
        descs, PairSelectionConfig(method="auto", exhaustive_max_images=11, retrieval_neighbors=2)
    )
    assert above.method == "retrieval" and above.pairs.shape[0] <= 24
    every = select_image_pairs(descs, PairSelectionConfig(method="exhaustive"))
    assert every.pairs.shape[0] == 12 * 11 // 2


def _random_images(n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.functional.normalize(torch.randn(30, 16, generator=gen), dim=1) for _ in range(n)
    ]


def test_pair_counts_grow_linearly_with_the_image_count():
    cfg = RetrievalConfig(num_words=8, train_descriptors=2000, kmeans_iterations=5)
    counts: dict[str, list[int]] = {"sequential": [], "retrieval": [], "exhaustive": []}
    sizes = (100, 200, 400)
    for n in sizes:
        descs = _random_images(n, seed=n)
        for m in counts:
            sel = select_image_pairs(
                descs,
                PairSelectionConfig(
                    method=m, overlap=5, loop_neighbors=2, retrieval_neighbors=6, retrieval=cfg
                ),
            )
            counts[m].append(sel.pairs.shape[0])
    for n, seq, ret in zip(sizes, counts["sequential"], counts["retrieval"]):
        assert n * 5 - 15 <= seq <= n * (5 + 2)
        assert n * 6 // 2 <= ret <= n * 6
    for m in ("sequential", "retrieval"):  # doubling the images about doubles the pairs
        for a, b in zip(counts[m], counts[m][1:]):
            assert 1.8 <= b / a <= 2.2, (m, counts[m])
    assert counts["exhaustive"] == [n * (n - 1) // 2 for n in sizes]  # quadratic


def test_pairs_depend_only_on_inputs_and_config():
    descs = _random_images(60, seed=1)
    cfg = PairSelectionConfig(
        method="sequential",
        overlap=4,
        loop_neighbors=3,
        retrieval=RetrievalConfig(num_words=8, kmeans_iterations=5),
    )
    torch.manual_seed(123)  # the global RNG plays no part
    a = select_image_pairs(descs, cfg)
    torch.manual_seed(456)
    b = select_image_pairs([d.clone() for d in descs], cfg)
    assert torch.equal(a.pairs, b.pairs) and a.info == b.info
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # float sums in another order: the same pairs
    try:
        c = select_image_pairs(descs, cfg)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a.pairs, c.pairs)
    g1 = global_descriptors(descs, cfg.retrieval)
    assert torch.equal(g1, global_descriptors(descs, cfg.retrieval))
    g2 = global_descriptors(descs, RetrievalConfig(num_words=8, kmeans_iterations=5, seed=1))
    assert not torch.equal(g1, g2)  # another seed, another vocabulary


def test_kmeans_recovers_separated_clusters_and_vlad_is_order_free():
    gen = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=gen) for c in true])
    c = kmeans(x, 3, iterations=10, seed=0).float()
    d = torch.cdist(true, c)
    assert (d.min(1).values < 0.1).all() and (d.min(0).values < 0.1).all()
    assert kmeans(x[:2], 5).shape == (2, 2)  # never more centres than points
    v = vlad(x[:40], c)
    assert torch.allclose(v, vlad(x[:40].flip(0), c), atol=1e-6)
    assert abs(float(v.norm()) - 1.0) < 1e-5
    assert torch.equal(vlad(x[:0], c), torch.zeros(6))
    with pytest.raises(ValueError, match="non-empty"):
        kmeans(x[:0], 3)


def test_descriptor_sample_is_seeded_and_spread_over_the_images():
    descs = [torch.full((k, 2), float(i)) for i, k in enumerate([5, 0, 50, 45])]
    a = sample_descriptors(descs, 20, seed=3)
    assert a.shape == (20, 2) and torch.equal(a, sample_descriptors(descs, 20, seed=3))
    assert not torch.equal(a, sample_descriptors(descs, 20, seed=4))
    per_image = torch.bincount(a[:, 0].long(), minlength=4)
    assert per_image[1] == 0 and per_image[2] >= 5 and per_image[3] >= 5
    assert sample_descriptors(descs, 1000).shape == (100, 2)  # all of them when few


def test_islands_of_the_retrieval_graph_are_linked_by_their_most_similar_pair():
    # two tight groups of images (0-4 and 5-9) with image 7 a little closer to the first
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(2, 32, generator=gen), dim=1)
    desc = torch.cat([base[0] + 0.05 * torch.randn(5, 32, generator=gen), base[1].expand(5, 32)])
    desc[7] = base[1] + 0.3 * base[0]
    pairs = retrieval_pairs(desc, 2)
    assert not ((pairs[:, 0] < 5) & (pairs[:, 1] >= 5)).any()  # two islands
    linked = connect_components(desc, pairs)
    extra = set(map(tuple, linked.tolist())) - set(map(tuple, pairs.tolist()))
    assert len(extra) == 1
    ((a, b),) = extra
    assert a < 5 and b == 7
    assert torch.equal(connect_components(desc, linked), linked)  # connected: unchanged
    lone = connect_components(desc[:3], torch.zeros(0, 2, dtype=torch.long))
    assert lone.shape == (2, 2)  # three singletons: two links


def test_pair_helpers():
    assert exhaustive_pairs(4).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert sequential_pairs(4, 2).tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]
    assert sequential_pairs(3, 10).tolist() == [[0, 1], [0, 2], [1, 2]]
    with pytest.raises(ValueError, match="at least 1"):
        sequential_pairs(5, 0)
    raw = torch.tensor([[3, 1], [1, 3], [2, 2], [0, -1], [0, 4]])
    assert unique_pairs(raw).tolist() == [[0, 4], [1, 3]]
    # index gap: only images at least 3 apart are candidates
    g = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    nbr, sim = nearest_images(g, 5, min_index_gap=3)
    for i in range(6):
        ok = nbr[i][nbr[i] >= 0]
        assert ((ok - i).abs() >= 3).all()
        assert ok.numel() == sum(abs(j - i) >= 3 for j in range(6))
        assert torch.isinf(sim[i, ok.numel() :]).all()


def test_build_tracks_matches_the_selected_pairs(walk):
    from sceneforge.recon.features import FeaturesConfig
    from sceneforge.recon.tracking import TracksConfig, build_tracks

    scene, feats, angle = walk
    n = 24  # the first half of the lap
    sel_cfg = PairSelectionConfig(method="sequential", overlap=2, loop_neighbors=1)
    cfg = TracksConfig(
        features=FeaturesConfig(method="sift", num_workers=1),
        pair_selection=sel_cfg,
        refine_enabled=False,
    )
    images = [scene.images[i] for i in range(n)]
    tracks = build_tracks(images, cfg, features=feats[:n])
    expected = select_image_pairs(_descs(feats[:n]), sel_cfg)
    assert tracks.info["num_pairs"] == expected.pairs.shape[0]
    assert tracks.info["pair_selection"] == expected.info
    assert tracks.info["query_frames"] == list(range(n))
    # a track seen in two frames only comes from a matched pair (the query-frame scheme would
    # also match frames 0 and 23 with every frame)
    vis = tracks.visible
    two = vis[vis.sum(1) == 2].nonzero()[:, 1].reshape(-1, 2)
    selected = set(map(tuple, expected.pairs.tolist()))
    assert two.shape[0] > 0 and set(map(tuple, two.tolist())) <= selected
    # consecutive frames share tracks, which run through more than two frames
    shared = [int((vis[:, i] & vis[:, i + 1]).sum()) for i in range(n - 1)]
    assert min(shared) >= 20, shared
    assert tracks.mean_length() > 2.5


def test_reconstruct_above_the_threshold_matches_sequential_pairs(walk, tmp_path):
    """``ReconstructConfig.pair_selection`` (``auto`` with ``sequential``) reaches the tracker above
    ``exhaustive_max_images``: the frames of a walk register from the sequential pairs plus
    loop-closure candidates, and the summary says which pairs were matched."""
    from sceneforge.core.image_io import write_image_atomic
    from sceneforge.recon.reconstruct import ReconstructConfig, reconstruct
    from sceneforge.recon.sfm import SfMConfig

    scene, _, _ = walk
    n = 24
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n):
        write_image_atomic(folder / f"frame_{i:05d}.png", scene.images[i].numpy())
    pairs = PairSelectionConfig(
        method="auto", exhaustive_max_images=10, overlap=3, loop_neighbors=1
    )
    cfg = ReconstructConfig(
        features="sift",
        sequential=True,
        pair_selection=pairs,
        feature_workers=1,
        progress=False,
        write_png=False,
        retrack_on_doubt=False,
        sfm=SfMConfig(num_threads=1),
    )
    s = reconstruct(folder, tmp_path / "sfm", cfg)
    sel = s["pair_selection"]
    assert sel["method"] == "sequential"
    assert sel["sequential_pairs"] == len(sequential_pairs(n, 3))
    assert s["matching"]["num_pairs"] == sel["num_pairs"] <= n * 4
    assert s["num_registered"] >= n - 2, s["unregistered_images"]
    assert s["mean_reproj_error_px"] < 1.0
