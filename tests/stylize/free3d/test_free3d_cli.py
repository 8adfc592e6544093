"""``sceneforge free3d-train`` then ``sceneforge novel-views`` with the model it wrote: the
command-line path from training data to posed novel views (tiny model, a few steps)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from sceneforge.cli import main


def test_train_then_novel_views_from_the_command_line(tmp_path, one_thread, capsys):
    run = tmp_path / "model_run"
    data = ["--procedural-objects", "3", "--render-size", "16", "--render-views", "4"]
    data += ["--val-every", "3", "--val-tuples", "1"]
    args = ["free3d-train", str(run), "--steps", "3", *data]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert any(ln.startswith("final_val_loss ") for ln in printed.splitlines()), printed
    log = (run / "log.txt").read_text()
    assert "[free3d-train] step 3/3 (100%)" in log and "validation loss" in log
    # a second run into the same folder is refused (the trained model is kept) ...
    assert main(args) == 1
    assert "exists; resume" in capsys.readouterr().err
    # ... and --resume with more steps continues it
    assert main(["free3d-train", str(run), "--steps", "4", *data, "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4

    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[6:18, 6:18] = (200, 80, 40, 255)
    image = tmp_path / "object.png"
    Image.fromarray(rgba, "RGBA").save(image)
    out = tmp_path / "views"
    args = ["novel-views", str(image), str(out), "--model", str(run / "model")]
    args += ["--poses", "orbit:2", "--sampler.num-steps", "2", "--device", "cpu"]
    assert main(args) == 0
    frames = json.loads((out / "scene" / "transforms.json").read_text())["frames"]
    assert len(frames) == 3
