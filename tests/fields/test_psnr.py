"""Quality floor: a 64x64 synthetic turntable reaches held-out PSNR > 25 dB within 2000 steps."""

from __future__ import annotations

import pytest
from fields_analytic import turntable_config

from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.trainer import Trainer


@pytest.mark.slow
def test_turntable_heldout_psnr_above_25db():
    scene = turntable_scene(num_views=24, size=64)
    cfg = turntable_config(300)
    tr = Trainer(scene, cfg)
    assert len(tr.eval_indices) == 3 and 0 in tr.eval_indices
    tr.train()
    assert tr.step == 300 <= 2000
    ev = tr.evaluate()
    assert ev["num_eval_images"] == 3
    assert ev["psnr"] > 25.0, ev
    assert ev["ssim"] > 0.8, ev
