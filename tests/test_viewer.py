"""The viewer's parts and its server in-process, without a browser: mask box, browser <->
sceneforge cameras, progressive rendering and a viewer on a plain scene folder.

``make_scene`` (four coloured cameras around a red square of points) and ``_wait`` are shared
with ``test_viewer_runs.py``, ``test_viewer_browser.py`` and ``test_viewer_camera_path.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.io import save_scene
from sceneforge.core.scene import SceneData
from sceneforge.core.synthetic import look_at
from sceneforge.viewer import (
    MaskBox,
    ProgressiveRenderer,
    ViewCamera,
    Viewer,
    ViewerConfig,
    find_run,
    frustum_pose,
    render_size,
    resolution_levels,
    vertical_fov,
)

RED = (255, 0, 0)
CAMERA_COLORS = [(0, 160, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]


def make_scene() -> SceneData:
    """Four cameras around the origin and a dense red square of points in the x-z plane."""
    ang = torch.tensor([45.0, 135.0, 225.0, 315.0]).deg2rad()
    eye = torch.stack([3 * ang.cos(), 3 * ang.sin(), torch.ones(4)], -1).double()
    cam_from_world = look_at(eye, torch.zeros(3))
    w, h = 40, 30
    params = torch.tensor([[36.0, 36.0, w / 2, h / 2]] * 4, dtype=torch.float64)
    cams = Cameras("PINHOLE", params, torch.full((4,), w), torch.full((4,), h), cam_from_world)
    images = [torch.tensor(c, dtype=torch.uint8).expand(h, w, 3).clone() for c in CAMERA_COLORS]
    masks = [torch.ones(h, w, dtype=torch.bool) for _ in range(4)]
    for m in masks:
        m[:, : w // 2] = False
    g = torch.linspace(-0.5, 0.5, 161)
    gx, gz = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([gx.flatten(), torch.zeros(gx.numel()), gz.flatten()], -1)
    cols = torch.tensor(RED, dtype=torch.uint8).expand(pts.shape[0], 3).clone()
    return SceneData(
        cams,
        [f"img{i}.png" for i in range(4)],
        images=images,
        masks=masks,
        points=pts.float(),
        point_colors=cols,
    )


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    return save_scene(make_scene(), tmp_path_factory.mktemp("viewer") / "scene", "nerfstudio")


# ----------------------------------------------------------------------------- pure parts


def test_mask_box_roundtrip(tmp_path):
    box = MaskBox.from_center_size((1.0, -2.0, 0.5), (2.0, 1.0, 0.25))
    assert box.lo == (0.0, -2.5, 0.375) and box.hi == (2.0, -1.5, 0.625)
    assert box.to_arg() == "0 -2.5 0.375 2 -1.5 0.625"
    p = box.write(tmp_path / "mask_box.txt")
    assert p.read_text() == "0 -2.5 0.375 2 -1.5 0.625\n"
    assert MaskBox.parse("--mask-box " + p.read_text()) == box
    with pytest.raises(ValueError, match="6 numbers"):
        MaskBox.parse("1 2 3")
    with pytest.raises(ValueError, match="min < max"):
        MaskBox.parse("0 0 0 1 -1 1")
    with pytest.raises(ValueError, match="not a number"):
        MaskBox.parse("0 0 0 1 1 x")


def test_view_camera_matches_training_camera():
    """A training camera turned into a browser camera and back projects points identically."""
    scene = make_scene()
    wxyz, pos = frustum_pose(scene.cameras)
    fov = vertical_fov(scene.cameras)
    vc = ViewCamera(tuple(wxyz[1]), tuple(pos[1]), float(fov[1]), 40, 30)
    cams = vc.cameras()
    pts = torch.randn(50, 3, dtype=torch.float64) * 0.3
    px_a, d_a = scene.cameras[1].project(pts)
    px_b, d_b = cams.project(pts)
    torch.testing.assert_close(px_a, px_b)
    torch.testing.assert_close(d_a, d_b)
    assert render_size(800, 457, 64) == (64, 37)
    assert tuple(int(v) for v in (*vc.cameras(20).width, *vc.cameras(20).height)) == (20, 15)


def test_resolution_levels():
    assert resolution_levels(64, 512) == [64, 128, 256, 512]
    assert resolution_levels(64, 300) == [64, 128, 256, 300]
    assert resolution_levels(64, 32) == [64]


def direction_color(o, d, z):
    """An analytic 'field': the colour is the ray direction mapped to [0, 1]."""
    return (d + 1) / 2


def test_progressive_renderer_preview_then_refine():
    scene = make_scene()
    wxyz, pos = frustum_pose(scene.cameras)
    cam = ViewCamera(tuple(wxyz[0]), tuple(pos[0]), 1.0, 400, 300)
    got: list[tuple[int, np.ndarray]] = []
    done = threading.Event()

    def publish(img, px, seconds):
        got.append((px, img))
        if px == 256:
            done.set()

    r = ProgressiveRenderer(direction_color, publish, 64, 256, rest_s=0.05, chunk_rays=1000)
    r.start()
    try:
        r.update_camera(cam)
        assert done.wait(20)
    finally:
        r.stop()
    assert [px for px, _ in got] == [64, 128, 256]
    for px, img in got:
        cams = cam.cameras(px)
        _, d, _ = cams.rays(0)
        want = ((d.float() + 1) / 2 * 255 + 0.5).to(torch.uint8).numpy()
        assert img.shape == (int(cams.height[0]), int(cams.width[0]), 3)
        np.testing.assert_array_equal(img.reshape(-1, 3), want)


def test_progressive_renderer_moving_camera_gets_previews_only():
    """While the camera keeps moving, only previews are rendered; refining starts at rest."""
    cams = [ViewCamera((1.0, 0, 0, 0), (0.0, 0.0, float(k)), 1.0, 400, 300) for k in range(6)]
    got: list[tuple[int, float]] = []

    def publish(img, px, seconds):
        got.append(px)

    r = ProgressiveRenderer(direction_color, publish, 16, 512, rest_s=0.5, chunk_rays=256)
    r.start()
    try:
        for c in cams:
            r.update_camera(c)
            time.sleep(0.1)
        moving = list(got)
        deadline = time.time() + 20
        while (not got or got[-1] != 512) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        r.stop()
    assert moving and set(moving) == {16}
    assert got[-1] == 512 and got[-4:] == [64, 128, 256, 512]


def test_plain_scene_folder_has_no_field(scene_dir):
    c = find_run(scene_dir)
    assert len(c.scene) == 4 and c.scene.points.shape[0] == 161 * 161
    assert not c.field.available and "checkpoint.pt" in c.field.status


def test_viewer_requires_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_run(tmp_path / "missing")


def test_viewer_mask_box_written_only_while_editing(scene_dir, tmp_path):
    cfg = ViewerConfig(port=0, mask_box_file=tmp_path / "mb.txt")
    v = Viewer(scene_dir, cfg)
    try:
        assert v.cfg.host == "127.0.0.1" and v.server.get_host() == "127.0.0.1"
        box = MaskBox((-0.1, -0.2, -0.3), (0.1, 0.2, 0.3))
        v.set_mask_box(box)
        assert not (tmp_path / "mb.txt").exists()  # viewing never writes by itself
        assert v.box_text.value == box.to_arg()
        v.box_toggle.value = True
        v.set_mask_box(box)
        assert (tmp_path / "mb.txt").read_text() == box.to_arg() + "\n"
        assert v.box_mesh.dimensions == pytest.approx((0.2, 0.4, 0.6))
        assert tuple(v.box_gizmo.position) == pytest.approx(box.center)
        # the sliders and the gizmo drive the box like a browser would
        v.box_size[0].value = 1.0
        deadline = time.time() + 5
        while MaskBox.parse((tmp_path / "mb.txt").read_text()).size[0] != pytest.approx(1.0):
            assert time.time() < deadline, "slider change did not reach the mask box file"
            time.sleep(0.02)
        assert MaskBox.parse(v.box_text.value).lo == pytest.approx((-0.5, -0.2, -0.3))
    finally:
        v.stop()
    # a second viewer starts from the box written by the first
    v2 = Viewer(scene_dir, cfg)
    try:
        assert v2.mask_box.lo == pytest.approx((-0.5, -0.2, -0.3))
        assert v2.image_set_names() == ["original", "mask"]
        m = v2.image("mask", 0, 40)
        assert (m[:, :20] == (220, 30, 30)).all() and (m[:, 20:] == 255).all()
    finally:
        v2.stop()


def _wait(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
