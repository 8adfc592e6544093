"""``sceneforge human`` (issue 20's capture pipeline) end to end on a tiny synthetic clip: a
tiny SMPL-format body written here, 6 frames of 32 px, ground-truth 2D detections injected
(the projected landmarks of the true body), a few training steps. Checks the outputs, the
resume (finished stages skipped, training continued from its checkpoint), bad inputs and
interrupted stages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sceneforge.cli import main
from sceneforge.core.image_io import ImageReadError, write_image_atomic
from sceneforge.fields.rendering import RenderConfig
from sceneforge.stylize.human import SMPLModel
from sceneforge.stylize.human.capture import (
    HumanCaptureConfig,
    HumanCaptureError,
    HumanTrainConfig,
    capture_human,
    split_frames,
    static_camera,
)
from sceneforge.stylize.human.detections import PoseDetections, read_detections
from sceneforge.stylize.human.field import Human4DConfig, HumanTrainerConfig
from sceneforge.stylize.human.fit import FitConfig, to_landmarks
from sceneforge.stylize.human.synthetic import HumanVideoConfig, make_human_video

SIZE, FRAMES, FOV = 32, 6, 45.0
FOCAL = SIZE / 2 / math.tan(math.radians(FOV) / 2)
NOBODY = "00005.png"  # the ground-truth detector finds no person there


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """Skinning grids into a temporary cache folder, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCENEFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def video(body_dir):
    body = SMPLModel.from_path(body_dir, dtype=torch.float64)
    cfg = HumanVideoConfig(
        size=SIZE, num_frames=FRAMES, fps=8.0, heldout_frames=0, heldout_views=0, ssaa=1,
        fov_deg=FOV,
    )  # fmt: skip
    return make_human_video(body, cfg)


@pytest.fixture(scope="module")
def clip(video, tmp_path_factory):
    """The video as a folder of PNG frames (``00000.png`` ...)."""
    folder = tmp_path_factory.mktemp("clip")
    for i in range(FRAMES):
        write_image_atomic(folder / f"{i:05d}.png", video.train.images[i].permute(1, 2, 0))
    return folder


def _frame_index(path) -> int:
    return int("".join(c for c in path.stem if c.isdigit()))


def truth_detector(video, missing: tuple[str, ...] = (NOBODY,)):
    """Detections from the true body's projected landmarks and masks; nobody in ``missing``."""

    def detect(paths):
        idx = [_frame_index(p) for p in paths]
        kp, conf = to_landmarks(video.train.keypoints_2d[idx].float(), video.keypoint_ids)
        found = torch.tensor([p.name not in missing for p in paths])
        conf = conf * found[:, None]
        masks = video.train.masks[idx]
        return PoseDetections(kp, conf, found, (SIZE, SIZE), masks, "ground truth")

    return detect


def _config(body_dir, steps: int = 4, **kw) -> HumanCaptureConfig:
    trainer = HumanTrainerConfig(
        batch_rays=256, device="cpu", num_threads=1, holdout_every=0, progress=False,
        tensorboard=False, log_every=0, checkpoint_every=0, render=RenderConfig(),
        human4d=Human4DConfig(grid_resolution=24, human_samples=12, background_samples=12),
    )  # fmt: skip
    kw.setdefault("fit", FitConfig(fit_shape=False, stage2_iters=150, mask_iters=5))
    return HumanCaptureConfig(
        max_frames=8, min_frames=3, body_model="smpl", body_model_path=str(body_dir),
        focal_px=FOCAL, orbit_views=2, motion="wave", motion_frames=2, fps=4,
        render_downscale=2, train=HumanTrainConfig(steps=steps, heldout_every=3, trainer=trainer),
        **kw,
    )  # fmt: skip


def _no_temps(folder) -> list:
    return [p for p in folder.rglob(".*") if "tmp" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def captured(clip, video, body_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    lines: list[str] = []
    summary = capture_human(clip, out, _config(body_dir), truth_detector(video), lines.append)
    return out, summary, lines


def test_capture_writes_every_output(captured):
    out, s, _ = captured
    assert len(list((out / "frames").glob("*.png"))) == FRAMES
    assert (out / "fit.json").is_file() and (out / "scene.json").is_file()
    assert (out / "train" / "checkpoint.pt").is_file()
    det = read_detections(out / "detections.npz")
    assert len(det) == FRAMES and not bool(det.found[FRAMES - 1])
    for name, n in (("input", FRAMES - 1), ("orbit", 2), ("new_pose", 2)):
        pngs = sorted((out / "renders" / name).glob("*.png"))
        assert len(pngs) == n, name
        assert (out / "renders" / name / "video.mp4").is_file() or (
            out / "renders" / name / "video.gif"
        ).is_file()
    on_disk = json.loads((out / "human.json").read_text())
    assert on_disk["frames_used"] == s["frames_used"]
    assert s["frames"] == FRAMES and NOBODY not in s["frames_used"]
    assert s["frames_dropped"] == {NOBODY: "no person found"}
    assert s["focal_px"] == pytest.approx(FOCAL) and not s["focal_guessed"]
    assert any("moving camera is not supported" in n for n in s["notes"])
    # exact landmarks of a body the fit can represent: sub-pixel (measured 0.08 px)
    assert s["fit_reprojection_error_px"] < 0.5
    assert s["train_steps"] == 4
    assert s["heldout_frames"] == ["00001.png"]
    assert math.isfinite(s["heldout_person_psnr"]) and math.isfinite(s["heldout_psnr"])
    assert not _no_temps(out)


def test_rerun_skips_finished_stages_and_continues_training(captured, clip, video, body_dir):
    out, _, _ = captured
    watched = [
        out / "frames" / "00000.png",
        out / "detections.npz",
        out / "fit.json",
        out / "scene.json",
        out / "train" / "checkpoint.pt",
        out / "renders" / "input" / "0000.png",
    ]
    before = {p: p.stat().st_mtime_ns for p in watched}
    lines: list[str] = []
    capture_human(clip, out, _config(body_dir), truth_detector(video), lines.append)
    skipped = [ln for ln in lines if ln.endswith("skipped")]
    assert len(skipped) == 6, lines
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    # more steps: the earlier stages stay, training continues from the checkpoint (also when
    # the record of the training stage is missing, as after a kill past a checkpoint)
    state = json.loads((out / "human_stages.json").read_text())
    del state["train"], state["render"]
    (out / "human_stages.json").write_text(json.dumps(state))
    lines.clear()
    s = capture_human(clip, out, _config(body_dir, steps=6), truth_detector(video), lines.append)
    assert any("continuing from" in ln and "at step 4" in ln for ln in lines), lines
    assert s["train_steps"] == 6
    state = json.loads((out / "human_stages.json").read_text())
    assert state["train"]["started_at_step"] == 4 and state["train"]["steps"] == 6
    for p in watched[:4]:
        assert p.stat().st_mtime_ns == before[p], p
    assert (out / "train" / "checkpoint.pt").stat().st_mtime_ns > before[watched[4]]


def test_load_capture_restores_the_trained_run(captured, body_dir):
    from sceneforge.stylize.human.capture_run import load_capture

    out = captured[0]
    s = json.loads((out / "human.json").read_text())  # an earlier test may have trained on
    cfg = _config(body_dir)
    run = load_capture(out, cfg)
    assert run.kept_names == s["frames_used"] and run.trainer.step == s["train_steps"]
    assert run.frames.shape[0] == len(run.kept) == len(run.fit)
    assert [run.kept_names[i] for i in run.heldout] == s["heldout_frames"]
    k = run.train[1]
    img = run.trainer.render_camera(run.camera, 0, -1, cfg.render_downscale, frame=k)["rgb"]
    png = np.asarray(Image.open(out / "renders" / "input" / f"{k:04d}.png")) / 255.0
    assert np.abs(img.numpy() - png).max() < 2 / 255  # the same model as the capture's renders


def test_time_budget_continues_with_a_larger_budget(clip, video, body_dir, tmp_path):
    out = tmp_path / "out"
    cfg = _config(body_dir, steps=0)
    cfg.train.max_seconds = 1.0
    a = capture_human(clip, out, cfg, truth_detector(video), lambda _: None)
    first = json.loads((out / "human_stages.json").read_text())["train"]
    assert first["wall_s"] >= 1.0 and a["train_steps"] > 0
    again = capture_human(clip, out, cfg, truth_detector(video), lambda _: None)
    assert again["train_steps"] == a["train_steps"]  # the same budget: nothing to do
    cfg.train.max_seconds = 2.0
    more = capture_human(clip, out, cfg, truth_detector(video), lambda _: None)
    rec = json.loads((out / "human_stages.json").read_text())["train"]
    assert more["train_steps"] > a["train_steps"] and rec["started_at_step"] == a["train_steps"]
    assert 2.0 <= rec["wall_s"] < 2.0 + first["wall_s"]  # the budget counts the first call


def test_no_person_anywhere(clip, video, body_dir, tmp_path):
    out = tmp_path / "out"
    nobody = truth_detector(video, tuple(f"{i:05d}.png" for i in range(FRAMES)))
    with pytest.raises(HumanCaptureError, match="no person found in any of its 6 frames") as e:
        capture_human(clip, out, _config(body_dir), nobody, lambda m: None)
    assert str(clip) in str(e.value) and "00003.png" in str(e.value)
    assert not (out / "detections.npz").exists() and not _no_temps(out)
    state = json.loads((out / "human_stages.json").read_text())
    assert list(state) == ["frames"]  # the finished stage only


def test_too_few_frames(clip, video, body_dir, tmp_path):
    few = truth_detector(video, tuple(f"{i:05d}.png" for i in range(2, FRAMES)))
    with pytest.raises(HumanCaptureError, match=r"in 2 of 6 frames \(00000.png, 00001.png\)"):
        capture_human(clip, tmp_path / "out", _config(body_dir), few, lambda m: None)
    assert not (tmp_path / "out" / "detections.npz").exists()


def test_bad_inputs(clip, video, body_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match="no image files") as e:
        capture_human(empty, tmp_path / "o1", _config(body_dir), truth_detector(video), print)
    assert str(empty) in str(e.value)
    assert not (tmp_path / "o1" / "frames").exists() and not _no_temps(tmp_path / "o1")
    nothing = tmp_path / "not_smpl"
    nothing.mkdir()
    cfg = _config(body_dir)
    cfg.body_model_path = str(nothing)
    with pytest.raises(FileNotFoundError, match="SMPL_NEUTRAL.npz") as e:
        capture_human(clip, tmp_path / "o2", cfg, truth_detector(video), print)
    assert str(nothing) in str(e.value) and not (tmp_path / "o2").exists()
    # the same through the CLI: one line naming the path, exit status 1
    args = ["human", str(clip), str(tmp_path / "o3"), "--body-model", "smpl"]
    assert main([*args, "--body-model-path", str(nothing)]) == 1
    with pytest.raises(HumanCaptureError, match="no such video file or folder"):
        capture_human(tmp_path / "missing.mp4", tmp_path / "o4", _config(body_dir))


class _Stop(KeyboardInterrupt):
    pass


def test_interrupted_stages_leave_nothing_half_written(
    clip, video, body_dir, tmp_path, monkeypatch
):
    out = tmp_path / "out"

    def killed(paths):
        raise _Stop

    with pytest.raises(_Stop):
        capture_human(clip, out, _config(body_dir), killed, lambda m: None)
    assert (out / "frames").is_dir() and not (out / "detections.npz").exists()
    assert "detections" not in json.loads((out / "human_stages.json").read_text())
    # the frames stage killed after writing a frame: no frames folder, no temporary one
    import sceneforge.core.video_input as vi

    def copy_one_then_die(src, dst, *a, **k):
        write_image_atomic(dst / "00000.png", torch.zeros(4, 4, 3))
        raise _Stop

    monkeypatch.setattr(vi, "copy_images", copy_one_then_die)
    with pytest.raises(_Stop):
        capture_human(clip, tmp_path / "o2", _config(body_dir), killed, lambda m: None)
    assert not (tmp_path / "o2" / "frames").exists() and not _no_temps(tmp_path / "o2")


def test_video_input_frames(clip, video, body_dir, tmp_path):
    """A video file: its frames (all of them here: one per window) land in OUT/frames."""
    from sceneforge.fields.api import write_video

    mp4 = write_video([video.train.images[i].permute(1, 2, 0) for i in range(FRAMES)],
                      tmp_path / "clip.mp4", 8)  # fmt: skip
    if mp4.suffix != ".mp4":
        pytest.skip("no mp4 writer installed")
    seen = []

    def stop(paths):
        seen.extend(paths)
        raise HumanCaptureError("stopped after the frames")

    with pytest.raises(HumanCaptureError, match="stopped"):
        capture_human(mp4, tmp_path / "out", _config(body_dir), stop, lambda m: None)
    assert [p.name for p in seen] == [f"frame_{i:05d}.jpg" for i in range(FRAMES)]
    assert all(p.is_file() and p.parent == tmp_path / "out" / "frames" for p in seen)


def test_camera_and_split():
    cam = static_camera(640, 480, None, 60.0)  # the default field-of-view guess
    fx, fy, cx, cy = cam.params[0].tolist()
    assert fx == pytest.approx(320 / math.tan(math.radians(30))) and fx == fy
    assert (cx, cy) == (320, 240)
    torch.testing.assert_close(cam.cam_from_world[0], torch.eye(3, 4, dtype=torch.float64))
    assert split_frames(10, 4) == ([0, 1, 3, 4, 5, 7, 8, 9], [2, 6])
    assert split_frames(2, 3) == ([0, 1], []) and split_frames(5, 0)[1] == []
    with pytest.raises(HumanCaptureError, match="focal_px"):
        static_camera(64, 64, -1.0, 60.0)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["human", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: sceneforge human" in text
    for flag in ("--body-model-path", "--focal-px", "--train.steps", "--motion", "--resume"):
        assert flag in text, flag


# ----------------------------------------------------------------------------- report


def test_report_names_frames_and_shows_existing_overlays(captured):
    import re

    out = captured[0]
    s = json.loads((out / "human.json").read_text())  # an earlier test may have trained on
    text = (out / "report.html").read_text()
    for name in s["frames_used"]:
        assert name in text, name
    assert NOBODY in text and "no person found" in text
    assert f"{s['frames_used'][0]}: fit error " in text  # the overlay captions
    assert f"{s['fit_reprojection_error_px']:.2f} px" in text
    assert f"{s['heldout_person_psnr']:.2f} dB" in text and "given" in text
    overlays = sorted((out / "renders" / "fit_overlay").glob("*.png"))
    assert len(overlays) == len(s["frames_used"])
    srcs = re.findall(r'src="([^"]+)"', text)
    assert any(p.startswith("renders/fit_overlay/") and p.endswith(".png") for p in srcs), srcs
    assert any(p.startswith("renders/orbit/") for p in srcs), srcs
    for p in srcs:  # relative, inside OUT, existing
        assert not p.startswith("/") and (out / p).is_file(), p


def test_report_and_overlays_without_the_render_stage(captured, clip, video, body_dir):
    import shutil

    out = captured[0]
    s = json.loads((out / "human.json").read_text())
    shutil.rmtree(out / "renders" / "fit_overlay")
    (out / "report.html").unlink()
    cfg = _config(body_dir, steps=s["train_steps"], render=False)
    lines: list[str] = []
    capture_human(clip, out, cfg, truth_detector(video), lines.append)
    assert any("[render] skipped" in ln for ln in lines)
    assert len(list((out / "renders" / "fit_overlay").glob("*.png"))) == len(s["frames_used"])
    assert "renders/fit_overlay/0000.png" in (out / "report.html").read_text()
    assert not _no_temps(out)


def test_overlay_changes_exactly_the_projected_body(captured, body_dir):
    from sceneforge.core.meshes import Mesh
    from sceneforge.core.raster import render_view
    from sceneforge.stylize.human.capture_report import ALPHA, DOT_COLOR, TINT, overlay_fit
    from sceneforge.stylize.human.fit import read_fit

    out = captured[0]
    fit = read_fit(out / "fit.json")
    body = SMPLModel.from_path(body_dir, dtype=torch.float64)
    cam = static_camera(SIZE, SIZE, FOCAL, FOV)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, (len(fit), SIZE, SIZE, 3), dtype=np.uint8)  # darker than the body
    ov = overlay_fit(frames, body, fit, cam)
    assert ov.shape == frames.shape and ov.dtype == np.uint8
    changed = (ov != frames).any(-1)
    f = torch.as_tensor
    for i in range(len(fit)):
        v = body(fit.pose[i : i + 1].double(), fit.shape.double(), fit.transl[i : i + 1].double())
        verts = v.vertices[0]
        # the rasterised body: exactly its pixels change, to the blend of frame and shading
        tint = torch.tensor(TINT).expand(len(verts), 3)
        r = render_view(Mesh(verts, body.faces, vertex_colors=tint), cam, 0)
        cover = (r.face >= 0).numpy()
        assert cover.any() and (changed[i] == cover).all(), i
        want = (1 - ALPHA) * frames[i][cover] + ALPHA * 255 * r.color.numpy()[cover]
        assert np.abs(ov[i][cover] - want).max() <= 0.5 + 1e-3, i
        # independently: every joint (an octahedron's centre) projects onto a changed pixel
        # and no changed pixel lies outside the projected vertices' box
        fx, fy, cx, cy = cam.params[0].tolist()
        uv = verts[:, :2] / verts[:, 2:] * f([fx, fy]).double() + f([cx, cy]).double()
        centres = uv.reshape(24, 6, 2).mean(1).floor().long().clamp(0, SIZE - 1)
        assert changed[i][centres[:, 1], centres[:, 0]].mean() > 0.9, i
        ys, xs = np.nonzero(changed[i])
        lo, hi = uv.amin(0).floor().numpy() - 1, uv.amax(0).ceil().numpy() + 1
        assert xs.min() >= lo[0] and xs.max() <= hi[0] and ys.min() >= lo[1] and ys.max() <= hi[1]
    # the keypoints: dots at the confident ones, the body blend elsewhere unchanged
    det = read_detections(out / "detections.npz")
    names = json.loads((out / "human_stages.json").read_text())["frames"]["files"]
    kept = [names.index(n) for n in json.loads((out / "human.json").read_text())["frames_used"]]
    det = det.subset(kept)
    dots = overlay_fit(frames, body, fit, cam, det)
    kp = det.keypoints[0][det.confidence[0] >= 0.5].floor().long()
    assert len(kp) and (dots[0][kp[:, 1], kp[:, 0]] == DOT_COLOR).all()
    assert ((dots != ov).any(-1) <= (dots == DOT_COLOR).all(-1)).all()


def test_report_escapes_text(tmp_path):
    from sceneforge.stylize.human.capture_report import esc, write_capture_report

    assert esc('<b a="1">&\'') == "&lt;b a=&quot;1&quot;&gt;&amp;&#x27;"
    summary = {
        "frames": 2, "frames_used": ["<i>a.png"], "frames_dropped": {"b&c.png": "<no> person"},
        "notes": ["<script>alert(1)</script>"], "focal_px": 100.0, "focal_guessed": True,
        "fit_reprojection_error_px": float("nan"), "train_steps": 0,
    }  # fmt: skip
    (tmp_path / "human.json").write_text(json.dumps(summary))
    text = write_capture_report(tmp_path).read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;i&gt;a.png" in text and "b&amp;c.png" in text and "&lt;no&gt; person" in text
    assert "guessed" in text and "No fit overlays" in text and "No renders" in text
    with pytest.raises(FileNotFoundError, match="human.json"):
        write_capture_report(tmp_path / "nothing")


@pytest.mark.parametrize("verb", ["eval", "render"])
def test_run_verbs_name_a_human_capture(captured, verb, capsys, tmp_path):
    """``sceneforge eval / render`` on a capture (or its train folder) say what it is and how
    to render it, instead of a missing source.json."""
    from sceneforge.cli import main

    out = captured[0]
    for target in (out, out / "train"):
        args = [verb, str(target)] + ([str(tmp_path / "r")] if verb == "render" else [])
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"{out} is a `sceneforge human` capture" in err, err
        assert "load_capture" in err
