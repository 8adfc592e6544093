"""The main job end to end on a tiny procedural scene: stages, resume, report, no overwrite."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sceneforge.core.io import load_scene
from sceneforge.demo import DemoConfig, demo
from sceneforge.pipeline import RunConfig, run


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    base = DemoConfig()
    cfg = replace(
        base,
        train_steps=60,
        downscale=4,
        min_psnr=0.0,
        complete_warmup_steps=20,
        complete_update_every=10,
        complete_rounds=1,
        run=replace(base.run, render=replace(base.run.render, num_frames=3, video=False)),
    )
    logs: list[str] = []
    summary = demo(out, cfg, log=logs.append)
    return out, summary, logs


def test_demo_registers_every_view_and_writes_report(demo_run):
    out, summary, _ = demo_run
    assert summary["registered"] == "24/24"
    assert summary["heldout_psnr_db"] > 10.0  # a 60-step field is far above noise
    assert summary["num_heldout_views"] == 3  # views 0, 8, 16: never trained on
    stages = json.loads((out / "run" / "stages.json").read_text())
    assert list(stages) == ["reconstruct", "train", "complete", "render"]
    report = (out / "run" / "report.html").read_text()
    for png in ("reconstruction.png", "ba_cost.png", "training.png", "render.png"):
        assert png in report and (out / "run" / "report" / png).stat().st_size > 1000
    assert "before_after_" in report
    assert (out / "run" / "points.ply").stat().st_size > 100
    # the field trains on sfm/ (transforms.json): its sparse points come along, so the
    # bounded box fits them rather than falling back to a loose box around the cameras
    sfm = load_scene(out / "run" / "sfm")
    assert sfm.points is not None and len(sfm.points) == stages["reconstruct"]["num_points"]
    assert all("cpu_seconds" in v for v in stages.values())
    # completion wrote a new versioned dataset and never touched the input images
    versions = sorted((out / "run" / "complete" / "datasets").glob("v*"))
    assert versions, "the dataset update wrote no version"
    assert stages["render"]["num_frames"] == 3


def test_run_logs_stages_and_progress_to_a_file(demo_run):
    """OUT/log.txt gets the stage messages and periodic progress lines (step, loss, ETA); with
    stdout not a terminal (as here) the progress lines reach the console too."""
    out, summary, logs = demo_run
    log_file = out / "run" / "log.txt"
    assert summary["log"] == str(log_file)
    text = [ln.split(" ", 2)[2] for ln in log_file.read_text().splitlines()]
    for msg in ("[reconstruct] ...", "[train] ...", "[render] ...", "report: "):
        assert any(t.startswith(msg) for t in text), msg
    assert any(t.startswith("mask box (reconstruction frame)") for t in text)
    # the plan and its estimate are printed and logged before any stage runs
    first_stage = text.index("[reconstruct] ...")
    plan_lines = [k for k, t in enumerate(text) if t.startswith("plan (default quality, cpu")]
    assert plan_lines and plan_lines[0] < first_stage
    assert text[plan_lines[0] + 1].startswith("  train: 60 steps (given)")
    assert text[plan_lines[0] + 3].startswith("  estimated time: ")
    assert any(t.startswith("run took ") and "(estimated " in t for t in text)
    plan = json.loads((out / "run" / "plan.json").read_text())
    assert plan["steps"] == 60 and plan["downscale"] == 4 and plan["num_frames"] == 3
    train = [t for t in text if t.startswith("[train] step ")]
    assert train[-1].startswith("[train] step 60/60 (100%)  loss ") and "ETA" in train[-1]
    assert any(t.startswith("[render] frame 3/3 (100%)") for t in text)
    assert [m for m in logs if m.startswith("[train] step ")] == train


def test_rerun_skips_finished_stages_and_keeps_inputs(demo_run):
    out, _, _ = demo_run
    images = out / "input" / "images"
    before = _digest(images)
    stages_before = (out / "run" / "stages.json").read_text()
    box = tuple(json.loads(stages_before).get("complete", {}).get("mask_box", ())) or None
    logs: list[str] = []
    run(images, out / "run", RunConfig(mask_box=box or (0, 0, 0, 1, 1, 1)), log=logs.append)
    assert sum("skipped" in m for m in logs) == 4, logs
    assert _digest(images) == before


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        run(tmp_path / "imgs", tmp_path / "out")
    with pytest.raises(ValueError, match="stop_after"):
        run(tmp_path / "imgs", tmp_path / "out", stop_after="nonsense")


def test_output_inside_the_images_is_a_one_line_cli_error(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from sceneforge.cli import main

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    assert main(["run", str(tmp_path / "imgs"), str(tmp_path / "imgs" / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sceneforge run: error: {tmp_path / 'imgs' / 'out'}: the output folder may not be "
        "inside the image folder"
    )
    assert not (tmp_path / "imgs" / "out").exists()


def test_run_trains_gaussians_from_the_reconstruction(demo_run, tmp_path):
    """``sceneforge run --model gaussians``: the Gaussians start from the reconstruction's
    sparse points (sfm/ -> field/), eval.json names the model."""
    out, _, _ = demo_run
    base = RunConfig()
    trainer = replace(base.train.trainer, downscale=4, progress=False, tensorboard=False)
    cfg = replace(base, model="gaussians", train=replace(base.train, max_steps=10, trainer=trainer))
    run(out / "input" / "images", tmp_path / "gs", cfg, log=lambda m: None, stop_after="train")
    ev = json.loads((tmp_path / "gs" / "field" / "eval.json").read_text())
    sfm = load_scene(tmp_path / "gs" / "sfm")
    assert ev["model"] == "gaussians" and ev["steps"] == 10
    assert ev["num_gaussians"] == len(sfm.points)  # no densification within 10 steps


def _path_values(obj, key: str = "") -> list[str]:
    """Every string under a key naming a path (``file_path``, ``ply_file_path``, ...)."""
    if isinstance(obj, dict):
        return [v for k, x in obj.items() for v in _path_values(x, k)]
    if isinstance(obj, list):
        return [v for x in obj for v in _path_values(x, key)]
    return [obj] if isinstance(obj, str) and key.endswith("path") else []


def test_out_is_self_contained_and_can_be_moved(demo_run, tmp_path):
    """Every path in transforms.json resolves inside OUT (the images are copied into
    OUT/images); a moved copy of OUT loads, images included, from its new place only."""
    out, _, _ = demo_run
    run_dir = out / "run"
    sfm = run_dir / "sfm"
    paths = _path_values(json.loads((sfm / "transforms.json").read_text()))
    assert len(paths) == 24 + 1  # 24 frames' file_path + the sparse points' ply_file_path
    for p in paths:
        resolved = (sfm / p).resolve()
        assert run_dir.resolve() in resolved.parents and resolved.is_file(), p
    # the copies are the inputs, byte for byte (256 px: below the reconstruction's size)
    assert _digest(run_dir / "images") == _digest(out / "input" / "images")
    moved = tmp_path / "elsewhere" / "shared"
    shutil.copytree(run_dir, tmp_path / "copy")
    shutil.move(tmp_path / "copy", moved)
    scene = load_scene(moved / "sfm")
    assert len(scene) == 24 and scene.points is not None
    assert all(moved.resolve() in Path(p).resolve().parents for p in scene.image_paths)
    assert scene.load_image(3).shape == (256, 256, 3)


def _report_links(report: str) -> list[str]:
    import re

    return re.findall(r'(?:src|href)="([^"]+)"', report)


def test_report_sections_and_files_inside_out(demo_run):
    """report.html: camera frusta, BA convergence, training with held-out PSNR, before/after
    completion and the render; every file it links lies inside OUT and exists."""
    out, _, _ = demo_run
    run_dir = out / "run"
    report = (run_dir / "report.html").read_text()
    for section in ("stages", "reconstruction", "training", "completion", "video"):
        assert f'<h2 id="{section}">' in report, section
    assert "report/cameras.png" in report and "Bundle-adjustment convergence" in report
    assert "Held-out PSNR: " in report
    links = _report_links(report)
    assert len(links) >= 6
    for rel in links:
        p = (run_dir / rel).resolve()
        assert run_dir.resolve() in p.parents and p.is_file(), rel
    from PIL import Image

    assert Image.open(run_dir / "report" / "cameras.png").size[0] >= 400


def test_run_renders_auto_path_embeds_the_video_and_survives_a_move(demo_run, tmp_path, capsys):
    """A small run through render: the auto camera path (orbit for this turntable), an mp4
    embedded in the report, report and video paths printed last; after moving OUT, render,
    eval and the viewer's folder choice still work."""
    from sceneforge.cli import main
    from sceneforge.viewer import folder_to_show

    out, _, _ = demo_run
    base = RunConfig()
    trainer = replace(base.train.trainer, downscale=8, progress=False, tensorboard=False)
    cfg = replace(
        base,
        model="gaussians",
        train=replace(base.train, max_steps=5, trainer=trainer),
        render=replace(base.render, num_frames=2, downscale=8),
    )
    assert cfg.render.path == "auto"
    o = tmp_path / "o"  # starts with the demo's images and reconstruction: SfM is skipped
    for name in ("images", "sfm"):
        shutil.copytree(out / "run" / name, o / name)
    done = json.loads((out / "run" / "stages.json").read_text())
    (o / "stages.json").write_text(json.dumps({"reconstruct": done["reconstruct"]}))
    logs: list[str] = []
    stages = run(out / "input" / "images", o, cfg, log=logs.append)
    assert stages["render"]["path"] == "orbit"
    assert "render: orbit camera path (the registered cameras are not forward-facing)" in logs
    assert logs[-3:] == [
        f"report: {o / 'report.html'}",
        f"video: {o / 'render' / 'video.mp4'}",
        f"log: {o / 'log.txt'}",
    ]
    report = (o / "report.html").read_text()
    assert (
        '<video controls loop muted autoplay playsinline width="560" src="render/video.mp4">'
        in report
    )
    assert "completion" not in report  # no completion ran
    moved = tmp_path / "shared" / "o"
    moved.parent.mkdir()
    shutil.move(o, moved)
    for rel in _report_links((moved / "report.html").read_text()):
        assert (moved / rel).is_file(), rel
    assert main(["render", str(moved), str(tmp_path / "r"), "--path", "interpolate"]) == 0
    assert "(interpolate path)" in capsys.readouterr().out
    assert (tmp_path / "r" / "video.mp4").is_file()
    assert main(["eval", str(moved), "--max-images", "1", "--downscale", "8"]) == 0
    assert folder_to_show(moved) == moved / "field"


def test_sfm_matching_names_the_pairs_above_the_exhaustive_limit():
    from sceneforge.pipeline import sfm_matching
    from sceneforge.recon.reconstruct import ReconstructConfig

    video = ReconstructConfig(sequential=True)
    small, large = sfm_matching(video, True, 40), sfm_matching(video, True, 400)
    assert small["pair_selection"] == "query" and "plus" in small["line"]
    assert large["pair_selection"] == "sequential" and "loop-closure" in large["line"]
    photos = sfm_matching(ReconstructConfig(), False, 400)
    assert photos["pair_selection"] == "retrieval" and "VLAD" in photos["line"]
