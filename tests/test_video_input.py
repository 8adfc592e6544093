"""Video input of ``sceneforge run``: frames sampled to a target count, the sharpest of each
window kept, clear errors naming the file; photo copies inside the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sceneforge.core.video_input import (
    VideoConfig,
    VideoError,
    copy_images,
    image_size,
    sample_video_frames,
    sharpness,
)

NUM_VIDEO_FRAMES = 24
TARGET = 8  # windows of 3 consecutive frames
W, H = 160, 112  # multiples of 16: H.264 keeps the size


def _sharp_index(window: int) -> int:
    """The one sharp frame of each window of 3 (its place changes from window to window)."""
    return 3 * window + window % 3


def _frames() -> np.ndarray:
    import cv2

    from sceneforge.core.synthetic import SyntheticSceneConfig, make_scene

    scene = make_scene(
        SyntheticSceneConfig(
            scene="objects", rig="orbit", num_views=NUM_VIDEO_FRAMES, width=W, height=H
        )
    )
    frames = np.stack([(im.numpy() * 255 + 0.5).astype(np.uint8) for im in scene.images])
    sharp = {_sharp_index(k) for k in range(TARGET)}
    for i in range(NUM_VIDEO_FRAMES):
        if i not in sharp:  # motion-blur stand-in: strong enough to lose the texture
            frames[i] = cv2.GaussianBlur(frames[i], (0, 0), 2.5)
    return frames


def _write_video(path: Path, frames: np.ndarray) -> Path:
    import imageio.v3 as iio

    iio.imwrite(path, frames, plugin="FFMPEG", fps=24, codec="libx264", quality=9)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "walk.mp4", _frames())


def test_sharpness_prefers_the_sharp_frame():
    import cv2

    rng = np.random.default_rng(0)
    img = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    assert sharpness(img) > 5 * sharpness(cv2.GaussianBlur(img, (0, 0), 2.0))


def test_samples_the_sharpest_frame_of_each_window(video, tmp_path):
    out = tmp_path / "images"
    info = sample_video_frames(video, out, VideoConfig(num_frames=TARGET), log=lambda m: None)
    assert info["num_video_frames"] == NUM_VIDEO_FRAMES
    assert [f["index"] for f in info["frames"]] == [_sharp_index(k) for k in range(TARGET)]
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"frame_{_sharp_index(k):05d}.jpg" for k in range(TARGET)]
    assert image_size(out / files[0]) == (W, H)
    assert all(f["sharpness"] > f["window_median_sharpness"] for f in info["frames"])


def test_target_count_size_cap_and_short_videos(video, tmp_path):
    info = sample_video_frames(video, tmp_path / "a", VideoConfig(num_frames=5), max_size=64)
    assert len(info["frames"]) == 5 and len(list((tmp_path / "a").iterdir())) == 5
    assert image_size(tmp_path / "a" / info["frames"][0]["file"]) == (64, 45)
    # more frames asked than the video has: every frame, once
    info = sample_video_frames(video, tmp_path / "b", VideoConfig(num_frames=100))
    assert [f["index"] for f in info["frames"]] == list(range(NUM_VIDEO_FRAMES))


def test_bad_videos_are_named(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    with pytest.raises(VideoError, match="notes.mp4: not a readable video"):
        sample_video_frames(fake, tmp_path / "o1")
    with pytest.raises(VideoError, match="missing.mov: no such video file"):
        sample_video_frames(tmp_path / "missing.mov", tmp_path / "o2")
    short = _write_video(tmp_path / "short.mp4", np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(VideoError, match=r"short.mp4: has 2 frame\(s\); need at least 3"):
        sample_video_frames(short, tmp_path / "o3")
    assert not (tmp_path / "o3").exists()


def test_run_takes_a_video_and_names_bad_input(video, tmp_path, capsys):
    """``sceneforge run VIDEO OUT``: frames land in OUT/images with a record; a bad video or a
    single image is a one-line error naming the file."""
    from sceneforge.cli import main
    from sceneforge.pipeline import RunConfig, RunError, _prepare_images
    from sceneforge.recon.reconstruct import ReconstructConfig

    out = tmp_path / "out"
    out.mkdir()
    cfg = RunConfig(video=VideoConfig(num_frames=TARGET))
    images, sizes, rcfg = _prepare_images(video, out, cfg, log=lambda m: None)
    assert images == out / "images" and sizes == [(W, H)] * TARGET
    # frames are written in temporal order: matched sequentially unless said otherwise
    assert cfg.reconstruct.sequential is None and rcfg.sequential is True
    off = RunConfig(video=cfg.video, reconstruct=ReconstructConfig(sequential=False))
    assert _prepare_images(video, out, off, log=lambda m: None)[2].sequential is False
    record = json.loads((out / "video.json").read_text())
    assert [f["index"] for f in record["frames"]] == [_sharp_index(k) for k in range(TARGET)]
    stamp = (images / record["frames"][0]["file"]).stat().st_mtime_ns
    _prepare_images(video, out, cfg, log=lambda m: None)  # resumed: kept as they are
    assert (images / record["frames"][0]["file"]).stat().st_mtime_ns == stamp
    # another target count into the same folder would mix frames: refused
    with pytest.raises(RunError, match="holds images of another input"):
        _prepare_images(video, out, RunConfig(video=VideoConfig(num_frames=5)), print)

    fake = tmp_path / "clip.mov"
    fake.write_bytes(b"\x00" * 100)
    assert main(["run", str(fake), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sceneforge run: error: {fake}: not a readable video")
    img = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["run", str(img), str(tmp_path / "o")]) == 1
    assert "one.png: a single image" in capsys.readouterr().err


def test_copies_are_scaled_and_keep_names_and_masks(tmp_path):
    src, masks = tmp_path / "photos", tmp_path / "masks"
    src.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    big = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(big).save(src / "a.jpg", quality=95)
    Image.fromarray(big[:50, :60]).save(src / "b.png")
    (src / "notes.txt").write_text("x")
    (src / "broken.jpg").write_bytes(b"not an image")
    Image.fromarray(np.full((300, 400), 255, np.uint8)).save(masks / "a.jpg.png")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    info = copy_images(src, tmp_path / "out", 200, masks, tmp_path / "m", log=lambda m: None)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png", "broken.jpg"]
    assert info["sizes"] == {"a.jpg": [200, 150], "b.png": [60, 50]}
    assert info["num_resized"] == 1
    assert (out / "b.png").read_bytes() == before["b.png"]  # small enough: byte for byte
    assert (out / "broken.jpg").read_bytes() == before["broken.jpg"]  # reconstruct names it
    assert image_size(tmp_path / "m" / "a.jpg.png") == (200, 150)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the source only read


def test_run_reconstructs_from_a_video(tmp_path):
    """``sceneforge run VIDEO OUT``: frames of the demo's orbit, encoded as H.264, go into
    OUT/images and are reconstructed from there (transforms.json points inside OUT)."""
    from sceneforge.core.synthetic import make_scene
    from sceneforge.demo import DemoConfig, demo_scene_config
    from sceneforge.pipeline import RunConfig, run

    scene = make_scene(demo_scene_config(DemoConfig()))
    frames = np.stack([(im.numpy() * 255 + 0.5).astype(np.uint8) for im in scene.images])
    video = _write_video(tmp_path / "orbit.mp4", frames)
    out = tmp_path / "out"
    cfg = RunConfig(device="cpu", video=VideoConfig(num_frames=24))
    stages = run(video, out, cfg, log=lambda m: None, stop_after="reconstruct")
    assert stages["reconstruct"]["num_images"] == 24
    assert stages["reconstruct"]["num_registered"] >= 20
    tj = json.loads((out / "sfm" / "transforms.json").read_text())
    for f in tj["frames"]:
        path = (out / "sfm" / f["file_path"]).resolve()
        assert path.parent == (out / "images").resolve() and path.is_file()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["num_images"] == 24
    # a video: sequential matching, recorded in the plan, the stage record and the summary
    assert plan["sfm_matching"]["sequential"] is True and plan["sfm_matching"]["video"] is True
    nbr = plan["sfm_matching"]["neighbor_frames"]
    assert nbr == cfg.reconstruct.sequential_overlap >= 2
    matching = stages["reconstruct"]["matching"]
    assert matching["sequential"] is True and matching["neighbor_frames"] == nbr
    summary = json.loads((out / "sfm" / "summary.json").read_text())
    assert summary["config"]["sequential"] is True and summary["matching"] == matching
    log = (out / "log.txt").read_text()
    assert "sfm matching: sequential (video frames, in order)" in log
    assert f"sequential matching: every image also with its next {nbr} image(s)" in log
