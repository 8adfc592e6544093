"""``sceneforge run`` on real photos, end to end at low resolution: 6 of the shared fern
captures (706x529), the fast plan with a few training steps and a 2-frame video (about a
minute on 2 cores). Skipped when ``../shared`` is absent."""

from __future__ import annotations

import json
import math
import shutil

from sceneforge.cli import main

FERN_IMAGES = ("000.png", "003.png", "006.png", "009.png", "012.png", "015.png")


def test_run_on_six_fern_photos(shared_data, tmp_path, one_thread, capsys):
    src = shared_data / "scenes" / "fern" / "images"
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in FERN_IMAGES:
        shutil.copyfile(src / name, photos / name)
    out = tmp_path / "out"
    argv = ["run", str(photos), str(out), "--quality", "fast", "--steps", "30"]
    argv += ["--num-frames", "2", "--downscale", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["reconstruct", "train", "render"]
    rec = stages["reconstruct"]
    assert rec["num_images"] == 6 and rec["num_registered"] >= 5, rec
    # a held-out PSNR (view 0 is never trained on), finite, also in the field's eval.json
    psnr = stages["train"]["psnr"]
    assert math.isfinite(psnr) and psnr > 5.0, stages["train"]
    assert stages["train"]["num_eval_images"] >= 1
    ev = json.loads((out / "field" / "eval.json").read_text())
    assert math.isfinite(ev["psnr"])
    # the results where the README's quickstart says they land
    report = out / "report.html"
    video = out / "render" / "video.mp4"
    assert report.stat().st_size > 1000 and video.stat().st_size > 1000
    text = report.read_text()
    assert "<video" in text and "render/video.mp4" in text and "Held-out PSNR" in text
    assert stages["render"]["path"] == "spiral"  # fern is forward-facing
    assert json.loads((out / "plan.json").read_text())["steps"] == 30
    log = (out / "log.txt").read_text()
    assert "reconstruct: registered " in log and "[train] step 30/30 (100%)" in log
    assert (out / "sfm" / "transforms.json").is_file()
    assert f"report: {report}" in printed and f"video: {video}" in printed
