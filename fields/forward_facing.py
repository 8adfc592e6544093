"""Forward-facing captures (LLFF-style: every camera looks the same way at a scene in front):
a frustum-aligned, disparity-spaced scene parameterisation, as NeRF's NDC rays.

The scene is expressed in a *reference camera* (the cameras' mean pose, ``z`` along their
mean optical axis) as ``(x / z, y / z, disparity)``: the first two are the tangent of the
viewing angle, the third ``1 - z_near / z`` rescaled so that ``[z_near, z_far]`` spans
``[0, 1]``. Normalised this way, the field's grids and the occupancy grid are aligned with
the frusta (cells are wider far away, as pixels are), and samples spaced uniformly in
disparity put half of them within twice the nearest depth. A cubic box around such a capture
(the unbounded default) spends most of its cells on space no camera sees and most samples on
empty space in front of the scene.

Detection (:func:`fit_forward_frustum`): all camera axes within ``max_axis_deg`` of their
mean, the sparse points in front of the reference camera, and the cameras' spread small
against the points' depth. The frustum covers what every camera sees between the near and
far depth (its image corners), so held-out views of the same capture stay inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import Cameras, invert_rigid, make_rigid, transform_points, unproject


@dataclass
class ForwardFrustum:
    """World -> reference-camera frustum coordinates, see the module docstring."""

    ref_from_world: Float[Tensor, "3 4"]
    """Rigid transform into the reference camera (OpenCV axes: ``z`` forward)."""
    tan_lo: Float[Tensor, " 2"]
    """Smallest ``(x / z, y / z)`` covered."""
    tan_hi: Float[Tensor, " 2"]
    """Largest ``(x / z, y / z)`` covered."""
    z_near: float
    """Nearest depth (reference-camera ``z``) of the scene."""
    z_far: float
    """Farthest depth of the scene; beyond it the field is empty."""
    z_mid: float
    """Typical depth of the scene (the sparse points' median): where :meth:`extent` is taken."""

    def frustum_coords(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """``(x / z, y / z, disparity)`` with disparity ``0`` at ``z_near`` and ``1`` at
        ``z_far`` (outside ``[0, 1]`` beyond them; points behind the camera land below 0)."""
        p = transform_points(self.ref_from_world.to(x), x)
        z = p[:, 2:3]
        zs = torch.where(z > 1e-9, z, torch.full_like(z, 1e-9))
        tan = p[:, :2] / zs
        d = (1.0 - self.z_near / zs) / (1.0 - self.z_near / self.z_far)
        d = torch.where(z > 1e-9, d, torch.full_like(d, -1.0))
        return torch.cat([tan, d], dim=-1)

    def normalize(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """World points to ``[0, 1]^3`` (the covered frustum); outside points leave it."""
        c = self.frustum_coords(x)
        lo, hi = self.tan_lo.to(x), self.tan_hi.to(x)
        return torch.cat([(c[:, :2] - lo) / (hi - lo), c[:, 2:]], dim=-1)

    def world_aabb(self) -> Float[Tensor, "2 3"]:
        """World-space box around the covered frustum (export, camera paths, step sizes)."""
        lo, hi = self.tan_lo.double(), self.tan_hi.double()
        tx = torch.stack([lo[0], hi[0]])
        ty = torch.stack([lo[1], hi[1]])
        corners = []
        for z in (self.z_near, self.z_far):
            for a in tx:
                for b in ty:
                    corners.append(torch.stack([a * z, b * z, torch.tensor(z, dtype=a.dtype)]))
        pts = transform_points(invert_rigid(self.ref_from_world.double()), torch.stack(corners))
        return torch.stack([pts.amin(0), pts.amax(0)]).float()

    def extent(self) -> float:
        """World length the unit cube's side spans at depth ``z_mid`` (mean over the three
        axes): the scale of a grid cell or a sample step there."""
        z = self.z_mid
        span = (self.tan_hi - self.tan_lo).double() * z
        depth = z * z * (1.0 / self.z_near - 1.0 / self.z_far)
        return float((span.sum() + depth) / 3.0)

    def reference_step(self, num_samples: int) -> float:
        """World step between disparity-spaced samples at depth ``z_mid``."""
        z = self.z_mid
        return z * z * (1.0 / self.z_near - 1.0 / self.z_far) / max(num_samples, 1)

    def ray_intervals(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        num_samples: int,
        u: Float[Tensor, "R 1"],
    ) -> tuple[Float[Tensor, "R S+1"], Float[Tensor, " R"]]:
        """Interval edges ``t`` spaced uniformly in disparity between ``z_near`` and ``z_far``
        (interior edges shifted by ``u - 0.5`` of a step) and which rays reach that depth range
        going forward."""
        R = self.ref_from_world.to(origins)
        o_z = origins @ R[2, :3] + R[2, 3]
        d_z = directions @ R[2, :3]
        ok = d_z > 1e-3
        d_zs = torch.where(ok, d_z, torch.ones_like(d_z))
        k = torch.arange(num_samples + 1, device=origins.device, dtype=origins.dtype)[None]
        frac = (k + u - 0.5) / num_samples
        frac[:, 0], frac[:, -1] = 0.0, 1.0  # the end edges stay put (jitter moves the rest)
        inv = 1.0 / self.z_near + frac * (1.0 / self.z_far - 1.0 / self.z_near)
        t = (1.0 / inv - o_z[:, None]) / d_zs[:, None]
        ok = ok & (t[:, 0] >= 0)
        t = t.clamp(min=0.0)
        return t, ok

    def state_dict(self) -> dict:
        return {
            "ref_from_world": self.ref_from_world.clone(),
            "tan_lo": self.tan_lo.clone(),
            "tan_hi": self.tan_hi.clone(),
            "z_near": self.z_near,
            "z_far": self.z_far,
            "z_mid": self.z_mid,
        }

    @classmethod
    def from_state(cls, s: dict) -> ForwardFrustum:
        return cls(
            s["ref_from_world"],
            s["tan_lo"],
            s["tan_hi"],
            float(s["z_near"]),
            float(s["z_far"]),
            float(s["z_mid"]),
        )


@dataclass
class ForwardFacingConfig:
    """When a capture counts as forward-facing, and how its frustum is bounded."""

    max_axis_deg: float = 30.0
    """Every camera's optical axis within this angle of the mean axis."""
    max_spread: float = 0.5
    """Cameras' largest distance from their mean centre, relative to the points' median
    depth (a walk past the scene is not forward-facing)."""
    near_quantile: float = 0.01
    """Point-depth quantile the near depth is taken from (times ``near_margin``)."""
    near_margin: float = 0.75
    """Near depth = this times the quantile (room in front of the nearest points)."""
    far_quantile: float = 0.99
    """Point-depth quantile the far depth is taken from (times ``far_margin``)."""
    far_margin: float = 4.0
    """Far depth = this times the quantile (room for background behind the points)."""


def _mean_rotation(cams: Cameras) -> Float[Tensor, "3 3"]:
    """Rotation whose rows are the cameras' mean right / down / forward axes (orthonormal)."""
    R = cams.cam_from_world[:, :, :3].double()
    z = torch.nn.functional.normalize(R[:, 2].mean(0), dim=0)
    y = R[:, 1].mean(0)
    x = torch.nn.functional.normalize(torch.linalg.cross(y, z), dim=0)
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z])


def fit_forward_frustum(
    cams: Cameras, points: Float[Tensor, "P 3"] | None, cfg: ForwardFacingConfig | None = None
) -> ForwardFrustum | None:
    """The frustum of a forward-facing capture, or None when the capture is not one (or has
    fewer than 20 sparse points to bound the depth)."""
    cfg = cfg or ForwardFacingConfig()
    if points is None or points.shape[0] < 20 or len(cams) < 2:
        return None
    Rm = _mean_rotation(cams)
    axes = cams.cam_from_world[:, 2, :3].double()
    if float((axes @ Rm[2]).clamp(-1, 1).acos().max()) > math.radians(cfg.max_axis_deg):
        return None
    center = cams.centers.double().mean(0)
    T = make_rigid(Rm, -(Rm @ center))
    pz = transform_points(T, points.double())[:, 2]
    if float((pz > 0).double().mean()) < 0.95:
        return None
    pz = pz[pz > 0]
    q = torch.quantile(pz, torch.tensor([cfg.near_quantile, 0.5, cfg.far_quantile], dtype=pz.dtype))
    spread = float((cams.centers.double() - center).norm(dim=-1).max())
    if spread > cfg.max_spread * float(q[1]):
        return None
    z_near, z_far = float(q[0]) * cfg.near_margin, float(q[2]) * cfg.far_margin
    # what every camera sees between the two depths: its image corners at both
    tans = []
    for i in range(len(cams)):
        w, h = float(cams.width[i]), float(cams.height[i])
        px = torch.tensor([[0, 0], [w, 0], [0, h], [w, h]], dtype=torch.float64)
        d = unproject(px, cams.model, cams.params[i].double().expand(4, -1))
        wfc = invert_rigid(cams.cam_from_world[i].double())
        o_ref = transform_points(T, wfc[:, 3][None])[0]
        dirs = transform_points(T, transform_points(wfc, d)) - o_ref  # corner rays, ref frame
        for z in (z_near, z_far):
            s = (z - o_ref[2]) / dirs[:, 2].clamp(min=1e-6)
            hit = o_ref + s[:, None] * dirs
            tans.append(hit[:, :2] / z)
    tans = torch.cat(tans)
    lo, hi = tans.amin(0).float(), tans.amax(0).float()
    return ForwardFrustum(T.float(), lo, hi, z_near, z_far, float(q[1]))


__all__ = ["ForwardFacingConfig", "ForwardFrustum", "fit_forward_frustum"]
