"""Structure from motion: tracks in, cameras and points out.

Stages (each with its own typed config):
1. tracks (:mod:`sceneforge.recon.tracking`) over all images;
2. two-view geometry on every pair sharing enough tracks (:mod:`sceneforge.recon.view_graph`),
   batched (:mod:`sceneforge.recon.two_view`); unknown focal lengths are first estimated from
   the fundamental matrices (:mod:`sceneforge.recon.intrinsics`: one shared value, or one per
   image when the images do not share a camera, e.g. internet photos of different sizes);
3. global initialisation: rotation then translation averaging, all cameras at once
   (:mod:`sceneforge.recon.global_sfm`). When the pairs give reason to doubt it (relative
   rotations largely inconsistent, or pair groups with unrelated scales) an incremental model
   (:mod:`sceneforge.recon.incremental`: one pair, then PnP in rounds of images) checks it, and
   replaces it when the two disagree; :func:`sceneforge.recon.reconstruct.reconstruct` then
   also re-tracks with every image pair matched;
4. triangulation (:mod:`sceneforge.recon.triangulation`) → bundle adjustment
   (:mod:`sceneforge.recon.ba`) → filtering by reprojection error and
   triangulation angle → re-triangulation, iterated; images the global step left out are
   registered by PnP in between (:mod:`sceneforge.recon.mapping`).

:func:`sceneforge.recon.reconstruct.reconstruct` runs everything on an image folder and writes
a COLMAP model, ``transforms.json``, a PNG of cameras and points and ``summary.json``;
:meth:`Reconstruction.to_scene` is the scene loading that folder gives, in memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int, UInt8
from torch import Tensor

from sceneforge.core.cameras import Cameras, make_rigid, project, transform_points, unproject
from sceneforge.core.scene import Observations, SceneData
from sceneforge.recon.global_sfm import (
    PnPConfig,
    RotationAveragingConfig,
    TranslationAveragingConfig,
    rotation_averaging,
    translation_agreement_groups,
    translation_averaging,
    translation_points,
)
from sceneforge.recon.incremental import IncrementalConfig, incremental_registration
from sceneforge.recon.intrinsics import (
    CameraConfig,
    _focals,
    _per_image_focals,
    initial_intrinsics,
)
from sceneforge.recon.mapping import RefinementConfig, _ba, _final_filter, _register_pnp
from sceneforge.recon.self_calibration import estimate_shared_focal, shared_focal_contrast
from sceneforge.recon.sfm_error import SfMError
from sceneforge.recon.tracks import Tracks
from sceneforge.recon.two_view import (
    CorrespondenceBatch,
    TwoViewConfig,
    estimate_two_view_batched,
)
from sceneforge.recon.view_graph import (
    PairsConfig,
    _check_motion,
    _pose_agreement,
    best_pairs_per_image,
    gather_correspondences,
    image_groups,
    scale_linked_edge_groups,
    select_pairs,
    shared_track_sample,
)


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
    pair, then PnP in rounds of images) or "auto" (global, incremental where it cannot be
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

    def to_scene(
        self, image_paths: list[Path], colors: UInt8[Tensor, "M 3"] | None = None
    ) -> SceneData:
        """The registered images with their cameras, the points (``colors``: uint8, or None)
        and their observations, in memory: what loading the folder
        :func:`~sceneforge.recon.reconstruct.write_reconstruction` writes gives.

        ``image_paths`` are all N images, in the order of ``cameras``; a registered image is
        named by its file name, and read from its path when used.
        """
        reg = self.registered.nonzero()[:, 0]
        remap = torch.full((self.registered.numel(),), -1, dtype=torch.long)
        remap[reg] = torch.arange(reg.numel())
        keep = remap[self.obs_image] >= 0
        return SceneData(
            cameras=self.cameras[reg.tolist()],
            image_names=[image_paths[i].name for i in reg.tolist()],
            image_paths=[image_paths[i] for i in reg.tolist()],
            points=self.points,
            point_colors=colors,
            observations=Observations(
                remap[self.obs_image[keep]], self.obs_point[keep], self.obs_xy[keep]
            ),
        )


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
    xy = tr.pixels(torch.float64)  # (track, frame) lookup, indexed like a T x N x 2 table
    vis = tr.visible.clone()
    sizes = tr.image_sizes

    # ---- intrinsics initialisation
    t0 = time.perf_counter()
    pairs, shared_cnt = select_pairs(vis, cfg.pairs)
    if pairs.shape[0] == 0:
        raise SfMError(
            f"no image pair shares {cfg.pairs.min_shared_tracks} tracks: the images do not overlap"
        )
    # Each pair's shared tracks (indices); correspondences are gathered a batch of pairs at a
    # time inside the two-view estimation (memory: issue 25).
    pidx, pvalid = shared_track_sample(vis, pairs, cfg.pairs.max_correspondences)

    def pixels(sel: Tensor) -> CorrespondenceBatch:
        def batch(sl: slice) -> tuple[Tensor, Tensor, Tensor]:
            b = sel[sl]
            return (*gather_correspondences(xy, pairs[b], pidx[b]), pvalid[b])

        return batch

    known = cfg.camera.params is not None or cfg.camera.focal is not None
    focal0 = cfg.camera.focal
    if not known:
        fsel = best_pairs_per_image(pairs, shared_cnt, n, cfg.pairs.focal_pairs_per_image)
        fgeo = estimate_two_view_batched(pixels(fsel), fsel.numel(), None, cfg.two_view)
        if int(fgeo.success.sum()) < min(3, fsel.numel()) and fsel.numel() < pairs.shape[0]:
            fsel = torch.arange(pairs.shape[0])  # too few good pairs in the subset: use all
            fgeo = estimate_two_view_batched(pixels(fsel), fsel.numel(), None, cfg.two_view)
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

    def rays(sl: slice) -> tuple[Tensor, Tensor, Tensor]:  # calibrated coordinates
        p1, p2 = gather_correspondences(xy, pairs[sl], pidx[sl])
        i1, i2 = (intr[pairs[sl, k], None].expand(*p1.shape[:2], -1) for k in (0, 1))
        return unproject(p1, model, i1)[..., :2], unproject(p2, model, i2)[..., :2], pvalid[sl]

    fpair = 0.5 * (_focals(model, intr)[pairs[:, 0]] + _focals(model, intr)[pairs[:, 1]])
    geo = estimate_two_view_batched(rays, pairs.shape[0], fpair, cfg.two_view)
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
    # Camera-point bearings of the longest tracks, overall and per image.
    cand = translation_points(vis, solved, cfg.translation)
    sub_vis = vis[cand] & solved[None]
    ti, fi = sub_vis.nonzero(as_tuple=True)
    ray3 = unproject(xy[cand[ti], fi], model, intr[fi])[:, :2]
    ray3 = torch.cat([ray3, torch.ones(ti.numel(), 1, dtype=ray3.dtype)], -1)
    centers, _ = translation_averaging(
        R_abs, solved, edges, t_rel, tw, (fi, ti, ray3), cfg.translation
    )
    t_abs = -(R_abs @ centers[..., None])[..., 0]
    agree = translation_agreement_groups(R_abs, centers, edges, t_rel, tw > 0, solved)
    stats["translation_groups"] = agree
    if agree > 1:
        log(
            f"[yellow]the solved camera positions agree with the verified pairs' directions "
            f"only within {agree} separate groups of images: a block of cameras may be "
            "misplaced (fast turns give few shared tracks)"
        )
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

        def adjust(T, K, X, cam, pt, obs_xy, fix_points, fix_intr, fixed_cameras=()):
            mode = "fixed" if fix_intr else intr_mode
            T, K, X, _ = _ba(
                model, T, K, X, cam, pt, obs_xy, mode, rcfg, fix_points=fix_points,
                function_tolerance=rcfg.ba_first_round_function_tolerance,
                fixed_cameras=fixed_cameras,
            )  # fmt: skip
            return T, K, X

        inc = incremental_registration(
            xy, vis, sizes, edges, R_rel, t_rel, geo.num_inliers[ok], geo.median_angle_deg[ok],
            model, intr, adjust, intr_mode == "shared", cfg.incremental, cfg.pnp, log,
        )  # fmt: skip
        timings["incremental_s"] = time.perf_counter() - t0
        timings.update({f"incremental_{k}": v for k, v in inc.timings.items()})
        n_inc = int(inc.registered.sum())
        stats["incremental_registered"] = n_inc
        stats["incremental_rounds"] = inc.rounds
        stats["incremental_bundle_adjustments"] = {"global": inc.global_bas, "local": inc.local_bas}
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
        tri = tri_fn(cams, xy.block(tid, reg_ids), m[tid], opts)
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
    visible = torch.zeros(t, n, dtype=torch.bool)
    visible[pt, image_idx] = True
    order = torch.argsort(pt * n + image_idx, stable=True)  # row-major (track, frame)
    ref = visible.float().argmax(1)
    return Tracks(
        visible,
        xy[order],
        torch.ones(order.numel(), dtype=xy.dtype),
        torch.arange(point_idx.numel())[order],
        ref,
        image_sizes.clone(),
    )
