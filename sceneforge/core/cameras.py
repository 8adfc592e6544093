"""Batched camera models, rigid transforms and per-pixel rays.

Conventions (everywhere in sceneforge):
- Camera frames are OpenCV: x right, y down, z forward. The BAL model is the one
  exception and is handled here explicitly (it looks down -z, see ``project``).
- Poses are named by what they map: ``cam_from_world`` (N, 3, 4) takes world
  points into the camera, ``world_from_cam`` is its inverse.
- Pixel coordinates follow COLMAP: the top-left pixel's centre is (0.5, 0.5).
- Intrinsics use COLMAP's model names and parameter order.

Conversions to other conventions (OpenGL, LLFF, BAL files, pycolmap's quaternion
order) live only in :mod:`sceneforge.core.conventions`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

#: Parameter names of each supported model, in COLMAP's order.
MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "BAL": ("f", "k1", "k2"),
}
#: Models ordered from least to most general (BAL is separate: it has no principal point).
_GENERALITY = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def num_params(model: str) -> int:
    """Number of intrinsic parameters of ``model``."""
    check_model(model)
    return len(MODEL_PARAMS[model])


def check_model(model: str) -> None:
    """Raise a ValueError naming the supported models if ``model`` is unknown."""
    if model not in MODEL_PARAMS:
        raise ValueError(f"unknown camera model {model!r}; supported: {sorted(MODEL_PARAMS)}")


def split_params(
    model: str, params: Float[Tensor, "*batch P"]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Float[Tensor, "*batch 4"]]:
    """Return ``fx, fy, cx, cy`` (each ``*batch``) and distortion ``(k1, k2, p1, p2)``."""
    check_model(model)
    if params.shape[-1] != len(MODEL_PARAMS[model]):
        raise ValueError(
            f"{model} takes {len(MODEL_PARAMS[model])} parameters "
            f"{MODEL_PARAMS[model]}, got {params.shape[-1]}"
        )
    p = params.unbind(-1)
    zero = torch.zeros_like(p[0])
    if model == "SIMPLE_PINHOLE":
        fx, fy, cx, cy, d = p[0], p[0], p[1], p[2], (zero, zero, zero, zero)
    elif model == "PINHOLE":
        fx, fy, cx, cy, d = p[0], p[1], p[2], p[3], (zero, zero, zero, zero)
    elif model == "SIMPLE_RADIAL":
        fx, fy, cx, cy, d = p[0], p[0], p[1], p[2], (p[3], zero, zero, zero)
    elif model == "RADIAL":
        fx, fy, cx, cy, d = p[0], p[0], p[1], p[2], (p[3], p[4], zero, zero)
    elif model == "OPENCV":
        fx, fy, cx, cy, d = p[0], p[1], p[2], p[3], (p[4], p[5], p[6], p[7])
    else:  # BAL
        fx, fy, cx, cy, d = p[0], p[0], zero, zero, (p[1], p[2], zero, zero)
    return fx, fy, cx, cy, torch.stack(d, dim=-1)


def convert_params(model: str, params: Float[Tensor, "*batch P"], to: str) -> Tensor:
    """Express ``params`` of ``model`` in the more general model ``to`` (exactly)."""
    check_model(to)
    if model == to:
        return params
    if model == "BAL" or to == "BAL" or _GENERALITY.index(to) < _GENERALITY.index(model):
        raise ValueError(f"cannot convert camera model {model} to {to} without loss")
    fx, fy, cx, cy, d = split_params(model, params)
    if to in ("SIMPLE_RADIAL", "RADIAL") and model == "PINHOLE" and not torch.equal(fx, fy):
        raise ValueError("PINHOLE with fx != fy cannot become a single-focal model")
    k1, k2, p1, p2 = d.unbind(-1)
    cols = {
        "PINHOLE": (fx, fy, cx, cy),
        "SIMPLE_RADIAL": (fx, cx, cy, k1),
        "RADIAL": (fx, cx, cy, k1, k2),
        "OPENCV": (fx, fy, cx, cy, k1, k2, p1, p2),
    }[to]
    return torch.stack(cols, dim=-1)


def most_general_model(models: list[str]) -> str:
    """The least general model that can express every model in ``models``."""
    for m in models:
        check_model(m)
    if any(m == "BAL" for m in models):
        if all(m == "BAL" for m in models):
            return "BAL"
        raise ValueError("BAL cameras cannot be mixed with other models")
    return max(models, key=_GENERALITY.index)


def intrinsics_matrix(model: str, params: Float[Tensor, "*batch P"]) -> Float[Tensor, "*batch 3 3"]:
    """Pinhole part ``K`` of the model (distortion dropped)."""
    fx, fy, cx, cy, _ = split_params(model, params)
    z, o = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, z, cx, z, fy, cy, z, z, o], dim=-1).reshape(*fx.shape, 3, 3)


def distort(
    xy: Float[Tensor, "*batch 2"], dist: Float[Tensor, "*batch 4"]
) -> Float[Tensor, "*batch 2"]:
    """Apply OpenCV-style distortion ``(k1, k2, p1, p2)`` to normalised coordinates."""
    x, y = xy.unbind(-1)
    k1, k2, p1, p2 = dist.unbind(-1)
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return torch.stack([xd, yd], dim=-1)


def undistort(
    xy_distorted: Float[Tensor, "*batch 2"],
    dist: Float[Tensor, "*batch 4"],
    num_iters: int = 20,
) -> Float[Tensor, "*batch 2"]:
    """Invert :func:`distort` by Gauss-Newton on the 2x2 system (converges in a few steps)."""
    xy = xy_distorted.clone()
    k1, k2, p1, p2 = dist.unbind(-1)
    for _ in range(num_iters):
        x, y = xy.unbind(-1)
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + k2 * r2)
        dradial = 2.0 * (k1 + 2.0 * k2 * r2)  # d radial / d r2 * 2
        res = distort(xy, dist) - xy_distorted
        j00 = radial + x * dradial * x + 2 * p1 * y + 6 * p2 * x
        j01 = x * dradial * y + 2 * p1 * x + 2 * p2 * y
        j10 = y * dradial * x + 2 * p1 * x + 2 * p2 * y
        j11 = radial + y * dradial * y + 6 * p1 * y + 2 * p2 * x
        det = j00 * j11 - j01 * j10
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        dx = (j11 * res[..., 0] - j01 * res[..., 1]) / det
        dy = (-j10 * res[..., 0] + j00 * res[..., 1]) / det
        xy = xy - torch.stack([dx, dy], dim=-1)
    return xy


def project(
    points_cam: Float[Tensor, "*batch 3"], model: str, params: Float[Tensor, "*batch P"]
) -> tuple[Float[Tensor, "*batch 2"], Float[Tensor, "*batch"]]:
    """Project camera-frame points to pixels; also return depth (positive in front).

    For ``BAL`` the camera looks down -z and ``p = -P[:2] / P[2]``, as in the BAL files.
    Points with depth <= 0 get finite but meaningless pixels: callers check ``depth``.
    """
    fx, fy, cx, cy, dist = split_params(model, params)
    # BAL looks down -z: p = -P[:2] / P[2] = P[:2] / depth with depth = -P[2].
    depth = -points_cam[..., 2] if model == "BAL" else points_cam[..., 2]
    xy = points_cam[..., :2] / depth[..., None]
    xy = distort(xy, dist)
    u = fx * xy[..., 0] + cx
    v = fy * xy[..., 1] + cy
    return torch.stack([u, v], dim=-1), depth


def unproject(
    pixels: Float[Tensor, "*batch 2"], model: str, params: Float[Tensor, "*batch P"]
) -> Float[Tensor, "*batch 3"]:
    """Back-project pixels to camera-frame points at depth 1 (``z = 1``; ``z = -1`` for BAL)."""
    fx, fy, cx, cy, dist = split_params(model, params)
    xy_d = torch.stack([(pixels[..., 0] - cx) / fx, (pixels[..., 1] - cy) / fy], dim=-1)
    xy = undistort(xy_d, dist) if bool((dist != 0).any()) else xy_d
    one = torch.ones_like(xy[..., :1])
    if model == "BAL":  # depth 1 in front of a camera looking down -z
        return torch.cat([xy, -one], dim=-1)
    return torch.cat([xy, one], dim=-1)


# ----------------------------------------------------------------------------- rigid transforms


def make_rigid(
    R: Float[Tensor, "*batch 3 3"], t: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 3 4"]:
    """Stack ``[R | t]``."""
    return torch.cat([R, t[..., None]], dim=-1)


def invert_rigid(T: Float[Tensor, "*batch 3 4"]) -> Float[Tensor, "*batch 3 4"]:
    """Inverse of a rigid transform: ``[R^T | -R^T t]``."""
    R, t = T[..., :3], T[..., 3]
    Rt = R.transpose(-1, -2)
    return make_rigid(Rt, -(Rt @ t[..., None])[..., 0])


def compose_rigid(
    A: Float[Tensor, "*batch 3 4"], B: Float[Tensor, "*batch 3 4"]
) -> Float[Tensor, "*batch 3 4"]:
    """``A ∘ B`` (apply B first), e.g. ``compose_rigid(cam_from_world, world_from_obj)``."""
    R = A[..., :3] @ B[..., :3]
    t = (A[..., :3] @ B[..., 3:])[..., 0] + A[..., 3]
    return make_rigid(R, t)


def transform_points(
    T: Float[Tensor, "*batch 3 4"], points: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 3"]:
    """Apply ``T`` to points: ``R p + t``. ``T`` broadcasts against ``points``."""
    return (T[..., :3] @ points[..., None])[..., 0] + T[..., 3]


def to_homogeneous(T: Float[Tensor, "*batch 3 4"]) -> Float[Tensor, "*batch 4 4"]:
    """Append the row ``[0, 0, 0, 1]``."""
    row = torch.zeros(*T.shape[:-2], 1, 4, dtype=T.dtype, device=T.device)
    row[..., 0, 3] = 1.0
    return torch.cat([T, row], dim=-2)


# ----------------------------------------------------------------------------- Cameras


@dataclass
class Cameras:
    """A batch of N cameras sharing one model (each with its own parameters and size).

    Attributes:
        model: COLMAP model name (see :data:`MODEL_PARAMS`).
        params: ``(N, P)`` intrinsics in the model's order.
        width: ``(N,)`` image widths in pixels.
        height: ``(N,)`` image heights in pixels.
        cam_from_world: ``(N, 3, 4)`` OpenCV extrinsics.
    """

    model: str
    params: Float[Tensor, "N P"]
    width: Int[Tensor, " N"]
    height: Int[Tensor, " N"]
    cam_from_world: Float[Tensor, "N 3 4"]

    def __post_init__(self) -> None:
        check_model(self.model)
        n = self.cam_from_world.shape[0]
        if self.params.ndim != 2 or self.params.shape != (n, num_params(self.model)):
            raise ValueError(
                f"{self.model} cameras need params of shape ({n}, {num_params(self.model)}), "
                f"got {tuple(self.params.shape)}"
            )
        if self.cam_from_world.shape[1:] != (3, 4):
            raise ValueError(
                f"cam_from_world must be (N, 3, 4), got {tuple(self.cam_from_world.shape)}"
            )
        if self.width.shape != (n,) or self.height.shape != (n,):
            raise ValueError("width and height must have one entry per camera")
        if not torch.isfinite(self.cam_from_world).all() or not torch.isfinite(self.params).all():
            bad = (~torch.isfinite(self.cam_from_world).flatten(1).all(1)) | (
                ~torch.isfinite(self.params).all(1)
            )
            raise ValueError(
                f"non-finite pose or intrinsics for camera(s) {bad.nonzero()[:, 0].tolist()}"
            )

    def __len__(self) -> int:
        return self.cam_from_world.shape[0]

    def __getitem__(self, idx) -> Cameras:
        if isinstance(idx, int):
            idx = [idx]
        return Cameras(
            self.model,
            self.params[idx],
            self.width[idx],
            self.height[idx],
            self.cam_from_world[idx],
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.cam_from_world.dtype

    @property
    def device(self) -> torch.device:
        return self.cam_from_world.device

    def to(self, device=None, dtype=None) -> Cameras:
        """Move/cast the float tensors (integer sizes only move)."""
        return Cameras(
            self.model,
            self.params.to(device=device, dtype=dtype),
            self.width.to(device=device),
            self.height.to(device=device),
            self.cam_from_world.to(device=device, dtype=dtype),
        )

    @property
    def world_from_cam(self) -> Float[Tensor, "N 3 4"]:
        return invert_rigid(self.cam_from_world)

    @property
    def centers(self) -> Float[Tensor, "N 3"]:
        """Camera centres in world coordinates."""
        return self.world_from_cam[..., 3]

    @property
    def K(self) -> Float[Tensor, "N 3 3"]:
        return intrinsics_matrix(self.model, self.params)

    def with_model(self, model: str) -> Cameras:
        """The same cameras expressed in a more general model."""
        return replace(self, model=model, params=convert_params(self.model, self.params, model))

    def with_poses(self, cam_from_world: Float[Tensor, "N 3 4"]) -> Cameras:
        return replace(self, cam_from_world=cam_from_world)

    def project(
        self, points_world: Float[Tensor, "N M 3"] | Float[Tensor, "M 3"]
    ) -> tuple[Float[Tensor, "N M 2"], Float[Tensor, "N M"]]:
        """Project world points into every camera; returns pixels and depths."""
        if points_world.ndim == 2:
            points_world = points_world.expand(len(self), -1, -1)
        pc = transform_points(self.cam_from_world[:, None], points_world)
        return project(pc, self.model, self.params[:, None])

    def rays(
        self, index: int, pixels: Float[Tensor, "R 2"] | None = None, downscale: int = 1
    ) -> tuple[Float[Tensor, "R 3"], Float[Tensor, "R 3"], Float[Tensor, " R"]]:
        """World-space rays of camera ``index``.

        Without ``pixels``, one ray per pixel centre in row-major order (at ``downscale``).
        Returns ``origins``, unit ``directions`` and ``z_per_t``: the camera-z depth per
        unit of ray length, so ``depth = t * z_per_t``.
        """
        if pixels is None:
            pixels = (
                pixel_centers(
                    int(self.height[index]) // downscale,
                    int(self.width[index]) // downscale,
                    dtype=self.dtype,
                    device=self.device,
                ).reshape(-1, 2)
                * downscale
            )
        d_cam = unproject(pixels, self.model, self.params[index].expand(pixels.shape[0], -1))
        norm = d_cam.norm(dim=-1, keepdim=True)
        z_per_t = (1.0 / norm)[..., 0]
        T = self.world_from_cam[index]
        directions = (T[:, :3] @ (d_cam / norm)[..., None])[..., 0]
        origins = T[:, 3].expand_as(directions)
        return origins, directions, z_per_t

    def rays_at(
        self, index: Int[Tensor, " R"], pixels: Float[Tensor, "R 2"]
    ) -> tuple[Float[Tensor, "R 3"], Float[Tensor, "R 3"], Float[Tensor, " R"]]:
        """World-space rays of camera ``index[r]`` through pixel ``pixels[r]`` (full-resolution
        pixel coordinates), with the maths of :meth:`rays`: ``origins``, unit ``directions``
        and ``z_per_t``. Computes only the requested rays (training batches)."""
        index = index.to(device=self.device, dtype=torch.long)
        d_cam = unproject(pixels, self.model, self.params[index])
        norm = d_cam.norm(dim=-1, keepdim=True)
        z_per_t = (1.0 / norm)[..., 0]
        T = invert_rigid(self.cam_from_world[index])
        directions = (T[:, :, :3] * (d_cam / norm)[:, None, :]).sum(-1)
        return T[:, :, 3], directions, z_per_t


def pixel_centers(
    height: int, width: int, dtype=torch.float32, device=None
) -> Float[Tensor, "H W 2"]:
    """Pixel centres ``(u, v)`` in COLMAP's convention (top-left centre at 0.5, 0.5)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def pixel_to_grid(
    xy: Float[Tensor, "*batch 2"], height: int, width: int
) -> Float[Tensor, "*batch 2"]:
    """COLMAP pixel positions ``(u, v)`` (image corner at 0, first centre at 0.5) to
    ``grid_sample``'s normalised coordinates with ``align_corners=False`` (-1 and 1 at the
    image's outer edges), so that sampling at :func:`pixel_centers` returns the pixels."""
    return torch.stack([xy[..., 0] / width * 2 - 1, xy[..., 1] / height * 2 - 1], dim=-1)


def undistort_image(
    image: Float[Tensor, "H W C"], model: str, params: Float[Tensor, " P"]
) -> tuple[Float[Tensor, "H W C"], Float[Tensor, "4"]]:
    """Resample a distorted image onto the PINHOLE camera with the same ``fx, fy, cx, cy``.

    Returns the undistorted image and the PINHOLE parameters, for consumers (fields,
    renderers) that only understand pinhole cameras.
    """
    fx, fy, cx, cy, dist = split_params(model, params)
    pinhole = torch.stack([fx, fy, cx, cy])
    if model == "BAL":
        raise ValueError("BAL cameras have no image; undistort their observations instead")
    h, w = image.shape[:2]
    grid = pixel_centers(h, w, dtype=params.dtype, device=params.device)
    xy = torch.stack([(grid[..., 0] - cx) / fx, (grid[..., 1] - cy) / fy], dim=-1)
    xy_d = distort(xy, dist.expand(h, w, 4))
    src = torch.stack([xy_d[..., 0] * fx + cx, xy_d[..., 1] * fy + cy], dim=-1)
    norm = pixel_to_grid(src, h, w)
    out = F.grid_sample(
        image.permute(2, 0, 1)[None].to(norm.dtype),
        norm[None],
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out[0].permute(1, 2, 0).to(image.dtype), pinhole
