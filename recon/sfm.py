"""The full structure-from-motion pipeline: tracks in, cameras and points out.

Stages (each with its own typed config):
1. tracks (:mod:`sceneforge.recon.tracking`) over all images;
2. two-view geometry on every pair sharing enough tracks, batched
   (:mod:`sceneforge.recon.two_view`); unknown focal lengths are first estimated from the
   fundamental matrices (one shared value, or one per image when the images do not share a
   camera, e.g. internet photos of different sizes);
3. global initialisation: rotation then translation averaging, all cameras at once
   (:mod:`sceneforge.recon.global_sfm`). When the pairs give reason to doubt it (relative
   rotations largely inconsistent, or pair groups with unrelated scales) an incremental model
   (:mod:`sceneforge.recon.incremental`: one pair, then PnP image by image) checks it, and
   replaces it when the two disagree; :func:`reconstruct` then also re-tracks with every image
   pair matched;
4. triangulation (:mod:`sceneforge.recon.triangulation`) → bundle adjustment
   (:mod:`sceneforge.recon.bundle_adjustment`) → filtering by reprojection error and
   triangulation angle → re-triangulation, iterated; images the global step left out are
   registered by PnP in between.

:func:`reconstruct` runs everything on an image folder and writes a COLMAP model,
``transforms.json``, a PNG of cameras and points and ``summary.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core import run_files
from sceneforge.core.cameras import (
    MODEL_PARAMS,
    Cameras,
    convert_params,
    make_rigid,
    project,
    transform_points,
    unproject,
)
from sceneforge.core.rotations import angle_axis_to_matrix, matrix_to_angle_axis
from sceneforge.core.timing import cpu_seconds
from sceneforge.recon.global_sfm import (
    PnPConfig,
    RotationAveragingConfig,
    TranslationAveragingConfig,
    connected_components,
    pnp_ransac,
    rotation_averaging,
    translation_averaging,
)
from sceneforge.recon.incremental import IncrementalConfig, incremental_registration
from sceneforge.recon.self_calibration import (
    estimate_per_image_focals,
    estimate_shared_focal,
    shared_focal_contrast,
)
from sceneforge.recon.tracks import Tracks
from sceneforge.recon.two_view import TwoViewConfig, estimate_two_view


class SfMError(ValueError):
    """Reconstruction impossible with this input; the message says why."""


@dataclass
class CameraConfig:
    """Intrinsics: model, sharing, and what is known."""

    model: str = "SIMPLE_RADIAL"
    """COLMAP camera model to estimate (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV)."""
    shared: bool = True
    """One camera for all images (else one per image)."""
    focal: float | None = None
    """Known focal length in pixels (of the full-size image); None estimates it."""
    params: tuple[float, ...] | None = None
    """Known full parameter vector in the model's order (overrides ``focal``)."""
    focal_range: tuple[float, float] = (0.4, 4.0)
    """Search range of an unknown focal length, in units of the largest image side."""
    focal_prior: float = 1.2
    """Focal length (in units of the largest side) used when it is not observable."""
    focal_min_contrast: float = 1e-3
    """A shared focal length estimated from the pairs is used only when it explains them better
    than half and twice its value by at least this (``shared_focal_contrast``); below it the
    pairs do not determine it (e.g. cameras fixating one point) and the prior is used."""
    fix_intrinsics: bool = False
    """Keep known intrinsics fixed in bundle adjustment (else they only initialise it)."""


@dataclass
class PairsConfig:
    """Which image pairs get a two-view geometry."""

    min_shared_tracks: int = 30
    """Pairs sharing fewer tracks are skipped."""
    max_correspondences: int = 2000
    """At most this many (random) shared tracks per pair go into RANSAC."""
    max_pairs_per_image: int = 30
    """Keep at most this many best-connected pairs per image (0 = all)."""
    focal_pairs_per_image: int = 4
    """Unknown focal lengths are estimated from the fundamental matrices of each image's this
    many best-connected pairs (their union; 0 = all pairs): the estimate is a robust median,
    which the weaker pairs only slow down (fern: a third of the pairs, same focal length)."""


@dataclass
class RefinementConfig:
    """Triangulate → bundle adjust → filter → re-triangulate loop."""

    rounds: int = 3
    """Iterations of the loop."""
    robust_triangulation: bool = False
    """First round: RANSAC triangulation over view pairs (slower; for noisy global poses)."""
    max_reproj_px: float = 4.0
    """Observations with a larger reprojection error are dropped."""
    min_tri_angle_deg: float = 1.5
    """Points whose largest triangulation angle is smaller are dropped."""
    ba_iterations: int = 30
    """Levenberg-Marquardt iterations per bundle adjustment."""
    ba_function_tolerance: float = 1e-4
    """Bundle adjustment stops once an iteration lowers the cost by less than this fraction.
    Past 1e-4 the cost crawls (fern: -0.05% over the last 20 of 30 iterations) without
    changing poses measurably (AUC and agreement with COLMAP identical to 1e-6)."""
    ba_first_round_function_tolerance: float = 1e-2
    """The same for the first round, whose points are re-triangulated and filtered anyway
    (1e-2 vs 1e-6: same poses and points on the benchmark scenes, 2-3x fewer iterations)."""
    ba_loss: Literal["trivial", "huber", "cauchy", "soft_l1"] = "cauchy"
    """Robust loss of the bundle adjustment."""
    ba_loss_scale_px: float = 2.0
    """Scale of the robust loss in pixels."""
    refine_principal_point: bool = False
    """Also refine cx, cy (poorly constrained; COLMAP keeps them fixed by default)."""
    max_points_ba: int = 20000
    """Bundle-adjust at most this many points (the longest tracks)."""
    min_image_points: int = 30
    """Images that end with fewer points are left unregistered (listed in the summary), as the
    PnP fallback would not register them either (:attr:`PnPConfig.min_inliers`): on blowtorch
    such images were 25 degrees off the reference poses."""
    converged_max_filtered: float = 0.05
    """From the second round on, stop early when a round registers no new image, filters at
    most this fraction of the observations and lowers the mean reprojection error by less than
    ``converged_min_gain`` (relative) or ``converged_min_gain_px``."""
    converged_min_gain: float = 0.2
    """Relative decrease of the mean reprojection error below which a round counts as
    converged (see ``converged_max_filtered``; 0 disables the early stop)."""
    converged_min_gain_px: float = 0.05
    """A decrease of the mean reprojection error by less than this (pixels) also counts as
    converged: errors of hundredths of a pixel (synthetic walk: 0.08 -> 0.04 px) leave
    nothing for another round to improve."""


@dataclass
class SfMConfig:
    """Everything :func:`reconstruct_from_tracks` does, one sub-config per stage."""

    camera: CameraConfig = field(default_factory=CameraConfig)
    """Intrinsics model, sharing and priors."""
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """Pair selection."""
    two_view: TwoViewConfig = field(default_factory=TwoViewConfig)
    """Robust two-view geometry."""
    rotation: RotationAveragingConfig = field(default_factory=RotationAveragingConfig)
    """Rotation averaging."""
    translation: TranslationAveragingConfig = field(default_factory=TranslationAveragingConfig)
    """Translation averaging."""
    pnp: PnPConfig = field(default_factory=PnPConfig)
    """PnP fallback registration."""
    init: Literal["auto", "global", "incremental"] = "auto"
    """Initial poses: "global" (rotation and translation averaging), "incremental" (one
    pair, then PnP image by image) or "auto" (global, incremental where it cannot be
    trusted)."""
    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)
    """Incremental registration."""
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    """Triangulation / BA / filtering loop."""
    min_track_length: int = 2
    """Tracks seen in fewer images are ignored."""
    num_threads: int | None = 0
    """torch intra-op threads of the SfM stages: 0 = one per CPU core this process may run on
    (its affinity mask), at most 4 (2 on an idle 2-core machine: fern 1.8 -> 1.3 s; on a busy
    one set 1, or OMP_WAIT_POLICY=PASSIVE before torch starts: two spinning OpenMP threads
    there measured ~10x slower than one), None = torch's setting. Never chosen from the load,
    so results do not depend on it: threads change only the order of float sums. Tracking
    runs images and pairs in parallel itself, on one torch thread unless this is positive."""


@dataclass
class Reconstruction:
    """Result of the pipeline.

    Attributes:
        cameras: all N images (unregistered ones keep an identity pose).
        registered: ``N`` which images have a pose.
        registered_by: per image ``"global"``, ``"pnp"`` or ``None``.
        points: ``M 3`` world points.
        track_ids: ``M`` index of each point's track.
        obs_image, obs_point, obs_xy: observations of the points (for the COLMAP model).
        timings: seconds per stage.
        stats: counters (pairs, edges, ...).
    """

    cameras: Cameras
    registered: Bool[Tensor, " N"]
    registered_by: list[str | None]
    points: Float[Tensor, "M 3"]
    track_ids: Int[Tensor, " M"]
    obs_image: Int[Tensor, " O"]
    obs_point: Int[Tensor, " O"]
    obs_xy: Float[Tensor, "O 2"]
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)

    def reprojection_errors(self) -> Tensor:
        """Pixel error of every observation."""
        T = self.cameras.cam_from_world[self.obs_image]
        pc = transform_points(T, self.points[self.obs_point])
        uv, _ = project(pc, self.cameras.model, self.cameras.params[self.obs_image])
        return (uv - self.obs_xy).norm(dim=-1)

    def mean_track_length(self) -> float:
        if self.points.shape[0] == 0:
            return 0.0
        return self.obs_image.numel() / self.points.shape[0]


# ----------------------------------------------------------------------------- intrinsics


def initial_intrinsics(
    sizes_hw: Int[Tensor, "N 2"], cfg: CameraConfig, focal: float | Tensor | None
) -> Float[Tensor, "N P"]:
    """Parameters in ``cfg.model``: the known ones, else ``focal`` with the principal point at
    the image centre and zero distortion."""
    n = sizes_hw.shape[0]
    if cfg.model not in MODEL_PARAMS or cfg.model == "BAL":
        raise SfMError(f"unsupported camera model {cfg.model!r}")
    if cfg.params is not None:
        p = torch.tensor(cfg.params, dtype=torch.float64)
        if p.numel() != len(MODEL_PARAMS[cfg.model]):
            raise SfMError(
                f"camera params {cfg.params} do not fit {cfg.model} {MODEL_PARAMS[cfg.model]}"
            )
        return p.expand(n, -1).clone()
    f = torch.as_tensor(focal, dtype=torch.float64).expand(n)
    h, w = sizes_hw[:, 0].double(), sizes_hw[:, 1].double()
    pin = torch.stack([f, w / 2, h / 2], -1)
    return convert_params("SIMPLE_PINHOLE", pin, cfg.model)


def _per_image_focals(
    fgeo, pairs: Tensor, sizes: Tensor, cfg: CameraConfig, log: Callable[[str], None]
) -> Tensor:
    """One initial focal length per image (cameras not shared, e.g. internet photos), from the
    verified fundamental matrices; the prior for every image when they leave it unobservable."""
    ok = fgeo.success
    side = sizes.max(1).values.double()
    pp = sizes.flip(1).double() / 2
    f, rho = estimate_per_image_focals(
        fgeo.matrix[ok], pairs[ok], pp, side, fgeo.num_inliers[ok].double(), cfg.focal_range
    )
    lo, hi = cfg.focal_range
    if rho < 1.05 * lo or rho > 0.95 * hi:
        log(f"focal lengths not observable from the pairs; using {cfg.focal_prior:g} x image size")
        return cfg.focal_prior * side
    log(
        f"per-image focal lengths from {int(ok.sum())} fundamental matrices: "
        f"{float(f.min()):.0f}-{float(f.max()):.0f} px (shared ratio {rho:.2f})"
    )
    return f


def _focals(model: str, params: Tensor) -> Tensor:
    from sceneforge.core.cameras import split_params

    fx, fy, *_ = split_params(model, params)
    return 0.5 * (fx + fy)


# ----------------------------------------------------------------------------- pairs


def select_pairs(
    visible: Bool[Tensor, "T N"], cfg: PairsConfig
) -> tuple[Int[Tensor, "P 2"], Int[Tensor, " P"]]:
    """Pairs ``(i < j)`` sharing at least ``min_shared_tracks`` tracks, best per image kept."""
    v = visible.double()
    co = (v.T @ v).long()
    n = co.shape[0]
    iu = torch.triu_indices(n, n, 1)
    cnt = co[iu[0], iu[1]]
    ok = cnt >= cfg.min_shared_tracks
    pairs, cnt = iu.T[ok], cnt[ok]
    if cfg.max_pairs_per_image > 0 and pairs.shape[0]:
        keep = torch.zeros(pairs.shape[0], dtype=torch.bool)
        for i in range(n):
            inc = ((pairs[:, 0] == i) | (pairs[:, 1] == i)).nonzero()[:, 0]
            top = inc[cnt[inc].argsort(descending=True)[: cfg.max_pairs_per_image]]
            keep[top] = True
        pairs, cnt = pairs[keep], cnt[keep]
    return pairs, cnt


def best_pairs_per_image(
    pairs: Int[Tensor, "P 2"], counts: Int[Tensor, " P"], n: int, k: int
) -> Int[Tensor, " S"]:
    """Indices of the union of every image's ``k`` pairs with the most shared tracks (all
    pairs when ``k <= 0``)."""
    if k <= 0:
        return torch.arange(pairs.shape[0])
    keep = torch.zeros(pairs.shape[0], dtype=torch.bool)
    for i in range(n):
        inc = ((pairs[:, 0] == i) | (pairs[:, 1] == i)).nonzero()[:, 0]
        keep[inc[counts[inc].argsort(descending=True)[:k]]] = True
    return keep.nonzero()[:, 0]


def pair_correspondences(
    data: Float[Tensor, "T N 2"],
    visible: Bool[Tensor, "T N"],
    pairs: Int[Tensor, "P 2"],
    cap: int,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Padded ``(P, M, 2)`` batches of the shared tracks of every pair (at most ``cap``)."""
    gen = torch.Generator().manual_seed(seed)
    both = visible[:, pairs[:, 0]] & visible[:, pairs[:, 1]]  # (T, P)
    key = torch.rand(both.shape, generator=gen).to(both.device) + (~both).float() * 2.0
    m = min(cap, int(both.sum(0).max()) if both.numel() else 0)
    order = key.argsort(0)[:m]  # (m, P) track indices, shared first in random order
    valid = torch.gather(both, 0, order).T  # (P, m)
    x1 = data[order, pairs[None, :, 0]].transpose(0, 1)
    x2 = data[order, pairs[None, :, 1]].transpose(0, 1)
    return x1, x2, valid


# ----------------------------------------------------------------------------- main loop


def _ba(
    model: str,
    cam_from_world: Tensor,
    intr: Tensor,
    points: Tensor,
    obs_cam: Tensor,
    obs_pt: Tensor,
    obs_xy: Tensor,
    intr_mode: str,
    cfg: RefinementConfig,
    fix_points: bool = False,
    function_tolerance: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, list[float]]:
    """One bundle adjustment on the registered cameras; returns poses, intrinsics, points
    and the cost after each iteration."""
    from sceneforge.recon.bundle_adjustment import BAOptions, BAProblem, bundle_adjust

    shared = intr_mode == "shared"
    prob = BAProblem(
        model=model,
        rotation=matrix_to_angle_axis(cam_from_world[:, :, :3]),
        translation=cam_from_world[:, :, 3].clone(),
        intrinsics=intr[:1].clone() if shared else intr.clone(),
        points=points.clone(),
        cam_idx=obs_cam,
        point_idx=obs_pt,
        observations=obs_xy,
    )
    opts = BAOptions(
        max_iterations=cfg.ba_iterations,
        loss=cfg.ba_loss,
        loss_scale=cfg.ba_loss_scale_px,
        intrinsics="fixed" if intr_mode == "fixed" else intr_mode,
        fix_points=fix_points,
        function_tolerance=function_tolerance,
        constant_intrinsics=() if cfg.refine_principal_point else ("cx", "cy"),
        # The pipeline's thread setting (BAOptions' default, all cores, oversubscribes).
        num_threads=torch.get_num_threads(),
    )
    res, summary = bundle_adjust(prob, opts)
    T = make_rigid(angle_axis_to_matrix(res.rotation), res.translation)
    intr_out = (
        res.intrinsics.expand(cam_from_world.shape[0], -1).clone() if shared else res.intrinsics
    )
    return T, intr_out, res.points, [float(c) for c in summary.costs]


def reconstruct_from_tracks(
    tracks: Tracks,
    config: SfMConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> Reconstruction:
    """Cameras and points from :class:`Tracks` (see the module docstring for the stages)."""
    cfg = config or SfMConfig()
    old = torch.get_num_threads()
    threads = sfm_threads(cfg.num_threads)
    if threads:
        torch.set_num_threads(threads)
    try:
        return _reconstruct_from_tracks(tracks, cfg, log)
    finally:
        torch.set_num_threads(old)


def sfm_threads(num_threads: int | None) -> int | None:
    """torch threads for the SfM stages (see :attr:`SfMConfig.num_threads`): 0 or negative =
    ``min(available_cores(), 4)``, from the CPU affinity mask only (never from the load, so
    the same machine and settings always get the same count)."""
    if num_threads is None or num_threads > 0:
        return num_threads
    from sceneforge.recon.features import available_cores

    return min(available_cores(), 4)


def _reconstruct_from_tracks(
    tracks: Tracks, cfg: SfMConfig, log: Callable[[str], None] | None
) -> Reconstruction:
    from sceneforge.recon.triangulation import TriangulationOptions, triangulate, triangulate_ransac

    log = log or (lambda _m: None)
    timings: dict[str, float] = {}
    stats: dict[str, float] = {}
    n = tracks.num_frames
    if n < 2:
        raise SfMError(f"need at least 2 images, got {n}")
    tr = tracks.filter(cfg.min_track_length)
    if tr.num_tracks == 0:
        raise SfMError("no track is seen in two images: the images do not overlap")
    xy = tr.xy.double()
    vis = tr.visible.clone()
    sizes = tr.image_sizes

    # ---- intrinsics initialisation
    t0 = time.perf_counter()
    pairs, shared_cnt = select_pairs(vis, cfg.pairs)
    if pairs.shape[0] == 0:
        raise SfMError(
            f"no image pair shares {cfg.pairs.min_shared_tracks} tracks: the images do not overlap"
        )
    p1, p2, pvalid = pair_correspondences(xy, vis, pairs, cfg.pairs.max_correspondences)
    known = cfg.camera.params is not None or cfg.camera.focal is not None
    focal0 = cfg.camera.focal
    if not known:
        fsel = best_pairs_per_image(pairs, shared_cnt, n, cfg.pairs.focal_pairs_per_image)
        fgeo = estimate_two_view(p1[fsel], p2[fsel], pvalid[fsel], None, cfg.two_view)
        if int(fgeo.success.sum()) < min(3, fsel.numel()) and fsel.numel() < pairs.shape[0]:
            fsel = torch.arange(pairs.shape[0])  # too few good pairs in the subset: use all
            fgeo = estimate_two_view(p1, p2, pvalid, None, cfg.two_view)
        ok = fgeo.success
        if int(ok.sum()) == 0:
            raise SfMError("no image pair has a valid fundamental matrix")
        lo, hi = cfg.camera.focal_range
        if not cfg.camera.shared or not bool((sizes == sizes[:1]).all()):
            focal0 = _per_image_focals(fgeo, pairs[fsel], sizes, cfg.camera, log)
    if not known and focal0 is None:
        pp = torch.stack([sizes[:, 1].double().mean() / 2, sizes[:, 0].double().mean() / 2])
        size = float(sizes.max())
        focal0 = estimate_shared_focal(
            fgeo.matrix[ok], pp, fgeo.num_inliers[ok].double(), (lo * size, hi * size)
        )
        prior = cfg.camera.focal_prior * size
        contrast = shared_focal_contrast(fgeo.matrix[ok], pp, focal0, fgeo.num_inliers[ok])
        stats["focal_contrast"] = contrast
        edge = focal0 < 1.05 * lo * size or focal0 > 0.95 * hi * size
        if edge or contrast < cfg.camera.focal_min_contrast:
            # The pairs do not determine the focal length (the estimate sits at the edge of
            # the range, or half and twice it fit as well: e.g. cameras fixating one point, a
            # known degeneracy, where the minimum is numerical noise); use the prior.
            log(
                f"focal length not observable from the pairs ({focal0:.1f} px, contrast "
                f"{contrast:.3g}); using {prior:.1f} px"
            )
            focal0 = prior
        else:
            log(
                f"focal length estimated from {int(ok.sum())} fundamental matrices: {focal0:.1f} px"
            )
    intr = initial_intrinsics(sizes, cfg.camera, focal0)
    model = cfg.camera.model
    stats["initial_focal_px"] = float(_focals(model, intr).mean())
    timings["intrinsics_s"] = time.perf_counter() - t0

    # ---- two-view geometry
    t0 = time.perf_counter()
    frame_idx = torch.arange(n).expand_as(vis)
    rays = unproject(xy, model, intr[frame_idx])[..., :2]  # calibrated coordinates (T, N, 2)
    r1, r2, _ = pair_correspondences(rays, vis, pairs, cfg.pairs.max_correspondences)
    fpair = 0.5 * (_focals(model, intr)[pairs[:, 0]] + _focals(model, intr)[pairs[:, 1]])
    geo = estimate_two_view(r1, r2, pvalid, fpair, cfg.two_view)
    stats["pairs"] = int(pairs.shape[0])
    stats["pairs_verified"] = int(geo.success.sum())
    timings["two_view_s"] = time.perf_counter() - t0
    log(f"two-view: {int(geo.success.sum())}/{pairs.shape[0]} pairs verified")
    ok = geo.success
    if not bool(ok.any()):
        raise SfMError(
            f"no image pair passed two-view verification (0/{pairs.shape[0]} pairs): the "
            "matches are not consistent with one rigid scene; nothing can be registered"
        )
    _check_motion(geo.median_angle_deg[ok], cfg.translation.min_pair_angle_deg)
    groups = image_groups(n, pairs[ok])
    stats["image_groups"] = groups
    if len(groups) > 1:
        log(
            f"[yellow]the images form {len(groups)} disconnected groups "
            f"({', '.join(str(len(g)) for g in groups)} images) that share no verified pair; "
            f"continuing with the largest ({len(groups[0])} images), the others stay "
            "unregistered"
        )

    # ---- global rotations and positions
    t0 = time.perf_counter()
    edges, R_rel, t_rel = pairs[ok], geo.R[ok], geo.t[ok]
    w_e = geo.num_inliers[ok].double()
    R_abs, solved, inl_e = rotation_averaging(n, edges, R_rel, w_e, cfg.rotation)
    tw = (
        w_e
        * inl_e.double()
        * (geo.median_angle_deg[ok] >= cfg.translation.min_pair_angle_deg).double()
    )
    tw = tw / tw.max().clamp(min=1.0) if tw.numel() else tw
    # Camera-point bearings of the longest tracks.
    lengths = vis[:, solved].sum(1)
    cand = (lengths >= 2).nonzero()[:, 0]
    cand = cand[lengths[cand].argsort(descending=True)[: cfg.translation.max_points]]
    sub_vis = vis[cand] & solved[None]
    ti, fi = sub_vis.nonzero(as_tuple=True)
    ray3 = torch.cat([rays[cand[ti], fi], torch.ones(ti.numel(), 1, dtype=rays.dtype)], -1)
    centers, _ = translation_averaging(
        R_abs, solved, edges, t_rel, tw, (fi, ti, ray3), cfg.translation
    )
    t_abs = -(R_abs @ centers[..., None])[..., 0]
    cam_from_world = make_rigid(R_abs, t_abs)
    registered = solved.clone()
    registered_by: list[str | None] = ["global" if bool(s) else None for s in solved]
    stats["edges"] = int(edges.shape[0])
    stats["edges_rotation_inliers"] = int(inl_e.sum())
    timings["global_init_s"] = time.perf_counter() - t0
    log(f"global init: {int(solved.sum())}/{n} images registered")
    scale_groups = scale_linked_edge_groups(vis, edges)
    stats["scale_groups"] = scale_groups
    if scale_groups > 1:
        log(
            f"[yellow]the verified pairs form {scale_groups} groups whose relative scale no "
            "track fixes (no point seen in three images across them): camera positions may be "
            "wrong although the reprojection error is small; capture with more overlap"
        )
    rcfg = cfg.refinement
    fixed = cfg.camera.fix_intrinsics and known
    same_size = bool((sizes == sizes[:1]).all())
    if cfg.camera.shared and not same_size and not fixed:
        log("images have different sizes: one camera per image instead of a shared one")
    shared = cfg.camera.shared and same_size
    intr_mode = "fixed" if fixed else ("shared" if shared else "per_camera")

    # ---- incremental registration: instead of the global poses, or to verify them
    rot_frac = int(inl_e.sum()) / max(int(edges.shape[0]), 1)
    rotations_doubted = rot_frac < cfg.incremental.min_rotation_inliers
    reasons = [f"{scale_groups} groups of pairs with unrelated scales"] if scale_groups > 1 else []
    if rotations_doubted:
        reasons.append(f"only {rot_frac:.0%} of the relative rotations are consistent")
    stats["global_doubts"] = reasons
    if cfg.init == "incremental" or (cfg.init == "auto" and reasons):
        t0 = time.perf_counter()
        if cfg.init == "auto":
            log(f"global poses need verification ({'; '.join(reasons)}): incremental registration")

        def adjust(T, K, X, cam, pt, obs_xy, fix_points, fix_intr):
            mode = "fixed" if fix_intr else intr_mode
            T, K, X, _ = _ba(
                model, T, K, X, cam, pt, obs_xy, mode, rcfg, fix_points=fix_points,
                function_tolerance=rcfg.ba_first_round_function_tolerance,
            )  # fmt: skip
            return T, K, X

        inc = incremental_registration(
            xy, vis, sizes, edges, R_rel, t_rel, geo.num_inliers[ok], geo.median_angle_deg[ok],
            model, intr, adjust, intr_mode == "shared", cfg.incremental, cfg.pnp, log,
        )  # fmt: skip
        timings["incremental_s"] = time.perf_counter() - t0
        n_inc = int(inc.registered.sum())
        stats["incremental_registered"] = n_inc
        agree = _pose_agreement(
            cam_from_world, registered, inc.cam_from_world, inc.registered,
            cfg.incremental.min_common_images,
        )  # fmt: skip
        stats["global_incremental_agreement"] = agree
        n_glob = int(registered.sum())
        if cfg.init == "incremental":
            use_inc = True
        elif agree is not None:
            use_inc = agree < cfg.incremental.min_agreement
        elif rotations_doubted:  # nothing to compare with: never keep doubted rotations
            use_inc = n_inc >= 2
        else:  # consistent rotations, only the scales in doubt (e.g. a chain of pairs whose
            # scales no track links, where a small incremental model is all one can verify)
            use_inc = n_inc > n_glob
        if use_inc:
            cam_from_world, registered, intr = inc.cam_from_world, inc.registered, inc.intrinsics
            registered_by = ["incremental" if bool(r) else None for r in registered]
            if cfg.init == "auto":
                why = (
                    "cannot be verified (too few images in common)"
                    if agree is None
                    else f"disagree with it ({agree:.0%} of pairs agree)"
                )
                log(f"[yellow]the global poses {why}: using the incremental model ({n_inc} images)")
        else:
            log(
                f"incremental model ({n_inc} images) "
                + ("cannot verify them" if agree is None else f"agrees ({agree:.0%} of pairs)")
                + ": keeping the global poses"
            )
        stats["init"] = "incremental" if use_inc else "global"
    else:
        stats["init"] = "global"
    if int(registered.sum()) < 2:
        raise SfMError("initialisation registered fewer than 2 images: nothing to build on")

    # ---- triangulate / BA / filter loop
    t0 = time.perf_counter()
    tri_opts = TriangulationOptions(
        min_angle_deg=rcfg.min_tri_angle_deg, max_reproj_error=rcfg.max_reproj_px
    )
    points = torch.zeros(0, 3, dtype=torch.float64)
    track_ids = torch.zeros(0, dtype=torch.long)
    use = torch.zeros(0, n, dtype=torch.bool)
    prev_err = math.inf
    for rnd in range(max(1, rcfg.rounds)):
        reg_ids = registered.nonzero()[:, 0]
        cams = Cameras(
            model, intr[reg_ids], sizes[reg_ids, 1], sizes[reg_ids, 0], cam_from_world[reg_ids]
        )
        m = vis[:, reg_ids]
        tid = (m.sum(1) >= 2).nonzero()[:, 0]
        # Looser thresholds in the first round: the global poses are only approximate.
        scale = 4.0 if rnd == 0 else 1.0
        opts = TriangulationOptions(
            min_angle_deg=tri_opts.min_angle_deg / (2.0 if rnd == 0 else 1.0),
            max_reproj_error=tri_opts.max_reproj_error * scale,
        )
        tq = time.perf_counter()
        tri_fn = triangulate_ransac if (rnd == 0 and rcfg.robust_triangulation) else triangulate
        tri = tri_fn(cams, xy[tid][:, reg_ids], m[tid], opts)
        timings["triangulation_s"] = timings.get("triangulation_s", 0.0) + time.perf_counter() - tq
        good = tri.valid
        tid = tid[good]
        use_r = tri.inliers[good] & m[tid]
        points = tri.points[good]
        if tid.numel() > rcfg.max_points_ba:
            keep = use_r.sum(1).argsort(descending=True)[: rcfg.max_points_ba]
            tid, use_r, points = tid[keep], use_r[keep], points[keep]
        pi, vi = use_r.nonzero(as_tuple=True)
        if pi.numel() == 0:
            raise SfMError("triangulation produced no point: the poses are degenerate")
        obs_xy = xy[tid[pi], reg_ids[vi]]
        tq = time.perf_counter()
        T_reg, intr_reg, points, costs = _ba(
            model,
            cam_from_world[reg_ids],
            intr[reg_ids],
            points,
            vi,
            pi,
            obs_xy,
            intr_mode,
            rcfg,
            function_tolerance=(
                rcfg.ba_first_round_function_tolerance if rnd == 0 else rcfg.ba_function_tolerance
            ),
        )
        timings["bundle_adjustment_s"] = (
            timings.get("bundle_adjustment_s", 0.0) + time.perf_counter() - tq
        )
        stats.setdefault("ba_costs", []).append(costs)
        cam_from_world[reg_ids] = T_reg
        intr[reg_ids] = intr_reg
        if intr_mode == "shared":
            intr[:] = intr_reg[0]
        # Filter observations by reprojection error (points then re-triangulated next round).
        uv, depth = project(transform_points(T_reg[vi], points[pi]), model, intr_reg[vi])
        err = (uv - obs_xy).norm(dim=-1)
        good_obs = (err < rcfg.max_reproj_px * (2.0 if rnd == 0 else 1.0)) & (depth > 0)
        use = torch.zeros(tid.numel(), n, dtype=torch.bool)
        use[pi[good_obs], reg_ids[vi[good_obs]]] = True
        track_ids = tid
        log(
            f"round {rnd + 1}: {tid.numel()} points, mean error {float(err.mean()):.2f} px, "
            f"{int((~good_obs).sum())} observations filtered"
        )
        # PnP fallback for images the global step left out.
        newly: dict[int, Tensor] = {}
        if rnd < rcfg.rounds - 1 and not bool(registered.all()):
            newly = _register_pnp(xy, vis, track_ids, points, use, registered, model, intr, cfg.pnp)
            for i, T in newly.items():
                cam_from_world[i] = T
                registered[i] = True
                registered_by[i] = "pnp"
            if newly:
                log(f"PnP registered {len(newly)} more image(s)")
        # Converged: another triangulate + BA round would redo the same problem.
        mean_err = float(err.mean())
        if (
            rnd >= 1
            and not newly
            and int((~good_obs).sum()) <= rcfg.converged_max_filtered * err.numel()
            and (
                mean_err >= (1.0 - rcfg.converged_min_gain) * prev_err
                or prev_err - mean_err < rcfg.converged_min_gain_px
            )
        ):
            stats["refinement_rounds"] = rnd + 1
            break
        prev_err = mean_err
    timings["refinement_s"] = time.perf_counter() - t0

    # Final filter: reprojection error and triangulation angle.
    keep_pts = _final_filter(xy, use, track_ids, points, cam_from_world, intr, model, rcfg)
    weak = registered & (use[keep_pts].sum(0) < rcfg.min_image_points)
    if bool(weak.any()) and int((registered & ~weak).sum()) >= 2:
        names = ", ".join(str(i) for i in weak.nonzero()[:, 0].tolist())
        log(
            f"[yellow]{int(weak.sum())} image(s) ({names}) kept fewer than "
            f"{rcfg.min_image_points} points: left unregistered"
        )
        stats["unregistered_weak"] = weak.nonzero()[:, 0].tolist()
        registered = registered & ~weak
        registered_by = [b if bool(r) else None for b, r in zip(registered_by, registered)]
        use[:, weak] = False
        keep_pts = _final_filter(xy, use, track_ids, points, cam_from_world, intr, model, rcfg)
    points, track_ids = points[keep_pts], track_ids[keep_pts]
    use = use[keep_pts]
    pi, ii = use.nonzero(as_tuple=True)
    cameras = Cameras(model, intr, sizes[:, 1], sizes[:, 0], cam_from_world)
    rec = Reconstruction(
        cameras=cameras,
        registered=registered,
        registered_by=registered_by,
        points=points,
        track_ids=track_ids,
        obs_image=ii,
        obs_point=pi,
        obs_xy=xy[track_ids[pi], ii],
        timings=timings,
        stats=stats,
    )
    return rec


def _check_motion(pair_angles_deg: Tensor, min_angle_deg: float) -> None:
    """SfMError when no verified pair has a usable baseline (the camera only rotated)."""
    best = float(pair_angles_deg.max())
    if best < min_angle_deg:
        raise SfMError(
            f"degenerate camera motion: the median triangulation angle of every verified image "
            f"pair is below {min_angle_deg:g} deg (largest {best:.2f} deg), i.e. the camera "
            "only rotated (or moved far too little for the scene's depth); 3D points cannot be "
            "recovered. Move the camera between photos instead of turning in place."
        )


def _pose_agreement(
    T_a: Float[Tensor, "N 3 4"],
    reg_a: Bool[Tensor, " N"],
    T_b: Float[Tensor, "N 3 4"],
    reg_b: Bool[Tensor, " N"],
    min_common: int = 4,
    max_error_deg: float = 5.0,
) -> float | None:
    """Fraction of the image pairs registered in both models whose relative poses agree
    (rotation and translation direction within ``max_error_deg``); None with fewer than
    ``min_common`` images in both (too few pairs to judge)."""
    from sceneforge.core.metrics import relative_pose_errors

    both = reg_a & reg_b
    if int(both.sum()) < max(min_common, 2):
        return None
    r, t = relative_pose_errors(T_a[both], T_b[both])
    return float((torch.maximum(r, t) < max_error_deg).double().mean())


def image_groups(num_images: int, edges: Int[Tensor, "E 2"]) -> list[list[int]]:
    """Connected groups (2+ images) of the verified-pair graph, largest first."""
    return [g for g in connected_components(num_images, edges) if len(g) >= 2]


def scale_linked_edge_groups(
    vis: Bool[Tensor, "T N"], edges: Int[Tensor, "E 2"], min_tracks: int = 5
) -> int:
    """How many groups of image pairs have relative scales fixed by the data.

    A pair's relative translation has no length; two pairs sharing an image have a fixed
    length ratio only if at least ``min_tracks`` tracks are seen in all three images or the
    third pair of the triangle is verified too. With tracks of length 2 only (e.g. a capture
    turning so fast that no point is seen in three images) every pair is its own group and
    the camera positions along the chain are not determined, however small the reprojection
    error."""
    ne = edges.shape[0]
    if ne == 0:
        return 0
    linked: list[tuple[int, int]] = []  # pairs of edges whose relative scale is fixed
    n = vis.shape[1]
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[edges[:, 0], edges[:, 1]] = True
    adj[edges[:, 1], edges[:, 0]] = True
    e_list = edges.tolist()
    for j in range(n):
        inc = [k for k, (a, b) in enumerate(e_list) if a == j or b == j]
        if len(inc) < 2:
            continue
        v = vis[vis[:, j]].double()
        co = v.T @ v  # tracks through j also seen in a and b
        other = [b if a == j else a for a, b in (e_list[k] for k in inc)]
        for x in range(len(inc)):
            for y in range(x + 1, len(inc)):
                a, b = other[x], other[y]
                if co[a, b] >= min_tracks or bool(adj[a, b]):
                    linked.append((inc[x], inc[y]))
    return len(connected_components(ne, linked))


def _register_pnp(
    xy: Tensor,
    vis: Tensor,
    track_ids: Tensor,
    points: Tensor,
    use: Tensor,
    registered: Tensor,
    model: str,
    intr: Tensor,
    cfg: PnPConfig,
) -> dict[int, Tensor]:
    """PnP for every unregistered image with enough 2D-3D correspondences."""
    out: dict[int, Tensor] = {}
    has_pt = use.any(1)
    for i in (~registered).nonzero()[:, 0].tolist():
        sel = has_pt & vis[track_ids, i]
        if int(sel.sum()) < max(cfg.min_inliers, 6):
            continue
        rays = unproject(xy[track_ids[sel], i], model, intr[i].expand(int(sel.sum()), -1))[..., :2]
        T, inl = pnp_ransac(points[sel], rays, float(_focals(model, intr[i : i + 1])[0]), cfg)
        if int(inl.sum()) >= cfg.min_inliers and bool(torch.isfinite(T).all()):
            out[i] = T
    return out


def _final_filter(
    xy: Tensor,
    use: Tensor,
    track_ids: Tensor,
    points: Tensor,
    cam_from_world: Tensor,
    intr: Tensor,
    model: str,
    cfg: RefinementConfig,
) -> Tensor:
    """Drop observations above the error threshold and points with < 2 observations or a
    too small triangulation angle (in place on ``use``); returns the kept points."""
    pi, ii = use.nonzero(as_tuple=True)
    uv, depth = project(transform_points(cam_from_world[ii], points[pi]), model, intr[ii])
    err = (uv - xy[track_ids[pi], ii]).norm(dim=-1)
    bad = (err >= cfg.max_reproj_px) | (depth <= 0)
    use[pi[bad], ii[bad]] = False
    centers = -(cam_from_world[:, :, :3].transpose(-1, -2) @ cam_from_world[:, :, 3:])[..., 0]
    pi, ii = use.nonzero(as_tuple=True)
    d = torch.nn.functional.normalize(centers[ii] - points[pi], dim=-1)
    # Largest angle per point: angle between each ray and the point's mean ray, doubled bound.
    mean = torch.zeros_like(points).index_add_(0, pi, d)
    mean = torch.nn.functional.normalize(mean, dim=-1)
    ang = torch.rad2deg(torch.acos((d * mean[pi]).sum(-1).clamp(-1, 1)))
    max_ang = torch.zeros(points.shape[0], dtype=points.dtype).scatter_reduce_(
        0, pi, ang, "amax", include_self=True
    )
    keep = (use.sum(1) >= 2) & (2.0 * max_ang >= cfg.min_tri_angle_deg)
    return keep


def tracks_from_observations(
    image_idx: Int[Tensor, " O"],
    point_idx: Int[Tensor, " O"],
    xy: Float[Tensor, "O 2"],
    image_sizes: Int[Tensor, "N 2"],
) -> Tracks:
    """:class:`Tracks` from flat observations (e.g. a synthetic scene's exact ones)."""
    n = image_sizes.shape[0]
    uniq, pt = torch.unique(point_idx, return_inverse=True)
    t = uniq.numel()
    txy = torch.zeros(t, n, 2, dtype=xy.dtype)
    visible = torch.zeros(t, n, dtype=torch.bool)
    txy[pt, image_idx] = xy
    visible[pt, image_idx] = True
    kp = torch.full((t, n), -1, dtype=torch.long)
    kp[pt, image_idx] = torch.arange(point_idx.numel())
    ref = visible.float().argmax(1)
    return Tracks(txy, visible, visible.to(xy.dtype), ref, kp, image_sizes.clone())


# ----------------------------------------------------------------------------- image folders


@dataclass
class ReconstructConfig:
    """``sceneforge reconstruct``: image folder in, COLMAP model + transforms.json out."""

    sfm: SfMConfig = field(default_factory=SfMConfig)
    """Camera initialisation, triangulation and bundle adjustment."""
    features: Literal["auto", "sift", "aliked", "xfeat"] = "auto"
    """Query-point features (auto: SIFT on CPU, ALIKED on CUDA)."""
    max_image_size: int = 1600
    """Images are downscaled to this longest side for feature extraction."""
    feature_workers: int = -1
    """Images whose SIFT is extracted at once (OpenCV: threads, pycolmap: processes; -1 = one
    per core, at most 8; 0 = one at a time)."""
    sift_backend: Literal["opencv", "pycolmap"] = "opencv"
    """SIFT implementation: OpenCV (~4x less CPU) or pycolmap (COLMAP's own extractor)."""
    num_query_frames: int = 8
    """Query frames of the tracker (0 = every frame)."""
    retrack_on_doubt: bool = True
    """When the global poses cannot be trusted (see :attr:`IncrementalConfig.min_rotation_inliers`)
    or the reconstruction fails, track again with every image as a query frame (all pairs
    matched, like COLMAP's exhaustive matching) and reconstruct from those tracks: blowtorch's
    67 images, 15 -> 19 registered (COLMAP's 19) for 2.5x the tracking time."""
    retrack_max_images: int = 200
    """No re-tracking above this many images (all pairs grow with the square of the count;
    raise ``num_query_frames`` instead)."""
    masks_dir: Path | None = None
    """Folder of masks (``<image name>.png`` or same stem; True/255 = usable pixel)."""
    max_images: int = 0
    """Use only the first N images (sorted by name); 0 = all."""
    write_png: bool = True
    """Write ``reconstruction.png`` (cameras and points)."""
    overwrite: bool = False
    """Replace a non-empty output folder."""
    progress: bool = True
    """Show a progress display per stage."""


def _load_inputs(images_dir: Path, cfg: ReconstructConfig, log) -> tuple[list, ...]:
    """Readable images (paths, arrays), their masks, the unreadable files (named, with why)
    and the skipped non-image files.

    Policy: non-image files are skipped with a note; unreadable (corrupt, truncated) images are
    skipped with a warning and listed in the summary; a mask folder that is missing or holds no
    mask for any image, and a mask that is unreadable or not its image's size, are errors.
    """
    from sceneforge.core.image_io import ImageReadError, read_image, read_mask, scan_folder
    from sceneforge.core.io_common import find_mask

    try:
        files, others = scan_folder(images_dir)
    except ImageReadError as e:
        raise SfMError(str(e)) from e
    if others:
        log(f"skipping {len(others)} non-image file(s): {', '.join(p.name for p in others[:10])}")
    if cfg.max_images > 0:
        files = files[: cfg.max_images]
    if len(files) < 2:
        raise SfMError(f"{images_dir}: need at least 2 images, found {len(files)}")
    masks_dir = Path(cfg.masks_dir) if cfg.masks_dir is not None else None
    if masks_dir is not None:
        if not masks_dir.is_dir():
            raise SfMError(f"{masks_dir}: masks folder does not exist or is not a folder")
        if not any(find_mask(masks_dir, p.name) is not None for p in files):
            raise SfMError(
                f"{masks_dir}: masks folder holds no mask for any of the {len(files)} images "
                f"(expected e.g. {files[0].name}.png or {files[0].stem}.png)"
            )
    paths, images, masks, unreadable = [], [], [], []
    for p in files:
        try:
            img = read_image(p)
        except (ImageReadError, OSError, ValueError) as e:
            unreadable.append(f"{p.name}: {e}")
            log(f"[yellow]skipping unreadable image {p}: {e}")
            continue
        mask = None
        mp = find_mask(masks_dir, p.name) if masks_dir is not None else None
        if mp is not None:
            try:
                mask = read_mask(mp)
            except (ImageReadError, OSError, ValueError) as e:
                raise SfMError(f"{mp}: unreadable mask ({e})") from e
            if tuple(mask.shape) != tuple(img.shape[:2]):
                raise SfMError(
                    f"{mp}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {p.name} is "
                    f"{img.shape[1]}x{img.shape[0]}"
                )
        paths.append(p)
        images.append(img)
        masks.append(mask)
    if len(paths) < 2:
        raise SfMError(
            f"{images_dir}: fewer than 2 readable images ({len(unreadable)} unreadable: "
            f"{'; '.join(unreadable[:5])})"
        )
    return paths, images, masks, unreadable, [p.name for p in others]


def _point_colors(images: list[Tensor], rec: Reconstruction) -> Tensor:
    """uint8 colour of every point from its first observation."""
    cols = torch.zeros(rec.points.shape[0], 3, dtype=torch.uint8)
    if rec.points.shape[0] == 0:
        return cols
    n_obs = rec.obs_point.numel()
    first = torch.full((rec.points.shape[0],), n_obs, dtype=torch.long)
    first = first.scatter_reduce(0, rec.obs_point, torch.arange(n_obs), "amin")
    first = first.clamp(max=max(0, n_obs - 1))
    img_of = rec.obs_image[first]
    for i in img_of.unique().tolist():
        sel = (img_of == i).nonzero()[:, 0]
        img = images[i]
        h, w = img.shape[:2]
        uv = rec.obs_xy[first[sel]]
        u = uv[:, 0].long().clamp(0, w - 1)
        v = uv[:, 1].long().clamp(0, h - 1)
        cols[sel] = (img[v, u].clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return cols


def write_reconstruction(
    rec: Reconstruction,
    image_paths: list[Path],
    out_dir: Path,
    colors: Tensor | None = None,
    write_png: bool = True,
) -> None:
    """COLMAP model (``sparse/0``), ``transforms.json`` (+ its ``sparse_pc.ply``) and
    ``reconstruction.png`` of the registered images into ``out_dir`` (which must exist)."""
    import os

    from sceneforge.core.atomic import atomic_dir, atomic_write_json
    from sceneforge.core.io_colmap import write_colmap
    from sceneforge.core.io_nerfstudio import transforms_dict, write_ply_points
    from sceneforge.core.scene import Observations, SceneData

    reg = rec.registered.nonzero()[:, 0]
    remap = torch.full((rec.registered.numel(),), -1, dtype=torch.long)
    remap[reg] = torch.arange(reg.numel())
    keep = remap[rec.obs_image] >= 0
    scene = SceneData(
        cameras=rec.cameras[reg.tolist()],
        image_names=[image_paths[i].name for i in reg.tolist()],
        image_paths=[image_paths[i] for i in reg.tolist()],
        points=rec.points,
        point_colors=colors,
        observations=Observations(
            remap[rec.obs_image[keep]], rec.obs_point[keep], rec.obs_xy[keep]
        ),
    )
    # Built in a temporary folder, then renamed: a crash never leaves a half-written model.
    with atomic_dir(out_dir / run_files.SFM_MODEL_DIR) as tmp:
        write_colmap(scene, tmp)
    rel = [os.path.relpath(image_paths[i], out_dir) for i in reg.tolist()]
    # The sparse points travel with transforms.json (as nerfstudio's sparse_pc.ply): fields
    # trained on this folder fit their bounded box to them instead of to the cameras.
    write_ply_points(out_dir / run_files.SPARSE_PC, scene.points, colors)
    tj = transforms_dict(scene, rel, ply_file_path=run_files.SPARSE_PC)
    atomic_write_json(out_dir / run_files.TRANSFORMS, tj)
    if write_png:
        plot_reconstruction(rec, out_dir / run_files.RECONSTRUCTION_PNG, colors)


def plot_reconstruction(
    rec: Reconstruction, path: Path, colors: Tensor | None = None, panel: int = 600
) -> None:
    """Top (x-z) and front (x-y) views of the points and the camera centres with their viewing
    directions, drawn directly with PIL (matplotlib's import and layout cost seconds, more than
    the rest of writing the model)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    from sceneforge.core.atomic import atomic_write_bytes

    reg = rec.registered
    wfc = rec.cameras.world_from_cam[reg].double()
    c, fwd = wfc[:, :, 3], wfc[:, :, 2]
    pts = rec.points.double()
    cols = colors if colors is not None else torch.full((pts.shape[0], 3), 128, dtype=torch.uint8)
    if pts.shape[0]:
        lo, hi = torch.quantile(pts, 0.02, 0), torch.quantile(pts, 0.98, 0)
        inside = ((pts >= lo) & (pts <= hi)).all(1)
        pts, cols = pts[inside], cols[inside]
    scale = float(max(1e-9, (c - c.mean(0)).abs().max())) * 0.15 if c.shape[0] else 1.0
    tips = c + fwd * scale
    margin, title_h = 20, 24
    img = Image.new("RGB", (2 * panel, panel + title_h), "white")
    draw = ImageDraw.Draw(img)
    for k, (a, b, name) in enumerate([(0, 2, "top (x-z)"), (0, 1, "front (x-y)")]):
        every = torch.cat([pts[:, [a, b]], c[:, [a, b]], tips[:, [a, b]]])
        if every.shape[0] == 0:
            continue
        lo2, hi2 = every.min(0).values, every.max(0).values
        s = (panel - 2 * margin) / float(max(1e-12, (hi2 - lo2).max()))  # equal aspect
        mid = 0.5 * (lo2 + hi2)

        def to_px(xy: Tensor, a=a, b=b, s=s, mid=mid, k=k) -> np.ndarray:
            u = (xy[:, 0] - mid[0]) * s + k * panel + panel / 2
            v = (xy[:, 1] - mid[1]) * s
            v = v if b == 1 else -v  # y points down in images; z up in the top view
            return torch.stack([u, v + title_h + panel / 2], 1).round().long().numpy()

        if pts.shape[0]:  # one pixel per point, written straight into the pixel array
            px = to_px(pts[:, [a, b]])
            arr = np.asarray(img).copy()
            ok = (px[:, 0] >= 0) & (px[:, 0] < 2 * panel) & (px[:, 1] >= 0)
            ok &= px[:, 1] < panel + title_h
            arr[px[ok, 1], px[ok, 0]] = cols.numpy()[ok]
            img = Image.fromarray(arr)
            draw = ImageDraw.Draw(img)
        pc, pt = to_px(c[:, [a, b]]), to_px(tips[:, [a, b]])
        for (x0, y0), (x1, y1) in zip(pc.tolist(), pt.tolist()):
            draw.line([(x0, y0), (x1, y1)], fill=(220, 0, 0), width=1)
            draw.ellipse([x0 - 3, y0 - 3, x0 + 3, y0 + 3], fill=(220, 0, 0))
        draw.text((k * panel + margin, 4), name, fill="black")
    draw.text(
        (2 * panel - 220, 4),
        f"{int(reg.sum())} cameras, {int(rec.points.shape[0])} points",
        fill="black",
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def reconstruct(
    images_dir: str | Path, out_dir: str | Path, config: ReconstructConfig | None = None
) -> dict:
    """Images in, COLMAP model + ``transforms.json`` + PNG + ``summary.json`` out.

    Returns the summary: registered images (and by which step), unregistered and unreadable
    images, points, mean track length, mean reprojection error and time per stage.
    """
    from rich.console import Console

    from sceneforge.core.atomic import atomic_write_json
    from sceneforge.recon.features import FeaturesConfig
    from sceneforge.recon.matching import MatchingConfig
    from sceneforge.recon.tracking import TracksConfig, build_tracks, extract_features

    cfg = config or ReconstructConfig()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    console = Console(stderr=True, quiet=not cfg.progress)
    # A quiet console still renders every message (~7 ms each): skip them entirely.
    log = console.log if cfg.progress else (lambda *_a, **_k: None)
    if not images_dir.is_dir():
        raise SfMError(f"{images_dir}: images folder does not exist or is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not cfg.overwrite:
        raise SfMError(f"{out_dir}: output folder exists and is not empty (use overwrite)")
    if out_dir.resolve() == images_dir.resolve():
        raise SfMError(f"{out_dir}: the output folder must not be the images folder")
    t_all, c_all = time.perf_counter(), cpu_seconds()
    timings: dict[str, float] = {}

    with console.status("[bold]loading images") as status:
        t0 = time.perf_counter()
        paths, images, masks, unreadable, skipped = _load_inputs(images_dir, cfg, log)
        timings["load_s"] = time.perf_counter() - t0
        log(f"{len(paths)} images loaded from {images_dir}")

        status.update("[bold]tracking")
        t0, c0 = time.perf_counter(), cpu_seconds()
        tcfg = TracksConfig(
            features=FeaturesConfig(
                method=cfg.features,
                max_image_size=cfg.max_image_size,
                num_workers=cfg.feature_workers,
                sift_backend=cfg.sift_backend,
            ),
            matching=MatchingConfig(method="auto"),
            num_query_frames=cfg.num_query_frames,
        )
        mask_list = masks if any(m is not None for m in masks) else None
        with _tracking_threads(cfg):
            feats = extract_features(images, tcfg, mask_list)
            tracks = build_tracks(images, tcfg, mask_list, log=log, features=feats)
        timings["tracks_s"] = time.perf_counter() - t0
        # CPU seconds of this process (all its threads): comparable on a busy machine.
        timings["tracks_cpu_s"] = cpu_seconds() - c0
        c0 = cpu_seconds()
        log(f"tracks: {tracks.num_tracks}, mean length {tracks.mean_length():.2f}")

        status.update("[bold]structure from motion")

        def sfm_log(msg: str) -> None:
            status.update(f"[bold]sfm: {msg}")
            log(msg)

        some_pairs = 0 < cfg.num_query_frames < len(images)  # not every pair matched yet
        retrack = some_pairs and cfg.retrack_on_doubt and len(images) <= cfg.retrack_max_images
        first: Reconstruction | None = None
        try:
            rec = reconstruct_from_tracks(tracks, cfg.sfm, sfm_log)
            why = "; ".join(rec.stats.get("global_doubts", []))
            first = rec
        except SfMError as e:
            if not retrack:
                raise
            why = str(e)
        if why and retrack:
            log(f"[yellow]{why}: matching every image pair and reconstructing again")
            status.update("[bold]tracking (all pairs)")
            t0 = time.perf_counter()
            with _tracking_threads(cfg):
                tcfg = replace(tcfg, num_query_frames=0)
                tracks = build_tracks(images, tcfg, mask_list, log=log, features=feats)
            timings["retrack_s"] = time.perf_counter() - t0
            status.update("[bold]structure from motion")
            try:
                rec = reconstruct_from_tracks(tracks, cfg.sfm, sfm_log)
            except SfMError as e:
                if first is None:
                    raise
                log(f"[yellow]with all pairs: {e}; keeping the first reconstruction")
                rec = first
            rec.stats["retracked"] = rec is not first
            if first is not None and rec is not first:
                rec.stats["first_pass"] = {
                    "registered": int(first.registered.sum()),
                    "init": first.stats.get("init"),
                    "global_doubts": first.stats.get("global_doubts"),
                }
                for k, v in first.timings.items():
                    timings[f"first_{k}"] = v
        elif why and some_pairs and first is not None:
            log(
                f"[yellow]global poses in doubt ({why}); not matching all pairs (retrack_on_doubt "
                f"off or more than retrack_max_images = {cfg.retrack_max_images} images)"
            )
        for k, v in rec.timings.items():
            timings[k] = v

        status.update("[bold]writing outputs")
        t0 = time.perf_counter()
        colors = _point_colors(images, rec)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_reconstruction(rec, paths, out_dir, colors, cfg.write_png)
        timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    timings["sfm_and_write_cpu_s"] = cpu_seconds() - c0
    timings["total_cpu_s"] = cpu_seconds() - c_all
    summary = make_summary(rec, [p.name for p in paths], timings)
    summary["unreadable_images"] = unreadable
    summary["skipped_non_image_files"] = skipped
    summary["config"] = asdict(cfg)
    summary["tracks"] = {"num_tracks": tracks.num_tracks, "mean_length": tracks.mean_length()}
    atomic_write_json(out_dir / run_files.SFM_SUMMARY, summary, default=str)
    log(
        f"[green]registered {summary['num_registered']}/{summary['num_images']} images, "
        f"{summary['num_points']} points, {summary['mean_reproj_error_px']:.2f} px "
        f"in {timings['total_s']:.1f} s → {out_dir}"
    )
    return summary


@contextmanager
def _tracking_threads(cfg: ReconstructConfig):
    """torch threads while tracking (images and pairs run in parallel themselves)."""
    old_threads = torch.get_num_threads()
    if cfg.sfm.num_threads is not None:
        torch.set_num_threads(max(1, cfg.sfm.num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)


def make_summary(rec: Reconstruction, names: list[str], timings: dict[str, float]) -> dict:
    """The ``summary.json`` content."""
    err = rec.reprojection_errors()
    by: dict[str, int] = {}
    for b in rec.registered_by:
        if b is not None:
            by[b] = by.get(b, 0) + 1
    return {
        "num_images": len(names),
        "num_registered": int(rec.registered.sum()),
        "registered_by": by,
        "registered_images": {
            names[i]: rec.registered_by[i] for i in range(len(names)) if rec.registered[i]
        },
        "unregistered_images": [names[i] for i in range(len(names)) if not rec.registered[i]],
        "image_groups": [[names[i] for i in g] for g in rec.stats.get("image_groups", [])],
        "num_points": int(rec.points.shape[0]),
        "num_observations": int(rec.obs_image.numel()),
        "mean_track_length": rec.mean_track_length(),
        "mean_reproj_error_px": float(err.mean()) if err.numel() else math.nan,
        "camera_model": rec.cameras.model,
        "intrinsics": rec.cameras.params[rec.registered].mean(0).tolist()
        if bool(rec.registered.any())
        else [],
        "stats": rec.stats,
        "timings_s": timings,
        "config": None,
    }
