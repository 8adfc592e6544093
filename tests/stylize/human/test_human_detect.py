"""Pose detection (stylize/human/detect.py): the pure conversions always; MediaPipe itself on the
shared judo clip and on a synthetic anny video when the optional package is installed."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sceneforge.stylize.human import (
    MEDIAPIPE_POSE_LANDMARKS,
    DetectConfig,
    PoseDetections,
    detect_pose,
    read_detections,
    write_detections,
)
from sceneforge.stylize.human.detect import (
    FrameResult,
    assemble_detections,
    check_landmark_order,
    clip_box,
    crop_to_frame,
    frame_ranges,
    frame_to_crop,
    landmark_confidence,
    largest_person,
    normalized_to_pixels,
    paste_mask,
    threshold_mask,
)

NEED_MP = "mediapipe not installed (optional extra: pip install 'sceneforge[human]')"


# ----------------------------------------------------------------------------- without mediapipe


def test_normalized_to_pixels_edges_and_centres():
    w, h = 640, 480
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [0.5 / w, 0.5 / h], [0.5, 0.25]])
    px = normalized_to_pixels(xy, w, h)
    # image edges map to 0 and W/H; the top-left pixel's centre to (0.5, 0.5)
    np.testing.assert_allclose(px, [[0, 0], [640, 480], [0.5, 0.5], [320, 120]])
    assert normalized_to_pixels(np.zeros((3, 33, 2)), w, h).shape == (3, 33, 2)


def test_crop_mapping_round_trip_and_mask_paste():
    box = clip_box((-5, 10, 50, 1000), 64, 48)
    assert box == (0, 10, 50, 48)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, (7, 33, 2))
    np.testing.assert_allclose(frame_to_crop(crop_to_frame(xy, box), box), xy)
    # a point at a crop's normalised position lands at the same content in the full frame
    box = (20, 8, 52, 40)  # 32 x 32
    full = crop_to_frame(normalized_to_pixels(np.array([0.5, 0.25]), 32, 32), box)
    np.testing.assert_allclose(full, [36.0, 16.0])
    prob = np.zeros((32, 32), dtype=np.float32)
    prob[4:10, 2:5] = 0.9
    prob[0, 0] = 0.4
    m = paste_mask(threshold_mask(prob, 0.5), box, 64, 48)
    assert m.shape == (48, 64) and m.sum() == 18
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (12, 17, 22, 24)
    with pytest.raises(ValueError, match="outside"):
        clip_box((70, 0, 90, 10), 64, 48)
    with pytest.raises(ValueError, match="person_box"):
        DetectConfig(person_box=(10, 10, 5, 20))


def test_confidence_and_largest_person():
    assert landmark_confidence(0.8, 0.5) == pytest.approx(0.4)
    assert landmark_confidence(0.8, None) == pytest.approx(0.8)
    assert landmark_confidence(None, None) == 1.0
    small = np.array([[10.0, 10.0], [20.0, 30.0]])
    big = np.array([[0.0, 0.0], [50.0, 60.0]])
    off = np.array([[-500.0, -500.0], [-400.0, -300.0]])  # outside: clipped to nothing
    assert largest_person([small, big, off], 100, 100) == 1
    assert largest_person([], 100, 100) == -1
    assert frame_ranges([7, 0, 1, 2, 5, 8]) == "0-2, 5, 7-8"


def _person(x0: float, size: float, h: int = 32, w: int = 48) -> tuple:
    kp = x0 + size * np.random.default_rng(1).uniform(0, 1, (33, 2))
    m = np.zeros((h, w), dtype=bool)
    m[2:5, 3:6] = True
    return kp, np.full(33, 0.9), m


def test_frames_without_a_person_and_several_people():
    a, b = _person(0, 5), _person(10, 20)
    results = [
        FrameResult([a[0]], [a[1]], [a[2]]),
        FrameResult([], [], []),
        FrameResult([a[0], b[0]], [a[1], b[1]], [a[2], None]),
        FrameResult([], [], []),
        FrameResult([], [], []),
    ]
    det = assemble_detections(results, (48, 32), True, "test")
    assert isinstance(det, PoseDetections)
    assert det.found.tolist() == [True, False, True, False, False]
    assert float(det.confidence[[1, 3, 4]].abs().max()) == 0.0
    assert float(det.keypoints[[1, 3, 4]].abs().max()) == 0.0
    np.testing.assert_allclose(det.keypoints[2].numpy(), b[0], rtol=1e-6)  # the larger one
    assert not bool(det.masks[2].any())  # the larger one had no mask
    assert int(det.masks[0].sum()) == 9
    assert any("no person" in n and "1, 3-4" in n for n in det.notes), det.notes
    assert "2 people visible in frame 2; using the largest" in det.notes


def test_clear_error_without_mediapipe(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'sceneforge\[human\]'"):
        detect_pose(np.zeros((1, 8, 8, 3), dtype=np.uint8))


def test_landmark_order_check():
    fake_enum = [SimpleNamespace(name=n.upper()) for n in MEDIAPIPE_POSE_LANDMARKS]
    fake = SimpleNamespace(solutions=SimpleNamespace(pose=SimpleNamespace(PoseLandmark=fake_enum)))
    check_landmark_order(fake)
    fake_enum[11], fake_enum[12] = fake_enum[12], fake_enum[11]
    with pytest.raises(RuntimeError, match="landmark order"):
        check_landmark_order(fake)
    assert len(MEDIAPIPE_POSE_LANDMARKS) == 33


# ----------------------------------------------------------------------------- with mediapipe


@pytest.fixture(scope="module")
def mediapipe():
    return pytest.importorskip("mediapipe", reason=NEED_MP)


def test_landmark_order_matches_mediapipe(mediapipe):
    names = tuple(lm.name.lower() for lm in mediapipe.solutions.pose.PoseLandmark)
    assert names == MEDIAPIPE_POSE_LANDMARKS
    assert [int(lm) for lm in mediapipe.solutions.pose.PoseLandmark] == list(range(33))


@pytest.fixture(scope="module")
def judo(mediapipe, shared_data):
    frames = shared_data / "videos" / "judo" / "frames"
    paths = sorted(frames.glob("*.jpg"))
    if not paths:
        pytest.skip(f"judo frames not found in {frames}")
    return paths, detect_pose(paths)


def test_judo_every_frame_has_a_person_inside_its_mask(judo, tmp_path):
    paths, det = judo
    w, h = det.image_size
    assert len(det) == len(paths) and (w, h) == (854, 480)
    assert bool(det.found.all()), det.notes
    assert det.source.startswith("mediapipe-0.10.21 complexity 1")
    conf = det.confidence > 0.5
    assert float(conf.float().mean()) > 0.5
    kp = det.keypoints
    inside = (kp[..., 0] >= 0) & (kp[..., 0] <= w) & (kp[..., 1] >= 0) & (kp[..., 1] <= h)
    assert bool(inside[conf].all())
    assert det.masks is not None
    dilate = 15  # pixels
    hits = total = 0
    for f in range(len(det)):
        m = det.masks[f]
        assert int(m.sum()) > 2000, f"frame {f}: mask of {int(m.sum())} pixels"
        ys, xs = torch.nonzero(m, as_tuple=True)
        x0, x1 = int(xs.min()) - dilate, int(xs.max()) + 1 + dilate
        y0, y1 = int(ys.min()) - dilate, int(ys.max()) + 1 + dilate
        p = kp[f][conf[f]]
        hits += int(((p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)).sum())
        total += p.shape[0]
    assert hits >= 0.8 * total, f"{hits} of {total} confident keypoints in the masks' boxes"

    back = read_detections(write_detections(tmp_path / "det.npz", det))
    assert torch.equal(back.keypoints, det.keypoints)
    assert torch.equal(back.confidence, det.confidence)
    assert torch.equal(back.found, det.found) and torch.equal(back.masks, det.masks)
    assert back.image_size == det.image_size and back.notes == det.notes


def test_judo_person_box_picks_another_person(judo):
    paths, _ = judo
    import PIL.Image

    frames = np.stack([np.asarray(PIL.Image.open(p).convert("RGB")) for p in paths[:3]])
    box = (600, 50, 854, 330)  # the spectators on the right
    det = detect_pose(torch.from_numpy(frames), DetectConfig(person_box=box))
    assert bool(det.found.all()), det.notes
    conf = det.confidence > 0.5
    p = det.keypoints[conf]
    assert bool(((p[:, 0] >= 600) & (p[:, 1] >= 50) & (p[:, 1] <= 330)).all())
    assert not bool(det.masks[:, :, :600].any())
    assert any("people visible" in n for n in det.notes), det.notes


def test_synthetic_person_keypoints_match_ground_truth(mediapipe, anny_model):
    from sceneforge.stylize.human import HumanVideoConfig, make_human_video

    cfg = HumanVideoConfig(
        size=192, num_frames=3, fps=3.0, heldout_frames=0, heldout_views=0, ssaa=1
    )
    video = make_human_video(anny_model, cfg)
    images = (video.train.images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8)
    det = detect_pose(images)
    assert bool(det.found.all()), det.notes
    tol = 10.0  # pixels at 192 px (the person is ~130 px tall); measured <= 7
    checked = 0
    for name in (
        "left_shoulder",
        "right_shoulder",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
    ):
        i = MEDIAPIPE_POSE_LANDMARKS.index(name)
        j = video.keypoint_ids.index(i)
        conf = det.confidence[:, i] > 0.5
        err = (det.keypoints[:, i].double() - video.train.keypoints_2d[:, j]).norm(dim=-1)[conf]
        assert bool((err <= tol).all()), f"{name}: {err.tolist()} px"
        checked += int(conf.sum())
    assert checked >= 0.8 * 6 * len(det)
