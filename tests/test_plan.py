"""The run's plan (``sceneforge.plan``): resolution, steps and render size fit the device and
quality, overrides win, estimates follow the written cost model. No training here."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from sceneforge.plan import (
    CONSTANTS,
    HOLDOUT_EVERY,
    QUALITY_SPECS,
    PlanOverrides,
    plan_run,
)

PHONE = (1600, 900)  # a 1080x1920 landscape photo as copied into OUT/images (max 1600 px)


@pytest.mark.parametrize("num_images", [10, 25, 50])
def test_cpu_default_fits_about_ten_minutes(num_images):
    plan = plan_run(num_images, PHONE, "cpu")
    spec = QUALITY_SPECS["cpu"]["default"]
    assert spec.budget_s == 600.0
    assert 0.7 * spec.budget_s <= plan.total_s <= 1.1 * spec.budget_s, plan.estimate_s
    assert max(plan.train_size) <= spec.long_side
    assert spec.min_steps <= plan.steps <= spec.max_steps and plan.steps % 100 == 0
    assert max(plan.render_size) <= max(plan.train_size)
    assert set(plan.estimate_s) == {"reconstruct", "train", "eval", "render"}
    assert plan.explicit == ()


def test_estimates_follow_the_cost_model():
    c = CONSTANTS["cpu"]
    plan = plan_run(17, PHONE, "cpu", "default")
    train_px = plan.train_size[0] * plan.train_size[1]
    render_px = plan.render_size[0] * plan.render_size[1]
    est = plan.estimate_s
    assert est["train"] == pytest.approx(plan.steps * c.nerf_step_s, rel=1e-3)
    n_eval = math.ceil(17 / HOLDOUT_EVERY)
    assert est["eval"] == pytest.approx(n_eval * train_px * c.nerf_render_s_per_px, rel=1e-3)
    assert est["render"] == pytest.approx(
        plan.num_frames * render_px * c.nerf_render_s_per_px, rel=1e-3
    )
    mpx = PHONE[0] * PHONE[1] / 1e6
    assert est["reconstruct"] == pytest.approx(
        17 * (c.recon_s_per_image + c.recon_s_per_mpx * mpx), rel=1e-3
    )
    assert plan.total_s == pytest.approx(sum(est.values()))
    # reconstruction is costed at the feature-extraction size, not the file's
    big = plan_run(17, (4000, 2250), "cpu", "default", sfm_max_image_size=1600)
    assert big.estimate_s["reconstruct"] == pytest.approx(est["reconstruct"], rel=1e-3)


def test_qualities_are_ordered_and_deterministic():
    plans = [plan_run(30, PHONE, "cpu", q) for q in ("fast", "default", "high")]
    assert plans[0].steps < plans[1].steps < plans[2].steps
    assert plans[0].total_s < plans[1].total_s < plans[2].total_s
    assert max(plans[0].train_size) < max(plans[1].train_size) < max(plans[2].train_size)
    assert plan_run(30, PHONE, "cpu", "high") == plans[2]  # inputs only, no timing


def test_explicit_overrides_win():
    ov = PlanOverrides(steps=1234, downscale=3, render_downscale=5, num_frames=7)
    plan = plan_run(30, PHONE, "cpu", "fast", ov)
    assert (plan.steps, plan.downscale, plan.render_downscale, plan.num_frames) == (1234, 3, 5, 7)
    assert plan.train_size == (533, 300) and plan.render_size == (320, 180)
    assert set(plan.explicit) == {"steps", "downscale", "render_downscale", "num_frames"}
    assert plan.estimate_s["train"] == pytest.approx(1234 * CONSTANTS["cpu"].nerf_step_s)
    assert "(given)" in "\n".join(plan.lines())
    # only what is given is taken; the rest is still planned around it
    part = plan_run(30, PHONE, "cpu", "default", PlanOverrides(downscale=2))
    assert part.downscale == 2 and part.explicit == ("downscale",)
    assert part.steps < plan_run(30, PHONE, "cpu", "default").steps  # larger views cost more


def test_small_images_are_never_upscaled():
    plan = plan_run(20, (200, 150), "cpu", "high")
    assert plan.downscale == 1 and plan.train_size == (200, 150)
    assert plan.render_downscale == 1 and plan.render_size == (200, 150)


def test_render_shrinks_to_its_share_of_the_budget():
    spec = QUALITY_SPECS["cpu"]["default"]
    plan = plan_run(20, (1600, 1200), "cpu", "default")
    assert plan.estimate_s["render"] <= spec.render_share * spec.budget_s
    assert plan.render_downscale > plan.downscale  # at training size it would not fit


def test_cuda_is_nerfstudio_like():
    plan = plan_run(30, PHONE, "cuda:1", "default")
    assert plan.device == "cuda" and plan.steps == 30000  # nerfacto's max_num_iterations
    assert plan.downscale == 1 and plan.train_size == PHONE  # up to 1600 px
    assert plan_run(30, PHONE, "cuda", "fast").steps == 5000
    assert plan_run(30, (3200, 1800), "cuda").downscale == 2


def test_gaussians_and_completion_costs():
    c = CONSTANTS["cpu"]
    gs = plan_run(24, (640, 480), "cpu", "default", PlanOverrides(steps=500), model="gaussians")
    px = gs.train_size[0] * gs.train_size[1]
    assert gs.estimate_s["train"] == pytest.approx(500 * px * c.gaussians_step_s_per_px)
    base = plan_run(24, (640, 480), "cpu", "default")
    done = plan_run(24, (640, 480), "cpu", "default", complete_steps=400, complete_rounds=2)
    assert done.estimate_s["complete"] > 400 * c.nerf_step_s
    assert done.steps < base.steps  # completion takes its time out of the training budget


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quality": "ultra"}, "quality"),
        ({"device": "tpu"}, "tpu"),
        ({"num_images": 0}, "at least one image"),
        ({"image_size": (0, 10)}, "image size"),
        ({"overrides": PlanOverrides(steps=0)}, "steps"),
        ({"model": "mesh"}, "mesh"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"num_images": 10, "image_size": PHONE, "device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=match):
        plan_run(**args)


def test_plan_lines_and_dict():
    plan = plan_run(12, PHONE, "cpu")
    text = "\n".join(plan.lines())
    assert "estimated time" in text and f"{plan.steps} steps" in text
    d = plan.to_dict()
    assert d["total_s"] == pytest.approx(plan.total_s) and d["steps"] == plan.steps


# ----------------------------------------------------------------------------- the run's use


def test_run_config_overrides_are_found():
    from sceneforge.demo import _demo_run_config
    from sceneforge.fields.api import TrainConfig
    from sceneforge.pipeline import RunConfig, plan_overrides

    assert plan_overrides(RunConfig()) == PlanOverrides()
    cfg = RunConfig(train=TrainConfig(max_steps=77))
    assert plan_overrides(cfg).steps == 77
    assert plan_overrides(replace(cfg, steps=99)).steps == 99  # the run's own flag first
    base = RunConfig()
    tr = replace(base.train, trainer=replace(base.train.trainer, downscale=3, max_steps=50))
    rd = replace(base.render, num_frames=5, downscale=6)
    ov = plan_overrides(replace(base, train=tr, render=rd))
    assert ov == PlanOverrides(steps=50, downscale=3, render_downscale=6, num_frames=5)
    # the demo's pinned settings are explicit: the plan does not change the demo
    demo = _demo_run_config()
    trainer = replace(demo.train.trainer, downscale=2)
    demo = replace(demo, train=replace(demo.train, max_steps=600, trainer=trainer))
    ov = plan_overrides(demo)
    assert (ov.steps, ov.downscale) == (600, 2)


def test_planned_configs_carry_the_plan():
    from sceneforge.pipeline import RunConfig, make_plan, planned_configs

    cfg = RunConfig(quality="fast", num_frames=9)
    plan = make_plan(cfg, [(1600, 900), (900, 1600), (800, 600)], "cpu")
    assert plan.num_images == 3 and plan.image_size in ((1600, 900), (900, 1600))
    train, render = planned_configs(cfg, plan)
    assert train.max_steps == train.trainer.max_steps == plan.steps
    assert train.trainer.downscale == plan.downscale
    assert (render.downscale, render.num_frames) == (plan.render_downscale, 9)
    boxed = make_plan(replace(cfg, mask_box=(0, 0, 0, 1, 1, 1)), [(1600, 900)] * 3, "cpu")
    assert "complete" in boxed.estimate_s


def test_run_help_shows_the_plan_flags(capsys, monkeypatch):
    from sceneforge.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "PHOTOS-OR-VIDEO" in text
    for flag in ("--quality {fast,default,high}", "--steps", "--downscale", "--num-frames"):
        assert flag in text, flag
    assert "--video.num-frames" in text
