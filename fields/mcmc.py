"""3D Gaussian splatting as Markov chain Monte Carlo (3DGS-MCMC, Kheradmand et al. 2024), with
the rules and defaults of gsplat's ``MCMCStrategy`` (gsplat 1.5.3), implemented here in torch so
the same code runs on every device and resumes exactly from a checkpoint.

Instead of cloning and splitting by gradient statistics, every ``refine_every`` steps of the
refine window (``refine_start_iter < step < refine_stop_iter``) :meth:`MCMCStrategy.step`

- **relocates** the dead Gaussians (opacity ``<= min_opacity``): each takes the place of a live
  Gaussian drawn with probability proportional to opacity; a Gaussian drawn ``r - 1`` times
  (so ``r`` copies in all) gets the opacity and scales of Eq. 9 of the paper
  (:func:`relocated_opacity_scale`), and so do its copies;
- **adds** ``min(cap_max, floor((1 + growth) N)) - N`` Gaussians the same way (copies of
  opacity-weighted draws, appended after the existing rows);

and after every step it **perturbs the means** with noise shaped by each Gaussian's covariance,
strong for transparent Gaussians and vanishing above opacity ~0.99 (:func:`position_noise`, the
scale ``lr_means x noise_lr``). The paper's L1 regularisers on opacities and scales
(``opacity_reg``, ``scale_reg``) are part of the method: :func:`mcmc_regularizers`.

Two deliberate differences from gsplat 1.5.3 (both follow the paper's reference code): the
Adam moments of the dead rows that receive copies are zeroed too (gsplat zeroes those of the
drawn rows only, so a relocated Gaussian inherits its dead predecessor's momentum), and so are
those of the rows drawn for new Gaussians. Eq. 9's double sum is evaluated in float64 in the
closed form ``sum_{j=1}^{r} C(r, j) (-1)^(j-1) o'^j / sqrt(j)`` (the hockey-stick identity
collapses the sum over ``i``), exact where gsplat's float32 kernel loses digits for large
``r``; :func:`relocated_opacity_scale_reference` is the paper's literal double sum.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sceneforge.fields.densify import check_rows, replace_parameter
from sceneforge.fields.splatting import quat_scale_to_covariance

N_MAX = 51
"""Largest number of copies Eq. 9 is evaluated for (gsplat's table size); larger ratios are
clamped to it, as gsplat does."""


@dataclass
class MCMCConfig:
    """3DGS-MCMC settings (defaults: gsplat's ``MCMCStrategy`` and its trainer's MCMC preset)."""

    cap_max: int = 1_000_000
    """Most Gaussians the set grows to."""
    growth: float = 0.05
    """Each refinement adds this fraction of the current number of Gaussians (up to the cap)."""
    noise_lr: float = 5e5
    """Position noise scale, times the means' current learning rate."""
    refine_start_iter: int = 500
    """Relocation and growth happen only after this step."""
    refine_stop_iter: int = 25_000
    """Relocation and growth happen only before this step."""
    refine_every: int = 100
    """Relocate and grow every this many steps."""
    min_opacity: float = 0.005
    """Gaussians at or below this opacity are dead (relocated)."""
    opacity_reg: float = 0.01
    """Weight of the L1 loss on the opacities (mean over Gaussians)."""
    scale_reg: float = 0.01
    """Weight of the L1 loss on the scales (mean over Gaussians and axes)."""

    def __post_init__(self) -> None:
        if self.refine_every <= 0:
            raise ValueError(f"MCMCConfig.refine_every must be positive, got {self.refine_every}")
        if self.cap_max <= 0:
            raise ValueError(f"MCMCConfig.cap_max must be positive, got {self.cap_max}")
        if not 0 < self.min_opacity < 1:
            raise ValueError(f"MCMCConfig.min_opacity must be in (0, 1), got {self.min_opacity}")
        if self.growth < 0:
            raise ValueError(f"MCMCConfig.growth must be >= 0, got {self.growth}")


# --------------------------------------------------------------------------- pure functions


def is_refine_step(cfg: MCMCConfig, step: int) -> bool:
    """Whether ``step`` relocates dead Gaussians and adds new ones."""
    return cfg.refine_start_iter < step < cfg.refine_stop_iter and step % cfg.refine_every == 0


def relocated_opacity_scale(
    opacities: Float[Tensor, " N"], scales: Float[Tensor, "N 3"], ratios: Int[Tensor, " N"]
) -> tuple[Float[Tensor, " N"], Float[Tensor, "N 3"]]:
    """Eq. 9 of 3DGS-MCMC: the opacity and scales of each of ``r`` copies that replace one
    Gaussian of opacity ``o`` and scales ``s`` (``r = ratios``, clamped to 1..N_MAX):
    ``o' = 1 - (1 - o)^(1 / r)`` (``r`` copies composite to ``o``) and ``s' = s o / D`` with
    ``D = sum_{j=1}^{r} C(r, j) (-1)^(j-1) o'^j / sqrt(j)`` (float64, module docstring)."""
    r = ratios.clamp(1, N_MAX).to(torch.float64)
    o = opacities.to(torch.float64)
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / r)
    j = torch.arange(1, N_MAX + 1, dtype=torch.float64, device=o.device)
    log_binom = (
        torch.lgamma(r[:, None] + 1) - torch.lgamma(j + 1) - torch.lgamma(r[:, None] - j + 1)
    )
    binom = torch.where(j <= r[:, None], torch.exp(log_binom.clamp(max=700)), 0.0)
    sign = torch.where(j % 2 == 1, 1.0, -1.0).to(o)
    terms = binom * sign * torch.pow(new_o[:, None], j) / torch.sqrt(j)
    denom = terms.sum(-1)
    new_s = scales.to(torch.float64) * (o / denom)[:, None]
    return new_o.to(opacities.dtype), new_s.to(scales.dtype)


def relocated_opacity_scale_reference(
    opacities: Float[Tensor, " N"], scales: Float[Tensor, "N 3"], ratios: Int[Tensor, " N"]
) -> tuple[Float[Tensor, " N"], Float[Tensor, "N 3"]]:
    """Eq. 9 as the paper writes it (a double sum per Gaussian, Python loops: tests only)."""
    new_o, new_s = [], []
    for o, s, r in zip(opacities.double().tolist(), scales.double(), ratios.tolist()):
        r = min(max(int(r), 1), N_MAX)
        no = 1.0 - (1.0 - o) ** (1.0 / r)
        denom = sum(
            math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * no ** (k + 1)
            for i in range(1, r + 1)
            for k in range(i)
        )
        new_o.append(no)
        new_s.append(s * (o / denom))
    return (
        torch.tensor(new_o, dtype=opacities.dtype),
        torch.stack(new_s).to(scales.dtype) if new_s else scales.new_zeros(0, 3),
    )


def position_noise(
    quats_wxyz: Float[Tensor, "N 4"],
    log_scales: Float[Tensor, "N 3"],
    opacity_logits: Float[Tensor, " N"],
    z: Float[Tensor, "N 3"],
    scale: float,
) -> Float[Tensor, "N 3"]:
    """The MCMC position perturbation ``Sigma (z * sigmoid(100 (1 - o - 0.995)) * scale)`` for
    standard-normal draws ``z`` (``Sigma`` the world covariance, ``o`` the opacity): transparent
    Gaussians wander, opaque ones (o > ~0.99) stay."""
    cov = quat_scale_to_covariance(quats_wxyz, torch.exp(log_scales))
    gate = torch.sigmoid(100.0 * ((1.0 - torch.sigmoid(opacity_logits)) - 0.995))
    return torch.einsum("nij,nj->ni", cov, z * gate[:, None] * scale)


def mcmc_regularizers(
    cfg: MCMCConfig, opacity_logits: Tensor, log_scales: Tensor
) -> dict[str, Tensor]:
    """The paper's L1 losses: ``opacity_reg mean(o)`` and ``scale_reg mean(s)`` (weighted;
    zero weights are left out)."""
    out = {}
    if cfg.opacity_reg > 0:
        out["opacity_reg"] = cfg.opacity_reg * torch.sigmoid(opacity_logits).mean()
    if cfg.scale_reg > 0:
        out["scale_reg"] = cfg.scale_reg * torch.exp(log_scales).mean()
    return out


def draw_by_opacity(
    opacity_logits: Tensor, candidates: Tensor, n: int, generator: torch.Generator
) -> Tensor:
    """``n`` indices among ``candidates`` (1-D indices) drawn with replacement with probability
    proportional to opacity (from ``generator``, on its device)."""
    probs = torch.sigmoid(opacity_logits.detach()[candidates]).to(generator.device).float()
    picks = torch.multinomial(probs, n, replacement=True, generator=generator)
    return candidates[picks.to(candidates.device)]


# --------------------------------------------------------------------------- the strategy


class MCMCStrategy:
    """Relocates, grows and perturbs a Gaussian set (module docstring). Keeps no statistics, so
    its checkpoint state is empty; randomness comes from the caller's generator."""

    needs_grad2d = False
    """MCMC reads no 2D-mean gradients (the model need not keep them)."""

    def __init__(self, cfg: MCMCConfig | None = None) -> None:
        self.cfg = cfg or MCMCConfig()

    def is_refine_step(self, step: int) -> bool:
        """Whether ``step`` relocates and grows."""
        return is_refine_step(self.cfg, step)

    @torch.no_grad()
    def step(
        self,
        step: int,
        params: MutableMapping[str, nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scene_scale: float,
        generator: torch.Generator,
    ) -> dict[str, int]:
        """Relocate and grow (at refine steps), then perturb the means, of the Gaussians in
        ``params`` (``means``, ``quats`` wxyz, ``scales`` log, ``opacities`` logits and other
        per-Gaussian rows), replacing the Parameters in ``params`` and ``optimizer`` (one param
        group per key named for it; the noise scale is the ``means`` group's current ``lr``).
        ``scene_scale`` is unused (MCMC has no size thresholds). Returns the counts
        ``relocated``, ``added`` and ``num_gaussians``."""
        n = check_rows(params, optimizer, "mcmc")
        means_groups = [g for g in optimizer.param_groups if g.get("name") == "means"]
        if len(means_groups) != 1:
            raise ValueError("mcmc: the optimizer needs one param group named 'means'")
        counts = {"relocated": 0, "added": 0, "num_gaussians": n}
        if self.is_refine_step(step) and n > 0:
            counts["relocated"] = self._relocate(params, optimizer, generator)
            counts["added"] = self._add(params, optimizer, generator)
        counts["num_gaussians"] = int(params["means"].shape[0])
        self._perturb(params, float(means_groups[0]["lr"]), generator)
        return counts

    def _copies(self, params, sampled: Tensor) -> dict[str, Tensor]:
        """Opacity logits and log scales of the drawn rows after Eq. 9 (each drawn row and its
        copies: ratio = times drawn + 1)."""
        logits = params["opacities"].detach()
        flat = logits.reshape(-1)
        ratios = torch.bincount(sampled, minlength=flat.shape[0])[sampled] + 1
        new_o, new_s = relocated_opacity_scale(
            torch.sigmoid(flat[sampled]), torch.exp(params["scales"].detach()[sampled]), ratios
        )
        eps = torch.finfo(torch.float32).eps
        new_o = new_o.clamp(min=self.cfg.min_opacity, max=1.0 - eps)
        return {
            "opacities": torch.logit(new_o).reshape(-1, *logits.shape[1:]),
            "scales": torch.log(new_s),
        }

    def _relocate(self, params, optimizer, generator) -> int:
        flat = params["opacities"].detach().reshape(-1)
        dead = torch.sigmoid(flat) <= self.cfg.min_opacity
        dead_idx = torch.nonzero(dead).squeeze(1)
        alive_idx = torch.nonzero(~dead).squeeze(1)
        if dead_idx.numel() == 0 or alive_idx.numel() == 0:
            return 0
        sampled = draw_by_opacity(flat, alive_idx, dead_idx.numel(), generator)
        new = self._copies(params, sampled)

        def moved(name: str, p: Tensor) -> Tensor:
            out = p.clone()
            if name in new:
                out[sampled] = new[name].to(out.dtype)
            out[dead_idx] = out[sampled]
            return out

        touched = torch.cat([sampled, dead_idx])

        def moments(v: Tensor) -> Tensor:
            out = v.clone()
            out[touched] = 0
            return out

        for name in list(params):
            replace_parameter(params, optimizer, name, moved(name, params[name].detach()), moments)
        return int(dead_idx.numel())

    def _add(self, params, optimizer, generator) -> int:
        n = int(params["means"].shape[0])
        target = min(self.cfg.cap_max, int((1.0 + self.cfg.growth) * n))
        k = max(0, target - n)
        if k == 0:
            return 0
        flat = params["opacities"].detach().reshape(-1)
        sampled = draw_by_opacity(flat, torch.arange(n, device=flat.device), k, generator)
        new = self._copies(params, sampled)

        def grown(name: str, p: Tensor) -> Tensor:
            out = p.clone()
            if name in new:
                out[sampled] = new[name].to(out.dtype)
            return torch.cat([out, out[sampled]])

        def moments(v: Tensor) -> Tensor:
            out = v.clone()
            out[sampled] = 0
            return torch.cat([out, v.new_zeros((k, *v.shape[1:]))])

        for name in list(params):
            replace_parameter(params, optimizer, name, grown(name, params[name].detach()), moments)
        return k

    def _perturb(self, params, lr: float, generator) -> None:
        p = params["means"]
        z = torch.randn(p.shape, generator=generator, device=generator.device, dtype=p.dtype)
        noise = position_noise(
            params["quats"].detach(),
            params["scales"].detach(),
            params["opacities"].detach().reshape(-1),
            z.to(p.device),
            lr * self.cfg.noise_lr,
        )
        p.data.add_(noise.to(p.dtype))

    def state_dict(self) -> dict[str, Tensor]:
        """Nothing to save (the strategy keeps no statistics)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Accept the empty state of :meth:`state_dict` (clear error for another strategy's)."""
        if state:
            raise ValueError(
                f"mcmc: the checkpoint holds densification statistics ({', '.join(sorted(state))})"
                " of the default strategy; resume it with --trainer.gaussians.strategy default"
            )


__all__ = [
    "MCMCConfig",
    "MCMCStrategy",
    "N_MAX",
    "draw_by_opacity",
    "is_refine_step",
    "mcmc_regularizers",
    "position_noise",
    "relocated_opacity_scale",
    "relocated_opacity_scale_reference",
]
