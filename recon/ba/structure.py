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
    pair_chunks_a: Tensor  # (Npc, L) first observation of each pair in a chunk (M = padding)
    pair_chunks_b: Tensor  # (Npc, L) second observation
    pair_chunk_cams: Tensor  # (Npc, 2) camera pair (ca <= cb) of each chunk
    free_pose: Tensor  # (Nc, 6) float mask
    free_intr: Tensor | None  # (Ni, P) float mask
    free_points: bool
    zero_behind: bool = False  # zero residual where depth < eps (COLMAP's objective)
    pad_rows: Tensor | None = None  # padding slots (zero residual and Jacobian)
    chunk: int = 32  # slots per camera chunk
    cam_chunk_flat: Tensor | None = None  # (Ncc * C * C,) flat (Nr, Nr) index of each entry
    pair_chunk_flat: Tensor | None = None  # (Npc * C * C,) the same for the pair chunks

    @property
    def nr(self) -> int:
        return 6 * self.nc + self.P * self.ni

    def __post_init__(self) -> None:
        self.cam_chunk_flat = self._flat(self.cam_chunk_cam, self.cam_chunk_cam)
        self.pair_chunk_flat = self._flat(self.pair_chunk_cams[:, 0], self.pair_chunk_cams[:, 1])

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
    real = torch.as_tensor(np.setdiff1d(np.arange(m), pad), dtype=torch.long, device=dev)
    pa, pb = _point_pairs(pt[real], npts)
    pa, pb = real[pa], real[pb]
    swap = cam[pa] > cam[pb]
    pa, pb = torch.where(swap, pb, pa), torch.where(swap, pa, pb)
    key = (cam[pa] * nc + cam[pb]).cpu().numpy()
    order = np.argsort(key, kind="stable")
    pa_np, pb_np, key = pa.cpu().numpy()[order], pb.cpu().numpy()[order], key[order]
    p_pos, p_seg = _chunk_table(key, PAIR_CHUNK)
    pa_ext = np.append(pa_np, m)
    pb_ext = np.append(pb_np, m)
    p_pos = np.where(p_pos < 0, len(pa_np), p_pos)

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
        t(pa_ext[p_pos]),
        t(pb_ext[p_pos]),
        t(np.stack([p_seg // nc, p_seg % nc], 1).reshape(-1, 2)),
        free_pose,
        free_intr,
        not options.fix_points,
        _behind_camera(options.behind_camera),
        t(pad) if len(pad) else None,
        CHUNK,
    )


CHUNK = 32  # slots per camera chunk (each camera padded to whole chunks) in the block sums
PAIR_CHUNK = 16  # observation pairs of one camera pair per GEMM chunk


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
