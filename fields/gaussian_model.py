"""3D Gaussian splatting as a :class:`~sceneforge.fields.scene_model.SceneModel`.

Parameters follow 3DGS / gsplat: ``means``, ``quats`` (wxyz, unnormalised), ``scales`` (log),
``opacities`` (logits), ``sh0`` / ``shN`` (spherical-harmonics colour, degree raised every
``sh_degree_interval`` steps up to ``sh_degree``). Training renders whole views (or patches:
the camera's principal point shifted to the patch) with :func:`~sceneforge.fields.splatting.
render_gaussians` — gsplat's CUDA rasterizer on CUDA, our torch rasterizer on CPU — and
densifies with the 3DGS rules (:mod:`sceneforge.fields.densify`) after each optimiser step.
Initialised from the scene's sparse points (SfM / COLMAP ``points3D``), or uniformly in the
scene box when it has none.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from sceneforge.core.cameras import Cameras, to_homogeneous
from sceneforge.fields.datasets import RayBatch
from sceneforge.fields.densify import Densifier, DensifyConfig
from sceneforge.fields.distributed import SINGLE, DistContext
from sceneforge.fields.field import SceneBox
from sceneforge.fields.mcmc import MCMCConfig, MCMCStrategy, mcmc_regularizers
from sceneforge.fields.rendering import background_color
from sceneforge.fields.scene_model import (
    ModelContext,
    SceneModel,
    learned_background,
)
from sceneforge.fields.splatting import render_gaussians

SH_C0 = 0.28209479177387814
"""The degree-0 spherical-harmonics basis constant (colour = SH_C0 * sh0 + 0.5)."""

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")


@dataclass
class GaussiansConfig:
    """3D Gaussian model settings (``--trainer.gaussians.*``)."""

    sh_degree: int = 3
    """Highest spherical-harmonics degree of the colours (0-3)."""
    sh_degree_interval: int = 1000
    """Steps between raising the active SH degree by one (3DGS: 1000)."""
    init: Literal["auto", "points", "random", "ply"] = "auto"
    """Start from the scene's sparse points, uniformly in the scene box, from a 3DGS PLY
    (``ply``), or ``auto`` (points when the scene has at least 100, else random)."""
    ply: str | None = None
    """The 3DGS PLY to start from with ``init ply`` (ours or another 3DGS tool's export)."""
    num_random: int = 20_000
    """Gaussians of a random initialisation."""
    init_opacity: float | None = None
    """Initial opacity (None: 0.1 with the default strategy, 0.5 with mcmc, as gsplat's
    presets)."""
    init_scale: float | None = None
    """Initial scale = this x the mean distance to the 3 nearest initial points (None: 1.0,
    or 0.1 with mcmc)."""
    means_lr: float = 1.6e-4
    """Learning rate of the means (times the scene scale), decayed to 1% at ``max_steps``."""
    scales_lr: float = 5e-3
    """Learning rate of the log scales."""
    quats_lr: float = 1e-3
    """Learning rate of the rotations."""
    opacities_lr: float = 5e-2
    """Learning rate of the opacity logits."""
    sh0_lr: float = 2.5e-3
    """Learning rate of the DC colour."""
    shN_lr: float = 2.5e-3 / 20
    """Learning rate of the higher SH bands."""
    backend: Literal["auto", "torch", "gsplat"] = "auto"
    """Rasterizer: gsplat's CUDA kernels, our torch one, or ``auto`` (gsplat on CUDA)."""
    antialiased: bool = False
    """Mip-splatting's antialiased rasterization (opacity compensation)."""
    strategy: Literal["default", "mcmc"] = "default"
    """How the set changes: 3DGS's clone / split / prune / opacity reset (``default``) or
    3DGS-MCMC's relocation, growth to ``mcmc.cap_max`` and position noise (``mcmc``)."""
    densify: DensifyConfig = dataclasses.field(default_factory=DensifyConfig)
    """The default strategy's adaptive density control."""
    mcmc: MCMCConfig = dataclasses.field(default_factory=MCMCConfig)
    """The mcmc strategy's settings (its opacity / scale L1 losses included)."""

    def resolved(self) -> GaussiansConfig:
        """A copy with the strategy-dependent ``None`` defaults written out."""
        mcmc = self.strategy == "mcmc"
        return dataclasses.replace(
            self,
            init_opacity=(0.5 if mcmc else 0.1) if self.init_opacity is None else self.init_opacity,
            init_scale=(0.1 if mcmc else 1.0) if self.init_scale is None else self.init_scale,
        )


def init_from_points(
    points: Tensor, colors: Tensor | None, cfg: GaussiansConfig
) -> dict[str, Tensor]:
    """Initial parameters at ``points`` (``M 3``) with ``colors`` (``M 3`` in [0, 1] or None)."""
    n = points.shape[0]
    pts = points.double()
    dist = torch.empty(n, dtype=torch.float64)
    for s in range(0, n, 4096):  # mean distance to the 3 nearest other points, in chunks
        d = torch.cdist(pts[s : s + 4096], pts)
        k = min(4, n)
        dist[s : s + 4096] = d.topk(k, largest=False).values[:, 1:].mean(-1) if k > 1 else 1.0
    scale = (dist.clamp(min=1e-7) * cfg.init_scale).float()
    rgb = torch.full((n, 3), 0.5) if colors is None else colors.float()
    k = (cfg.sh_degree + 1) ** 2
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return {
        "means": points.float().clone(),
        "quats": quats,
        "scales": scale.log()[:, None].expand(n, 3).clone(),
        "opacities": torch.full((n,), math.log(cfg.init_opacity / (1 - cfg.init_opacity))),
        "sh0": ((rgb - 0.5) / SH_C0)[:, None, :],
        "shN": torch.zeros(n, k - 1, 3),
    }


def camera_matrices(cameras: Cameras, index: int) -> tuple[Tensor, Tensor]:
    """``(cam_from_world 4x4, K 3x3)`` float32 of an undistorted pinhole camera (a clear error
    for models with distortion: Gaussians are rasterized with a pinhole projection)."""
    model = cameras.model
    if model not in PINHOLE_MODELS:
        extra = cameras.params[index, 3 if model.startswith("SIMPLE") else 4 :]
        if bool((extra != 0).any()):
            raise ValueError(
                f"Gaussians need undistorted pinhole cameras; this scene's are {model} with "
                f"distortion {extra.tolist()}: undistort the images first (COLMAP image_undistorter)"
            )
    T = to_homogeneous(cameras.cam_from_world[index]).float()
    return T, cameras.K[index].float()


class GaussianModel(SceneModel):
    """3D Gaussians (see the module docstring)."""

    name = "gaussians"
    batch_kind = "images"
    needs_pinhole = True
    dist: DistContext = SINGLE
    """The trainer's data-parallel context (set by the trainer): under several ranks the
    densification statistics of every rank's views are gathered, so every rank decides alike."""

    def __init__(self, cfg: GaussiansConfig, ctx: ModelContext) -> None:
        super().__init__()
        cfg = cfg.resolved()
        if not 0 <= cfg.sh_degree <= 3:
            raise ValueError(f"gaussians.sh_degree must be 0..3, got {cfg.sh_degree}")
        self.cfg, self.render_cfg = cfg, ctx.render
        self.cameras = ctx.train_cameras
        self.box = ctx.box
        centers = self.cameras.centers.double()
        self.scene_scale = float((centers - centers.mean(0)).norm(dim=-1).max()) * 1.1 or 1.0
        scene = ctx.scene
        use_points = cfg.init == "points" or (
            cfg.init == "auto" and scene.points is not None and scene.points.shape[0] >= 100
        )
        if cfg.init == "ply":
            params = self._ply_init()
        elif use_points:
            if scene.points is None or scene.points.shape[0] == 0:
                raise ValueError(
                    "gaussians.init points: the scene has no sparse points (run reconstruct, or "
                    "use --trainer.gaussians.init random)"
                )
            cols = None if scene.point_colors is None else scene.point_colors.float() / 255.0
            params = init_from_points(scene.points, cols, cfg)
        else:
            params = self._random_init(ctx)
        self.params = nn.ParameterDict(
            {k: nn.Parameter(v.to(ctx.device)) for k, v in params.items()}
        )
        self.bg_param = learned_background(ctx)
        self.strategy = MCMCStrategy(cfg.mcmc) if cfg.strategy == "mcmc" else Densifier(cfg.densify)
        self._step = 0
        self._last: dict | None = None

    def _ply_init(self) -> dict[str, Tensor]:
        from sceneforge.fields.gaussian_ply import read_gaussian_ply

        if not self.cfg.ply:
            raise ValueError("gaussians.init ply needs --trainer.gaussians.ply PATH")
        g = read_gaussian_ply(self.cfg.ply)
        k = (self.cfg.sh_degree + 1) ** 2 - 1
        shN = g.shN[:, :k]
        if shN.shape[1] < k:  # a lower-degree file: the missing bands start at zero
            shN = torch.cat([shN, torch.zeros(shN.shape[0], k - shN.shape[1], 3)], 1)
        return {
            "means": g.means,
            "quats": g.quats_wxyz,
            "scales": g.log_scales,
            "opacities": g.opacity_logits.reshape(-1),
            "sh0": g.sh0,
            "shN": shN,
        }

    def _random_init(self, ctx: ModelContext) -> dict[str, Tensor]:
        """``num_random`` points uniform in the bounded scene box — inside the masks' visual
        hull for object captures — coloured by the training images they project into."""
        box = ctx.box
        if box.contract:
            raise ValueError(
                "gaussians without sparse points need a bounded scene box: give the scene points "
                "(reconstruct), an aabb, or --trainer.scene-box bounded / masks"
            )
        g = torch.Generator().manual_seed(ctx.seed)
        lo, hi = box.aabb[0].float(), box.aabb[1].float()
        n = self.cfg.num_random
        pts = lo + (hi - lo) * torch.rand(n, 3, generator=g)
        if ctx.object_masks:
            from sceneforge.fields.masks import in_visual_hull

            scene, idx = ctx.scene, ctx.dataset.indices
            masks = [scene.load_mask(i) for i in idx]
            kept = []
            for _ in range(20):  # rejection sampling into the hull (most of the box is empty)
                cand = lo + (hi - lo) * torch.rand(8 * n, 3, generator=g)
                kept.append(cand[in_visual_hull(scene.cameras[idx], masks, cand)])
                if sum(k.shape[0] for k in kept) >= n:
                    break
            inside = torch.cat(kept)
            if inside.shape[0] > 0:
                pts = inside[:n]
        return init_from_points(pts, self._observed_colors(pts, ctx), self.cfg)

    @staticmethod
    def _observed_colors(pts: Tensor, ctx: ModelContext) -> Tensor:
        """Mean colour of the training pixels the points project into (grey where unseen)."""
        cams, ds = ctx.train_cameras, ctx.dataset
        total, count = torch.zeros(pts.shape[0], 3), torch.zeros(pts.shape[0])
        for j in range(len(ds)):
            img = ds.image(j)
            uv, z = cams[[j]].project(pts.to(cams.dtype))
            col, row = uv[0, :, 0].long(), uv[0, :, 1].long()
            ok = (z[0] > 0) & (col >= 0) & (col < img.shape[1]) & (row >= 0) & (row < img.shape[0])
            total[ok] += img[row[ok], col[ok]]
            count += ok.float()
        return torch.where(count[:, None] > 0, total / count.clamp(min=1)[:, None], 0.5)

    # -- the seam ------------------------------------------------------------------------------

    @property
    def scene_box(self) -> SceneBox:
        return self.box

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def sh_degree_now(self) -> int:
        return min(self.cfg.sh_degree, self._step // max(self.cfg.sh_degree_interval, 1))

    @property
    def rasterizer(self) -> str:
        """The rasterizer in use: ``gsplat`` (CUDA kernels) or ``torch``."""
        if self.cfg.backend != "auto":
            return self.cfg.backend
        from sceneforge.fields.splatting import gsplat_available

        return "gsplat" if self.params["means"].is_cuda and gsplat_available() else "torch"

    @property
    def background(self) -> Tensor | None:
        bg = background_color(self.render_cfg.background, self.bg_param)
        return None if bg is None else bg.to(self.bg_param.device)

    def param_groups(self) -> list[dict]:
        c = self.cfg
        lrs = {
            "means": (c.means_lr * self.scene_scale, 0.01),
            "scales": (c.scales_lr, 1.0),
            "quats": (c.quats_lr, 1.0),
            "opacities": (c.opacities_lr, 1.0),
            "sh0": (c.sh0_lr, 1.0),
            "shN": (c.shN_lr, 1.0),
        }
        groups = [
            {"name": k, "params": [self.params[k]], "lr": lr, "final_factor": f}
            for k, (lr, f) in lrs.items()
        ]
        if self.render_cfg.background == "learned":
            groups.append({"name": "background", "params": [self.bg_param], "lr": 1e-2})
        return groups

    def before_step(self, step: int, generator: torch.Generator) -> None:
        self._step = step

    def regularizers(self, batch: RayBatch, out: dict, step: int) -> dict[str, Tensor]:
        if self.cfg.strategy != "mcmc":
            return {}
        return mcmc_regularizers(self.cfg.mcmc, self.params["opacities"], self.params["scales"])

    def resolved_config(self, cfg: GaussiansConfig) -> GaussiansConfig:
        """The strategy-dependent initial opacity and scale written out (as built)."""
        return self.cfg

    def _render(
        self, T: Tensor, K: Tensor, width: int, height: int, keep_means2d: bool
    ) -> dict[str, Tensor]:
        p = self.params
        dev = p["means"].device
        return render_gaussians(
            p["means"],
            p["quats"],
            p["scales"].exp(),
            torch.sigmoid(p["opacities"]),
            self._colors(T.to(dev)),
            T.to(dev),
            K.to(dev),
            width,
            height,
            background=self.background,
            backend=self.cfg.backend,
            antialiased=self.cfg.antialiased,
            retain_means2d=keep_means2d,
        )

    def _colors(self, cam_from_world: Tensor) -> Tensor:
        from sceneforge.fields.splatting import sh_to_rgb

        p = self.params
        degree = self.sh_degree_now
        sh = torch.cat([p["sh0"], p["shN"]], 1)[:, : (degree + 1) ** 2]
        R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
        center = -R.T @ t
        dirs = torch.nn.functional.normalize(p["means"] - center, dim=-1)
        return sh_to_rgb(sh, dirs, degree)

    def train_outputs(self, batch: RayBatch, generator: torch.Generator | None) -> dict:
        lay = batch.patches
        if lay is None:
            raise ValueError(
                "the gaussians model renders whole views or patches, not independent rays: use "
                "--trainer.batch images (the default) or patches"
            )
        outs: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "accumulation": []}
        self._last = {"means2d": [], "radii": [], "size": (lay.width, lay.height)}
        for k in range(lay.view.shape[0]):
            T, K = camera_matrices(self.cameras, int(lay.view[k]))
            K = K.clone()
            K[0, 2] -= float(lay.x0[k])
            K[1, 2] -= float(lay.y0[k])
            r = self._render(T, K, lay.width, lay.height, self.strategy.needs_grad2d)
            outs["rgb"].append(r["rgb"].reshape(-1, 3))
            outs["depth"].append(r["depth"].reshape(-1))
            outs["accumulation"].append(r["alpha"].reshape(-1))
            self._last["means2d"].append(r["means2d"])
            self._last["radii"].append(r["radii"])
        res = {k: torch.cat(v) for k, v in outs.items()}
        res["num_samples"] = torch.tensor(self.num_gaussians * lay.view.shape[0])
        return res

    def after_step(
        self, step: int, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> None:
        last, self._last = self._last, None
        if last is None:
            return
        w, h = last["size"]
        if self.strategy.needs_grad2d:
            grads = [m.grad if m.grad is not None else torch.zeros_like(m) for m in last["means2d"]]
            # one call for the batch's C views: the statistics undo the loss' mean over them (xC);
            # data parallel: every rank's views in rank order, i.e. the global batch's
            grads, radii = torch.stack(grads), torch.stack(last["radii"])
            grads, radii = self.dist.gather_rows(grads), self.dist.gather_rows(radii)
            self.strategy.update_stats(grads, radii, w, h)
        self.strategy.step(step, self.params, optimizer, self.scene_scale, generator)

    def stats(self) -> dict[str, float]:
        return {"num_gaussians": float(self.num_gaussians), "sh_degree": float(self.sh_degree_now)}

    def describe(self) -> dict:
        return {
            "num_gaussians": self.num_gaussians,
            "strategy": self.cfg.strategy,
            "sh_degree": self.cfg.sh_degree,
            "rasterizer": self.rasterizer,
        }

    @torch.no_grad()
    def render_camera(
        self, cameras: Cameras, index: int, downscale: int = 1, image_idx: int = -1
    ) -> dict[str, Tensor]:
        T, K = camera_matrices(cameras, index)
        K = K.clone()
        K[:2] /= downscale
        h, w = int(cameras.height[index]) // downscale, int(cameras.width[index]) // downscale
        r = self._render(T, K, w, h, keep_means2d=False)
        return {
            "rgb": r["rgb"].clamp(0, 1).cpu(),
            "depth": r["depth"].cpu(),
            "accumulation": r["alpha"].cpu(),
            "num_samples": torch.tensor(self.num_gaussians),
        }

    # -- state: the number of Gaussians changes while training -------------------------------

    def get_extra_state(self) -> dict:
        return {"densifier": self.strategy.state_dict(), "step": self._step}

    def set_extra_state(self, state: dict) -> None:
        self.strategy.load_state_dict(state["densifier"])
        self._step = int(state["step"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        for k in list(self.params.keys()):
            v = state_dict.get(f"params.{k}")
            if v is not None and v.shape != self.params[k].shape:
                dev = self.params[k].device
                self.params[k] = nn.Parameter(torch.empty_like(v, device=dev))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def export(self, out_dir: Path, config, trainer, progress=None) -> dict:
        from sceneforge.fields.export import export_gaussians

        return export_gaussians(trainer, out_dir, config, progress)


__all__ = [
    "GaussianModel",
    "GaussiansConfig",
    "SH_C0",
    "camera_matrices",
    "init_from_points",
]
