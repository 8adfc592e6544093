"""Batched robust two-view geometry: essential, fundamental and homography matrices by
LO-RANSAC, with model selection between epipolar geometry and a homography.

Every pair of images is a row of a padded batch: ``x1, x2`` are ``(P, M, 2)`` with a
``valid`` mask ``(P, M)``. All pairs are estimated at once by the batched LO-RANSAC of
:mod:`sceneforge.recon.lo_ransac` (rounds of minimal samples for every still active pair,
preemptive scoring on a subset, local optimisation of every new best model, adaptive
termination per pair, final refinement on the inliers; seeded, so results depend on the inputs
and the config only).

Models and their pieces:

- essential matrix (calibrated, ``focal`` given): minimal samples of 5 solved by the 5-point
  algorithm (:func:`sceneforge.recon.five_point.five_point`, up to 10 real solutions, all
  scored) after the chirality test of the sample (a solution must put its five points in front
  of both cameras for one of its four poses: this removes about a third of the solutions and,
  on planar scenes, most twisted interpretations); scored by the Sampson distance; local
  optimisation and final refinement are Levenberg-Marquardt on ``(R, t)`` (5 DoF, analytic
  Jacobian) of the Cauchy-robustified Sampson error on the inliers (re-estimated between the
  passes of the final refinement). That *is* the non-minimal fit: a linear 8-point refit on
  the inliers would be degenerate on planar scenes, where the 5-point solver is not. The pose
  comes from the essential matrix by cheirality (points in front of both cameras).
- fundamental matrix (``focal=None``, pixels): the 7-point solver (up to 3 solutions) on
  coordinates normalised per pair by one similarity per image with a *common* scale, so the
  Sampson threshold just scales; local optimisation is the iteratively reweighted normalised
  8-point algorithm (weights: the robust weight over the Sampson denominator of the previous
  iterate, i.e. reweighted towards the Sampson error), rank 2 enforced by SVD. The 8-point
  functions stay public (:func:`fundamental_8pt`, :func:`essential_8pt`).
- homography (model selection): the 4-point DLT, scored by the homography Sampson error (first
  order geometric distance, comparable with the epipolar one under one threshold), refined by
  the iteratively reweighted normalised DLT. It only needs as many samples as it takes to find
  a homography with ``h_inlier_ratio`` times the epipolar inliers (a weaker one changes
  nothing), which keeps it cheap on general scenes.

Sampling schedule: rounds of ``round_size`` samples per active pair, at least
``min_hypotheses`` and at most ``num_hypotheses``; a pair stops once it drew ``trials_factor``
times the samples that ``confidence`` asks for at the inlier ratio of its best model (as
poselib's dynamic trial count; noisy all-inlier samples do not always lead to the best model,
which on real pairs with 30-60 % inliers is what decides). Easy pairs stop after one round.

Model selection (``model_selection``), in the spirit of COLMAP's two-view geometry: a pair
whose homography inliers exceed ``h_inlier_ratio`` (0.8, COLMAP's ``max_H_inlier_ratio``) of the
epipolar inliers is explained by a homography: a planar scene or a camera that only rotates.
It is *panoramic* when a rotation alone (``H = R`` in calibrated coordinates, fitted by weighted
Kabsch on the viewing rays of the homography inliers) still explains ``panoramic_ratio`` of the
homography inliers, else *planar*. Without intrinsics the two cannot be told apart
(``planar_or_panoramic``). The Sampson errors of both models are first-order distances in the
joint image space (codimension 1 and 2), so one threshold counts inliers of both comparably.

- planar pairs keep the 5-point pose when enough inliers lie off the plane (epipolar inliers
  beyond ``1 / h_pose_ratio`` times the homography inliers): those points condition the
  essential matrix, and on real scenes with a dominant plane the epipolar pose was the more
  accurate one. When (almost) every inlier is on the plane, the essential matrix is poorly
  conditioned (a valley of nearly equal Sampson cost; on the synthetic planar benchmark the
  median rotation error was twice that of the homography route), so the pose comes from
  :func:`pose_from_homography`: the decompositions of ``H`` with most points in front and,
  where two remain (a plane seen from two views often has two interpretations with every point
  in front, which no epipolar score can separate), the one closest to the 5-point pose.
- panoramic pairs take the rotation of the rotation-only fit (refined by reweighting); their
  translation is not observable: ``t`` stays the (unit, arbitrary) epipolar estimate, the
  median triangulation angle is about 0, ``t_reliable`` is False and the epipolar inliers are
  not filtered by cheirality (depths are meaningless without a baseline).

Where the pose is replaced (homography pose, panoramic rotation), ``matrix`` becomes
``[t]x R`` of that pose and the inliers are re-counted with it, so matrix, pose and inliers
stay consistent.

Conventions: the relative pose is ``cam2_from_cam1`` (``X2 = R X1 + t``); the epipolar
constraint is ``x2^T E x1 = 0`` with calibrated (``K^-1``-normalised) coordinates and
``p2^T F p1 = 0`` with pixels; homographies map image 1 to image 2 (``x2 ~ H x1``) in the
same coordinates as the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sceneforge.core.torch_state import torch_threads
from sceneforge.recon.epipolar import (
    apply_affine,
    decompose_essential,
    eight_point,
    essential_8pt,
    essential_from_pose,
    fundamental_8pt,
    hartley_normalization,
    pose_from_essential,
    refine_relative_pose,
    sampson_error,
    triangulation_angles_deg,
    two_view_depths,
)
from sceneforge.recon.homography import (
    homography_sampson_error,
    pose_from_homography,
    rotation_from_bearings,
)
from sceneforge.recon.lo_ransac import lo_ransac
from sceneforge.recon.two_view_models import (
    cheiral_pose,
    compact_rows,
    essential_model,
    estimate_homography,
    fundamental_model,
    homography_model,
    pixel_normalisation,
    ransac_options,
    robust_weights,
    uncompact_rows,
    unit_frobenius,
)

# The epipolar primitives live in :mod:`sceneforge.recon.epipolar`; re-exported here.
__all__ = [
    "PairConfig",
    "TwoViewConfig",
    "TwoViewGeometry",
    "decompose_essential",
    "eight_point",
    "essential_8pt",
    "essential_from_pose",
    "estimate_two_view",
    "fundamental_8pt",
    "hartley_normalization",
    "pose_from_essential",
    "pose_from_homography",
    "ransac_two_view",
    "refine_relative_pose",
    "sampson_error",
    "triangulation_angles_deg",
    "two_view_depths",
]


class PairConfig(IntEnum):
    """What explains a pair's correspondences (``TwoViewGeometry.config``)."""

    DEGENERATE = 0
    """Too few correspondences or inliers."""
    CALIBRATED = 1
    """General epipolar geometry with known intrinsics (essential matrix)."""
    UNCALIBRATED = 2
    """General epipolar geometry in pixels (fundamental matrix)."""
    PLANAR = 3
    """A homography with parallax: a planar scene (pose from the essential matrix)."""
    PANORAMIC = 4
    """A pure rotation: the translation is not observable."""
    PLANAR_OR_PANORAMIC = 5
    """A homography without intrinsics to tell planar and panoramic apart."""


@dataclass
class TwoViewConfig:
    """Robust two-view estimation settings."""

    num_hypotheses: int = 1024
    """Minimal samples drawn per pair at most (adaptive termination usually stops earlier)."""
    min_hypotheses: int = 32
    """Minimal samples drawn per pair at least."""
    round_size: int = 32
    """Minimal samples drawn per pair and round (all solved and scored at once)."""
    confidence: float = 0.9999
    """Probability of an all-inlier sample that stops the sampling of a pair."""
    trials_factor: float = 3.0
    """Factor on the samples adaptive termination asks for (noisy all-inlier samples do not
    always lead to the best model)."""
    threshold_px: float = 1.5
    """Inlier threshold on the Sampson distance, in pixels."""
    refine_iterations: int = 6
    """Levenberg-Marquardt / reweighting iterations of a local optimisation."""
    refine_passes: int = 1
    """Passes of a local optimisation (the inliers are re-estimated between passes)."""
    final_iterations: int = 6
    """Iterations of each pass of the final refinement on the inliers."""
    final_passes: int = 2
    """Passes of the final refinement (the inliers are re-estimated between passes)."""
    min_inliers: int = 20
    """Pairs with fewer inliers are reported as failed."""
    min_inlier_ratio: float = 0.2
    """Pairs whose inlier ratio is below this are reported as failed."""
    preemptive_subset: int = 256
    """Correspondences per pair on which all hypotheses are first scored."""
    num_verified: int = 4
    """Best hypotheses per pair and round (on the subset) then scored on all correspondences."""
    num_local: int = 1
    """Best verified hypotheses per pair and round that get a local optimisation."""
    refine_subset: int = 128
    """Inliers per pair a local optimisation uses (essential matrix)."""
    final_subset: int = 1024
    """Inliers per pair the final refinement uses (essential matrix)."""
    cheirality_subset: int = 256
    """Inliers per pair (spread over the row) whose cheirality picks the pose of an essential
    matrix among its four (a vote: a subset gives the same pose, at a fraction of the cost)."""
    max_elements: int = 262_144
    """Upper bound on hypotheses x correspondences scored at once (memory, cache)."""
    model_selection: bool = True
    """Also estimate a homography and classify pairs as planar / panoramic."""
    h_max_hypotheses: int = 256
    """Minimal samples per pair at most for the homography; fewer where enough to find one
    with ``h_inlier_ratio`` times the epipolar inliers (all that model selection needs)."""
    h_subset: int = 512
    """Correspondences per pair (spread over the row) the homography is estimated on; its
    inliers are then counted on all."""
    h_min_hypotheses: int = 32
    """Minimal samples per pair at least for the homography."""
    h_refine_iterations: int = 3
    """Reweighted DLT iterations of a homography local optimisation (twice that at the end)."""
    h_inlier_ratio: float = 0.8
    """Homography inliers / epipolar inliers above which a homography explains the pair."""
    h_pose_ratio: float = 0.95
    """Planar pairs take the pose of the homography when its inliers reach this fraction of
    the epipolar inliers (else too few points off the plane condition the essential matrix)."""
    panoramic_ratio: float = 0.95
    """Rotation-only inliers / homography inliers above which the pair is panoramic."""
    seed: int = 0
    """Seed of the sampler (deterministic results)."""
    batch_pairs: int = 512
    """Pairs estimated together: bounds the memory (~0.6 MB per pair of 1,000
    correspondences); each batch has its own seeded sampler (batch 0: ``seed``), so results
    depend on it (as on ``seed``), never on the machine."""
    num_threads: int | None = 1
    """torch threads while estimating (restored after; ``None``: the caller's). The batched
    kernels are small: on the 2-core machine shared with other jobs, 2 threads took 6x the
    CPU and wall time of 1 (spin-waiting; issue 25). Results do not depend on it."""


@dataclass
class TwoViewGeometry:
    """Result for ``P`` pairs.

    Attributes:
        matrix: ``P 3 3`` essential (calibrated) or fundamental matrix.
        inliers: ``P M`` inlier mask (False on padding).
        num_inliers: ``P`` inlier counts.
        success: ``P`` whether the pair passed the inlier thresholds.
        R: ``P 3 3`` relative rotation ``cam2_from_cam1`` (essential only, else identity).
        t: ``P 3`` unit relative translation (essential only, else zeros).
        median_angle_deg: ``P`` median triangulation angle of the inliers (essential only).
        homography: ``P 3 3`` homography ``x2 ~ H x1`` in the input coordinates (zeros without
            model selection).
        h_inliers: ``P M`` its inliers.
        num_h_inliers: ``P`` their counts.
        config: ``P`` :class:`PairConfig` codes; :attr:`config_names` gives the names.
        t_reliable: ``P`` False where the translation is not observable (panoramic) or no
            pose was estimated (fundamental matrix, failed pairs).
    """

    matrix: Float[Tensor, "P 3 3"]
    inliers: Bool[Tensor, "P M"]
    num_inliers: Int[Tensor, " P"]
    success: Bool[Tensor, " P"]
    R: Float[Tensor, "P 3 3"]
    t: Float[Tensor, "P 3"]
    median_angle_deg: Float[Tensor, " P"]
    homography: Float[Tensor, "P 3 3"] | None = None
    h_inliers: Bool[Tensor, "P M"] | None = None
    num_h_inliers: Int[Tensor, " P"] | None = None
    config: Int[Tensor, " P"] | None = None
    t_reliable: Bool[Tensor, " P"] | None = None

    @property
    def config_names(self) -> list[str]:
        """``config`` as lower-case names (``"calibrated"``, ``"planar"``, ...)."""
        if self.config is None:
            return []
        return [PairConfig(int(c)).name.lower() for c in self.config]


def ransac_two_view(
    x1: Float[Tensor, "P M 2"],
    x2: Float[Tensor, "P M 2"],
    valid: Bool[Tensor, "P M"],
    threshold: float | Float[Tensor, " P"],
    kind: str = "essential",
    config: TwoViewConfig | None = None,
) -> tuple[Float[Tensor, "P 3 3"], Bool[Tensor, "P M"]]:
    """Batched LO-RANSAC of one model over ``P`` pairs: ``essential`` (5-point, calibrated
    coordinates), ``fundamental`` (7-point, pixels) or ``homography`` (4-point); ``threshold``
    is on the Sampson distance in the units of ``x1, x2``.

    Returns the refined matrix and the inlier mask of every pair.
    """
    if kind not in ("essential", "fundamental", "homography"):
        raise ValueError(f"kind must be 'essential', 'fundamental' or 'homography', got {kind!r}")
    cfg = config or TwoViewConfig()
    with torch_threads(cfg.num_threads):
        return _ransac_two_view(x1, x2, valid, threshold, kind, cfg)


def _ransac_two_view(
    x1: Tensor, x2: Tensor, valid: Tensor, threshold: float | Tensor, kind: str, cfg: TwoViewConfig
) -> tuple[Tensor, Tensor]:
    x1, x2 = x1.double(), x2.double()
    P = valid.shape[0]
    if P == 0:
        return torch.zeros(0, 3, 3, dtype=x1.dtype), valid.clone()
    x1c, x2c, vc, order = compact_rows(x1, x2, valid)
    thr = torch.as_tensor(threshold, dtype=x1.dtype).expand(P).clone()
    gen = torch.Generator().manual_seed(cfg.seed)
    if kind == "essential":
        M, inl, _ = lo_ransac(
            essential_model(cfg),
            x1c,
            x2c,
            vc,
            thr**2,
            ransac_options(cfg, cfg.num_hypotheses, cfg.min_hypotheses),
            gen,
        )
        return M, uncompact_rows(inl, order)
    T1, T2, s = pixel_normalisation(x1c, x2c, vc)
    x1n, x2n = apply_affine(T1, x1c), apply_affine(T2, x2c)
    if kind == "fundamental":
        model, opts = (
            fundamental_model(cfg),
            ransac_options(cfg, cfg.num_hypotheses, cfg.min_hypotheses),
        )
    else:
        model, opts = (
            homography_model(cfg),
            ransac_options(cfg, cfg.h_max_hypotheses, cfg.h_min_hypotheses),
        )
    Mn, inl, _ = lo_ransac(model, x1n, x2n, vc, (thr * s) ** 2, opts, gen)
    if kind == "fundamental":
        M = T2.transpose(-1, -2) @ Mn @ T1
    else:
        M = torch.linalg.solve(T2, Mn @ T1)
    return unit_frobenius(M), uncompact_rows(inl, order)


def estimate_two_view(
    x1: Float[Tensor, "P M 2"],
    x2: Float[Tensor, "P M 2"],
    valid: Bool[Tensor, "P M"],
    focal: Float[Tensor, " P"] | float | None = None,
    config: TwoViewConfig | None = None,
) -> TwoViewGeometry:
    """Two-view geometry of ``P`` pairs: relative pose from the essential matrix for
    calibrated coordinates, plus a homography and the pair's configuration.

    ``x1, x2`` are normalised image coordinates (``K^-1 p``); ``focal`` (pixels, per pair or
    one value) converts the pixel threshold. With ``focal=None`` the inputs are pixels and a
    fundamental matrix is estimated (no pose: ``R = I``, ``t = 0``).
    """
    return estimate_two_view_batched(
        lambda sl: (x1[sl], x2[sl], valid[sl]), valid.shape[0], focal, config
    )


CorrespondenceBatch = Callable[[slice], tuple[Tensor, Tensor, Tensor]]
"""``pairs slice -> (x1, x2, valid)`` of those pairs (see :func:`estimate_two_view`)."""


def estimate_two_view_batched(
    correspondences: CorrespondenceBatch,
    num_pairs: int,
    focal: Float[Tensor, " P"] | float | None = None,
    config: TwoViewConfig | None = None,
) -> TwoViewGeometry:
    """:func:`estimate_two_view` of ``num_pairs`` pairs, ``config.batch_pairs`` at a time,
    asking ``correspondences`` for each batch's inputs only when it is estimated: the
    callers never hold every pair's correspondences (or the RANSAC state of every pair) at
    once. Batch ``k`` samples with seed ``config.seed + k * 104729``."""
    cfg = config or TwoViewConfig()
    step = max(cfg.batch_pairs, 1)
    parts = []
    with torch_threads(cfg.num_threads):
        for k, s in enumerate(range(0, max(num_pairs, 1), step)):
            sl = slice(s, min(s + step, num_pairs))
            f = focal[sl] if isinstance(focal, Tensor) and focal.ndim == 1 else focal
            x1, x2, valid = correspondences(sl)
            parts.append(_estimate_two_view(x1, x2, valid, f, cfg, cfg.seed + k * 104729))
    return parts[0] if len(parts) == 1 else _concat_geometries(parts)


def _concat_geometries(parts: list[TwoViewGeometry]) -> TwoViewGeometry:
    """One :class:`TwoViewGeometry` of the pairs of ``parts`` in order (masks padded to the
    widest batch)."""
    m = max(p.inliers.shape[1] for p in parts)

    def cat(name: str) -> Tensor | None:
        vals = [getattr(p, name) for p in parts]
        if vals[0] is None:
            return None
        if name in ("inliers", "h_inliers"):
            vals = [torch.nn.functional.pad(v, (0, m - v.shape[1])) for v in vals]
        return torch.cat(vals)

    return TwoViewGeometry(**{f.name: cat(f.name) for f in fields(TwoViewGeometry)})


def _estimate_two_view(
    x1: Tensor,
    x2: Tensor,
    valid: Tensor,
    focal: Tensor | float | None,
    cfg: TwoViewConfig,
    seed: int,
) -> TwoViewGeometry:
    P, M = valid.shape
    x1, x2 = x1.double(), x2.double()
    eye = torch.eye(3, dtype=torch.float64).expand(P, 3, 3).clone()
    zeros3 = torch.zeros(P, 3, dtype=torch.float64)
    x1c, x2c, vc, order = compact_rows(x1, x2, valid)
    gen = torch.Generator().manual_seed(seed)
    opts, h_opts = (
        ransac_options(cfg, cfg.num_hypotheses, cfg.min_hypotheses),
        ransac_options(cfg, cfg.h_max_hypotheses, cfg.h_min_hypotheses),
    )
    H = torch.zeros(P, 3, 3, dtype=torch.float64)
    h_inl = torch.zeros_like(vc)
    if focal is None:
        T1, T2, s = pixel_normalisation(x1c, x2c, vc)
        x1n, x2n = apply_affine(T1, x1c), apply_affine(T2, x2c)
        thr2 = (cfg.threshold_px * s) ** 2
        Fn, inl, _ = lo_ransac(fundamental_model(cfg), x1n, x2n, vc, thr2, opts, gen)
        mat = unit_frobenius(T2.transpose(-1, -2) @ Fn @ T1)
        R, t, angle = eye, zeros3, torch.zeros(P, dtype=torch.float64)
        config = torch.full((P,), int(PairConfig.UNCALIBRATED))
        if cfg.model_selection and P:
            Hn, h_inl = estimate_homography(x1n, x2n, vc, inl, thr2, cfg, h_opts, gen)
            H = unit_frobenius(torch.linalg.solve(T2, Hn @ T1))
            h_dom = h_inl.sum(1) > cfg.h_inlier_ratio * inl.sum(1)
            config[h_dom] = int(PairConfig.PLANAR_OR_PANORAMIC)
        t_ok = torch.zeros(P, dtype=torch.bool)
    else:
        f = torch.as_tensor(focal, dtype=torch.float64).expand(P)
        thr2 = (cfg.threshold_px / f) ** 2
        E, inl, _ = lo_ransac(essential_model(cfg), x1c, x2c, vc, thr2, opts, gen)
        R, t = cheiral_pose(E, x1c, x2c, inl, cfg.cheirality_subset)
        pano = torch.zeros(P, dtype=torch.bool)
        config = torch.full((P,), int(PairConfig.CALIBRATED))
        if cfg.model_selection and P:
            H, h_inl = estimate_homography(x1c, x2c, vc, inl, thr2, cfg, h_opts, gen)
            n_h = h_inl.sum(1)
            h_dom = n_h > cfg.h_inlier_ratio * inl.sum(1)
            # A rotation alone (H = R) on the homography inliers, reweighted twice.
            w = h_inl.double()
            for _ in range(3):
                Rr = rotation_from_bearings(x1c, x2c, w)
                err = homography_sampson_error(Rr, x1c, x2c)
                w = robust_weights(err, vc, thr2)
            n_rot = (vc & (err < thr2[:, None])).sum(1)
            pano = h_dom & (n_rot >= cfg.panoramic_ratio * n_h)
            R = torch.where(pano[:, None, None], Rr, R)
            planar = h_dom & ~pano
            # The epipolar pose is ill-conditioned only when (almost) no inlier lies off the
            # plane: then the homography's decomposition is used.
            h_pose = planar & (n_h >= cfg.h_pose_ratio * inl.sum(1))
            if bool(h_pose.any()):
                Rh, th = pose_from_homography(
                    H[h_pose], x1c[h_pose], x2c[h_pose], h_inl[h_pose], R[h_pose], t[h_pose]
                )
                R[h_pose], t[h_pose] = Rh, th
            config[planar] = int(PairConfig.PLANAR)
            config[pano] = int(PairConfig.PANORAMIC)
            # Keep matrix, pose and inliers consistent where the pose was replaced.
            rep = (h_pose | pano)[:, None, None]
            E = torch.where(rep, essential_from_pose(R, t), E)
            inl = torch.where(rep[:, :, 0], vc & (sampson_error(E, x1c, x2c) < thr2[:, None]), inl)
        # Points behind a camera are outliers of the chosen pose (not for a pure rotation,
        # whose depths are meaningless).
        l1, l2 = two_view_depths(R, t, x1c, x2c)
        inl = inl & (((l1 > 0) & (l2 > 0)) | pano[:, None])
        ang = triangulation_angles_deg(R, t, x1c, x2c, depths=l1)
        ang = torch.where(inl, ang, torch.full_like(ang, math.nan))
        angle = torch.nan_to_num(ang.nanmedian(dim=1).values, nan=0.0) if M else ang.sum(1)
        mat = E
        t_ok = ~pano
    n_in = inl.sum(1)
    n_valid = vc.sum(1).clamp(min=1)
    ok = (n_in >= cfg.min_inliers) & (n_in.double() / n_valid >= cfg.min_inlier_ratio)
    config = torch.where(ok, config, torch.zeros_like(config))
    return TwoViewGeometry(
        mat,
        uncompact_rows(inl, order),
        n_in,
        ok,
        R,
        t,
        angle,
        homography=H,
        h_inliers=uncompact_rows(h_inl, order),
        num_h_inliers=h_inl.sum(1),
        config=config,
        t_reliable=t_ok & ok,
    )
