"""Which image pairs the tracker matches when matching every pair is too costly.

Image retrieval by a global descriptor built here from the local descriptors we already
extract: VLAD (Jegou et al. 2010) over a small visual vocabulary from seeded k-means, with
intra-normalisation and power normalisation (Arandjelovic & Zisserman 2013), compared by
cosine similarity. Pair lists for the methods of :class:`PairSelectionConfig`:

* ``query``: the tracker's own VGGSfM-style scheme (query frames against every frame, plus
  each frame with its next ``neighbor_frames``; every pair when in doubt), no list here;
* ``exhaustive``: every pair (``N (N - 1) / 2``);
* ``sequential``: every frame with its next ``overlap`` frames, plus loop-closure candidates
  (each frame's most similar frames outside that window), ``~N (overlap + loop)`` pairs;
* ``retrieval``: each image with its ``retrieval_neighbors`` most similar images, ``~N k``;
* ``auto``: ``query`` up to ``exhaustive_max_images`` images, above it ``sequential`` for
  frames in capture order and ``retrieval`` for unordered photo collections.

Everything is a pure tensor function of the inputs and the config (seeded sampling, ties
broken by index), so the same images give the same pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

PairMethod = Literal["auto", "query", "exhaustive", "sequential", "retrieval"]


@dataclass
class RetrievalConfig:
    """The global image descriptor: VLAD over the images' local descriptors."""

    num_words: int = 64
    """Visual words (k-means centres) of the vocabulary; the descriptor has words x D values."""
    train_descriptors: int = 50_000
    """Local descriptors sampled (seeded, spread over all images) to train the vocabulary."""
    kmeans_iterations: int = 15
    """Lloyd iterations of the k-means after its k-means++ initialisation."""
    seed: int = 0
    """Seed of the descriptor sample and the k-means++ initialisation."""


@dataclass
class PairSelectionConfig:
    """Which image pairs are matched (see the module docstring for the methods)."""

    method: PairMethod = "query"
    """``query`` | ``exhaustive`` | ``sequential`` | ``retrieval`` | ``auto``."""
    ordered: bool = False
    """Images are frames in capture order (e.g. sampled from a video): ``auto`` picks
    ``sequential`` above ``exhaustive_max_images``."""
    exhaustive_max_images: int = 100
    """``auto`` keeps the tracker's ``query`` scheme (all pairs when in doubt) up to this many
    images."""
    overlap: int = 10
    """``sequential``: following frames matched with each frame (COLMAP's default overlap)."""
    loop_neighbors: int = 3
    """``sequential``: each frame's most similar frames farther than ``overlap`` frames away
    also matched (loop-closure candidates; 0 = none, no descriptor computed)."""
    retrieval_neighbors: int = 15
    """``retrieval``: most similar images matched with each image."""
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    """The global descriptor of ``retrieval`` and of the loop-closure candidates."""


# ----------------------------------------------------------------------------- vocabulary


def sample_descriptors(
    descriptors: Sequence[Float[Tensor, "K D"]], count: int, seed: int = 0
) -> Float[Tensor, "M D"]:
    """At most ``count`` local descriptors drawn without replacement (seeded), spread over the
    images in proportion to their descriptor counts (never all of them in memory at once)."""
    sizes = torch.tensor([d.shape[0] for d in descriptors], dtype=torch.long)
    total = int(sizes.sum())
    if total <= count:
        return torch.cat([d.float().cpu() for d in descriptors], 0)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(total, generator=gen)[:count].sort().values
    image = torch.bucketize(pick, sizes.cumsum(0), right=True)
    local = pick - (sizes.cumsum(0) - sizes)[image]
    parts = []
    for i in image.unique().tolist():
        parts.append(descriptors[i][local[image == i]].float().cpu())
    return torch.cat(parts, 0)


def kmeans(
    x: Float[Tensor, "M D"], k: int, iterations: int = 15, seed: int = 0
) -> Float[Tensor, "C D"]:
    """``min(k, M)`` centres of ``x`` by k-means++ initialisation (seeded) and Lloyd
    iterations, in float64. A centre that loses all its points keeps its position."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"k-means needs a non-empty M x D tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k-means needs k >= 1, got {k}")
    x = x.double()
    m = x.shape[0]
    k = min(k, m)
    gen = torch.Generator().manual_seed(seed)
    sq = (x * x).sum(1)
    first = int(torch.randint(m, (1,), generator=gen))
    centres = [x[first]]
    d2 = (sq - 2 * x @ x[first] + sq[first]).clamp_min(0)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:  # fewer distinct points than centres: repeat one
            nxt = int(torch.randint(m, (1,), generator=gen))
        else:
            nxt = int(torch.multinomial(d2 / total, 1, generator=gen))
        centres.append(x[nxt])
        d2 = torch.minimum(d2, (sq - 2 * x @ x[nxt] + sq[nxt]).clamp_min(0))
    c = torch.stack(centres)
    for _ in range(iterations):
        assign = _nearest_centre(x, c)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        cnt = torch.bincount(assign, minlength=c.shape[0]).to(x.dtype)
        new = torch.where(cnt[:, None] > 0, sums / cnt.clamp_min(1)[:, None], c)
        if torch.equal(new, c):
            break
        c = new
    return c


def _nearest_centre(x: Float[Tensor, "M D"], c: Float[Tensor, "C D"]) -> Int[Tensor, " M"]:
    """Index of the nearest centre of every row (squared Euclidean distance; ties: lowest)."""
    d = (c * c).sum(1)[None, :] - 2 * x @ c.T
    return d.argmin(1)


# ----------------------------------------------------------------------------- descriptors


def vlad(descriptors: Float[Tensor, "K D"], centres: Float[Tensor, "C D"]) -> Float[Tensor, " CD"]:
    """VLAD of one image: per visual word the sum of the residuals of the descriptors assigned
    to it, each word L2-normalised (intra-normalisation: bursty words do not dominate), then
    signed square root and L2 normalisation of the whole. All zeros without descriptors."""
    c = centres.double()
    out = torch.zeros_like(c)
    if descriptors.shape[0]:
        x = descriptors.cpu()
        assign = _nearest_centre(x.float(), c.float())  # float32: ~2x faster, same words
        x = x.double()
        out.index_add_(0, assign, x - c[assign])
        out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
    v = out.reshape(-1)
    v = v.sign() * v.abs().sqrt()
    return (v / v.norm().clamp_min(1e-12)).float()


def global_descriptors(
    descriptors: Sequence[Float[Tensor, "K D"]], config: RetrievalConfig | None = None
) -> Float[Tensor, "N E"]:
    """Unit VLAD descriptor of every image, with a vocabulary trained on these images."""
    cfg = config or RetrievalConfig()
    if not descriptors:
        raise ValueError("global descriptors need at least one image")
    sample = sample_descriptors(descriptors, cfg.train_descriptors, cfg.seed)
    if sample.shape[0] == 0:
        raise ValueError("global descriptors need local descriptors: every image has none")
    centres = kmeans(sample, cfg.num_words, cfg.kmeans_iterations, cfg.seed)
    return torch.stack([vlad(d, centres) for d in descriptors])


def nearest_images(
    desc: Float[Tensor, "N E"], k: int, min_index_gap: int = 1
) -> tuple[Int[Tensor, "N K"], Float[Tensor, "N K"]]:
    """Each image's ``k`` most similar images (cosine similarity, most similar first; ties by
    lower index) among those at least ``min_index_gap`` indices away (1: every other image),
    and their similarities. Images with fewer candidates get index -1 and similarity -inf."""
    n = desc.shape[0]
    g = desc.double()
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = g @ g.T
    idx = torch.arange(n)
    sim[(idx[:, None] - idx[None, :]).abs() < max(1, min_index_gap)] = -math.inf
    k = max(0, min(k, n))
    # stable descending sort: equal similarities keep index order
    order = sim.argsort(dim=1, descending=True, stable=True)[:, :k]
    val = sim.gather(1, order)
    order = torch.where(torch.isfinite(val), order, torch.full_like(order, -1))
    return order, val.float()


# ----------------------------------------------------------------------------- pairs


def unique_pairs(pairs: Int[Tensor, "P 2"]) -> Int[Tensor, "Q 2"]:
    """Unordered pairs ``(i < j)``, each once, self-pairs and ``-1`` entries dropped, sorted."""
    p = pairs.reshape(-1, 2).long()
    p = p[(p[:, 0] != p[:, 1]) & (p >= 0).all(1)]
    p = torch.stack([p.min(1).values, p.max(1).values], 1)
    return torch.unique(p, dim=0) if p.shape[0] else p


def exhaustive_pairs(n: int) -> Int[Tensor, "P 2"]:
    """Every pair ``(i < j)`` of ``n`` images."""
    return torch.triu_indices(n, n, 1).T.contiguous()


def sequential_pairs(n: int, overlap: int) -> Int[Tensor, "P 2"]:
    """Every frame with its next ``overlap`` frames."""
    if overlap < 1:
        raise ValueError(f"sequential overlap must be at least 1, got {overlap}")
    i = torch.arange(n)
    pairs = [torch.stack([i[: n - d], i[d:]], 1) for d in range(1, min(overlap, n - 1) + 1)]
    return unique_pairs(torch.cat(pairs)) if pairs else torch.zeros(0, 2, dtype=torch.long)


def retrieval_pairs(
    desc: Float[Tensor, "N E"], k: int, min_index_gap: int = 1
) -> Int[Tensor, "P 2"]:
    """Each image with its ``k`` most similar images at least ``min_index_gap`` indices away."""
    nbr, _ = nearest_images(desc, k, min_index_gap)
    src = torch.arange(desc.shape[0])[:, None].expand_as(nbr)
    return unique_pairs(torch.stack([src, nbr], -1))


def connect_components(desc: Float[Tensor, "N E"], pairs: Int[Tensor, "P 2"]) -> Int[Tensor, "Q 2"]:
    """``pairs`` plus, while the pair graph falls apart, the most similar pair between the
    largest group and any other image (a retrieval graph of islands would give one model per
    island; whether the added pair really overlaps is for the matching to verify)."""
    from sceneforge.recon.global_sfm import connected_components

    n = desc.shape[0]
    g = desc.double()
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = pairs.long()
    while True:
        comps = connected_components(n, out)
        if len(comps) <= 1:
            return unique_pairs(out)
        main = torch.tensor(comps[0])
        rest = torch.ones(n, dtype=torch.bool)
        rest[main] = False
        sim = g[main] @ g[rest].T
        best = int(sim.argmax())  # first maximum: lowest indices on ties
        a, b = main[best // sim.shape[1]], rest.nonzero()[:, 0][best % sim.shape[1]]
        out = torch.cat([out, torch.stack([a, b])[None]])


@dataclass
class PairSelection:
    """The pairs to match and how they were chosen."""

    method: str
    """The method used (``auto`` resolved)."""
    pairs: Int[Tensor, "P 2"] | None
    """Unordered pairs ``(i < j)``, sorted; None for ``query`` (the tracker picks them)."""
    info: dict
    """Counts for the summary: pairs per kind."""


def resolve_method(config: PairSelectionConfig, num_images: int) -> str:
    """The method ``auto`` stands for with ``num_images`` images (others unchanged)."""
    if config.method not in ("auto", "query", "exhaustive", "sequential", "retrieval"):
        raise ValueError(
            f"unknown pair selection {config.method!r}; use auto, query, exhaustive, "
            "sequential or retrieval"
        )
    if config.method != "auto":
        return config.method
    if num_images <= config.exhaustive_max_images:
        return "query"
    return "sequential" if config.ordered else "retrieval"


def select_image_pairs(
    descriptors: Sequence[Float[Tensor, "K D"]], config: PairSelectionConfig
) -> PairSelection:
    """The pairs of ``config.method`` for images with these local descriptors (one ``K D``
    tensor per image, in capture order for ``sequential``)."""
    n = len(descriptors)
    method = resolve_method(config, n)
    info: dict = {"method": method}
    if method == "query":
        return PairSelection(method, None, info)
    if method == "exhaustive":
        pairs = exhaustive_pairs(n)
    elif method == "sequential":
        pairs = sequential_pairs(n, config.overlap)
        info["sequential_pairs"] = int(pairs.shape[0])
        if config.loop_neighbors > 0 and n > config.overlap + 1:
            g = global_descriptors(descriptors, config.retrieval)
            loops = retrieval_pairs(g, config.loop_neighbors, config.overlap + 1)
            info["loop_candidates"] = int(loops.shape[0])
            pairs = unique_pairs(torch.cat([pairs, loops]))
    elif method == "retrieval":
        if config.retrieval_neighbors < 1:
            raise ValueError(f"retrieval_neighbors must be >= 1, got {config.retrieval_neighbors}")
        g = global_descriptors(descriptors, config.retrieval)
        pairs = retrieval_pairs(g, config.retrieval_neighbors)
        linked = connect_components(g, pairs)
        info["linking_pairs"] = int(linked.shape[0] - pairs.shape[0])
        pairs = linked
    else:  # resolve_method rejects the rest
        raise AssertionError(method)
    info["num_pairs"] = int(pairs.shape[0])
    return PairSelection(method, pairs, info)
