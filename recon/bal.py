"""Reader and writer for Bundle Adjustment in the Large (BAL) text files.

Format: header ``num_cameras num_points num_observations``; one line per observation
``cam_idx point_idx x y``; then 9 values per camera (angle-axis rotation, translation,
``f, k1, k2``) and 3 per point, whitespace separated. The BAL camera looks down -z
(``p = -P[:2] / P[2]``), which :func:`sceneforge.core.cameras.project` handles as
model ``"BAL"``, so the problem is kept in the file's own frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sceneforge.core.atomic import atomic_write_text
from sceneforge.recon.ba import BAProblem


class BALFormatError(ValueError):
    """A malformed BAL file; the message names the file and the line."""


def _tokens_with_lines(text: str):
    """Yield ``(line_number, token)`` for every whitespace-separated token."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        for tok in line.split():
            yield lineno, tok


def read_bal(path: str | os.PathLike, dtype: torch.dtype = torch.float64, device=None) -> BAProblem:
    """Parse a BAL file into a :class:`BAProblem` with model ``"BAL"``.

    Raises :class:`BALFormatError` naming the file and line for wrong counts,
    non-numeric values, or camera/point indices out of range.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise BALFormatError(f"{path}: cannot read BAL file ({e})") from e
    toks = list(_tokens_with_lines(text))
    if len(toks) < 3:
        raise BALFormatError(f"{path}:1: header must be 'num_cameras num_points num_observations'")

    def as_int(i: int, what: str) -> int:
        lineno, tok = toks[i]
        try:
            v = int(tok)
        except ValueError:
            raise BALFormatError(
                f"{path}:{lineno}: {what} must be an integer, got {tok!r}"
            ) from None
        return v

    n_cam, n_pts, n_obs = (
        as_int(i, w) for i, w in enumerate(("num_cameras", "num_points", "num_observations"))
    )
    for v, w in ((n_cam, "num_cameras"), (n_pts, "num_points"), (n_obs, "num_observations")):
        if v <= 0:
            raise BALFormatError(f"{path}:{toks[0][0]}: {w} must be positive, got {v}")
    expected = 3 + 4 * n_obs + 9 * n_cam + 3 * n_pts
    if len(toks) != expected:
        last_line = toks[-1][0]
        raise BALFormatError(
            f"{path}:{last_line}: header announces {n_cam} cameras, {n_pts} points and "
            f"{n_obs} observations, i.e. {expected} values, but the file has {len(toks)}"
        )
    lines = np.fromiter((ln for ln, _ in toks), dtype=np.int64, count=len(toks))
    try:
        values = np.array([t for _, t in toks[3:]], dtype=np.float64)
    except ValueError:
        for lineno, tok in toks[3:]:
            try:
                float(tok)
            except ValueError:
                raise BALFormatError(f"{path}:{lineno}: non-numeric value {tok!r}") from None
        raise
    if not np.isfinite(values).all():
        k = int(np.flatnonzero(~np.isfinite(values))[0]) + 3
        raise BALFormatError(f"{path}:{lines[k]}: non-finite value {toks[k][1]!r}")
    obs = values[: 4 * n_obs].reshape(n_obs, 4)
    idx = obs[:, :2]
    bad = (idx != np.round(idx)).any(1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise BALFormatError(f"{path}:{lines[3 + 4 * k]}: observation indices must be integers")
    cam_idx = idx[:, 0].astype(np.int64)
    pt_idx = idx[:, 1].astype(np.int64)
    for arr, n, what in ((cam_idx, n_cam, "camera"), (pt_idx, n_pts, "point")):
        out = (arr < 0) | (arr >= n)
        if out.any():
            k = int(np.flatnonzero(out)[0])
            raise BALFormatError(
                f"{path}:{lines[3 + 4 * k]}: {what} index {arr[k]} out of range [0, {n})"
            )
    cams = values[4 * n_obs : 4 * n_obs + 9 * n_cam].reshape(n_cam, 9)
    pts = values[4 * n_obs + 9 * n_cam :].reshape(n_pts, 3)

    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    return BAProblem(
        model="BAL",
        rotation=t(cams[:, :3]),
        translation=t(cams[:, 3:6]),
        intrinsics=t(cams[:, 6:9]),
        points=t(pts),
        cam_idx=torch.as_tensor(cam_idx, device=device),
        point_idx=torch.as_tensor(pt_idx, device=device),
        observations=t(obs[:, 2:]),
    )


def write_bal(problem: BAProblem, path: str | os.PathLike) -> None:
    """Write a ``"BAL"``-model problem (per-camera intrinsics) atomically to ``path``."""
    if problem.model != "BAL":
        raise ValueError(f"write_bal needs model 'BAL', got {problem.model!r}")
    n_cam = problem.num_cameras
    intr = problem.intrinsics
    if intr.shape[0] == 1 and n_cam > 1:
        intr = intr.expand(n_cam, -1)
    path = Path(path)
    lines = [f"{n_cam} {problem.num_points} {problem.num_observations}"]
    ci = problem.cam_idx.cpu().numpy()
    pi = problem.point_idx.cpu().numpy()
    xy = problem.observations.detach().cpu().double().numpy()
    lines += [f"{c} {p} {x:.17g} {y:.17g}" for c, p, (x, y) in zip(ci, pi, xy)]
    cams = torch.cat([problem.rotation, problem.translation, intr], 1).detach().cpu().double()
    lines += [f"{v:.17g}" for v in cams.reshape(-1).tolist()]
    lines += [f"{v:.17g}" for v in problem.points.detach().cpu().double().reshape(-1).tolist()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def bal_cost(problem: BAProblem) -> float:
    """Independent NumPy scorer of the BAL formula ``0.5 * sum |r|^2`` (model ``"BAL"``).

    ``P = R X + t; p = -P[:2] / P[2]; p' = f (1 + k1 |p|^2 + k2 |p|^4) p``, no depth test,
    so points behind their camera still count (unlike COLMAP's cost).
    """
    if problem.model != "BAL":
        raise ValueError(f"bal_cost scores BAL-model problems, got {problem.model!r}")
    aa = problem.rotation.detach().cpu().double().numpy()
    t = problem.translation.detach().cpu().double().numpy()
    intr = problem.camera_intrinsics().detach().cpu().double().numpy()
    X = problem.points.detach().cpu().double().numpy()
    ci = problem.cam_idx.cpu().numpy()
    pi = problem.point_idx.cpu().numpy()
    w = aa[ci]
    x = X[pi]
    theta = np.linalg.norm(w, axis=1, keepdims=True)
    safe = np.where(theta > 1e-12, theta, 1.0)
    k = w / safe
    cos, sin = np.cos(theta), np.sin(theta)
    rotated = x * cos + np.cross(k, x) * sin + k * (k * x).sum(1, keepdims=True) * (1 - cos)
    small = theta[:, 0] <= 1e-12
    rotated[small] = x[small] + np.cross(w[small], x[small])
    P = rotated + t[ci]
    p = -P[:, :2] / P[:, 2:3]
    r2 = (p * p).sum(1, keepdims=True)
    f, k1, k2 = intr[ci, 0:1], intr[ci, 1:2], intr[ci, 2:3]
    pred = f * (1.0 + k1 * r2 + k2 * r2 * r2) * p
    r = pred - problem.observations.detach().cpu().double().numpy()
    if problem.weights is not None:
        r = r * problem.weights.detach().cpu().double().numpy()[:, None]
    return float(0.5 * (r * r).sum())
