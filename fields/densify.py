"""Adaptive density control of 3D Gaussians (3DGS, Kerbl et al. 2023), with the rules and defaults
of gsplat's ``DefaultStrategy`` (gsplat 1.5.3), implemented here.

After each backward pass, :meth:`Densifier.update_stats` accumulates per Gaussian the norm of the
gradient of the loss with respect to its projected 2D mean, over the steps (and cameras) that
saw it (``radii > 0``), and its largest projected radius. The pixel-space gradient is
normalised as gsplat does: its x component times ``width / 2``, its y component times
``height / 2`` (the gradient with respect to normalised device coordinates in [-1, 1], the unit
of the 3DGS threshold 0.0002), both times the number of cameras ``C`` of the batch (gsplat's
losses average over the cameras; this undoes the ``1 / C``). Radii are normalised by
``max(width, height)``.

Every ``refine_every`` steps of the refine window (``refine_start_iter < step <
refine_stop_iter``), :meth:`Densifier.step`, with ``g`` the mean normalised gradient over the
visible steps and ``s`` the largest of a Gaussian's three scales:

- clones Gaussians with ``g > grow_grad2d`` and ``s <= grow_scale3d * scene_scale`` (an exact
  copy appended after the existing ones);
- splits Gaussians with ``g > grow_grad2d`` and ``s > grow_scale3d * scene_scale`` (or, before
  ``refine_scale2d_stop_iter``, a normalised radius above ``grow_scale2d``) into two children
  drawn from the parent's Gaussian (mean + R diag(scales) z, z ~ N(0, I)), with scales / 1.6,
  the parent's rotation, opacity and colour; clones are not split in the same step;
- then prunes (among all, new ones included) Gaussians with opacity ``< prune_opa`` and, after
  the first opacity reset (``step > reset_every``), those with ``s > prune_scale3d *
  scene_scale`` (or, before ``refine_scale2d_stop_iter``, a normalised radius above
  ``prune_scale2d``); then zeroes the statistics.

Every ``reset_every`` steps (``0 < step < refine_stop_iter``) opacities are clamped to at most
``2 * prune_opa`` (0.01; as logits) and their Adam moments zeroed, as the 3DGS reference does
and gsplat's documentation describes. (gsplat 1.5.3 itself never resets: its test
``step % reset_every == 0 & step > 0`` parses as ``step % reset_every == (0 & step) > 0``,
always false; gsplat pull request #776.)

New rows are ordered as gsplat orders them: the Gaussians that are not split, then the clones,
then the first children of the split Gaussians, then the second children. Adam moments
(``exp_avg``, ``exp_avg_sq``, ...) follow the rows: copied for the Gaussians that stay, zero for
clones and split children (as gsplat and the 3DGS reference do). Split samples come from the
caller's generator, so a run is reproducible and resumes exactly with :meth:`state_dict`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Shaped
from torch import Tensor, nn

from sceneforge.core.rotations import quat_wxyz_to_matrix

ROW_PARAMS = ("means", "quats", "scales", "opacities")
"""Per-Gaussian parameters the rules read (every entry of the params dict is resized)."""


@dataclass
class DensifyConfig:
    """Adaptive density control (defaults: gsplat's ``DefaultStrategy``, i.e. the 3DGS paper)."""

    prune_opa: float = 0.005
    """Gaussians with opacity below this are pruned; opacity resets clamp to twice this."""
    grow_grad2d: float = 0.0002
    """Mean normalised 2D-mean gradient above which a Gaussian is cloned or split."""
    grow_scale3d: float = 0.01
    """Largest scale (times ``scene_scale``) up to which a growing Gaussian is cloned, beyond
    which it is split."""
    grow_scale2d: float = 0.05
    """Largest projected radius (fraction of the image's longest side) beyond which a Gaussian
    is split, before ``refine_scale2d_stop_iter``."""
    prune_scale3d: float = 0.1
    """Largest scale (times ``scene_scale``) beyond which a Gaussian is pruned, after the first
    opacity reset."""
    prune_scale2d: float = 0.15
    """Largest projected radius (fraction of the longest side) beyond which a Gaussian is
    pruned, before ``refine_scale2d_stop_iter``."""
    refine_scale2d_stop_iter: int = 0
    """Step up to which the screen-size rules (``grow_scale2d``, ``prune_scale2d``) apply; 0
    disables them (as the 3DGS reference effectively does)."""
    refine_start_iter: int = 500
    """Refinement happens only after this step."""
    refine_stop_iter: int = 15_000
    """Refinement and opacity resets happen only before this step."""
    reset_every: int = 3000
    """Opacities are reset every this many steps."""
    refine_every: int = 100
    """Clone / split / prune every this many steps."""
    pause_refine_after_reset: int = 0
    """No refinement in the first this many steps after an opacity reset (e.g. the number of
    training images)."""
    revised_opacity: bool = False
    """Split children get opacity ``1 - sqrt(1 - o)`` (arXiv:2404.06109) instead of ``o``."""

    def __post_init__(self) -> None:
        for name in ("refine_every", "reset_every"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"DensifyConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if not 0 < self.prune_opa < 0.5:
            raise ValueError(f"DensifyConfig.prune_opa must be in (0, 0.5), got {self.prune_opa}")


# --------------------------------------------------------------------------- pure functions


def is_refine_step(cfg: DensifyConfig, step: int) -> bool:
    """Whether ``step`` clones, splits and prunes."""
    return (
        cfg.refine_start_iter < step < cfg.refine_stop_iter
        and step % cfg.refine_every == 0
        and step % cfg.reset_every >= cfg.pause_refine_after_reset
    )


def is_reset_step(cfg: DensifyConfig, step: int) -> bool:
    """Whether ``step`` resets the opacities (after any refinement of the same step)."""
    return 0 < step < cfg.refine_stop_iter and step % cfg.reset_every == 0


def normalized_grad_norms(
    means2d_grad: Float[Tensor, "C N 2"], width: int, height: int
) -> Float[Tensor, "C N"]:
    """Norms of pixel-space 2D-mean gradients in gsplat's normalisation (module docstring)."""
    c = means2d_grad.shape[0]
    g = means2d_grad.clone()
    g[..., 0] *= width / 2.0 * c
    g[..., 1] *= height / 2.0 * c
    return g.norm(dim=-1)


def max_scales(log_scales: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
    """The largest of each Gaussian's three scales (world units)."""
    return torch.exp(log_scales).max(dim=-1).values


def grow_masks(
    cfg: DensifyConfig,
    step: int,
    mean_grad: Float[Tensor, " N"],
    log_scales: Float[Tensor, "N 3"],
    radii2d: Float[Tensor, " N"],
    scene_scale: float,
) -> tuple[Bool[Tensor, " N"], Bool[Tensor, " N"]]:
    """Which Gaussians are cloned and which split (a Gaussian can be both when the
    screen-size rule is on: its clone stays whole, the original is split)."""
    high = mean_grad > cfg.grow_grad2d
    small = max_scales(log_scales) <= cfg.grow_scale3d * scene_scale
    clone = high & small
    split = high & ~small
    if step < cfg.refine_scale2d_stop_iter:
        split = split | (radii2d > cfg.grow_scale2d)
    return clone, split


def prune_mask(
    cfg: DensifyConfig,
    step: int,
    opacity_logits: Float[Tensor, " N"],
    log_scales: Float[Tensor, "N 3"],
    radii2d: Float[Tensor, " N"],
    scene_scale: float,
) -> Bool[Tensor, " N"]:
    """Which Gaussians are pruned: too transparent, or (after the first reset) too large."""
    prune = torch.sigmoid(opacity_logits) < cfg.prune_opa
    if step > cfg.reset_every:
        prune = prune | (max_scales(log_scales) > cfg.prune_scale3d * scene_scale)
        if step < cfg.refine_scale2d_stop_iter:
            prune = prune | (radii2d > cfg.prune_scale2d)
    return prune


def split_children(
    means: Float[Tensor, "M 3"],
    quats_wxyz: Float[Tensor, "M 4"],
    log_scales: Float[Tensor, "M 3"],
    z: Float[Tensor, "2 M 3"],
) -> tuple[Float[Tensor, "2M 3"], Float[Tensor, "2M 3"]]:
    """Means (parent + R diag(scales) z) and log scales (scales / 1.6) of the two children of
    each parent; rows ordered first children, then second children."""
    scales = torch.exp(log_scales)
    rot = quat_wxyz_to_matrix(quats_wxyz)
    offsets = torch.einsum("mij,bmj->bmi", rot, scales[None] * z)
    child_means = (means[None] + offsets).reshape(-1, 3)
    child_log_scales = torch.log(scales / 1.6).repeat(2, 1)
    return child_means, child_log_scales


def reset_opacity_logits(cfg: DensifyConfig, logits: Tensor) -> Tensor:
    """Opacity logits clamped to at most ``logit(2 * prune_opa)`` (float32 logit, as gsplat)."""
    cap = float(torch.logit(torch.tensor(2.0 * cfg.prune_opa, dtype=torch.float32)))
    return torch.clamp(logits, max=cap)


# --------------------------------------------------------------------------- optimizer surgery


def _group_of(optimizer: torch.optim.Optimizer, name: str, param: Tensor) -> dict | None:
    """The one param group named ``name`` (None if there is none; error if it does not hold
    exactly ``param``)."""
    groups = [g for g in optimizer.param_groups if g.get("name") == name]
    if not groups:
        return None
    if len(groups) > 1 or len(groups[0]["params"]) != 1 or groups[0]["params"][0] is not param:
        raise ValueError(
            f"densify: the optimizer must have one param group named {name!r} holding exactly "
            f"params[{name!r}] (found {len(groups)} group(s))"
        )
    return groups[0]


def replace_parameter(
    params: MutableMapping[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    name: str,
    new_value: Tensor,
    moments_fn,
) -> None:
    """Put ``new_value`` as a new Parameter in ``params[name]`` and in its optimizer group; each
    per-row optimizer state tensor ``v`` (everything but ``step``) becomes ``moments_fn(v)``."""
    old = params[name]
    group = _group_of(optimizer, name, old)
    new = nn.Parameter(new_value.detach(), requires_grad=old.requires_grad)
    params[name] = new
    if group is None:
        return
    group["params"] = [new]
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    for key, v in list(state.items()):
        if key != "step" and isinstance(v, Tensor) and v.shape == old.shape:
            state[key] = moments_fn(v)
    optimizer.state[new] = state


def check_rows(
    params: MutableMapping[str, nn.Parameter], optimizer: torch.optim.Optimizer, who: str
) -> int:
    """The number of Gaussians in ``params``, after checking (before anything changes) that
    it holds the :data:`ROW_PARAMS`, that every entry has that many rows and that every
    trainable entry has its optimizer group; errors name ``who``."""
    missing = [k for k in ROW_PARAMS if k not in params]
    if missing:
        raise ValueError(f"{who}: params lacks {', '.join(missing)}")
    n = int(params["means"].shape[0])
    wrong = [f"{k} {tuple(p.shape)}" for k, p in params.items() if p.shape[:1] != (n,)]
    if wrong:
        raise ValueError(f"{who}: params must all have {n} rows; got {', '.join(wrong)}")
    for name, p in params.items():
        if _group_of(optimizer, name, p) is None and p.requires_grad:
            raise ValueError(
                f"{who}: params[{name!r}] is trainable but the optimizer has no param group "
                f"named {name!r}"
            )
    return n


# --------------------------------------------------------------------------- the densifier


_STATE_KEYS = ("grad2d", "count", "radii2d")


class Densifier:
    """Clones, splits and prunes a Gaussian set and resets its opacities (module docstring).

    ``state``: per Gaussian ``grad2d`` (sum of normalised 2D-mean gradient norms), ``count``
    (how many times it was visible) and ``radii2d`` (largest normalised projected radius), all
    float32, empty until the first :meth:`update_stats`.
    """

    needs_grad2d = True
    """The rules read the 2D-mean gradients (the model keeps them for :meth:`update_stats`)."""

    def __init__(self, cfg: DensifyConfig | None = None) -> None:
        self.cfg = cfg or DensifyConfig()
        self.state: dict[str, Tensor] = {k: torch.zeros(0) for k in _STATE_KEYS}

    # -- statistics ------------------------------------------------------------------------

    @property
    def num_tracked(self) -> int:
        """Number of Gaussians the statistics cover (0 before the first update)."""
        return int(self.state["count"].shape[0])

    def reset_stats(self, num_gaussians: int, device: torch.device | str = "cpu") -> None:
        """Zero statistics for ``num_gaussians`` Gaussians (for a set changed elsewhere)."""
        self.state = {k: torch.zeros(num_gaussians, device=device) for k in _STATE_KEYS}

    @torch.no_grad()
    def update_stats(
        self,
        means2d_grad: Float[Tensor, "*C N 2"],
        radii: Shaped[Tensor, "*C N"] | Shaped[Tensor, "*C N 2"],
        width: int,
        height: int,
    ) -> None:
        """Accumulate one backward pass: ``means2d_grad`` is the gradient of the loss with
        respect to the pixel-space 2D means of an image ``width x height`` (``N 2``, or ``C N 2``
        for a batch of ``C`` cameras); ``radii`` the projected radii in pixels (``N`` / ``C N``,
        or per axis ``N 2`` / ``C N 2``; a Gaussian is visible where they are > 0, on both axes).
        """
        g = means2d_grad.detach()
        r = radii.detach()
        if g.ndim not in (2, 3) or g.shape[-1] != 2:
            raise ValueError(
                f"densify: means2d_grad must be N x 2 or C x N x 2, got {tuple(g.shape)}"
            )
        if r.shape == g.shape:
            visible, rmax = (r > 0).all(dim=-1), r.max(dim=-1).values
        elif r.shape == g.shape[:-1]:
            visible, rmax = r > 0, r
        else:
            raise ValueError(
                f"densify: radii {tuple(r.shape)} do not match means2d_grad {tuple(g.shape)}"
            )
        if g.ndim == 2:
            g, visible, rmax = g[None], visible[None], rmax[None]
        n = g.shape[1]
        if self.num_tracked == 0 and n > 0:
            self.reset_stats(n, g.device)
        if self.num_tracked != n:
            raise ValueError(
                f"densify: the statistics cover {self.num_tracked} Gaussians but the gradient "
                f"has {n} (was the set changed outside Densifier.step? call reset_stats)"
            )
        st = {k: v.to(g.device) for k, v in self.state.items()}
        norms = normalized_grad_norms(g, width, height)
        zero = torch.zeros((), dtype=norms.dtype, device=norms.device)
        st["grad2d"] = st["grad2d"] + torch.where(visible, norms, zero).sum(0)
        st["count"] = st["count"] + visible.sum(0).to(st["count"].dtype)
        rad = torch.where(visible, rmax.float() / float(max(width, height)), 0.0).amax(0)
        st["radii2d"] = torch.maximum(st["radii2d"], rad)
        self.state = st

    # -- refinement ------------------------------------------------------------------------

    def is_refine_step(self, step: int) -> bool:
        """Whether ``step`` clones, splits and prunes."""
        return is_refine_step(self.cfg, step)

    def is_reset_step(self, step: int) -> bool:
        """Whether ``step`` resets the opacities."""
        return is_reset_step(self.cfg, step)

    @torch.no_grad()
    def step(
        self,
        step: int,
        params: MutableMapping[str, nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scene_scale: float,
        generator: torch.Generator,
    ) -> dict[str, int]:
        """Refine (at refine steps) and reset opacities (at reset steps) of the Gaussians in
        ``params`` (``means``, ``quats`` wxyz, ``scales`` as logs, ``opacities`` as logits, and
        any other per-Gaussian rows such as ``sh0``, ``shN``), replacing the Parameters in
        ``params`` and in ``optimizer`` (one param group per key, its ``"name"`` the key) with
        their moments. ``scene_scale`` is the scene's extent, the unit of ``grow_scale3d`` and
        ``prune_scale3d`` (3DGS and gsplat: 1.1 x the largest distance of a camera centre from
        their mean); ``generator`` draws the split samples (save its state with the
        checkpoint for an exact resume).

        Returns the counts ``cloned``, ``split`` (parents), ``pruned`` and ``num_gaussians``.
        """
        n = check_rows(params, optimizer, "densify")
        counts = {"cloned": 0, "split": 0, "pruned": 0, "num_gaussians": n}
        if self.is_refine_step(step):
            counts = self._refine(step, params, optimizer, scene_scale, generator)
        if self.is_reset_step(step):
            self._reset_opacities(params, optimizer)
        return counts

    def _refine(self, step, params, optimizer, scene_scale, generator) -> dict[str, int]:
        cfg = self.cfg
        n = int(params["means"].shape[0])
        device = params["means"].device
        if self.num_tracked != n:
            raise RuntimeError(
                f"densify: refine step {step} with statistics for {self.num_tracked} Gaussians "
                f"but {n} in params (call update_stats after every backward pass)"
            )
        st = {k: v.to(device) for k, v in self.state.items()}
        mean_grad = st["grad2d"] / st["count"].clamp_min(1)
        log_s = params["scales"].detach()
        opa = params["opacities"].detach().reshape(n)
        clone, split = grow_masks(cfg, step, mean_grad, log_s, st["radii2d"], scene_scale)
        idx = torch.arange(n, device=device)
        sel = idx[split]
        n_clone, n_split = int(clone.sum()), int(sel.numel())
        src = torch.cat([idx[~split], idx[clone], sel, sel])
        n_old = n - n_split + n_clone  # rows before the children
        child: dict[str, Tensor] = {}
        if n_split:
            z = torch.randn((2, n_split, 3), generator=generator, device=generator.device)
            child["means"], child["scales"] = split_children(
                params["means"].detach()[sel],
                params["quats"].detach()[sel],
                log_s[sel],
                z.to(device=device, dtype=log_s.dtype),
            )
            o = opa[sel]
            if cfg.revised_opacity:
                o = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(o)))
            child["opacities"] = o.repeat(2)

        def grown(name: str, p: Tensor) -> Tensor:
            out = p[src]
            if name in child:
                out[n_old:] = child[name].reshape(-1, *p.shape[1:])
            return out

        prune = prune_mask(
            cfg,
            step,
            grown("opacities", opa),
            grown("scales", log_s),
            st["radii2d"][src],
            scene_scale,
        )
        keep = ~prune
        fresh = torch.arange(src.numel(), device=device) >= n - n_split  # clones, children

        def moments(v: Tensor) -> Tensor:
            out = v[src]
            out[fresh] = 0
            return out[keep]

        for name in list(params):
            value = grown(name, params[name].detach())[keep]
            replace_parameter(params, optimizer, name, value, moments)
        m = int(keep.sum())
        self.reset_stats(m, device)
        return {"cloned": n_clone, "split": n_split, "pruned": int(prune.sum()), "num_gaussians": m}

    def _reset_opacities(self, params, optimizer) -> None:
        value = reset_opacity_logits(self.cfg, params["opacities"].detach())
        replace_parameter(params, optimizer, "opacities", value, torch.zeros_like)

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        """The statistics (copies), for checkpoints."""
        return {k: v.detach().clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore statistics saved by :meth:`state_dict` (clear error for a wrong layout)."""
        if not state:
            raise ValueError(
                "densify: the checkpoint holds no densification statistics (it was trained with "
                "the mcmc strategy); resume it with --trainer.gaussians.strategy mcmc"
            )
        if set(state) != set(_STATE_KEYS):
            raise ValueError(
                f"densify: state must have keys {', '.join(_STATE_KEYS)}; got "
                f"{', '.join(sorted(state)) or 'none'}"
            )
        shapes = {k: tuple(state[k].shape) for k in _STATE_KEYS}
        if len(set(shapes.values())) != 1 or len(shapes["count"]) != 1:
            raise ValueError(f"densify: state tensors must be 1-D of one length; got {shapes}")
        self.state = {k: state[k].detach().clone().float() for k in _STATE_KEYS}


__all__ = [
    "ROW_PARAMS",
    "check_rows",
    "DensifyConfig",
    "Densifier",
    "grow_masks",
    "is_refine_step",
    "is_reset_step",
    "max_scales",
    "normalized_grad_norms",
    "prune_mask",
    "replace_parameter",
    "reset_opacity_logits",
    "split_children",
]
