"""Incremental registration: one image pair, then one image at a time by PnP.

The global step (rotation then translation averaging) trusts every verified pair's relative
pose. When many of them are wrong in the same way -- a textureless object in front of a
room whose matches also fit a wrong essential matrix, a lens with strong distortion the
two-view stage does not model -- the averaged poses are consistent, wrong, and bundle
adjustment polishes them into a model with a small reprojection error (blowtorch). Here a
pose is only accepted once it agrees with 3D points triangulated from other images, and the
intrinsics (distortion included) are refined as the model grows (COLMAP's scheme): slower,
being sequential, but it does not depend on any single pair's relative pose beyond the first.

At scale (hundreds of images) each round registers a batch of images (every candidate with
enough 2D-3D correspondences, PnP per image, best-connected first) and triangulates their new
points once; a local bundle adjustment then refines the new images and their most-connected
registered neighbours with every other camera held fixed, while the whole model is adjusted
only whenever it has grown by :attr:`IncrementalConfig.ba_growth` and at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.cameras import Cameras, make_rigid, unproject
from sceneforge.recon.global_sfm import PnPConfig, pnp_ransac
from sceneforge.recon.incremental_local import AdjustFn, drop_outliers, local_bundle_adjustment
from sceneforge.recon.tracks import TrackPixels
from sceneforge.recon.triangulation import TriangulationOptions, triangulate


@dataclass
class IncrementalConfig:
    """Incremental registration (see :mod:`sceneforge.recon.incremental`)."""

    min_init_angle_deg: float = 4.0
    """Initial pairs whose median triangulation angle is smaller are ranked down in
    proportion (a narrow baseline triangulates poorly)."""
    init_candidates: int = 4
    """Grow a model from each of this many initial pairs (best first); the model explaining
    the most observations wins. A wrong initial relative pose can still grow into a wrong
    model of almost every image (blowtorch: 14 images, 4.3-4.6k points, 0.6 px against
    15 images, 6.1-6.6k points, 0.28 px for the right one)."""
    min_inlier_ratio: float = 0.25
    """PnP must explain at least this fraction of the image's 2D-3D correspondences (and at
    least :attr:`PnPConfig.min_inliers`)."""
    pnp_threshold_px: float = 12.0
    """PnP inlier threshold: looser than the final 4 px (COLMAP's 12 px) because early
    intrinsics miss the distortion (~17 px at blowtorch's corners); bundle adjustment and
    the error filter then tighten the model."""
    ba_growth: float = 1.25
    """Bundle adjust all registered images whenever their number has grown by this factor
    (and once at the end); the rounds in between get a local bundle adjustment."""
    batch_images: int = 8
    """Images registered per round at most (PnP each against the same model, most 2D-3D
    correspondences first, then by index; 1: one image per round, the best-connected)."""
    local_ba_images: int = 12
    """Local bundle adjustment after a round without a global one: the round's images plus
    their registered neighbours sharing the most points, this many in all (at least the
    round's images), every other camera and the intrinsics held fixed; 0: none."""
    min_images_intrinsics: int = 4
    """Intrinsics stay fixed until this many images are registered (two views barely
    constrain focal length and distortion)."""
    max_reproj_px: float = 4.0
    """Observations with a larger reprojection error are dropped after each adjustment."""
    min_tri_angle_deg: float = 1.5
    """New points need at least this triangulation angle."""
    min_rotation_inliers: float = 0.8
    """``SfMConfig.init = "auto"``: the global poses are verified by an incremental model when
    fewer of the verified pairs' relative rotations than this fraction are consistent after
    rotation averaging (0.21-0.79 on blowtorch sets, >= 0.9 on the benchmark scenes where
    the global poses are right), or when the pairs fall into groups with unrelated scales."""
    min_agreement: float = 0.8
    """The global poses are kept when at least this fraction of the image pairs both models
    register agree within 5 degrees; otherwise the incremental model replaces them."""
    min_common_images: int = 4
    """Fewer images in both models cannot verify the global poses (one bad pair of three
    would decide). Then the incremental model (2+ images) replaces global poses whose
    rotations are in doubt; with consistent rotations (only the scales in doubt: synthetic
    orbit / walk with 12 views, whose incremental models stop at 3 images) the global poses
    stay unless the incremental model is larger."""


@dataclass
class IncrementalResult:
    """Poses and intrinsics of the images the incremental registration reached."""

    cam_from_world: Float[Tensor, "N 3 4"]
    registered: Bool[Tensor, " N"]
    intrinsics: Float[Tensor, "N P"]
    init_pair: tuple[int, int]
    """The two images the model was started from."""
    num_points: int
    """Points in the model at the end."""
    num_observations: int
    """Observations of those points within the error threshold."""
    rounds: int = 0
    """Registration rounds (PnP batches)."""
    global_bas: int = 0
    """Bundle adjustments of the whole model."""
    local_bas: int = 0
    """Local bundle adjustments (a window of cameras, the others fixed)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in PnP, triangulation, global and local bundle adjustment (by
    :func:`incremental_registration`: summed over every model it grew; reported only,
    nothing depends on them)."""


def init_pair_order(
    edges: Int[Tensor, "E 2"],
    num_inliers: Int[Tensor, " E"],
    angle_deg: Float[Tensor, " E"],
    min_angle_deg: float,
) -> Int[Tensor, " E"]:
    """Edges ranked as initial pairs: inliers, scaled down for a narrow baseline."""
    score = num_inliers.double() * (angle_deg.double() / min_angle_deg).clamp(max=1.0)
    return score.argsort(descending=True, stable=True)


def incremental_registration(
    xy: TrackPixels,
    vis: Bool[Tensor, "T N"],
    image_sizes: Int[Tensor, "N 2"],
    edges: Int[Tensor, "E 2"],
    R_rel: Float[Tensor, "E 3 3"],
    t_rel: Float[Tensor, "E 3"],
    num_inliers: Int[Tensor, " E"],
    angle_deg: Float[Tensor, " E"],
    model: str,
    intr: Float[Tensor, "N P"],
    adjust: AdjustFn,
    shared_intrinsics: bool,
    config: IncrementalConfig | None = None,
    pnp: PnPConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> IncrementalResult:
    """Register images incrementally from the verified pairs ``edges`` (relative poses
    ``cam2_from_cam1``); returns the model that explains the most observations."""
    cfg = config or IncrementalConfig()
    pnp = replace(pnp or PnPConfig(), threshold_px=cfg.pnp_threshold_px)
    log = log or (lambda _m: None)
    if edges.shape[0] == 0:
        raise ValueError("incremental registration needs at least one verified pair")
    order = init_pair_order(edges, num_inliers, angle_deg, cfg.min_init_angle_deg)
    best: IncrementalResult | None = None
    timings: dict[str, float] = {}
    for k in order[: max(1, cfg.init_candidates)].tolist():
        res = _grow(
            xy, vis, image_sizes, (int(edges[k, 0]), int(edges[k, 1])), R_rel[k], t_rel[k],
            model, intr.clone(), adjust, shared_intrinsics, cfg, pnp,
        )  # fmt: skip
        log(
            f"incremental: from pair {res.init_pair}: {int(res.registered.sum())} images, "
            f"{res.num_points} points, {res.num_observations} observations"
        )
        for name, sec in res.timings.items():
            timings[name] = timings.get(name, 0.0) + sec
        if best is None or res.num_observations > best.num_observations:
            best = res
    assert best is not None
    return replace(best, timings=timings)


def registration_candidates(
    counts: Int[Tensor, " N"], min_count: int, max_images: int
) -> Int[Tensor, " B"]:
    """Images with at least ``min_count`` 2D-3D correspondences (``counts``), most first
    (ties: lower index first), at most ``max_images`` (at least one)."""
    order = counts.argsort(descending=True, stable=True)
    return order[counts[order] >= min_count][: max(1, max_images)]


def _grow(
    xy: TrackPixels,
    vis: Tensor,
    sizes: Tensor,
    pair: tuple[int, int],
    R: Tensor,
    t: Tensor,
    model: str,
    intr: Tensor,
    adjust: AdjustFn,
    shared_intrinsics: bool,
    cfg: IncrementalConfig,
    pnp: PnPConfig,
) -> IncrementalResult:
    """One model grown from ``pair``."""
    n = vis.shape[1]
    dt = torch.float64
    T = make_rigid(torch.eye(3, dtype=dt).expand(n, 3, 3), torch.zeros(n, 3, dtype=dt)).clone()
    i, j = pair
    T[j] = make_rigid(R.to(dt), t.to(dt))
    reg = torch.zeros(n, dtype=torch.bool)
    reg[[i, j]] = True
    X = torch.zeros(vis.shape[0], 3, dtype=dt)  # per track
    obs = torch.zeros_like(vis)  # observations used by the model
    tri_opts = TriangulationOptions(
        min_angle_deg=cfg.min_tri_angle_deg, max_reproj_error=cfg.max_reproj_px
    )
    timings = {"pnp_s": 0.0, "triangulation_s": 0.0, "global_ba_s": 0.0, "local_ba_s": 0.0}
    count = {"rounds": 0, "global": 0, "local": 0}

    def cams(ids: Tensor) -> Cameras:
        return Cameras(model, intr[ids], sizes[ids, 1], sizes[ids, 0], T[ids])

    def add_points(tids: Tensor) -> None:
        """Triangulate ``tids`` from all their registered views (where they pass the checks)."""
        if tids.numel() == 0:
            return
        t0 = time.perf_counter()
        ids = reg.nonzero()[:, 0]
        m = vis[tids][:, ids]
        tri = triangulate(cams(ids), xy.block(tids, ids), m, tri_opts)
        good = tri.valid
        X[tids[good]] = tri.points[good]
        o = torch.zeros(int(good.sum()), n, dtype=torch.bool)
        o[:, ids] = m[good]
        obs[tids[good]] = o
        timings["triangulation_s"] += time.perf_counter() - t0

    def bundle() -> None:
        """Bundle adjust the registered images, then drop observations above the threshold."""
        t0 = time.perf_counter()
        ids = reg.nonzero()[:, 0]
        tids = obs.any(1).nonzero()[:, 0]
        pi, vi = obs[tids][:, ids].nonzero(as_tuple=True)
        fix_intr = int(reg.sum()) < cfg.min_images_intrinsics
        T_r, intr_r, P = adjust(
            T[ids], intr[ids], X[tids], vi, pi, xy[tids[pi], ids[vi]], False, fix_intr
        )
        T[ids] = T_r
        intr[ids] = intr_r
        if shared_intrinsics and not fix_intr:
            intr[~reg] = intr_r[0]  # images still to come start from the refined camera
        X[tids] = P
        drop_outliers(model, T, intr, X, obs, xy, tids, ids, pi, vi, cfg.max_reproj_px)
        timings["global_ba_s"] += time.perf_counter() - t0
        count["global"] += 1

    def local_bundle(new: Tensor) -> None:
        """Bundle adjust the window around the round's images ``new`` (the rest fixed)."""
        t0 = time.perf_counter()
        local_bundle_adjustment(
            model, T, intr, X, obs, xy, reg, new, adjust, cfg.local_ba_images, cfg.max_reproj_px
        )
        timings["local_ba_s"] += time.perf_counter() - t0
        count["local"] += 1

    def register(c: int, has: Tensor) -> Tensor | None:
        """PnP of image ``c`` on the model's points; its inlier tracks, or None."""
        t0 = time.perf_counter()
        sel = (has & vis[:, c]).nonzero()[:, 0]
        rays = unproject(xy[sel, c], model, intr[c].expand(sel.numel(), -1))[..., :2]
        Tc, inl = pnp_ransac(X[sel], rays, float(intr[c, 0]), pnp)
        ninl = int(inl.sum())
        ok = (
            ninl >= pnp.min_inliers
            and ninl >= cfg.min_inlier_ratio * sel.numel()
            and bool(torch.isfinite(Tc).all())
        )
        s = sel[inl] if ok else None
        if s is not None:
            zero = torch.zeros(s.numel(), dtype=torch.long)
            T_c, _, _ = adjust(
                Tc[None], intr[c : c + 1], X[s], zero, torch.arange(s.numel()), xy[s, c],
                True, True,
            )  # fmt: skip
            T[c] = T_c[0]
        timings["pnp_s"] += time.perf_counter() - t0
        return s

    add_points((vis[:, i] & vis[:, j]).nonzero()[:, 0])
    if int(obs.any(1).sum()) < pnp.min_inliers:
        return IncrementalResult(T, reg & False, intr, pair, 0, 0, timings=timings)
    bundle()
    failed = torch.zeros(n, dtype=torch.bool)
    last_ba = 2
    while True:
        has = obs.any(1)
        counts = (vis & has[:, None]).sum(0)
        counts[reg | failed] = 0
        batch = registration_candidates(counts, pnp.min_inliers, cfg.batch_images)
        if batch.numel() == 0:
            if int(reg.sum()) == last_ba:
                break
            bundle()  # then retry the images that failed against the older model
            last_ba = int(reg.sum())
            failed.zero_()
            continue
        count["rounds"] += 1
        new: list[int] = []
        for c in batch.tolist():  # every PnP against the same model
            s = register(c, has)
            if s is None:
                failed[c] = True
                continue
            reg[c] = True
            obs[s, c] = True
            new.append(c)
        if not new:
            continue
        new_ids = torch.tensor(new)
        tri = ~has & vis[:, new_ids].any(1) & ((vis & reg[None]).sum(1) >= 2)
        add_points(tri.nonzero()[:, 0])
        if int(reg.sum()) >= math.ceil(cfg.ba_growth * last_ba):
            bundle()
            last_ba = int(reg.sum())
            failed.zero_()
        elif cfg.local_ba_images > 0:
            local_bundle(new_ids)
    return IncrementalResult(
        T, reg, intr, pair, int(obs.any(1).sum()), int(obs.sum()),
        count["rounds"], count["global"], count["local"], timings,
    )  # fmt: skip
