"""``sceneforge reconstruct VIDEO OUT``: the sharpest frame of each window lands in
``OUT/images`` with a ``video.json`` record, the frames are matched in order and reconstruct,
``transforms.json`` names them; a bad video is an error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sceneforge.core.video_input import VideoConfig, VideoError
from sceneforge.recon.reconstruct import ReconstructConfig, reconstruct
from sceneforge.recon.sfm_error import SfMError

NUM_WINDOWS = 8  # frames kept: one per window of 3 video frames
W, H = 192, 144  # multiples of 16: H.264 keeps the size


def _sharp_index(window: int) -> int:
    """The one sharp frame of each window of 3 (its place changes from window to window)."""
    return 3 * window + window % 3


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A hand-held walk through a generated room: in each window of 3 video frames one
    rendered frame is sharp and the other two are blurred copies of it."""
    import cv2
    import imageio.v3 as iio

    from sceneforge.core.synthetic import SyntheticSceneConfig, make_scene

    # make_scene renders with one torch thread (core.meshes.limit_threads)
    scene = make_scene(
        SyntheticSceneConfig(
            scene="room",
            rig="handheld",
            num_views=60,
            width=W,
            height=H,
            fov_deg=70.0,
            num_objects=20,
            tiled_surfaces=("wall_y+",),
            seed=0,
        )
    )
    frames = []
    for k in range(NUM_WINDOWS):
        sharp = (scene.images[k].numpy()).astype(np.uint8)
        blurred = cv2.GaussianBlur(sharp, (0, 0), 2.5)
        window = [blurred, blurred.copy(), blurred.copy()]
        window[_sharp_index(k) - 3 * k] = sharp
        frames += window
    path = tmp_path_factory.mktemp("video") / "walk.mp4"
    iio.imwrite(path, np.stack(frames), plugin="FFMPEG", fps=24, codec="libx264", quality=9)
    return path


def test_reconstruct_cli_takes_a_video(video, tmp_path, monkeypatch, one_thread):
    from sceneforge.cli import main
    from sceneforge.recon import tracking

    configs = []
    real_build = tracking.build_tracks

    def build_tracks(images, config=None, *args, **kwargs):
        configs.append(config)
        return real_build(images, config, *args, **kwargs)

    monkeypatch.setattr(tracking, "build_tracks", build_tracks)
    out = tmp_path / "out"
    args = ["reconstruct", str(video), str(out), "--video.num-frames", str(NUM_WINDOWS)]
    args += ["--num-query-frames", "2", "--no-progress", "--no-write-png"]
    args += ["--no-retrack-on-doubt", "--sfm.num-threads", "1"]
    assert main(args) == 0

    names = [f"frame_{_sharp_index(k):05d}.jpg" for k in range(NUM_WINDOWS)]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    record = json.loads((out / "video.json").read_text())
    assert record["video"] == str(video.resolve()) and record["num_video_frames"] == 24
    assert [f["file"] for f in record["frames"]] == names
    assert all(f["sharpness"] > f["window_median_sharpness"] for f in record["frames"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders

    # the frames are matched in order (sequential on for a video)
    (tcfg,) = configs
    assert tcfg.neighbor_frames == ReconstructConfig().sequential_overlap
    assert tcfg.pair_selection.ordered is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["matching"]["sequential"] is True and summary["config"]["sequential"] is True
    assert summary["video"]["frames"] == names and summary["video"]["record"] == "video.json"
    assert summary["num_registered"] == NUM_WINDOWS, summary["unregistered_images"]
    # transforms.json points at the frames inside OUT
    frames = json.loads((out / "transforms.json").read_text())["frames"]
    assert sorted(f["file_path"] for f in frames) == [f"images/{n}" for n in names]


def test_reconstruct_api_video_options_and_bad_videos(video, tmp_path, monkeypatch):
    """``sequential=False`` is kept for a video; errors name the file, before any work."""
    import sceneforge.recon.reconstruct as rmod

    seen = []

    def stop(tracks, cfg, log):  # the tracking config is all this test needs
        seen.append(tracks)
        raise SfMError("stopped after tracking")

    monkeypatch.setattr(rmod, "reconstruct_from_tracks", stop)
    cfg = ReconstructConfig(
        sequential=False, num_query_frames=0, progress=False, retrack_on_doubt=False
    )
    with pytest.raises(SfMError, match="stopped after tracking"):
        reconstruct(video, tmp_path / "o", cfg, video=VideoConfig(num_frames=4))
    assert [t.num_frames for t in seen] == [4]
    assert (tmp_path / "o" / "video.json").is_file()
    assert len(list((tmp_path / "o" / "images").iterdir())) == 4

    fake = tmp_path / "clip.mov"
    fake.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match=r"clip.mov: not a readable video"):
        reconstruct(fake, tmp_path / "o2", cfg)
    assert not (tmp_path / "o2" / "images").exists()
    with pytest.raises(VideoError, match=r"missing.mp4: no such video file"):
        reconstruct(tmp_path / "missing.mp4", tmp_path / "o3", cfg)
    img = tmp_path / "one.png"
    img.write_bytes(b"")
    with pytest.raises(SfMError, match="one.png: a single image"):
        reconstruct(img, tmp_path / "o4", cfg)
