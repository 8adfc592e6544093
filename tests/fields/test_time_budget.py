"""``--max-seconds`` alone: the run trains for that long, the learning-rate decay follows the
fraction of the time budget used, and a resumed run continues where the first stopped.

Training time is read from ``time.perf_counter`` in the trainer's module; the tests replace it
by a clock that advances a fixed amount per reading, so every run is deterministic."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import sceneforge.fields.trainer as trainer_module
from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.api import TIME_BUDGET_MAX_STEPS, TrainConfig, train
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import Trainer, TrainerConfig


class FakeClock:
    """``perf_counter`` that advances ``dt`` seconds per reading."""

    def __init__(self, dt: float) -> None:
        self.t, self.dt = 0.0, dt

    def perf_counter(self) -> float:
        self.t += self.dt
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock(0.25)
    monkeypatch.setattr(trainer_module.time, "perf_counter", c.perf_counter)
    return c


@pytest.fixture(scope="module")
def scene():
    return replace(turntable_scene(num_views=8, size=16, num_points=10), masks=None)


def config(**kw) -> TrainerConfig:
    base = dict(
        max_steps=TIME_BUDGET_MAX_STEPS,
        max_seconds=6.0,
        schedule="time",
        batch_rays=64,
        progress=False,
        tensorboard=False,
        checkpoint_every=0,
        eval_every=0,
        num_threads=1,
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=16, grid_alpha_threshold=1e-3)),
    )
    return TrainerConfig(**{**base, **kw})


def test_time_budget_trains_for_that_long_and_decays_with_the_time_used(scene, clock):
    tr = Trainer(scene, config(), None)
    tr.train()
    # every step reads the clock twice around itself (0.25 s apart): 0.25 s of training each
    assert tr.wall_s == pytest.approx(6.0) and tr.step == 24
    assert tr.schedule_fraction() == 1.0
    f = tr.cfg.lr_final_factor
    tr.wall_s = 1.5
    assert tr.lr_factor() == pytest.approx(f**0.25)  # a quarter of the budget used
    assert tr.lr_factor(step=10**6) == pytest.approx(f**0.25)  # steps do not count
    # the learning rate of the last step followed the time used before it (5.75 of 6 s)
    g = tr.optimizer.param_groups[0]
    assert g["lr"] == pytest.approx(g["base_lr"] * g["final_factor"] ** (5.75 / 6.0))


def test_step_schedule_is_unchanged(scene, clock):
    tr = Trainer(scene, config(schedule="steps", max_steps=8, max_seconds=None), None)
    tr.train()
    assert tr.step == 8 and tr.schedule_fraction() == 1.0
    assert tr.lr_factor(step=2) == pytest.approx(tr.cfg.lr_final_factor**0.25)


def test_resumed_time_budget_run_equals_the_uninterrupted_one(scene, clock, tmp_path):
    whole = Trainer(scene, config(), None)
    whole.train()
    clock.t = 0.0
    first = Trainer(scene, config(), tmp_path)
    first.train(max_steps=10)  # stopped early (e.g. killed after its checkpoint)
    assert first.wall_s == pytest.approx(2.5)
    path = first.save_checkpoint(tmp_path / "checkpoint.pt")
    resumed = Trainer.from_checkpoint(path, scene, tmp_path)
    assert resumed.wall_s == pytest.approx(2.5) and resumed.cfg.schedule == "time"
    resumed.train()  # the rest of the budget, not a new 6 s
    assert resumed.step == whole.step == 24
    assert resumed.wall_s == pytest.approx(whole.wall_s)
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_time_schedule_needs_a_budget(scene):
    with pytest.raises(ValueError, match="max_seconds"):
        Trainer(scene, config(max_seconds=None), None)


def test_sceneforge_train_with_max_seconds_alone_uses_the_time_schedule(scene, clock, tmp_path):
    trainer = config(max_steps=3000, max_seconds=None, schedule="steps")
    out = train(None, tmp_path / "a", TrainConfig(max_seconds=2.0, trainer=trainer), scene=scene)
    assert out["steps"] == 8  # 2 s at 0.25 s a step, not 3000 steps
    # with --max-steps too, the steps schedule stays and the time is only a limit
    cfg = TrainConfig(max_seconds=100.0, max_steps=5, trainer=trainer)
    assert train(None, tmp_path / "b", cfg, scene=scene)["steps"] == 5
    assert json.loads((tmp_path / "b" / "config.json").read_text())["schedule"] == "steps"
    assert json.loads((tmp_path / "a" / "config.json").read_text())["schedule"] == "time"
