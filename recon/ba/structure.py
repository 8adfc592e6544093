"""Index bookkeeping of a bundle-adjustment problem: gauge, free masks, GEMM chunk tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sceneforge.core.cameras import MODEL_PARAMS
from sceneforge.core.rotations import angle_axis_to_matrix
from sceneforge.recon.ba.problem import BAOptions, BAProblem


@dataclass
class Structure:
    """Index bookkeeping of one problem (built once per solve).

    Observations are laid out by :func:`pad_by_camera` (``bundle_adjust`` does it): sorted
    by camera, each camera's run padded to a multiple of ``chunk`` slots, so the per-camera
    sums are batched GEMMs over plain views (no gathers). Padding slots repeat one of their
    camera's observations and get zero residuals and Jacobians (``pad_rows``).
    """

    nc: int
    npts: int
    ni: int  # number of intrinsic blocks (0 if fixed)
    P: int
    cam: Tensor
    pt: Tensor
    col_idx: Tensor  # (Nc, C) reduced-system indices of each camera's [pose | intr]
    col_obs: Tensor  # (M, C) the same per observation
    cam_chunk_cam: Tensor  # (Ncc,) camera of each run of ``chunk`` consecutive slots
    pair_chunks_a: Tensor  # (Npc, L) int32 first observation of each pair in a chunk (M = pad)
    pair_chunks_b: Tensor  # (Npc, L) int32 second observation
    pair_chunk_cams: Tensor  # (Npc, 2) camera pair (ca <= cb) of each chunk
    free_pose: Tensor  # (Nc, 6) float mask
    free_intr: Tensor | None  # (Ni, P) float mask
    free_points: bool
    zero_behind: bool = False  # zero residual where depth < eps (COLMAP's objective)
    pad_rows: Tensor | None = None  # padding slots (zero residual and Jacobian)
    chunk: int = 32  # slots per camera chunk
    cam_chunk_flat: Tensor | None = None  # (Ncc * C * C,) flat (Nr, Nr) index of each entry

    @property
    def nr(self) -> int:
        return 6 * self.nc + self.P * self.ni

    def __post_init__(self) -> None:
        self.cam_chunk_flat = self._flat(self.cam_chunk_cam, self.cam_chunk_cam)

    def pair_chunk_flat(self, s: slice) -> Tensor:
        """Flat ``(Nr, Nr)`` indices of the entries of the pair chunks ``s`` (made per slice:
        stored for all chunks they would take 8 C^2 bytes per chunk)."""
        cams = self.pair_chunk_cams[s]
        return self._flat(cams[:, 0], cams[:, 1])

    def _flat(self, ca: Tensor, cb: Tensor) -> Tensor:
        """Flat indices into the dense ``(Nr, Nr)`` system of ``(K, C, C)`` camera blocks."""
        rows = self.col_idx[ca][:, :, None]
        cols = self.col_idx[cb][:, None, :]
        return (rows * self.nr + cols).reshape(-1)


def _point_pairs(pt: Tensor, npts: int) -> tuple[Tensor, Tensor]:
    """Pairs (a, b) of distinct observations of the same point, each unordered pair once."""
    device = pt.device
    order = torch.from_numpy(np.argsort(pt.cpu().numpy(), kind="stable")).to(device)
    counts = torch.bincount(pt, minlength=npts)
    starts = torch.cumsum(counts, 0) - counts
    pid_sorted = pt[order]
    rep = counts[pid_sorted]
    a = torch.repeat_interleave(torch.arange(pt.shape[0], device=device), rep)
    offs = torch.arange(a.shape[0], device=device) - torch.repeat_interleave(
        torch.cumsum(rep, 0) - rep, rep
    )
    b = starts[pid_sorted[a]] + offs
    keep = b > a  # sorted positions: strict upper triangle of each track
    return order[a[keep]], order[b[keep]]


def gauge_scale_coordinate(problem: BAProblem, options: BAOptions) -> tuple[int, int]:
    """(camera, translation coordinate) to fix so the scale about the gauge camera is fixed."""
    g = options.gauge_camera
    R = angle_axis_to_matrix(problem.rotation.detach())
    t = problem.translation.detach()
    centers = -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0]
    if options.scale_camera is None:
        d = (centers - centers[g]).norm(dim=-1)
        d[g] = -1.0
        k = int(torch.argmax(d))
    else:
        k = options.scale_camera
    if k == g:
        raise ValueError("scale_camera must differ from gauge_camera")
    # Scaling about camera g's centre moves t_k along R_k (c_k - c_g).
    v = R[k] @ (centers[k] - centers[g])
    if float(v.norm()) == 0.0:
        raise ValueError(f"cameras {g} and {k} share a centre: cannot fix the scale with them")
    return k, int(torch.argmax(v.abs()))


def _behind_camera(mode: str) -> bool:
    if mode not in ("keep", "zero"):
        raise ValueError(f"unknown behind_camera {mode!r}; use 'keep' or 'zero'")
    return mode == "zero"


def pad_by_camera(cam: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot layout sorted by camera with each camera's run padded to a multiple of ``size``.

    Returns ``src (M_pad,)``, the observation in each slot (a padding slot repeats its
    camera's first observation), and the padding slots ``(M_pad - M,)``.
    """
    order = np.argsort(cam, kind="stable")
    sc = cam[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    lengths = np.diff(np.r_[starts, len(sc)])
    padded = -(-lengths // size) * size
    run = np.repeat(np.arange(len(starts)), lengths)
    slot = (np.cumsum(padded) - padded)[run] + np.arange(len(sc)) - starts[run]
    src = np.repeat(order[starts], padded)
    src[slot] = order
    is_pad = np.ones(int(padded.sum()), dtype=bool)
    is_pad[slot] = False
    return src, np.flatnonzero(is_pad)


def build_structure(
    problem: BAProblem, options: BAOptions, pad_rows: np.ndarray | None = None
) -> Structure:
    """Index bookkeeping of ``problem``, laid out by :func:`pad_by_camera` (``pad_rows``
    are its padding slots)."""
    nc, npts = problem.num_cameras, problem.num_points
    P = len(MODEL_PARAMS[problem.model])
    dev, dt = problem.device, problem.dtype
    cam, pt = problem.cam_idx.long(), problem.point_idx.long()
    if options.intrinsics == "fixed":
        ni = 0
    elif options.intrinsics == "shared" or problem.intrinsics.shape[0] == 1:
        ni = 1
    elif options.intrinsics == "per_camera":
        ni = nc
    else:
        raise ValueError(f"unknown intrinsics mode {options.intrinsics!r}")
    free_pose = torch.ones(nc, 6, dtype=dt, device=dev)
    for c in options.fixed_cameras:
        if not 0 <= c < nc:
            raise ValueError(f"fixed camera index {c} out of range [0, {nc})")
        free_pose[c] = 0.0
    if options.gauge == "fix_camera_and_scale":
        if not 0 <= options.gauge_camera < nc or nc < 2:
            raise ValueError(
                "gauge 'fix_camera_and_scale' needs >= 2 cameras and a valid gauge_camera"
            )
        free_pose[options.gauge_camera] = 0.0
        k, coord = gauge_scale_coordinate(problem, options)
        free_pose[k, 3 + coord] = 0.0
    elif options.gauge != "none":
        raise ValueError(f"unknown gauge {options.gauge!r}")
    free_intr = None
    if ni:
        free_intr = torch.ones(ni, P, dtype=dt, device=dev)
        for name in options.constant_intrinsics:
            if name not in MODEL_PARAMS[problem.model]:
                raise ValueError(
                    f"{problem.model} has no intrinsic {name!r}: {MODEL_PARAMS[problem.model]}"
                )
            free_intr[:, MODEL_PARAMS[problem.model].index(name)] = 0.0
    m = cam.shape[0]
    cam_np = cam.cpu().numpy()
    runs = np.diff(np.flatnonzero(np.r_[True, cam_np[1:] != cam_np[:-1], True]))
    if (m > 1 and bool((cam[1:] < cam[:-1]).any())) or bool((runs % CHUNK).any()):
        raise ValueError("internal: observations must be laid out by pad_by_camera")
    pad = np.zeros(0, dtype=np.int64) if pad_rows is None else np.asarray(pad_rows)
    pose_cols = torch.arange(6 * nc, device=dev).reshape(nc, 6)
    if ni:
        blk = (
            torch.zeros(nc, dtype=torch.long, device=dev)
            if ni == 1
            else torch.arange(nc, device=dev)
        )
        intr_cols = 6 * nc + blk[:, None] * P + torch.arange(P, device=dev)
        col_idx = torch.cat([pose_cols, intr_cols], 1)
    else:
        col_idx = pose_cols
    real = np.setdiff1d(np.arange(m), pad)
    pair_a, pair_b, pair_cams = pair_chunk_tables(cam.cpu().numpy(), pt.cpu().numpy(), real, nc)

    def t(a):
        return torch.as_tensor(a, dtype=torch.long, device=dev)

    return Structure(
        nc,
        npts,
        ni,
        P,
        cam,
        pt,
        col_idx,
        col_idx[cam],
        cam[::CHUNK].clone(),
        torch.as_tensor(pair_a, device=dev),
        torch.as_tensor(pair_b, device=dev),
        t(pair_cams),
        free_pose,
        free_intr,
        not options.fix_points,
        _behind_camera(options.behind_camera),
        t(pad) if len(pad) else None,
        CHUNK,
    )


CHUNK = 32  # slots per camera chunk (each camera padded to whole chunks) in the block sums
PAIR_CHUNK = 16  # observation pairs of one camera pair per GEMM chunk
PAIRS_PER_BATCH = 1 << 22  # observation pairs made at once (bounds the transient memory)


def pair_chunk_tables(
    cam: np.ndarray, pt: np.ndarray, real: np.ndarray, nc: int, batch: int = PAIRS_PER_BATCH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair of observations (among ``real``) of the same point, grouped in
    chunks of :data:`PAIR_CHUNK` pairs of one camera pair (first camera <= second):
    ``(Npc, L)`` int32 first / second observations (``len(cam)`` pads) and ``(Npc, 2)``
    cameras.

    The pairs grow with the squared track lengths (a 1,000-frame walk: tens of millions), so
    they are made for consecutive groups of points of at most ``batch`` pairs each and kept
    as int32 chunk tables only; with one group (every problem below ``batch`` pairs) the
    chunks are those of one global sort by camera pair."""
    m = len(cam)
    rp = pt[real]
    order = np.argsort(rp, kind="stable")  # observations grouped by point
    obs_sorted, pt_sorted = real[order], rp[order]
    starts = np.flatnonzero(np.r_[True, pt_sorted[1:] != pt_sorted[:-1]]) if len(rp) else []
    lengths = np.diff(np.r_[starts, len(rp)]).astype(np.int64)
    npairs = lengths * (lengths - 1) // 2
    group = np.cumsum(npairs) // max(batch, 1)  # consecutive points, ~batch pairs a group
    bounds = np.r_[0, np.flatnonzero(np.diff(group)) + 1, len(starts)]
    parts_a, parts_b, parts_c = [], [], []
    for g0, g1 in zip(bounds[:-1], bounds[1:]):
        if g1 <= g0:
            continue
        o0 = starts[g0]
        o1 = starts[g1] if g1 < len(starts) else len(rp)
        obs = obs_sorted[o0:o1]
        local = np.repeat(np.arange(g1 - g0), lengths[g0:g1])
        ia, ib = _point_pairs(torch.as_tensor(local), g1 - g0)
        pa, pb = obs[ia.numpy()], obs[ib.numpy()]
        swap = cam[pa] > cam[pb]
        pa, pb = np.where(swap, pb, pa), np.where(swap, pa, pb)
        key = cam[pa].astype(np.int64) * nc + cam[pb]
        srt = np.argsort(key, kind="stable")
        pa, pb, key = pa[srt], pb[srt], key[srt]
        pos, seg = _chunk_table(key, PAIR_CHUNK)
        pad_pos = np.where(pos < 0, len(pa), pos)
        parts_a.append(np.append(pa, m).astype(np.int32)[pad_pos])
        parts_b.append(np.append(pb, m).astype(np.int32)[pad_pos])
        parts_c.append(np.stack([seg // nc, seg % nc], 1).reshape(-1, 2))
    if not parts_a:
        empty = np.zeros((0, PAIR_CHUNK), dtype=np.int32)
        return empty, empty.copy(), np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_c)


def _chunk_table(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sorted ``keys`` into runs, and each run into chunks of ``size`` positions.

    Returns ``(Nch, size)`` positions (``-1`` pads a run's last chunk) and each chunk's key.
    """
    if len(keys) == 0:
        return np.zeros((0, size), dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lengths = np.diff(np.r_[starts, len(keys)])
    nch = -(-lengths // size)
    first_chunk = np.cumsum(nch) - nch
    pos = -np.ones((int(nch.sum()), size), dtype=np.int64)
    run = np.repeat(np.arange(len(starts)), lengths)
    within = np.arange(len(keys)) - starts[run]
    pos[first_chunk[run] + within // size, within % size] = np.arange(len(keys))
    return pos, np.repeat(keys[starts], nch)
