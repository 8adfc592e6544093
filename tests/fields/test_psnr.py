"""Quality floor: a 64x64 synthetic turntable reaches held-out PSNR > 25 dB within 2000 steps."""

from __future__ import annotations

import pytest

from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.trainer import Trainer, TrainerConfig


@pytest.mark.slow
def test_turntable_heldout_psnr_above_25db():
    scene = turntable_scene(num_views=24, size=64)
    cfg = TrainerConfig(
        max_steps=300,
        batch_rays=1024,
        scene_box="bounded",  # box from the scene's sparse points
        use_masks=False,  # the synthetic masks mark objects, not unusable pixels
        progress=False,
        tensorboard=False,
    )
    tr = Trainer(scene, cfg)
    assert len(tr.eval_indices) == 3 and 0 in tr.eval_indices
    tr.train()
    assert tr.step == 300 <= 2000
    ev = tr.evaluate()
    assert ev["num_eval_images"] == 3
    assert ev["psnr"] > 25.0, ev
    assert ev["ssim"] > 0.8, ev
