"""The one boundary where other libraries' conventions become sceneforge's.

sceneforge is OpenCV inside (x right, y down, z forward; ``cam_from_world``;
quaternions ``wxyz``; COLMAP pixel centres). Everything here converts to or from:
- OpenGL / nerfstudio / instant-ngp cameras (x right, y up, z backward),
- LLFF ``poses_bounds.npy`` (``world_from_cam`` with columns down, right, back),
- BAL files (camera looking down -z, image y up),
- pycolmap's quaternion order (x, y, z, w).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sceneforge.core.cameras import invert_rigid

_FLIP_YZ = (1.0, -1.0, -1.0)


def _flip(dtype, device) -> Tensor:
    return torch.tensor(_FLIP_YZ, dtype=dtype, device=device)


def opengl_to_opencv_world_from_cam(
    world_from_cam_gl: Float[Tensor, "*batch 3 4"],
) -> Float[Tensor, "*batch 3 4"]:
    """OpenGL camera axes (right, up, back) to OpenCV (right, down, forward); same centre."""
    out = world_from_cam_gl.clone()
    out[..., :3] = out[..., :3] * _flip(out.dtype, out.device)
    return out


def opencv_to_opengl_world_from_cam(
    world_from_cam_cv: Float[Tensor, "*batch 3 4"],
) -> Float[Tensor, "*batch 3 4"]:
    """Inverse of :func:`opengl_to_opencv_world_from_cam` (the flip is its own inverse)."""
    return opengl_to_opencv_world_from_cam(world_from_cam_cv)


def llff_to_opencv(
    poses: Float[Tensor, "N 3 5"],
) -> tuple[Float[Tensor, "N 3 4"], Float[Tensor, "N 3"]]:
    """LLFF ``[R | t | (h, w, f)]`` (world_from_cam, columns down-right-back) to OpenCV.

    Returns OpenCV ``cam_from_world`` and ``hwf``.
    """
    down, right, back, t = poses[..., 0], poses[..., 1], poses[..., 2], poses[..., 3]
    world_from_cam = torch.stack([right, down, -back, t], dim=-1)
    return invert_rigid(world_from_cam), poses[..., 4]


def opencv_to_llff(
    cam_from_world: Float[Tensor, "N 3 4"], hwf: Float[Tensor, "N 3"]
) -> Float[Tensor, "N 3 5"]:
    """OpenCV ``cam_from_world`` and ``(h, w, f)`` to LLFF 3x5 poses."""
    wfc = invert_rigid(cam_from_world)
    right, down, fwd, t = wfc[..., 0], wfc[..., 1], wfc[..., 2], wfc[..., 3]
    return torch.stack([down, right, -fwd, t, hwf], dim=-1)


def bal_to_opencv(
    cam_from_world_bal: Float[Tensor, "N 3 4"],
    params_bal: Float[Tensor, "N 3"],
    observations: Float[Tensor, "M 2"],
) -> tuple[Float[Tensor, "N 3 4"], Float[Tensor, "N 5"], Float[Tensor, "M 2"]]:
    """BAL cameras/observations to OpenCV ``cam_from_world``, RADIAL params and pixels.

    With ``F = diag(1, -1, -1)``: ``R' = F R``, ``t' = F t``, RADIAL ``[f, 0, 0, k1, k2]``,
    observation ``(x, -y)``. Reprojection residuals are identical up to the y sign.
    """
    f = _flip(cam_from_world_bal.dtype, cam_from_world_bal.device)
    cfw = cam_from_world_bal * f[:, None]
    zero = torch.zeros_like(params_bal[:, :1])
    radial = torch.cat([params_bal[:, :1], zero, zero, params_bal[:, 1:]], dim=-1)
    obs = observations * torch.tensor(
        [1.0, -1.0], dtype=observations.dtype, device=observations.device
    )
    return cfw, radial, obs


def opencv_to_bal(
    cam_from_world: Float[Tensor, "N 3 4"],
    params_radial: Float[Tensor, "N 5"],
    observations: Float[Tensor, "M 2"],
) -> tuple[Float[Tensor, "N 3 4"], Float[Tensor, "N 3"], Float[Tensor, "M 2"]]:
    """Inverse of :func:`bal_to_opencv`; the RADIAL principal point must be (0, 0)."""
    if bool((params_radial[:, 1:3] != 0).any()):
        raise ValueError(
            "BAL cameras have their principal point at (0, 0); shift observations first"
        )
    f = _flip(cam_from_world.dtype, cam_from_world.device)
    params = torch.cat([params_radial[:, :1], params_radial[:, 3:]], dim=-1)
    obs = observations * torch.tensor(
        [1.0, -1.0], dtype=observations.dtype, device=observations.device
    )
    return cam_from_world * f[:, None], params, obs


def quat_xyzw_to_wxyz(q: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 4"]:
    """pycolmap / scipy order (x, y, z, w) to sceneforge's (w, x, y, z)."""
    return torch.cat([q[..., 3:], q[..., :3]], dim=-1)


def quat_wxyz_to_xyzw(q: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 4"]:
    """sceneforge's (w, x, y, z) to pycolmap / scipy order (x, y, z, w)."""
    return torch.cat([q[..., 1:], q[..., :1]], dim=-1)
