"""The plan of a ``sceneforge run``: working resolution, step budget and render size for this
capture on this device, with an estimated time per stage.

:func:`plan_run` is pure: the plan depends only on its arguments (image count and size, device
kind, quality, explicit overrides), never on timing the machine, so a run and its resumption
make the same plan and its results depend only on inputs and config.

The cost model (seconds, one line per stage; ``P`` = pixels of one image at the stated size)::

    reconstruct  N * (RECON_S_PER_IMAGE + RECON_S_PER_MPX * P_sfm / 1e6)
    train        steps * STEP_S[model]                      (NeRF: a fixed ray batch per step)
                 steps * P_train * STEP_S_PER_PX[gaussians] (Gaussians: one whole view per step)
    eval         ceil(N / 8) * P_train * RENDER_S_PER_PX[model]
    render       frames * P_render * RENDER_S_PER_PX[model]
    complete     (warm-up + rounds * every + final) steps * step cost
                 + rounds * N * P_train * RENDER_S_PER_PX   (re-renders every view per round)

The constants are per device kind (:data:`CONSTANTS`), measured once with
``python -m sceneforge.plan --measure`` (see :func:`measure_constants`) and written here; the
estimates are good to a factor of about 1.5 (samples per ray, the number of Gaussians and a
busy machine change the per-step cost). They are for the run's default trainer settings: the
demo's pinned trainer (fewer samples per ray, one thread) trains ~2x faster per step.

On CPU each quality has a time budget (``fast`` ~4, ``default`` ~10, ``high`` ~30 minutes on
two cores): the working resolution is the quality's long side (never above the images'), the
video is at that resolution or smaller (to fit its share of the budget), and the steps are what the budget leaves after reconstruction,
evaluation and rendering (rounded to 100, within the quality's bounds). On CUDA the plan
follows nerfstudio: images up to 1600 px (its data parser's default downscale), 30k steps
(nerfacto's ``max_num_iterations``; 5k fast, 60k high). Explicit overrides always win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Quality = Literal["fast", "default", "high"]
QUALITIES: tuple[str, ...] = ("fast", "default", "high")


@dataclass(frozen=True)
class DeviceCosts:
    """Per-unit costs of one device kind (seconds), see the module's cost model."""

    recon_s_per_image: float
    """Reconstruction: fixed seconds per image (loading, matching, SfM)."""
    recon_s_per_mpx: float
    """Reconstruction: seconds per megapixel of an image at the feature-extraction size."""
    nerf_step_s: float
    """NeRF: seconds per training step (the run's default batch of rays)."""
    gaussians_step_s_per_px: float
    """Gaussians: seconds per training step per pixel of the training view."""
    nerf_render_s_per_px: float
    """NeRF: seconds per rendered pixel (evaluation, orbit video, completion renders)."""
    gaussians_render_s_per_px: float
    """Gaussians: seconds per rendered pixel."""


#: Measured costs per device kind.
#:
#: ``cpu``: ``OMP_NUM_THREADS=1 .venv/bin/python -m sceneforge.plan --measure`` on the 2-core
#: development machine (x86_64, torch 2.14.1, shared with other jobs: load average ~3 while
#: measuring, so these are on the slow side of an idle machine; torch on 1 thread, the run
#: uses both cores), 2026-12-04 22:35 UTC, output: ``nerf_step_s`` 0.406,
#: ``nerf_render_s_per_px`` 1.29e-4, ``gaussians_step_s_per_px`` 8.91e-6,
#: ``gaussians_render_s_per_px`` 3.12e-6. Setting: a 16-view 160x120 synthetic orbit, the run's
#: default trainer (NeRF: tri-plane on CPU, 2048 rays per step; steps 100-200 timed, after the
#: occupancy grid's warm-up), renders of 4 views at full size; Gaussians: steps 0-60 (before
#: densification, which adds Gaussians later). For scale: the issue's 1080x1920 NeRF render
#: took ~2.7 min (7.8e-5 s/px), its 2000 default steps 18 min (0.54 s/step).
#: Reconstruction (no fit is good: focal-length search and re-tracking vary per capture):
#: ``sceneforge run`` on this machine took 6.4 s for the demo (24 images 256x256), 9.8 s for 9
#: phone photos (1080x1920, features at 1600 px; issue 28) and 25.3 s for fern (20 images
#: 706x529; 12.5 s of it the focal-length search); the terms are rounded up from these.
#:
#: Check against a whole run (fern, ``sceneforge run ../shared/data/scenes/fern/images OUT
#: --device cpu --steps 100 --num-frames 4 --train.trainer.num-threads 1``, 2026-12-04, with
#: the reconstruction terms 0.26 / 0.57 then): estimated 2m15s, took 2m24s; reconstruct 9 s
#: estimated / 25 s taken, train 41 / 54 s, eval 36 / 36 s, render 48 / 28 s.
#:
#: ``cuda``: not measured on real captures. The NeRF step from ``benchmarks/gpu_check.py`` on
#: an H200 (RESULTS.md: 72.1 steps/s, turntable 64x64, the torch hash grid); every other CUDA
#: cost is the CPU one divided by the same step-time ratio (:data:`CUDA_SPEEDUP`, ~30x): an
#: assumption until measured with ``--measure --device cuda`` on a GPU.
CUDA_SPEEDUP = 0.41 * 72.1
CONSTANTS: dict[str, DeviceCosts] = {
    "cpu": DeviceCosts(
        recon_s_per_image=0.8,
        recon_s_per_mpx=0.5,
        nerf_step_s=0.41,
        gaussians_step_s_per_px=8.9e-6,
        nerf_render_s_per_px=1.3e-4,
        gaussians_render_s_per_px=3.1e-6,
    ),
    "cuda": DeviceCosts(
        recon_s_per_image=0.8,  # SfM runs on the CPU (ALIKED + LightGlue on CUDA: not counted)
        recon_s_per_mpx=0.5,
        nerf_step_s=1 / 72.1,
        gaussians_step_s_per_px=8.9e-6 / CUDA_SPEEDUP,
        nerf_render_s_per_px=1.3e-4 / CUDA_SPEEDUP,
        gaussians_render_s_per_px=3.1e-6 / CUDA_SPEEDUP,
    ),
}


@dataclass(frozen=True)
class QualitySpec:
    """What one quality asks for on one device kind."""

    budget_s: float
    """Target wall time of the whole run (CPU; informative on CUDA)."""
    long_side: int
    """Working resolution: longest image side of training and rendering, in pixels."""
    min_steps: int
    """Fewest training steps the plan chooses (even when it exceeds the budget)."""
    max_steps: int
    """Most training steps the plan chooses."""
    num_frames: int
    """Frames of the orbit video."""
    render_share: float
    """Largest part of the budget the orbit video may take (its size shrinks to fit)."""


#: Per device kind and quality. CPU budgets: the issue's "about 10 minutes on 2 cores" for
#: ``default``; CUDA: nerfstudio's defaults (1600 px, nerfacto's 30k steps).
QUALITY_SPECS: dict[str, dict[str, QualitySpec]] = {
    "cpu": {
        "fast": QualitySpec(240.0, 320, 200, 1500, 24, 0.25),
        "default": QualitySpec(600.0, 480, 500, 4000, 24, 0.25),
        "high": QualitySpec(1800.0, 800, 1500, 12000, 48, 0.25),
    },
    "cuda": {
        "fast": QualitySpec(600.0, 1600, 5000, 5000, 60, 0.25),
        "default": QualitySpec(2400.0, 1600, 30000, 30000, 120, 0.25),
        "high": QualitySpec(4800.0, 1600, 60000, 60000, 240, 0.25),
    },
}

#: Every N-th image is held out and rendered once for evaluation (the trainer's default).
HOLDOUT_EVERY = 8


@dataclass(frozen=True)
class PlanOverrides:
    """Explicit settings that win over the plan (None: the plan chooses)."""

    steps: int | None = None
    """Training steps."""
    downscale: int | None = None
    """Training downscale of the (copied) images."""
    render_downscale: int | None = None
    """Render downscale of the (copied) images."""
    num_frames: int | None = None
    """Frames of the orbit video."""


@dataclass(frozen=True)
class Plan:
    """What a run will do and how long it should take."""

    quality: str
    """The quality asked for."""
    device: str
    """Device kind the plan is for: ``cpu`` or ``cuda``."""
    model: str
    """Scene model (``nerf`` or ``gaussians``)."""
    num_images: int
    """Images of the capture."""
    image_size: tuple[int, int]
    """Width and height of the images the run works from (the copies in ``OUT/images``)."""
    downscale: int
    """Training (and evaluation) downscale of those images."""
    train_size: tuple[int, int]
    """Width and height of a training view."""
    steps: int
    """Training steps."""
    render_downscale: int
    """Render downscale of the images."""
    render_size: tuple[int, int]
    """Width and height of a video frame."""
    num_frames: int
    """Frames of the orbit video."""
    estimate_s: dict[str, float] = field(default_factory=dict)
    """Estimated seconds per stage (``reconstruct``, ``train``, ``eval``, ``render`` and
    ``complete`` when planned)."""
    explicit: tuple[str, ...] = ()
    """Settings that came from overrides rather than the plan."""

    @property
    def total_s(self) -> float:
        """Estimated seconds of the whole run."""
        return float(sum(self.estimate_s.values()))

    def lines(self) -> list[str]:
        """The plan as a few human-readable lines (printed and logged at the start)."""
        from sceneforge.core.progress import format_seconds

        def size(wh: tuple[int, int]) -> str:
            return f"{wh[0]}x{wh[1]}"

        def mark(name: str, sep: str = " (", end: str = ")") -> str:
            return f"{sep}given{end}" if name in self.explicit else ""

        est = ", ".join(f"{k} {format_seconds(v)}" for k, v in self.estimate_s.items())
        return [
            f"plan ({self.quality} quality, {self.device}, {self.model}): {self.num_images} "
            f"images of {size(self.image_size)}",
            f"  train: {self.steps} steps{mark('steps')} at {size(self.train_size)} "
            f"(downscale {self.downscale}{mark('downscale', ', ', '')})",
            f"  render: {self.num_frames} frames{mark('num_frames')} at "
            f"{size(self.render_size)} (downscale {self.render_downscale}"
            f"{mark('render_downscale', ', ', '')})",
            f"  estimated time: {format_seconds(self.total_s)} ({est}; cost model in "
            "sceneforge/plan.py, good to ~1.5x)",
        ]

    def to_dict(self) -> dict:
        """JSON-ready content (``OUT/plan.json``)."""
        import dataclasses

        return {**dataclasses.asdict(self), "total_s": self.total_s}


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda`` for a torch device name (``cuda:1`` -> ``cuda``)."""
    kind = str(device).split(":", 1)[0]
    if kind not in CONSTANTS:
        raise ValueError(f"no cost model for device {device!r}; use cpu or cuda")
    return kind


def _scaled(size: tuple[int, int], downscale: int) -> tuple[int, int]:
    """Size after an integer downscale (as the trainer computes it: floor, at least 1)."""
    return max(size[0] // downscale, 1), max(size[1] // downscale, 1)


def _downscale_for(size: tuple[int, int], long_side: int) -> int:
    """Smallest integer downscale bringing the longest side to at most ``long_side``."""
    return max(1, math.ceil(max(size) / max(long_side, 1)))


def _positive(name: str, value: int | None) -> None:
    if value is not None and int(value) < 1:
        raise ValueError(f"plan: {name} must be at least 1, got {value}")


def plan_run(
    num_images: int,
    image_size: tuple[int, int],
    device: str,
    quality: str = "default",
    overrides: PlanOverrides | None = None,
    *,
    model: str = "nerf",
    sfm_max_image_size: int = 1600,
    complete_steps: int = 0,
    complete_rounds: int = 0,
) -> Plan:
    """The plan of a run of ``num_images`` images of ``image_size`` (width, height; the largest
    when sizes differ) on ``device`` (``cpu``, ``cuda`` or ``cuda:N``) at ``quality``.

    ``overrides`` win over the plan's choices. ``sfm_max_image_size`` is the reconstruction's
    feature-extraction size; ``complete_steps`` / ``complete_rounds`` (0: no completion) add the
    completion's estimate. The estimate uses :data:`CONSTANTS` only (no timing here).
    """
    if quality not in QUALITIES:
        raise ValueError(f"plan: quality must be one of {QUALITIES}, got {quality!r}")
    if model not in ("nerf", "gaussians"):
        raise ValueError(f"plan: no cost model for scene model {model!r}")
    if num_images < 1:
        raise ValueError(f"plan: need at least one image, got {num_images}")
    w, h = (int(v) for v in image_size)
    if w < 1 or h < 1:
        raise ValueError(f"plan: image size must be positive, got {image_size}")
    ov = overrides or PlanOverrides()
    for name in ("steps", "downscale", "render_downscale", "num_frames"):
        _positive(name, getattr(ov, name))
    kind = device_kind(device)
    spec, costs = QUALITY_SPECS[kind][quality], CONSTANTS[kind]
    explicit = tuple(
        n
        for n in ("steps", "downscale", "render_downscale", "num_frames")
        if getattr(ov, n) is not None
    )

    downscale = ov.downscale or _downscale_for((w, h), spec.long_side)
    train_size = _scaled((w, h), downscale)
    train_px = train_size[0] * train_size[1]
    render_px_cost = (
        costs.nerf_render_s_per_px if model == "nerf" else costs.gaussians_render_s_per_px
    )

    def step_s() -> float:
        return costs.nerf_step_s if model == "nerf" else costs.gaussians_step_s_per_px * train_px

    # Render: the quality's frames at the training resolution, made smaller (a larger
    # downscale) until the video fits its share of the budget.
    num_frames = ov.num_frames or spec.num_frames
    render_downscale = ov.render_downscale or downscale
    if ov.render_downscale is None:
        while True:
            rw, rh = _scaled((w, h), render_downscale)
            if num_frames * rw * rh * render_px_cost <= spec.render_share * spec.budget_s:
                break
            if max(rw, rh) <= 160:  # no smaller than a thumbnail
                break
            render_downscale += 1
    render_size = _scaled((w, h), render_downscale)

    sfm_scale = min(1.0, sfm_max_image_size / max(w, h))
    sfm_mpx = w * h * sfm_scale * sfm_scale / 1e6
    est = {"reconstruct": num_images * (costs.recon_s_per_image + costs.recon_s_per_mpx * sfm_mpx)}
    num_eval = math.ceil(num_images / HOLDOUT_EVERY) if num_images > 1 else 0
    est_eval = num_eval * train_px * render_px_cost
    est_render = num_frames * render_size[0] * render_size[1] * render_px_cost
    est_complete = 0.0
    if complete_rounds > 0:
        est_complete = complete_steps * step_s()
        est_complete += complete_rounds * num_images * train_px * render_px_cost

    if ov.steps is not None:
        steps = int(ov.steps)
    elif kind == "cpu":
        left = spec.budget_s - est["reconstruct"] - est_eval - est_render - est_complete
        steps = int(left / step_s()) // 100 * 100
        steps = min(max(steps, spec.min_steps), spec.max_steps)
    else:
        steps = spec.max_steps
    est["train"] = steps * step_s()
    est["eval"] = est_eval
    if complete_rounds > 0:
        est["complete"] = est_complete
    est["render"] = est_render
    return Plan(
        quality=quality,
        device=kind,
        model=model,
        num_images=int(num_images),
        image_size=(w, h),
        downscale=int(downscale),
        train_size=train_size,
        steps=steps,
        render_downscale=int(render_downscale),
        render_size=render_size,
        num_frames=int(num_frames),
        estimate_s={k: round(float(v), 3) for k, v in est.items()},
        explicit=explicit,
    )


# ----------------------------------------------------------------------------- measurement


def measure_constants(device: str = "cpu", nerf_steps: int = 200, gs_steps: int = 60) -> dict:
    """Measure the per-unit costs of :class:`DeviceCosts` (except reconstruction) on this
    machine: what :data:`CONSTANTS` was written from. Never called by a run."""
    import tempfile
    import time

    from sceneforge.core.synthetic import SyntheticSceneConfig, make_scene
    from sceneforge.fields.trainer import Trainer
    from sceneforge.fields.trainer_config import TrainerConfig

    scene = make_scene(
        SyntheticSceneConfig(scene="objects", rig="orbit", num_views=16, width=160, height=120)
    )
    px = 160 * 120
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, steps, first in (
            ("nerf", nerf_steps, nerf_steps // 2),
            ("gaussians", gs_steps, 0),
        ):
            cfg = TrainerConfig(
                model=model,
                max_steps=steps,
                use_masks=False,
                checkpoint_every=0,
                progress=False,
                tensorboard=False,
                device=device,
                num_threads=0,
            )
            trainer = Trainer(scene, cfg, tmp)
            trainer.train(max_steps=first)
            w0 = trainer.wall_s
            trainer.train(max_steps=steps)
            per_step = (trainer.wall_s - w0) / (steps - first)
            if model == "nerf":
                out["nerf_step_s"] = per_step
            else:
                out["gaussians_step_s_per_px"] = per_step / px
            t0 = time.perf_counter()
            for k in range(4):
                trainer.render_camera(scene.cameras, k, downscale=1)
            out[f"{model}_render_s_per_px"] = (time.perf_counter() - t0) / (4 * px)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m sceneforge.plan --measure [--device cpu]``: print the measured constants."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m sceneforge.plan", description=main.__doc__)
    p.add_argument("--measure", action="store_true", help="measure the per-unit costs")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if not args.measure:
        p.print_help()
        return 0
    print(json.dumps(measure_constants(args.device), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
