"""``sceneforge eval`` (full-size held-out metrics, versioned eval.json, LPIPS from local
weights), mp4 videos of ``render`` and the progress log of training / rendering, on a tiny
trained run (9 views of 32x32, 20 steps: seconds)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from sceneforge.cli import main
from sceneforge.core.atomic import write_json_versioned
from sceneforge.core.io import save_scene
from sceneforge.core.progress import RunLog, format_seconds, trainer_progress
from sceneforge.core.synthetic import turntable_scene
from sceneforge.eval_run import LPIPS, EvalConfig, EvalError, evaluate_run
from sceneforge.fields import api
from sceneforge.fields.api import (
    RenderConfig,
    TrainConfig,
    render,
    train,
    train_hooks,
    write_video,
)
from sceneforge.fields.trainer import TrainerConfig

STEPS = 20


def _train_config(**kw) -> TrainConfig:
    trainer = TrainerConfig(
        batch_rays=256,
        scene_box="bounded",
        use_masks=False,
        progress=False,
        tensorboard=False,
        num_threads=1,
        checkpoint_every=0,
        log_every=5,
    )
    return TrainConfig(max_steps=STEPS, trainer=trainer, save_eval_images=False, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A scene folder (nerfstudio format) and a run trained on it with a progress log."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    scene_dir = save_scene(turntable_scene(num_views=9, size=32), root / "scene", "nerfstudio")
    lines: list[str] = []
    log = RunLog(root / "log.txt", console=lines.append, interval_s=0.0, terminal=False)
    with log.task("train", 0, own_bar=True) as task:
        with train_hooks((1, trainer_progress(task))):
            train(scene_dir, root / "run", _train_config())
    return scene_dir, root / "run", root / "log.txt", lines


def _frames(n: int, h: int, w: int) -> list[torch.Tensor]:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return [torch.stack([x, y, torch.full_like(x, k / max(n - 1, 1))], -1) for k in range(n)]


# ----------------------------------------------------------------------------- video


def test_write_video_is_an_h264_mp4_with_even_size(tmp_path):
    frames = _frames(7, 33, 47)  # odd sizes: padded by one pixel
    path = write_video(frames, tmp_path / "video.mp4", fps=12)
    assert path == tmp_path / "video.mp4"
    back = iio.imread(path, plugin="FFMPEG", index=None)
    assert back.shape == (7, 34, 48, 3)
    meta = iio.immeta(path, plugin="FFMPEG")
    assert meta["codec"] == "h264" and meta["fps"] == 12
    ref = np.stack([(f.numpy() * 255).round() for f in frames])
    err = np.abs(back[:, :33, :47].astype(float) - ref).mean()
    assert err < 6, err  # smooth gradients survive the lossy codec
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]  # no temporary file left


def test_write_video_replaces_atomically_and_rejects_bad_input(tmp_path, monkeypatch):
    path = tmp_path / "video.mp4"
    write_video(_frames(3, 16, 16), path, fps=24)
    before = path.read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sceneforge.core.atomic.os.replace", disk_full)
    with pytest.raises(OSError, match="video.mp4"):
        write_video(_frames(5, 16, 16), path, fps=24)
    assert path.read_bytes() == before  # the previous video is intact
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="no frames"):
        write_video([], path, fps=24)
    with pytest.raises(ValueError, match="frame rate"):
        write_video(_frames(2, 8, 8), path, fps=0)


def test_gif_fallback_warns_without_an_mp4_writer(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api, "_mp4_writer", lambda: None)
    path = write_video(_frames(4, 9, 11), tmp_path / "video.mp4", fps=10)
    assert path == tmp_path / "video.gif"
    assert "no mp4 writer installed" in capsys.readouterr().err
    assert iio.imread(path, index=None).shape[:3] == (4, 9, 11)


def test_render_writes_a_readable_mp4_with_every_frame(trained, tmp_path):
    scene_dir, run, _, _ = trained
    done: list[tuple[int, int]] = []
    cfg = RenderConfig(num_frames=5, fps=10, depth=False)
    res = render(run, tmp_path / "r", cfg, progress=lambda k, n: done.append((k, n)))
    assert res["video"] == str(tmp_path / "r" / "video.mp4")
    back = iio.imread(res["video"], plugin="FFMPEG", index=None)
    assert back.shape == (5, 32, 32, 3)
    assert done == [(k, 5) for k in range(1, 6)]


def test_render_command_shows_progress_and_the_video_path(trained, tmp_path, capsys):
    _, run, _, _ = trained
    out = tmp_path / "cli"
    assert main(["render", str(run), str(out), "--num-frames", "2", "--no-depth"]) == 0
    text = capsys.readouterr().out
    assert "[render] frame 2/2 (100%)" in text  # stdout is not a terminal here
    assert f"video: {out / 'video.mp4'}" in text
    assert iio.imread(out / "video.mp4", plugin="FFMPEG", index=None).shape[0] == 2
    logged = (out / "log.txt").read_text()
    assert "[render] frame 2/2 (100%)" in logged and "video: " in logged


def test_train_command_prints_a_table_not_a_dict(trained, tmp_path, capsys):
    from sceneforge.commands import table

    scene_dir, _, _, _ = trained
    flags = ["--max-steps", "3", "--trainer.no-progress", "--trainer.no-tensorboard"]
    flags += ["--trainer.scene-box", "bounded", "--trainer.batch-rays", "256"]
    assert main(["train", str(scene_dir), str(tmp_path / "r"), *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = dict(ln.split(None, 1) for ln in out[:-1])
    assert rows["steps"] == "3" and rows["model"] == "nerf" and float(rows["psnr"]) > 0
    assert out[-1] == f"wrote {tmp_path / 'r' / 'eval.json'}" and "{" not in "".join(out)
    values = {"a": 1.23456, "bb": [1, 2], "c": {"x": 2.0}, "d": None}
    assert table(values) == "a  1.235"  # default: numbers and strings only
    assert table(values, ("c", "bb", "a", "missing")) == "c   x 2\nbb  [1, 2] (2)\na   1.235"


# ----------------------------------------------------------------------------- progress log


def test_training_progress_goes_to_the_log_file(trained):
    _, _, log_file, lines = trained
    text = log_file.read_text()
    steps = [ln for ln in text.splitlines() if "[train] step" in ln]
    assert len(steps) == STEPS  # interval 0: every step, the last one included
    assert steps[-1].split(" ", 2)[2].startswith(f"[train] step {STEPS}/{STEPS} (100%)")
    assert "loss 0." in steps[-1] and "ETA 0s" in steps[-1]
    # not a terminal: the same lines reach the console
    assert [ln for ln in lines if "[train] step" in ln] == [s.split(" ", 2)[2] for s in steps]


def test_run_log_interval_and_terminal(tmp_path):
    console: list[str] = []
    log = RunLog(tmp_path / "sub" / "log.txt", console=console.append, interval_s=3600.0)
    log.terminal = True
    log("stage message")
    with log.task("render", 4, unit="frame", own_bar=True) as task:
        for k in range(1, 5):
            task.update(k)
    written = (tmp_path / "sub" / "log.txt").read_text().splitlines()
    # first and last unit only (the interval is an hour); a terminal gets no progress lines
    assert [w.split(" ", 2)[2] for w in written][0] == "stage message"
    assert [w.split(" ", 2)[2].split("  ")[0] for w in written[1:]] == [
        "[render] frame 1/4 (25%)",
        "[render] frame 4/4 (100%)",
    ]
    assert console == ["stage message"]
    assert format_seconds(3725) == "1h02m05s" and format_seconds(math.nan) == "?"


# ----------------------------------------------------------------------------- eval


def test_eval_full_size_writes_a_new_version(trained, capsys):
    _, run, _, _ = trained
    train_eval = (run / "eval.json").read_text()
    assert main(["eval", str(run), "--max-images", "1"]) == 0
    out = capsys.readouterr().out
    assert "PSNR (dB)" in out and "SSIM" in out and "eval.v002.json" in out
    res = json.loads((run / "eval.v002.json").read_text())
    assert (run / "eval.json").read_text() == train_eval  # training's result kept
    assert res["num_eval_images"] == 1 and res["image_size"] == [32, 32]
    assert res["steps"] == STEPS and res["downscale"] == 1
    assert 5 < res["psnr"] < 60 and 0 < res["ssim"] <= 1
    assert res["views"][0]["name"].endswith(".png") and "lpips" not in res
    # the metric is the full-size render's: compare with a direct computation
    from sceneforge.core.metrics import psnr
    from sceneforge.fields.api import load_trained

    tr = load_trained(run)
    i = tr.eval_indices[0]
    direct = psnr(tr.render_camera(tr.scene.cameras, i, downscale=1)["rgb"], tr.scene.load_image(i))
    assert res["psnr"] == pytest.approx(direct, abs=1e-4)
    assert main(["eval", str(run), "--max-images", "1", "--downscale", "2"]) == 0
    res3 = json.loads((run / "eval.v003.json").read_text())
    assert res3["image_size"] == [16, 16]


def _lpips_weights(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    convs = [(0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)]
    for k, (idx, cin, cout, ks) in enumerate(convs):
        state[f"net.slice{k + 1}.{idx}.weight"] = torch.randn(cout, cin, ks, ks, generator=g) * 0.05
        state[f"net.slice{k + 1}.{idx}.bias"] = torch.zeros(cout)
        state[f"lin{k}.model.1.weight"] = torch.rand(1, cout, 1, 1, generator=g)
    torch.save(state, path)
    return state


def test_lpips_from_local_weights(trained, tmp_path):
    _, run, _, _ = trained
    weights = tmp_path / "alex.pth"
    _lpips_weights(weights)
    lp = LPIPS(weights)
    a = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))
    b = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(2))
    assert lp(a, a) == pytest.approx(0.0, abs=1e-9)
    assert lp(a, b) > 0 and lp(a, b) == pytest.approx(lp(b, a), rel=1e-5)
    assert lp(a, a.mul(0.98)) < lp(a, b)
    res, path = evaluate_run(
        run, EvalConfig(max_images=1, lpips_weights=weights, out=tmp_path / "e.json"), log=print
    )
    assert path == tmp_path / "e.json" and res["lpips"] > 0
    assert json.loads(path.read_text())["views"][0]["lpips"] == pytest.approx(res["lpips"])


def test_eval_bad_inputs_name_the_file(trained, tmp_path, capsys):
    _, run, _, _ = trained
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, bad)
    with pytest.raises(EvalError, match=r"bad.pth: LPIPS weights lack 'net.slice1.0.weight'"):
        LPIPS(bad)
    (tmp_path / "junk.pth").write_text("not torch")
    with pytest.raises(EvalError, match="junk.pth: not a readable LPIPS weights file"):
        LPIPS(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth: LPIPS weights file not found"):
        LPIPS(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "empty: no checkpoint.pt" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", str(run), "--downscale", "0"]) == 1
    assert "--downscale must be >= 1" in capsys.readouterr().err


def test_write_json_versioned_never_overwrites(tmp_path):
    p = tmp_path / "eval.json"
    paths = [write_json_versioned(p, {"n": n}) for n in range(3)]
    assert [q.name for q in paths] == ["eval.json", "eval.v002.json", "eval.v003.json"]
    assert [json.loads(q.read_text())["n"] for q in paths] == [0, 1, 2]
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(q.name for q in paths)


# ----------------------------------------------------------------------------- moved runs


def test_a_moved_run_folder_finds_its_scene(tmp_path):
    """source.json names the scene relative to the run folder when it lies beside it: after
    the folder holding both is moved, load_trained, render and eval find the scene in the
    new place (the old one is gone); an old absolute-only source.json still loads."""
    import shutil

    from sceneforge.fields.api import load_trained, scene_source

    torch.set_num_threads(1)
    old = tmp_path / "old"
    scene_dir = save_scene(turntable_scene(num_views=9, size=16), old / "sfm", "nerfstudio")
    train(scene_dir, old / "field", replace(_train_config(), max_steps=3))
    rec = json.loads((old / "field" / "source.json").read_text())
    assert rec["scene_dir_relative"] == "../sfm" and rec["scene_dir"] == str(scene_dir.resolve())
    new = tmp_path / "elsewhere" / "new"
    new.parent.mkdir()
    shutil.move(old, new)
    assert not old.exists()
    assert scene_source(new / "field") == new / "sfm"
    tr = load_trained(new / "field")
    assert all(str(new) in str(p) for p in tr.scene.image_paths)
    res = render(new / "field", tmp_path / "r", RenderConfig(num_frames=2, depth=False))
    assert res["num_frames"] == 2
    assert main(["eval", str(new / "field"), "--max-images", "1"]) == 0
    # a source.json copied into a sibling run folder (as completion does) keeps naming the
    # scene of the folder it was written for while that exists
    (new / "complete").mkdir()
    shutil.copy(new / "field" / "source.json", new / "complete" / "source.json")
    assert scene_source(new / "complete") == new / "sfm"
    # the old format: an absolute path only
    (new / "field" / "source.json").write_text(json.dumps({"scene_dir": str(new / "sfm")}))
    assert scene_source(new / "field") == new / "sfm"
    (new / "field" / "source.json").write_text(json.dumps({"scene_dir": str(old / "sfm")}))
    with pytest.raises(Exception, match=r"source.json: the scene folder it names does not exist"):
        load_trained(new / "field")


def test_a_scene_far_from_the_run_is_recorded_absolute_only(trained):
    scene_dir, run, _, _ = trained  # root/scene and root/run: siblings, so relative
    rec = json.loads((run / "source.json").read_text())
    assert rec["scene_dir_relative"] == "../scene"
    from sceneforge.fields.api import source_record

    far = source_record(scene_dir, run / "deeper" / "run")
    assert far == {"scene_dir": str(scene_dir.resolve())}


# ----------------------------------------------------------------------------- camera paths


@pytest.mark.parametrize("path", ["spiral", "interpolate", "auto", "train"])
def test_render_camera_paths(trained, tmp_path, path):
    _, run, _, _ = trained
    cfg = RenderConfig(path=path, num_frames=3, depth=False, video=False)
    res = render(run, tmp_path / path, cfg)
    want = {"auto": "orbit", "train": "train"}.get(path, path)  # a turntable: orbit
    assert res["path"] == want
    n = 7 if path == "train" else 3  # 9 views, 2 held out
    assert res["num_frames"] == n and len(list((tmp_path / path / "frames").glob("*.png"))) == n


def test_render_a_camera_path_file(trained, tmp_path, capsys):
    from sceneforge.fields.api import load_trained
    from sceneforge.fields.camera_paths import write_camera_path

    _, run, _, _ = trained
    tr = load_trained(run)
    cams = tr.scene.cameras[[1, 2]]
    f = write_camera_path(tmp_path / "camera_path.json", cams)
    assert main(["render", str(run), str(tmp_path / "r"), "--path", f"file:{f}", "--no-depth"]) == 0
    assert "2 frames" in capsys.readouterr().out
    frames = sorted((tmp_path / "r" / "frames").glob("*.png"))
    got = iio.imread(frames[1]).astype(float) / 255
    want = tr.render_camera(tr.scene.cameras, 2, downscale=1)["rgb"].numpy()
    assert got.shape == (32, 32, 3)  # the file's own size
    assert np.abs(got - want).mean() < 2 / 255
    assert main(["render", str(run), str(tmp_path / "x"), "--path", "sideways"]) == 1
    assert "unknown camera path 'sideways'" in capsys.readouterr().err


def test_auto_path_of_a_forward_facing_capture_is_a_spiral(tmp_path):
    """A forward-facing (LLFF-like) capture: ``auto`` renders a spiral around the mean camera,
    its frames looking the way the photos do."""
    from sceneforge.core.synthetic import forward_scene
    from sceneforge.fields.api import load_trained, path_cameras
    from sceneforge.fields.camera_paths import view_directions

    torch.set_num_threads(1)
    scene_dir = save_scene(forward_scene(num_views=9, size=16), tmp_path / "scene", "nerfstudio")
    train(scene_dir, tmp_path / "run", replace(_train_config(), max_steps=2))
    res = render(tmp_path / "run", tmp_path / "r", RenderConfig(path="auto", num_frames=3))
    assert res["path"] == "spiral" and res["num_frames"] == 3
    tr = load_trained(tmp_path / "run")
    cams, name = path_cameras(tr, "auto", 12)
    assert name == "spiral"
    mean_dir = view_directions(tr.scene.cameras).mean(0)
    cos = view_directions(cams) @ (mean_dir / mean_dir.norm())
    assert float(cos.min()) > math.cos(math.radians(20))
