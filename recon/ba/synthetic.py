"""Generated bundle-adjustment problems with known ground truth (tests, benchmarks)."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from sceneforge.recon.ba.problem import BAProblem
from sceneforge.recon.ba.residuals import project_observations


def make_synthetic_problem(
    model: str = "BAL",
    num_cameras: int = 6,
    num_points: int = 40,
    noise_px: float = 0.0,
    visibility: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> BAProblem:
    """A problem with known ground truth: cameras on a ring looking at points near the origin.

    Observations are exact projections plus Gaussian ``noise_px``; each point keeps a
    random subset of views (probability ``visibility``, at least two).
    """
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(num_points, 3, generator=g, dtype=dtype) * 2 - 1) * 1.0
    ang = torch.arange(num_cameras, dtype=dtype) * (1.2 * math.pi / max(num_cameras, 1))
    centers = torch.stack([4 * torch.sin(ang), 0.3 * torch.cos(3 * ang), -4 * torch.cos(ang)], -1)
    fwd = -centers / centers.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=dtype).expand_as(fwd)
    right = torch.linalg.cross(up, fwd, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(fwd, right, dim=-1)
    R = torch.stack([right, down, fwd], 1)  # rows: OpenCV camera axes in world
    if model == "BAL":
        R = R * torch.tensor([1.0, -1.0, -1.0], dtype=dtype)[:, None]
    t = -(R @ centers[:, :, None])[:, :, 0]
    base = {
        "SIMPLE_PINHOLE": [500.0, 320.0, 240.0],
        "PINHOLE": [500.0, 510.0, 320.0, 240.0],
        "SIMPLE_RADIAL": [500.0, 320.0, 240.0, -0.05],
        "RADIAL": [500.0, 320.0, 240.0, -0.05, 0.01],
        "OPENCV": [500.0, 510.0, 320.0, 240.0, -0.05, 0.01, 1e-3, -1e-3],
        "BAL": [500.0, -0.05, 0.01],
    }[model]
    intr = torch.tensor(base, dtype=dtype).repeat(num_cameras, 1)
    intr[:, 0] += torch.randn(num_cameras, generator=g, dtype=dtype) * 5
    vis = torch.rand(num_points, num_cameras, generator=g) < visibility
    order = torch.rand(num_points, num_cameras, generator=g).argsort(1)[:, :2]
    vis[torch.arange(num_points)[:, None], order] = True
    pi, ci = vis.nonzero(as_tuple=True)
    from sceneforge.core.rotations import matrix_to_angle_axis

    rot = matrix_to_angle_axis(R)
    pix, _ = project_observations(model, rot[ci], t[ci], intr[ci], pts[pi])
    pix = pix + noise_px * torch.randn(pix.shape, generator=g, dtype=dtype)
    return BAProblem(model, rot, t, intr, pts, ci, pi, pix)


def perturb_problem(problem: BAProblem, scale: float = 1e-2, seed: int = 1) -> BAProblem:
    """Copy of ``problem`` with poses, focal lengths and points perturbed (observations kept)."""
    g = torch.Generator().manual_seed(seed)
    dt = problem.dtype

    def n(t, s):
        return t + s * torch.randn(t.shape, generator=g, dtype=dt).to(t.device)

    intr = problem.intrinsics.clone()
    intr[:, 0] = intr[:, 0] * (
        1 + scale * torch.randn(intr.shape[0], generator=g, dtype=dt).to(intr.device)
    )
    return replace(
        problem,
        rotation=n(problem.rotation, scale),
        translation=n(problem.translation, scale),
        intrinsics=intr,
        points=n(problem.points, scale),
    )
