"""``sceneforge run`` logs the reconstruction's result and the completion's progress (steps,
rounds, ETA) to ``OUT/log.txt``: a tiny demo run with a completion of a few steps."""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from sceneforge.demo import DemoConfig, demo


def _log_text(path) -> list[str]:
    # each line: "YYYY-MM-DD HH:MM:SS message"
    return [ln.split(" ", 2)[2] for ln in path.read_text().splitlines()]


def test_completion_and_sfm_progress_reach_the_log_file(tmp_path):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = DemoConfig()
        cfg = replace(
            base,
            train_steps=20,
            downscale=8,
            min_psnr=0.0,
            complete_warmup_steps=4,
            complete_update_every=3,
            complete_rounds=2,
            run=replace(
                base.run,
                complete=replace(base.run.complete, progress=False),
                render=replace(base.run.render, num_frames=1, video=False),
            ),
        )
        messages: list[str] = []
        summary = demo(tmp_path, cfg, log=messages.append)
    finally:
        torch.set_num_threads(old)
    text = _log_text(tmp_path / "run" / "log.txt")
    # the reconstruction's result, not only its stage line
    assert any(re.match(r"reconstruct: registered 24/24 images", t) for t in text), text
    assert any(t.startswith("reconstruct: time ") and "tracks" in t for t in text)
    # completion: a first line once the fill masks are built, progress with an ETA, the
    # rounds named, and a last line once the outputs are written
    assert "[complete] ..." in text
    steps = [t for t in text if t.startswith("[complete] step ")]
    total = 4 + 3 + 3  # warm-up + one step block between the two rounds + final steps
    assert steps[0].startswith(f"[complete] step 0/{total} (0%)"), steps
    assert "of the pixels to fill" in steps[0] and "2 round(s)" in steps[0]
    assert all("ETA " in t for t in steps)
    done = [t for t in steps if t.startswith(f"[complete] step {total}/{total} (100%)")]
    assert any("after inpainting round 2/2" in t for t in done), steps
    assert done[-1].split("  ")[1] == "renders of 24 views written"
    assert text.index("[complete] ...") < text.index(steps[0])
    assert any(t.startswith("[complete] done in ") for t in text)
    # stdout is not a terminal here: the same progress lines reach the console too
    assert [m for m in messages if m.startswith("[complete] step ")] == steps
    assert summary["registered"] == "24/24"


def test_complete_reports_progress_through_its_optional_callback(tmp_path, one_thread):
    """``complete(..., progress=fn)`` calls ``fn(done, total, message)``: 0 once the fill masks
    are built, every step with the round, ``total`` after the outputs; None (the default)
    changes nothing."""
    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.nerf_model import NerfConfig
    from sceneforge.fields.sampling import SamplerConfig
    from sceneforge.fields.trainer import TrainerConfig
    from sceneforge.inpaint.complete import CompleteConfig, complete
    from sceneforge.inpaint.dataset_update import DatasetUpdateConfig

    scene = replace(turntable_scene(num_views=4, size=16, num_points=10), masks=None)
    tcfg = TrainerConfig(
        max_steps=3,
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=1,
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=16, grid_alpha_threshold=1e-3)),
    )
    train(None, tmp_path / "run", TrainConfig(trainer=tcfg, save_eval_images=False), scene=scene)
    mesh = scene.metadata["mesh"]
    v = mesh.vertices[mesh.faces[mesh.face_object == 0].reshape(-1)]
    box = tuple(v.min(0).values.tolist() + v.max(0).values.tolist())
    cfg = CompleteConfig(
        mask_box=box,
        inpainter="telea",
        progress=False,
        update=DatasetUpdateConfig(warmup_steps=2, update_every=1, num_rounds=2, final_steps=1),
    )
    calls: list[tuple[int, int, str]] = []
    info = complete(
        tmp_path / "run", tmp_path / "out", cfg, scene=scene, progress=lambda *a: calls.append(a)
    )
    total = 2 + 1 + 1
    assert info["steps"] >= total
    assert all(t == total for _, t, _ in calls)
    done = [d for d, _, _ in calls]
    assert done == sorted(done) and done[0] == 0 and done[-1] == total
    assert done[1:-1] == [1, 2, 3, 4], calls  # one call per completion step
    assert "telea" in calls[0][2] and "2 round(s)" in calls[0][2]
    assert [m.split("  ")[0] for _, _, m in calls[1:3]] == ["warm-up on the unmasked pixels"] * 2
    assert calls[3][2].startswith("after inpainting round 1/2")
    assert calls[-2][2].startswith("after inpainting round 2/2") and "loss " in calls[-2][2]
    assert calls[-1][2] == "renders of 4 views written"
    # without a callback: the same outputs
    info2 = complete(tmp_path / "run", tmp_path / "out2", cfg, scene=scene)
    assert info2["steps"] == info["steps"] and info2["rounds"] == info["rounds"]


def test_sfm_messages_reach_the_log_file(tmp_path, one_thread):
    """The reconstruction's own messages (loading, tracking, SfM, its result) go to
    ``OUT/log.txt`` as plain text, once, and not again to the caller's console callback (rich
    shows them there); a photo folder is matched as an unordered collection."""
    import json

    from sceneforge.core import run_files
    from sceneforge.demo import render_demo_images
    from sceneforge.pipeline import RunConfig, run
    from sceneforge.recon.reconstruct import ReconstructConfig
    from sceneforge.recon.sfm import SfMConfig

    render_demo_images(tmp_path, replace(DemoConfig(), num_views=16, size=192))
    images = tmp_path / run_files.DEMO_IMAGES_DIR
    assert len(list(images.iterdir())) == 16
    rcfg = ReconstructConfig(sfm=SfMConfig(num_threads=1), progress=False, write_png=False)
    cfg = RunConfig(device="cpu", reconstruct=rcfg)
    messages: list[str] = []
    stages = run(images, tmp_path / "out", cfg, log=messages.append, stop_after="reconstruct")
    n, reg = stages["reconstruct"]["num_images"], stages["reconstruct"]["num_registered"]
    assert n == 16 and reg >= 14
    text = _log_text(tmp_path / "out" / "log.txt")
    start = text.index("[reconstruct] ...")
    end = next(i for i, t in enumerate(text) if t.startswith("[reconstruct] done"))
    sfm = text[start:end]
    assert any(t.startswith("16 images loaded from ") for t in sfm), sfm
    assert any(re.match(r"features: \d+ keypoints in 16 images", t) for t in sfm), sfm
    assert any(re.match(r"matching: \d+ pairs, \d+ matches", t) for t in sfm), sfm
    assert any(re.match(r"two-view: \d+/\d+ pairs verified", t) for t in sfm), sfm
    assert any(re.match(rf"registered {reg}/16 images, \d+ points, ", t) for t in sfm), sfm
    assert not any("[green]" in t or "[yellow]" in t for t in sfm)
    # the summary's lines still follow, and the console callback got no duplicates
    assert any(t.startswith(f"reconstruct: registered {reg}/16 images") for t in text)
    assert not any(re.match(r"matching: \d+ pairs", m) for m in messages)
    assert sum(t.startswith(f"registered {reg}/16 images") for t in text) == 1
    assert "  sfm matching: unordered photos: 8 query images with every image" in text
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["sfm_matching"]["sequential"] is False and plan["sfm_matching"]["video"] is False
    assert stages["reconstruct"]["matching"]["neighbor_frames"] == 1


def test_complete_command_shows_progress_and_writes_the_log(tmp_path, one_thread, capsys):
    """``sceneforge complete``: progress lines with an ETA on a non-terminal stdout and in
    ``OUT_DIR/log.txt``, then the summary as a table (not a dict)."""
    from sceneforge.cli import main
    from sceneforge.core.io import save_scene
    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.nerf_model import NerfConfig
    from sceneforge.fields.sampling import SamplerConfig
    from sceneforge.fields.trainer import TrainerConfig

    scene = replace(turntable_scene(num_views=4, size=16, num_points=10), masks=None)
    save_scene(scene, tmp_path / "scene", "nerfstudio")
    tcfg = TrainerConfig(
        max_steps=3,
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=16, grid_alpha_threshold=1e-3)),
    )
    train(tmp_path / "scene", tmp_path / "run", TrainConfig(trainer=tcfg, save_eval_images=False))
    mesh = scene.metadata["mesh"]
    v = mesh.vertices[mesh.faces[mesh.face_object == 0].reshape(-1)]
    box = [f"{x:.6f}" for x in v.min(0).values.tolist() + v.max(0).values.tolist()]
    updates = ["--update.warmup-steps", "2", "--update.update-every", "1"]
    updates += ["--update.num-rounds", "2", "--update.final-steps", "1"]
    out = tmp_path / "out"
    args = ["complete", str(tmp_path / "run"), str(out), "--mask-box", *box]
    args += ["--inpainter", "telea", "--no-progress", "--device", "cpu", *updates]
    assert main(args) == 0
    printed = capsys.readouterr().out
    text = _log_text(out / "log.txt")
    steps = [t for t in text if t.startswith("[complete] step ")]
    assert steps[0].startswith("[complete] step 0/4 (0%)") and "telea" in steps[0], text
    assert steps[-1].startswith("[complete] step 4/4 (100%)") and all("ETA " in t for t in steps)
    assert [ln for ln in printed.splitlines() if ln.startswith("[complete] step ")] == steps
    assert "{'" not in printed and any(ln.startswith("steps ") for ln in printed.splitlines()), (
        printed
    )


def test_trainer_progress_counts_seconds_under_a_time_budget(tmp_path):
    from types import SimpleNamespace

    from sceneforge.core.progress import RunLog, trainer_progress

    lines: list[str] = []
    log = RunLog(tmp_path / "log.txt", console=lines.append, interval_s=0.0)
    fake = SimpleNamespace(step=0, wall_s=0.0, history=[], config=None)
    for schedule, total in (("time", 90), ("steps", 400)):
        fake.config = SimpleNamespace(schedule=schedule, max_seconds=89.5, max_steps=400)
        with log.task("train", 0) as task:
            hook = trainer_progress(task)
            fake.step, fake.wall_s = 10, 30.0
            hook(fake)
            assert task.total == total
            assert task.done == (30 if schedule == "time" else 10)
    assert any("second 30/90" in ln and "step 10" in ln for ln in lines)  # seconds, and the step
