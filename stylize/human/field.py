"""The 4D human model (issue 20) on the scene-model seam: ``human4d``.

A body model maps each frame's person from observation space into one shared canonical space
(:func:`~.canonical.canonicalize`: inverse LBS with weights from the canonical skinning grid, a
learned non-rigid residual, points outside the grid's band = not human). There a
geometry-guided tri-plane field (:class:`CanonicalHumanField`: tri-plane features + a
positional encoding of the canonical point; density ``max_density * sigmoid(-(sdf + dsdf) /
eps)``, started from the body's signed distance with ``dsdf = 0``) holds the person; a
:class:`~sceneforge.fields.field.RadianceField` holds the background. Each ray gets human
samples inside the posed body's padded bounding box and background samples over the scene
box; both sets are merged by depth and composited by volume rendering (colour, optional feature
channels, depth, accumulation, and the person mask = the human samples' total weight). Feature
channels (``field.num_feature_channels``, off by default) come from the human field (its MLP's
extra outputs, or with ``field.feature_hidden_dim`` a separate feature MLP) and, with
``background_features``, from a small feature field over the scene box for the background's
samples (without it the background's features are zero).

Per-view conditioning: a training ray's ``image_idx`` -> its scene image -> its frame (from
``scene.metadata["human"]["frame"]``) -> that frame's body parameters (``pose`` / ``transl``
parameters, started at the given fits and refined with ``body_lr`` > 0) and frame code (the
non-rigid residual's input). :meth:`Human4DModel.render_camera` renders training frames,
any frame from new cameras, and new poses (``pose`` / ``transl`` overrides).

Fits: ``scene.metadata["human"]`` = ``{"frame": [one int per scene image], "pose": [F, J, 3]
axis-angle, "transl": [F, 3], "shape": [S] (optional)}``. The model's settings ride in the
trainer config's ``human4d`` section (:class:`HumanTrainerConfig` adds it); importing this module registers ``human4d`` in
:data:`~sceneforge.fields.scene_model.MODELS` and its config class in
:data:`~sceneforge.fields.trainer_config.CONFIG_CLASSES` (:func:`register`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sceneforge.core.atomic import atomic_open
from sceneforge.core.cameras import Cameras
from sceneforge.fields.datasets import RayBatch
from sceneforge.fields.encodings import FrequencyEncoding, TriPlaneConfig, TriPlaneEncoding
from sceneforge.fields.field import FieldConfig, RadianceField, SceneBox
from sceneforge.fields.rendering import background_color, composite, render_weights
from sceneforge.fields.sampling import SamplerConfig, ray_aabb, ray_intervals
from sceneforge.fields.scene_model import (
    MODELS,
    ModelContext,
    SceneModel,
    learned_background,
    reshape_image,
)
from sceneforge.fields.trainer_config import CONFIG_CLASSES, TrainerConfig

from .body_model import BodyModel
from .canonical import NonRigidResidual, canonicalize, signed_distance
from .skinning_grid import SkinningGrid


@dataclass
class HumanFieldConfig:
    """The canonical human field (geometry-guided tri-plane)."""

    triplane: TriPlaneConfig = field(
        default_factory=lambda: TriPlaneConfig(resolutions=(32, 64), features=8)
    )
    """Tri-plane levels over the canonical grid box."""
    num_frequencies: int = 6
    """Positional-encoding frequencies of the canonical coordinate."""
    hidden_dim: int = 64
    """MLP width."""
    num_feature_channels: int = 0
    """Extra feature channels rendered beside the colour."""
    feature_hidden_dim: int = 0
    """0: the features are extra outputs of the density/colour MLP; > 0: a separate feature MLP
    of this width on the same inputs (trainable with geometry and colour frozen)."""
    max_density: float = 200.0
    """Density deep inside the body."""
    sdf_eps: float = 0.01
    """Width (metres) of the density's transition at the surface."""
    sdf_residual_scale: float = 0.01
    """Metres per unit of the MLP's signed-distance correction (keeps Adam's steps small)."""


@dataclass
class Human4DConfig:
    """4D human model settings (the trainer config's ``human4d`` section)."""

    body_model: str = "smpl"
    """``smpl`` (an SMPL/SMPL-X file at ``body_model_path``) or ``anny``."""
    body_model_path: str = ""
    """Folder or file of the SMPL-format model (``smpl``)."""
    grid_resolution: int = 64
    """Skinning-grid points along the longest side of the canonical box."""
    band: float = 0.05
    """Samples farther than this from the canonical body are not human (metres)."""
    iterations: int = 6
    """Fixed-point iterations of the observation -> canonical mapping."""
    human_samples: int = 48
    """Samples per ray inside the posed body's box."""
    background_samples: int = 48
    """Samples per ray of the background field."""
    lr: float = 1e-2
    """Adam learning rate of the human field, residual and frame codes."""
    background_lr: float = 1e-2
    """Adam learning rate of the background field (and the learned background colour)."""
    body_lr: float = 0.0
    """Learning rate of the per-frame pose / translation (0 = the fits stay fixed)."""
    frame_code_dim: int = 8
    """Per-frame code of the non-rigid residual."""
    nonrigid: bool = True
    """Learn the non-rigid residual."""
    nonrigid_weight: float = 1.0
    """Weight of the residual's mean squared offset (metres^2)."""
    chunk_rays: int = 4096
    """Rays per chunk when rendering images."""
    field: HumanFieldConfig = dataclasses.field(default_factory=HumanFieldConfig)
    """Canonical human field."""
    background: FieldConfig = dataclasses.field(
        default_factory=lambda: FieldConfig(
            encoding="triplane",
            triplane=TriPlaneConfig(resolutions=(32, 64), features=8),
            density="mlp",
            hidden_dim=32,
            color_hidden_dim=32,
            sh_degree=2,
        )
    )
    """Background radiance field."""
    background_features: bool = False
    """With ``field.num_feature_channels`` > 0: background samples get feature channels from
    a small feature field over the scene box (:class:`SceneFeatureField`); False: zero."""
    background_feature_triplane: TriPlaneConfig = dataclasses.field(
        default_factory=lambda: TriPlaneConfig(resolutions=(16, 32), features=8)
    )
    """Tri-plane levels of the background's feature field."""
    background_feature_hidden_dim: int = 32
    """MLP width of the background's feature field."""


@dataclass
class HumanTrainerConfig(TrainerConfig):
    """The trainer's settings with a ``human4d`` section (``model`` defaults to it)."""

    model: str = "human4d"  # type: ignore[assignment]
    """Scene model."""
    human4d: Human4DConfig = dataclasses.field(default_factory=Human4DConfig)
    """4D human model settings."""


def register() -> None:
    """Add ``human4d`` to the scene-model registry and its config class to the trainer-config
    registry (idempotent)."""
    MODELS.setdefault("human4d", "sceneforge.stylize.human.field:Human4DModel")
    CONFIG_CLASSES.setdefault("human4d", "sceneforge.stylize.human.field:HumanTrainerConfig")


def build_body_model(cfg: Human4DConfig) -> BodyModel:
    """The configured body model (float32)."""
    if cfg.body_model == "smpl":
        from .smpl_model import SMPLModel

        if not cfg.body_model_path:
            raise ValueError("human4d: body_model smpl needs body_model_path (your SMPL file)")
        return SMPLModel.from_path(cfg.body_model_path)
    if cfg.body_model == "anny":
        from .anny_model import AnnyModel

        return AnnyModel()
    raise ValueError(f"human4d: unknown body_model {cfg.body_model!r}; use smpl or anny")


class CanonicalHumanField(nn.Module):
    """Density, colour (+ features) of canonical points: tri-plane + positional encoding, the
    density guided by the canonical body's signed distance (see the module docstring)."""

    def __init__(self, cfg: HumanFieldConfig, grid: SkinningGrid) -> None:
        super().__init__()
        self.cfg, self.grid = cfg, grid
        hi = grid.origin + grid.voxel * (torch.tensor(grid.shape, dtype=torch.float64) - 1)
        self.register_buffer("box", torch.stack([grid.origin, hi]).float())
        self.triplane = TriPlaneEncoding(cfg.triplane)
        self.posenc = FrequencyEncoding(3, cfg.num_frequencies)
        separate = cfg.num_feature_channels > 0 and cfg.feature_hidden_dim > 0
        n_out = 1 + 3 + (0 if separate else cfg.num_feature_channels)
        n_in = self.triplane.out_dim + self.posenc.out_dim
        self.mlp = _mlp(n_in, cfg.hidden_dim, n_out)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.feature_mlp = (
            _mlp(n_in, cfg.feature_hidden_dim, cfg.num_feature_channels) if separate else None
        )

    def forward(self, x: Float[Tensor, "N 3"]) -> dict[str, Tensor]:
        """``density`` [N], ``rgb`` [N, 3], ``sdf`` [N] (+ ``features`` [N, C])."""
        u = ((x - self.box[0]) / (self.box[1] - self.box[0])).clamp(0, 1)
        enc = torch.cat([self.triplane(u), self.posenc(2 * u - 1)], dim=-1)
        h = self.mlp(enc)
        sdf = signed_distance(self.grid, x) + self.cfg.sdf_residual_scale * h[:, 0]
        out = {
            "density": self.cfg.max_density * torch.sigmoid(-sdf / self.cfg.sdf_eps),
            "rgb": torch.sigmoid(h[:, 1:4]),
            "sdf": sdf,
        }
        if self.feature_mlp is not None:
            out["features"] = self.feature_mlp(enc)
        elif self.cfg.num_feature_channels > 0:
            out["features"] = h[:, 4:]
        return out


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Two hidden ReLU layers."""
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, n_out),
    )  # fmt: skip


class SceneFeatureField(nn.Module):
    """Feature channels of world points over the scene box: tri-plane + MLP (the background's
    features; its density and colour stay the background field's)."""

    def __init__(self, box: SceneBox, triplane: TriPlaneConfig, hidden: int, channels: int):
        super().__init__()
        self.box = box
        self.triplane = TriPlaneEncoding(triplane)
        self.mlp = _mlp(self.triplane.out_dim, hidden, channels)

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N C"]:
        return self.mlp(self.triplane(self.box.normalize(x).clamp(0, 1)))


class Human4DModel(SceneModel):
    """Canonical human field + per-frame body + background field (see the module docstring)."""

    name = "human4d"
    batch_kind = "rays"

    def __init__(self, cfg: Human4DConfig, ctx: ModelContext) -> None:
        super().__init__()
        self.cfg, self.render_cfg, self.box = cfg, ctx.render, ctx.box
        fits = ctx.scene.metadata.get("human") if ctx.scene.metadata else None
        if not fits or any(k not in fits for k in ("frame", "pose")):
            raise ValueError(
                'human4d: the scene needs metadata["human"] with "frame" (per image) and "pose" '
                '(per frame) body fits (and optionally "transl", "shape")'
            )
        body = build_body_model(cfg).to(ctx.device)
        object.__setattr__(self, "body", body)  # not a submodule: not in the checkpoints
        # copies: the fits may be tensors of the scene's metadata, which the optimiser must not
        # change in place (nor share between models built from the same scene)
        pose = torch.as_tensor(fits["pose"], dtype=torch.float32).reshape(-1, body.num_joints, 3)
        pose = pose.detach().clone()
        n_frames = pose.shape[0]
        transl = fits.get("transl")
        transl = (
            torch.zeros(n_frames, 3)
            if transl is None
            else torch.as_tensor(transl, dtype=torch.float32).detach().clone()
        )
        shape = body._shape(fits.get("shape")).detach().float().clone()
        self.register_buffer("shape", shape.to(ctx.device))
        train = cfg.body_lr > 0
        self.pose = nn.Parameter(pose.to(ctx.device), requires_grad=train)
        self.transl = nn.Parameter(transl.reshape(n_frames, 3).to(ctx.device), train)
        frame_of_image = torch.as_tensor(fits["frame"], dtype=torch.long)
        self.scene_frame = frame_of_image  # every scene image's frame (held-out ones too)
        views = torch.as_tensor(list(ctx.dataset.indices), dtype=torch.long)
        self.register_buffer("view_frame", frame_of_image[views].to(ctx.device))
        grid = body.skinning_grid(shape, cfg.grid_resolution, band=cfg.band)
        self.grid = grid
        self.human = CanonicalHumanField(cfg.field, grid).to(ctx.device)
        self.codes = nn.Parameter(torch.zeros(n_frames, cfg.frame_code_dim, device=ctx.device))
        self.residual = (
            NonRigidResidual(self.human.box, cfg.frame_code_dim).to(ctx.device)
            if cfg.nonrigid
            else None
        )
        self.background_field = RadianceField(cfg.background, ctx.box, 0, ctx.device)
        self.background_field.to(ctx.device)
        n_feat = cfg.field.num_feature_channels
        self.background_features = (
            SceneFeatureField(
                ctx.box, cfg.background_feature_triplane, cfg.background_feature_hidden_dim, n_feat
            ).to(ctx.device)
            if cfg.background_features and n_feat > 0
            else None
        )
        self.bg_param = learned_background(ctx)
        self._offsets: Tensor | None = None

    # -- the seam ------------------------------------------------------------------------------

    @property
    def scene_box(self) -> SceneBox:
        return self.box

    @property
    def num_frames(self) -> int:
        return self.pose.shape[0]

    @property
    def background(self) -> Tensor | None:
        bg = background_color(self.render_cfg.background, self.bg_param)
        return None if bg is None else bg.to(self.bg_param.device)

    def param_groups(self) -> list[dict]:
        human = [*self.human.parameters(), self.codes]
        if self.residual is not None:
            human += list(self.residual.parameters())
        bg = list(self.background_field.parameters())
        if self.background_features is not None:
            bg += list(self.background_features.parameters())
        if self.render_cfg.background == "learned":
            bg.append(self.bg_param)
        groups = [
            {"name": "human", "params": human, "lr": self.cfg.lr},
            {"name": "background", "params": bg, "lr": self.cfg.background_lr},
        ]
        if self.cfg.body_lr > 0:
            groups.append(
                {"name": "body", "params": [self.pose, self.transl], "lr": self.cfg.body_lr}
            )
        return groups

    def train_outputs(self, batch: RayBatch, generator: torch.Generator | None) -> dict:
        dev = self.bg_param.device
        frames = self.view_frame[batch.image_idx.to(dev)]
        return self.render_rays_of_frames(
            batch.origins.to(dev),
            batch.directions.to(dev),
            frames,
            batch.z_per_t.to(dev),
            generator,
        )

    def regularizers(self, batch: RayBatch, out: dict, step: int) -> dict[str, Tensor]:
        if self._offsets is None or self._offsets.numel() == 0 or self.cfg.nonrigid_weight <= 0:
            return {}
        return {"nonrigid": self.cfg.nonrigid_weight * self._offsets.pow(2).sum(-1).mean()}

    def view_options(self, scene_index: int) -> dict:
        """Scene image ``scene_index`` is rendered with its own frame's body."""
        return {"frame": int(self.scene_frame[scene_index])}

    def stats(self) -> dict[str, float]:
        return {"frames": float(self.num_frames)}

    def describe(self) -> dict:
        return {"body_model": self.cfg.body_model, "frames": self.num_frames}

    # -- rendering -----------------------------------------------------------------------------

    def posed_bodies(
        self,
        frames: Int[Tensor, " F"],
        pose: Float[Tensor, "F J 3"] | None = None,
        transl: Float[Tensor, "F 3"] | None = None,
    ):
        """The body posed with the parameters of ``frames`` (or the given overrides)."""
        pose = self.pose[frames] if pose is None else pose.to(self.pose)
        transl = self.transl[frames] if transl is None else transl.to(self.transl)
        return self.body(pose, self.shape, transl)

    def _query(self, points: Tensor, out, b: int, frame: int) -> dict[str, Tensor]:
        """Human field at posed ``points`` of body ``b`` of ``out`` with frame code ``frame``:
        ``valid`` [N] and, for the valid points, ``canonical``, ``density``, ``rgb`` (+
        ``features``, ``offset``)."""
        m = canonicalize(
            points,
            out.bone_transforms[b],
            self.grid,
            out.canonical_joints,
            self.body.parents,
            self.cfg.iterations,
        )
        x_c = m.points[m.valid]
        res: dict[str, Tensor] = {"valid": m.valid}
        if self.residual is not None and x_c.shape[0] > 0:
            off = self.residual(x_c, self.codes[frame].expand(x_c.shape[0], -1))
            res["offset"] = off
            x_c = x_c + off
        res["canonical"] = x_c
        if x_c.shape[0] > 0:
            res.update(self.human(x_c))
        return res

    def query_human(
        self,
        points: Float[Tensor, "N 3"],
        frame: int,
        pose: Float[Tensor, "J 3"] | None = None,
        transl: Float[Tensor, "3"] | None = None,
    ) -> dict[str, Tensor]:
        """The human field at observation-space ``points`` of ``frame`` (or of an explicit
        body): ``valid`` [N] and, for the valid points, ``canonical``, ``density``, ``rgb``."""
        frames = torch.tensor([frame], device=self.pose.device)
        p = None if pose is None else pose.reshape(1, -1, 3)
        t = None if transl is None else transl.reshape(1, 3)
        return self._query(points, self.posed_bodies(frames, p, t), 0, frame)

    def render_rays_of_frames(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        frames: Int[Tensor, " R"],
        z_per_t: Float[Tensor, " R"] | None = None,
        generator: torch.Generator | None = None,
        pose: Float[Tensor, "J 3"] | None = None,
        transl: Float[Tensor, "3"] | None = None,
    ) -> dict[str, Tensor]:
        """Render rays of the given frames (``pose``/``transl``: one explicit body for all
        rays, the frame codes still from ``frames``): ``rgb``, ``depth``, ``accumulation``,
        ``human`` (person mask), ``human_depth`` (the human samples' part of ``depth``: the
        person's surface is ``human_depth / human``), (``features``,) ``num_samples``."""
        r, dev = origins.shape[0], origins.device
        cfg = self.cfg
        # background samples over the scene box
        sampler = SamplerConfig(num_samples=cfg.background_samples)
        t_b, d_b, valid_b = ray_intervals(
            origins, directions, self.box, sampler, generator, cfg.background_samples
        )
        pts_b = (origins[:, None] + t_b[..., None] * directions[:, None]).reshape(-1, 3)
        dirs_b = directions[:, None].expand(-1, t_b.shape[1], -1).reshape(-1, 3)
        bg = self.background_field(pts_b, dirs_b, None)
        n_feat = self.cfg.field.num_feature_channels
        sig_b = bg["density"].view(r, -1) * valid_b
        val_b = bg["rgb"].view(r, -1, 3)
        if n_feat and self.background_features is not None:
            f_b = self.background_features(pts_b).view(r, -1, n_feat)
            val_b = torch.cat([val_b, f_b], -1)
        elif n_feat:
            val_b = torch.cat([val_b, val_b.new_zeros(*val_b.shape[:2], n_feat)], -1)
        # human samples inside each frame's posed-body box
        s_h = cfg.human_samples
        t_h = torch.zeros(r, s_h, device=dev)
        d_h = torch.zeros(r, s_h, device=dev)
        sig_h = torch.zeros(r * s_h, device=dev)
        val_h = torch.zeros(r * s_h, 3 + n_feat, device=dev)
        offsets, n_eval = [], 0
        uniq = torch.unique(frames)
        if pose is not None:
            out = self.posed_bodies(
                uniq[:1], pose.reshape(1, -1, 3), None if transl is None else transl.reshape(1, 3)
            )
        else:
            out = self.posed_bodies(uniq)
        for k, f in enumerate(uniq.tolist()):
            b = 0 if pose is not None else k
            rays = (frames == f).nonzero()[:, 0]
            verts = out.vertices[b]
            pad = cfg.band
            box = torch.stack([verts.amin(0) - pad, verts.amax(0) + pad]).detach()
            t0, t1 = ray_aabb(origins[rays], directions[rays], box)
            t0 = t0.clamp_min(0)  # rays start at the camera
            hit = t1 > t0
            rays, t0, t1 = rays[hit], t0[hit], t1[hit]
            if rays.numel() == 0:
                continue
            if generator is None:
                u = torch.full((rays.numel(), 1), 0.5, device=dev)
            else:
                u = torch.rand((rays.numel(), 1), generator=generator).to(dev)
            step = (t1 - t0)[:, None] / s_h
            ts = t0[:, None] + (torch.arange(s_h, device=dev)[None] + u) * step
            t_h[rays], d_h[rays] = ts, step.expand(-1, s_h)
            pts = origins[rays, None] + ts[..., None] * directions[rays, None]
            q = self._query(pts.reshape(-1, 3), out, b, f)
            flat = (rays[:, None] * s_h + torch.arange(s_h, device=dev)[None]).reshape(-1)
            sel = q["valid"].nonzero()[:, 0]
            if sel.numel() == 0:
                continue
            if "offset" in q:
                offsets.append(q["offset"])
            h = q
            v = h["rgb"] if n_feat == 0 else torch.cat([h["rgb"], h["features"]], -1)
            sig_h = sig_h.index_put((flat[sel],), h["density"])
            val_h = val_h.index_put((flat[sel],), v)
            n_eval += sel.numel()
        self._offsets = torch.cat(offsets) if offsets else None
        # merge by depth and composite
        t_all = torch.cat([t_b, t_h], 1)
        order = t_all.argsort(dim=1)
        sigma = torch.cat([sig_b, sig_h.view(r, s_h)], 1).gather(1, order)
        deltas = torch.cat([d_b, d_h], 1).gather(1, order)
        vals = torch.cat([val_b, val_h.view(r, s_h, -1)], 1)
        vals = vals.gather(1, order[..., None].expand(-1, -1, vals.shape[-1]))
        is_h = (order >= t_b.shape[1]).to(sigma.dtype)
        weights, _ = render_weights(sigma, deltas)
        acc = weights.sum(-1)
        color = composite(weights, vals)
        rgb = color[:, :3]
        bgc = self.background
        if bgc is not None:
            rgb = rgb + (1 - acc)[:, None] * bgc.to(rgb)
        t_sorted = t_all.gather(1, order)
        dist = (weights * t_sorted).sum(-1)
        dist_h = (weights * is_h * t_sorted).sum(-1)
        res = {
            "rgb": rgb,
            "accumulation": acc,
            "depth": dist * z_per_t if z_per_t is not None else dist,
            "human": (weights * is_h).sum(-1),
            "human_depth": dist_h * z_per_t if z_per_t is not None else dist_h,
            "num_samples": torch.tensor(r * t_b.shape[1] + n_eval),
        }
        if n_feat:
            res["features"] = color[:, 3:]
        return res

    def render_frame_rays(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        z_per_t: Float[Tensor, " R"],
        frame: int,
        pose: Float[Tensor, "J 3"] | None = None,
        transl: Float[Tensor, "3"] | None = None,
        chunk_rays: int | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """Rays of one ``frame`` (as :meth:`Cameras.rays` gives them) rendered ``chunk_rays``
        (default: the config's) at a time: each chunk's :meth:`render_rays_of_frames` outputs,
        gradients kept (callers choose ``torch.no_grad``)."""
        dev = self.bg_param.device
        chunk = chunk_rays or self.cfg.chunk_rays
        for s in range(0, origins.shape[0], chunk):
            sl = slice(s, min(s + chunk, origins.shape[0]))
            frames = torch.full((sl.stop - sl.start,), frame, dtype=torch.long, device=dev)
            yield self.render_rays_of_frames(
                origins[sl].float().to(dev),
                directions[sl].float().to(dev),
                frames,
                z_per_t[sl].float().to(dev),
                None,
                pose,
                transl,
            )

    @torch.no_grad()
    def render_camera(
        self,
        cameras: Cameras,
        index: int,
        downscale: int = 1,
        image_idx: int = -1,
        *,
        frame: int | None = None,
        pose: Float[Tensor, "J 3"] | None = None,
        transl: Float[Tensor, "3"] | None = None,
    ) -> dict[str, Tensor]:
        """Camera ``index`` as ``H W C`` images: ``rgb``, ``depth``, ``accumulation``,
        ``human`` (person mask), ``human_depth``. The body is training view ``image_idx``'s
        frame, else ``frame`` (default 0); ``pose`` / ``transl`` override it (new poses)."""
        h, w = int(cameras.height[index]) // downscale, int(cameras.width[index]) // downscale
        o, d, z = cameras.rays(index, downscale=downscale)
        if image_idx >= 0:
            f = int(self.view_frame[image_idx])
        else:
            f = 0 if frame is None else int(frame)
        outs: dict[str, list[Tensor]] = {}
        for r in self.render_frame_rays(o, d, z, f, pose, transl):
            for k, v in r.items():
                outs.setdefault(k, []).append(v.reshape(-1, *v.shape[1:]).cpu())
        self._offsets = None
        flat = {k: torch.cat(v) if k != "num_samples" else sum(v) for k, v in outs.items()}
        img = reshape_image(flat, h, w)
        img["human"] = flat["human"].view(h, w)
        img["human_depth"] = flat["human_depth"].view(h, w)
        return img

    def export(self, out_dir: Path, config, trainer, progress=None) -> dict:
        """The model's state (fields, per-frame body fits, frame codes) as ``human4d.pt``, written
        atomically; it reads back with ``torch.load(path, weights_only=True)``."""
        path = Path(out_dir) / "human4d.pt"
        payload = {
            "format": 1,
            "body_model": self.cfg.body_model,
            "num_frames": self.num_frames,
            "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        with atomic_open(path, "wb", fsync=True) as f:
            torch.save(payload, f)
        return {"human4d": str(path)}


register()

__all__ = [
    "CanonicalHumanField",
    "Human4DConfig",
    "Human4DModel",
    "HumanFieldConfig",
    "HumanTrainerConfig",
    "SceneFeatureField",
    "build_body_model",
    "register",
]
