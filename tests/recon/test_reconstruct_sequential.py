"""Sequential matching for frames of a video: ``ReconstructConfig.sequential`` reaches the
tracker (every frame matched with its next ``sequential_overlap`` frames), frames of a
generated hand-held video register, the all-pairs re-tracking still matches every pair, and
``reconstruct(..., log=fn)`` hands every message to ``fn`` as plain text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sceneforge.recon import tracking
from sceneforge.recon.reconstruct import ReconstructConfig, neighbor_frames, reconstruct
from sceneforge.recon.sfm import SfMConfig
from sceneforge.recon.sfm_error import SfMError

NUM_FRAMES = 12  # the first frames of a 60-frame lap: a short stretch of the walk
OVERLAP = 3
W, H = 192, 144  # multiples of 16: H.264 keeps the size


@pytest.fixture(scope="module")
def video_frames(tmp_path_factory) -> Path:
    """The frames of a generated hand-held walk (shake, motion blur, a tiled wall), encoded as
    H.264 and decoded again, written in temporal order as ``frame_NNNNN.jpg``."""
    import imageio.v3 as iio
    from PIL import Image

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
            motion_blur_px=(0.5, 2.0),
            seed=0,
        )
    )
    frames = np.stack(
        [(im.numpy() * 255 + 0.5).astype(np.uint8) for im in scene.images[:NUM_FRAMES]]
    )
    root = tmp_path_factory.mktemp("handheld")
    video = root / "walk.mp4"
    iio.imwrite(video, frames, plugin="FFMPEG", fps=24, codec="libx264", quality=9)
    folder = root / "images"
    folder.mkdir()
    decoded = list(iio.imiter(video, plugin="FFMPEG"))
    assert len(decoded) == NUM_FRAMES and decoded[0].shape == (H, W, 3)
    for i, frame in enumerate(decoded):
        Image.fromarray(frame).save(folder / f"frame_{i:05d}.jpg", quality=95)
    return folder


def _spy(monkeypatch) -> dict[str, list]:
    """Record the pairs ``build_tracks`` matches and the configs / tracks of each call."""
    seen: dict[str, list] = {"pairs": [], "configs": [], "tracks": []}
    real_pairs, real_build = tracking.query_pairs, tracking.build_tracks

    def query_pairs(*args, **kwargs):
        pairs = real_pairs(*args, **kwargs)
        seen["pairs"].append(pairs)
        return pairs

    def build_tracks(images, config=None, *args, **kwargs):
        seen["configs"].append(config)
        tracks = real_build(images, config, *args, **kwargs)
        seen["tracks"].append(tracks)
        return tracks

    monkeypatch.setattr(tracking, "query_pairs", query_pairs)
    monkeypatch.setattr(tracking, "build_tracks", build_tracks)
    return seen


def _cfg(**kw) -> ReconstructConfig:
    base = dict(
        sequential=True,
        sequential_overlap=OVERLAP,
        num_query_frames=2,  # frames 0 and 11: the rest is linked by the sequential pairs
        progress=False,
        write_png=False,
        retrack_on_doubt=False,
        sfm=SfMConfig(num_threads=1),  # two spinning threads: ~10x slower on a busy 2-core CPU
    )
    base.update(kw)
    return ReconstructConfig(**base)


def test_sequential_option_sets_the_neighbour_count():
    assert neighbor_frames(ReconstructConfig()) == tracking.TracksConfig().neighbor_frames == 1
    assert neighbor_frames(ReconstructConfig(sequential=False, sequential_overlap=5)) == 1
    assert neighbor_frames(ReconstructConfig(sequential=True, sequential_overlap=5)) == 5
    with pytest.raises(ValueError, match="sequential_overlap must be at least 1"):
        neighbor_frames(ReconstructConfig(sequential=True, sequential_overlap=0))


def test_video_frames_register_with_sequential_matching(
    video_frames, tmp_path, monkeypatch, one_thread
):
    seen = _spy(monkeypatch)
    messages: list[str] = []
    s = reconstruct(video_frames, tmp_path / "sfm", _cfg(), log=messages.append)

    # the option reached the tracker: every frame matched with its next OVERLAP frames
    (tcfg,) = seen["configs"]
    assert tcfg.neighbor_frames == OVERLAP and tcfg.num_query_frames == 2
    (pairs,) = seen["pairs"]
    keys = {(min(a, b), max(a, b)) for a, b in pairs}
    sequential = {(i, i + d) for d in range(1, OVERLAP + 1) for i in range(NUM_FRAMES - d)}
    assert sequential <= keys
    # 2 query frames alone would leave e.g. frames 3 and 5 unmatched
    assert (3, 5) not in set(tracking.query_pairs(NUM_FRAMES, [0, NUM_FRAMES - 1], None, 1))
    assert s["matching"] == {
        "sequential": True,
        "neighbor_frames": OVERLAP,
        "num_query_frames": 2,
        "query_frames": [0, NUM_FRAMES - 1],
        "num_pairs": len(pairs),
    }
    assert s["config"]["sequential"] is True

    # adjacent frames share tracks, and every frame registers
    (tracks,) = seen["tracks"]
    vis = tracks.visible
    shared = [int((vis[:, i] & vis[:, i + 1]).sum()) for i in range(NUM_FRAMES - 1)]
    assert min(shared) >= 50, shared
    assert s["num_images"] == NUM_FRAMES
    assert s["num_registered"] == NUM_FRAMES, s["unregistered_images"]
    assert s["mean_reproj_error_px"] < 1.0

    # log: every message, plain text (no rich markup), with the result line last
    assert any(m.startswith(f"{NUM_FRAMES} images loaded from ") for m in messages)
    assert f"sequential matching: every image also with its next {OVERLAP} image(s)" in messages
    assert any(m.startswith(f"matching: {len(pairs)} pairs") for m in messages), messages
    assert messages[-1].startswith(f"registered {NUM_FRAMES}/{NUM_FRAMES} images, ")
    assert not any("[green]" in m or "[yellow]" in m or "[bold]" in m for m in messages)


def test_retrack_on_doubt_matches_every_pair_of_a_video(
    video_frames, tmp_path, monkeypatch, one_thread
):
    """A failed first reconstruction (forced here) tracks again with every pair matched, the
    frames farther apart than the sequential overlap included."""
    import sceneforge.recon.reconstruct as rmod

    seen = _spy(monkeypatch)
    real = rmod.reconstruct_from_tracks
    calls = []

    def first_fails(tracks, cfg, log):
        calls.append(tracks.info["num_pairs"])
        if len(calls) == 1:
            raise SfMError("forced failure of the first pass")
        return real(tracks, cfg, log)

    monkeypatch.setattr(rmod, "reconstruct_from_tracks", first_fails)
    messages: list[str] = []
    s = reconstruct(
        video_frames, tmp_path / "sfm", _cfg(retrack_on_doubt=True), log=messages.append
    )
    assert [c.num_query_frames for c in seen["configs"]] == [2, 0]
    assert [c.neighbor_frames for c in seen["configs"]] == [OVERLAP, OVERLAP]
    all_pairs = {(i, j) for i in range(NUM_FRAMES) for j in range(i + 1, NUM_FRAMES)}
    assert {(min(a, b), max(a, b)) for a, b in seen["pairs"][1]} == all_pairs
    assert calls[1] == len(all_pairs) == s["matching"]["num_pairs"]
    assert s["stats"]["retracked"] is True
    assert s["num_registered"] == NUM_FRAMES
    assert any(
        m.startswith("forced failure of the first pass: matching every image pair")
        for m in messages
    )
