"""The trainer's history keeps the held-out PSNR of the steps evaluated during training (the
report's training curve plots it), also on steps that are not logging steps."""

from __future__ import annotations

from dataclasses import replace

from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import Trainer, TrainerConfig


def test_history_rows_carry_the_held_out_psnr(one_thread):
    scene = replace(turntable_scene(num_views=8, size=16, num_points=10), masks=None)
    cfg = TrainerConfig(
        max_steps=6,
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=4,
        checkpoint_every=0,
        log_every=2,
        eval_every=3,
        eval_max_images=1,
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=16, grid_alpha_threshold=1e-3)),
    )
    trainer = Trainer(scene, cfg, None)
    trainer.train()
    steps = [h["step"] for h in trainer.history]
    assert steps == [2, 3, 4, 6]  # logging steps, and step 3 for its evaluation
    evaluated = {h["step"]: h["eval_psnr"] for h in trainer.history if "eval_psnr" in h}
    assert sorted(evaluated) == [3, 6]
    assert all(0 < v < 100 for v in evaluated.values())
