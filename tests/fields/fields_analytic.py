"""Helpers for field tests: a tiny analytic scene (textured sphere, exact images and depth),
the quiet bounded-box trainer set-up the turntable tests share and a tiny NeRF trainer."""

from __future__ import annotations

import math

import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData
from sceneforge.fields.encodings import TriPlaneConfig
from sceneforge.fields.field import FieldConfig
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import TrainerConfig


def turntable_config(max_steps: int, **kw) -> TrainerConfig:
    """Trainer for the synthetic turntable: 1024 rays per step, the box from the scene's
    sparse points, the masks not used (the synthetic masks mark objects, not unusable
    pixels), no progress bar or tensorboard."""
    return TrainerConfig(
        max_steps=max_steps,
        batch_rays=1024,
        scene_box="bounded",
        use_masks=False,
        progress=False,
        tensorboard=False,
        **kw,
    )


def tiny_nerf_config(**kw) -> TrainerConfig:
    """A quiet CPU trainer with a tiny NeRF (16-32 tri-plane, 32^3 density grid, 32 samples):
    40 steps of 256 rays unless ``kw`` says otherwise (the camera-refinement tests)."""
    kw = {"max_steps": 40, "batch_rays": 256, **kw}
    return TrainerConfig(
        progress=False,
        tensorboard=False,
        device="cpu",
        checkpoint_every=0,
        num_threads=1,
        nerf=NerfConfig(
            field=FieldConfig(
                triplane=TriPlaneConfig(resolutions=(16, 32), features=4),
                density_grid_resolution=32,
                hidden_dim=16,
                color_hidden_dim=16,
                sh_degree=2,
            ),
            sampler=SamplerConfig(num_samples=32, grid_resolution=16, grid_update_every=8),
        ),
        **kw,
    )


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV ``cam_from_world`` looking from ``eye`` at ``target`` (image y down = -up)."""
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(
        torch.linalg.cross(z, torch.tensor(up, dtype=eye.dtype)), dim=0
    )
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world
    return torch.cat([R, (-R @ eye)[:, None]], dim=1)


def sphere_color(p: torch.Tensor) -> torch.Tensor:
    """Smooth procedural texture on the unit sphere."""
    return 0.5 + 0.4 * torch.stack(
        [torch.sin(3 * p[..., 0] + 1), torch.sin(3 * p[..., 1] + 2), torch.cos(3 * p[..., 2])], -1
    )


def sphere_scene(
    n_views: int = 24, size: int = 64, radius: float = 3.0, background: float = 0.0
) -> SceneData:
    """Turntable views of a unit sphere at the origin with analytic RGB and z-depth."""
    f = size * 1.2
    params, poses, images, depths = [], [], [], []
    for k in range(n_views):
        a = 2 * math.pi * k / n_views
        elev = 0.3 * math.sin(3 * a)
        eye = radius * torch.tensor(
            [math.cos(a) * math.cos(elev), math.sin(a) * math.cos(elev), math.sin(elev)]
        )
        T = look_at(eye, torch.zeros(3))
        params.append(torch.tensor([f, f, size / 2, size / 2]))
        poses.append(T)
    cams = Cameras(
        "PINHOLE",
        torch.stack(params),
        torch.full((n_views,), size),
        torch.full((n_views,), size),
        torch.stack(poses),
    )
    for k in range(n_views):
        o, d, z = cams.rays(k)
        b = (o * d).sum(-1)
        c = (o * o).sum(-1) - 1.0
        disc = b * b - c
        hit = disc > 0
        t = -b - disc.clamp(min=0).sqrt()
        p = o + t[:, None] * d
        col = torch.where(hit[:, None], sphere_color(p), torch.full_like(p, background))
        images.append((col.clamp(0, 1).view(size, size, 3) * 255 + 0.5).to(torch.uint8))
        depths.append(torch.where(hit, t * z, torch.zeros_like(t)).view(size, size))
    return SceneData(
        cameras=cams,
        image_names=[f"view_{k:03d}.png" for k in range(n_views)],
        images=images,
        depths=depths,
        metadata={"aabb": [[-1.2, -1.2, -1.2], [1.2, 1.2, 1.2]]},
    )
