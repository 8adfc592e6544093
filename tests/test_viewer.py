"""The viewer, tested for real: a viser server in-process, the page in headless Chromium.

The browser test checks (a) on the server that the client connected and was sent the camera
and point nodes (and lists them in its scene tree), and (b) in the screenshot that the pixels
where a saturated red point cloud projects (projection computed here from the camera the
browser reports) are red, and pixels away from it are not.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.io import save_scene
from sceneforge.core.rotations import quat_wxyz_to_matrix
from sceneforge.core.scene import SceneData
from sceneforge.core.synthetic import look_at
from sceneforge.viewer import (
    FieldSource,
    MaskBox,
    ProgressiveRenderer,
    RunContents,
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


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    """A real fields run (3 steps) on a saved scene, and a completion of it (telea)."""
    from dataclasses import replace

    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.field import FieldConfig, TriPlaneConfig
    from sceneforge.fields.nerf_model import NerfConfig
    from sceneforge.fields.sampling import SamplerConfig
    from sceneforge.fields.trainer import TrainerConfig
    from sceneforge.inpaint.complete import CompleteConfig, complete
    from sceneforge.inpaint.dataset_update import DatasetUpdateConfig

    root = tmp_path_factory.mktemp("viewer_run")
    scene = replace(turntable_scene(num_views=4, size=16, num_points=10), masks=None)
    scene_dir = save_scene(scene, root / "scene", "nerfstudio")
    tcfg = TrainerConfig(
        max_steps=3,
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=0,
        nerf=NerfConfig(
            sampler=SamplerConfig(num_samples=16, grid_resolution=16),
            field=FieldConfig(
                triplane=TriPlaneConfig(resolutions=(16, 32), features=4),
                density_grid_resolution=32,
                hidden_dim=16,
                color_hidden_dim=16,
                sh_degree=2,
                appearance_dim=4,
            ),
        ),
    )
    train(scene_dir, root / "run", TrainConfig(trainer=tcfg, save_eval_images=False))
    mesh = scene.metadata["mesh"]
    v = mesh.vertices[mesh.faces[mesh.face_object == 0].reshape(-1)]
    cfg = CompleteConfig(
        mask_box=tuple(v.min(0).values.tolist() + v.max(0).values.tolist()),
        inpainter="telea",
        progress=False,
        update=DatasetUpdateConfig(warmup_steps=2, update_every=1, num_rounds=2, final_steps=1),
    )
    complete(root / "run", root / "out", cfg, scene=scene)
    return root


def test_run_folder_field_renders_like_the_trainer(completed_run):
    c = find_run(completed_run / "run")
    assert c.field.available and "step 3" in c.field.status and c.image_sets == []
    tr = c.field.trainer
    wxyz, pos = frustum_pose(c.scene.cameras)
    fov = vertical_fov(c.scene.cameras)
    vc = ViewCamera(tuple(wxyz[2]), tuple(pos[2]), float(fov[2]), 16, 16)
    got = ProgressiveRenderer(c.field.render_rays, lambda *a: None).render(vc, 16)
    want = tr.render_camera(c.scene.cameras, 2)["rgb"]
    assert got.shape == (16, 16, 3)
    np.testing.assert_allclose(got / 255.0, want.numpy(), atol=1 / 255 + 1e-6)


def test_a_gaussian_run_renders_whole_views_like_the_trainer(completed_run, tmp_path):
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.gaussian_model import GaussiansConfig
    from sceneforge.fields.trainer import TrainerConfig

    tcfg = TrainerConfig(
        model="gaussians",
        max_steps=3,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        scene_box="bounded",
        gaussians=GaussiansConfig(num_random=200, sh_degree=0),
    )
    train(completed_run / "scene", tmp_path / "gs", TrainConfig(trainer=tcfg))
    c = find_run(tmp_path / "gs")
    assert c.field.available and c.field.render_rays is None and "200 Gaussians" in c.field.status
    tr = c.field.trainer
    wxyz, pos = frustum_pose(c.scene.cameras)
    fov = vertical_fov(c.scene.cameras)
    vc = ViewCamera(tuple(wxyz[1]), tuple(pos[1]), float(fov[1]), 16, 16)
    r = ProgressiveRenderer(None, lambda *a: None, render_camera=c.field.render_camera)
    got = r.render(vc, 16)
    want = tr.render_camera(c.scene.cameras, 1)["rgb"]
    assert got.shape == (16, 16, 3)
    np.testing.assert_allclose(got / 255.0, want.numpy(), atol=1 / 255 + 1e-5)


def test_completion_run_image_sets(completed_run):
    out = completed_run / "out"
    v = Viewer(out, ViewerConfig(port=0))
    try:
        assert v.contents.field.available
        names = v.image_set_names()
        assert names == [
            "original",
            "fill mask",
            "completed v001",
            "completed v002",
            "completed render",
        ]
        assert v.image_set.options == tuple(names)
        for n in names:
            img = v.image(n, 1, 96)
            assert img is not None and img.shape == (16, 16, 3) and img.dtype == np.uint8
        # fill mask: filled pixels (white in masks/) are tinted magenta, the rest untouched
        from sceneforge.core.image_io import read_mask

        fill = read_mask(out / "masks" / f"{Path(v.scene.image_names[1]).stem}.png").numpy()
        assert fill.any() and (~fill).any()
        orig, tinted = v.image("original", 1, 96), v.image("fill mask", 1, 96)
        np.testing.assert_array_equal(orig[~fill], tinted[~fill])
        assert (tinted[fill][:, 1] < tinted[fill][:, [0, 2]].min(1)).all()
        v.image_set.value = "completed v002"
        _wait(
            lambda: all(
                np.array_equal(f.image, v.image("completed v002", i, 96))
                for i, f in enumerate(v.frustums)
            ),
            5,
            "the frustum thumbnails to switch",
        )
    finally:
        v.stop()


def test_view_of_a_run_output_folder_opens_its_last_stage(completed_run, tmp_path):
    """``sceneforge view OUT`` on a ``sceneforge run`` output folder: the completed field
    when there is one, else the trained field, else the reconstruction; still after OUT has
    been moved; the mask box goes to OUT; a scene or a train run opens itself."""
    import json

    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.trainer import TrainerConfig
    from sceneforge.viewer import folder_to_show, is_run_output

    out = tmp_path / "out"
    shutil.copytree(completed_run / "scene", out / "sfm")  # a run output stopped after SfM
    (out / "stages.json").write_text(json.dumps({"reconstruct": {"seconds": 1.0}}))
    assert is_run_output(out) and folder_to_show(out) == out / "sfm"
    c = find_run(out)
    assert c.shown == out / "sfm" and len(c.scene) == 4 and not c.field.available
    tcfg = TrainerConfig(max_steps=2, batch_rays=64, progress=False, tensorboard=False)
    tcfg.holdout_every, tcfg.checkpoint_every, tcfg.log_every = 0, 0, 0
    train(out / "sfm", out / "field", TrainConfig(trainer=tcfg, save_eval_images=False))
    assert folder_to_show(out) == out / "field"
    moved = tmp_path / "moved" / "out"
    moved.parent.mkdir()
    shutil.move(out, moved)
    c = find_run(moved)
    assert c.shown == moved / "field" and c.root == moved
    assert c.field.available and c.field.status.startswith("field/: field: checkpoint.pt")
    assert all(str(moved) in str(p) for p in c.scene.image_paths)
    # a finished completion wins (checkpoint and source.json, as `complete` writes them)
    (moved / "complete").mkdir()
    for name in ("checkpoint.pt", "source.json"):
        shutil.copy(completed_run / "out" / name, moved / "complete" / name)
    assert folder_to_show(moved) == moved / "complete"
    (moved / "complete" / "source.json").unlink()  # an unfinished completion does not
    assert folder_to_show(moved) == moved / "field"
    # the folders a run output holds, and plain ones, open themselves
    for d in (moved / "field", moved / "sfm", completed_run / "run", completed_run / "out"):
        assert not is_run_output(d) and folder_to_show(d) == d
    v = Viewer(moved, ViewerConfig(port=0, field=False))
    try:
        assert v.mask_box_path == moved / "mask_box.txt"
        assert v.cfg.host == "127.0.0.1" and len(v.frustums) == 4
    finally:
        v.stop()


# ----------------------------------------------------------------------------- the browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--force-device-scale-factor=1",
    "--window-size=1024,768",
]


def _find(*names: str) -> str | None:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by selenium (skips when either is missing)."""
    chromium = _find("chromium", "chromium-browser")
    driver_bin = _find("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.skip(
            "chromium / chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for a in CHROMIUM_FLAGS:
        opts.add_argument(a)
    profile = tempfile.mkdtemp(prefix="sceneforge-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.binary_location = chromium
    driver = webdriver.Chrome(options=opts, service=Service(driver_bin))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _settle(cond, timeout: float) -> None:
    """Poll ``cond`` until true or ``timeout``; the caller asserts afterwards."""
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.2)


def _screenshot(driver) -> np.ndarray:
    import cv2

    png = np.frombuffer(driver.get_screenshot_as_png(), np.uint8)
    return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _red(px: np.ndarray) -> np.ndarray:
    px = px.astype(int)
    return (px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60)


def test_browser_shows_cameras_and_points(scene_dir, browser):
    v = Viewer(scene_dir, ViewerConfig(port=0, frustum_scale=0.6))
    try:
        assert v.url.startswith("http://127.0.0.1:")
        browser.get(v.url)
        client = _wait(lambda: next(iter(v.server.get_clients().values()), None), 30, "client")
        _wait(lambda: client.camera.image_width > 0, 10, "the client's camera")

        # (a) the server sent the camera and point nodes to this client ...
        names = [f"/cameras/{i:04d}" for i in range(4)] + ["/points"]
        for n in names:
            assert v.server.scene.get_handle_by_name(n) is not None, n
        buf = v.server._websock_server._broadcast_buffer  # viser internals (pinned 1.1.x)
        node_ids = [
            mid for mid, m in dict(buf.message_from_id).items() if getattr(m, "name", None) in names
        ]
        assert len(node_ids) >= len(names)
        _wait(
            lambda: buf.generator_cursors.get(client.client_id, -1) >= max(node_ids),
            10,
            "the camera and point messages to be sent to the client",
        )
        body = browser.find_element("tag name", "body")
        _wait(lambda: "4 cameras, 25921 points" in body.text, 10, "the panel's summary")

        # (b) put the browser camera at a known pose, in front of the red square
        client.camera.position = (0.0, -2.0, 0.0)
        client.camera.look_at = (0.0, 0.0, 0.0)
        client.camera.fov = math.radians(60.0)
        _wait(
            lambda: (
                np.allclose(client.camera.position, (0, -2, 0), atol=1e-4)
                and abs(client.camera.fov - math.radians(60.0)) < 1e-4
            ),
            10,
            "the browser to report the new camera",
        )
        cam = ViewCamera.from_viser(client.camera)
        canvas = browser.execute_script(
            "const c = [...document.querySelectorAll('canvas')]"
            ".sort((a, b) => b.width * b.height - a.width * a.height)[0];"
            "const r = c.getBoundingClientRect(); return [r.left, r.top, c.width, c.height];"
        )
        assert (canvas[2], canvas[3]) == (cam.width, cam.height)

        # projection of the square's inner part and of a ring well outside it
        g = np.linspace(-0.4, 0.4, 9)
        inner = np.array([[x, 0.0, z] for x in g for z in g])
        outer = np.array(
            [[x, 0.0, z] for x in np.linspace(-0.9, 0.9, 7) for z in (-0.9, 0.9)]
            + [[x, 0.0, z] for x in (-0.9, 0.9) for z in np.linspace(-0.6, 0.6, 5)]
        )
        cams = cam.cameras()

        def visible_pixels(pts: np.ndarray) -> np.ndarray:
            uv, depth = cams.project(torch.from_numpy(pts))
            assert (depth > 0).all()
            xy = np.floor(uv[0].numpy() + np.array(canvas[:2])).astype(int)
            # keep pixels where the canvas is on top (not under the panel or a notification)
            on_canvas = browser.execute_script(
                "return arguments[0].map(p => { const e = document.elementFromPoint(p[0], p[1]);"
                " return e !== null && e.tagName === 'CANVAS'; });",
                xy.tolist(),
            )
            return xy[np.array(on_canvas, bool)]

        xy = visible_pixels(inner)
        assert len(xy) >= len(inner) // 2, "too few pixels of the square visible on the canvas"
        # the page fades the canvas in after loading: poll until the frame settles
        _settle(lambda: _red(_screenshot(browser)[xy[:, 1], xy[:, 0]]).mean() >= 0.95, 15)
        shot = _screenshot(browser)
        red = _red(shot[xy[:, 1], xy[:, 0]])
        assert red.mean() >= 0.95, red
        xy = visible_pixels(outer)
        assert len(xy) >= len(outer) // 2
        assert not _red(shot[xy[:, 1], xy[:, 0]]).any()

        # the training cameras' thumbnails: the centre of each frustum's image plane (viser's
        # canonical frustum size) has that camera's image colour
        wxyz, pos = frustum_pose(v.scene.cameras)
        fov = vertical_fov(v.scene.cameras)
        checked = 0
        for i in range(4):
            y = math.tan(fov[i] / 2)
            z = 0.6 / np.cbrt(y * y * 4 / 3 / 3)  # aspect 4/3, scale 0.6
            R = quat_wxyz_to_matrix(torch.from_numpy(wxyz[i])).numpy()
            xy = visible_pixels((R @ [0, 0, z] + pos[i])[None])
            if len(xy):
                patch = shot[xy[0, 1] - 1 : xy[0, 1] + 2, xy[0, 0] - 1 : xy[0, 0] + 2]
                assert np.abs(patch.astype(int) - CAMERA_COLORS[i]).max() < 40, (i, patch)
                checked += 1
        assert checked >= 1

        # the client's own render (requested by the server) agrees at the centre
        img = client.get_render(120, 160)
        assert _red(img[55:65, 75:85]).all()

        # "view from selected camera" moves the browser camera onto a training camera
        v.goto_camera(client, 1)
        _wait(
            lambda: (
                np.allclose(client.camera.position, pos[1], atol=1e-3)
                and abs(client.camera.fov - fov[1]) < 1e-3
                and abs(abs(np.dot(client.camera.wxyz, wxyz[1])) - 1) < 1e-5
            ),
            10,
            "the browser camera to move to training camera 1",
        )
    finally:
        v.stop()


def test_browser_shows_field_render(scene_dir, browser):
    """A field (analytic here: every ray renders blue) is drawn behind the scene, previewed
    small first and refined once the camera rests."""
    samples = []

    def blue(o, d, z, num_samples=None):
        samples.append(num_samples)
        return torch.tensor([0.0, 0.0, 1.0]).expand(o.shape[0], 3)

    contents = find_run(scene_dir)
    contents = RunContents(contents.root, contents.scene, FieldSource(blue, "blue"))
    v = Viewer(contents, ViewerConfig(port=0, max_render_px=128, rest_s=0.2))
    try:
        browser.get(v.url)
        client = _wait(lambda: next(iter(v.server.get_clients().values()), None), 30, "client")
        r = _wait(lambda: v.renderers.get(client.client_id), 10, "the field renderer")
        _wait(lambda: [p for p, _ in r.passes][-2:] == [64, 128], 20, "preview and refinement")
        time.sleep(1.0)

        def blue_fraction() -> float:
            px = _screenshot(browser).reshape(-1, 3).astype(int)
            return float(((px[:, 2] > 200) & (px[:, 0] < 60) & (px[:, 1] < 60)).mean())

        # the background (white without a field) becomes mostly the field's blue (the page
        # fades the canvas in, so poll)
        _settle(lambda: blue_fraction() > 0.4, 15)
        assert blue_fraction() > 0.4
        assert v.field_status.value.startswith("128x") and "ms" in v.field_status.value
        assert 24 in samples and None in samples  # fewer samples for the preview only
    finally:
        v.stop()


def test_view_serves_until_interrupted(scene_dir, capsys):
    """``view`` (what ``sceneforge view`` runs) serves on localhost until Ctrl-C, then stops."""
    import _thread
    import signal
    import socket
    import urllib.request

    from sceneforge.viewer import view

    with socket.socket() as s:  # a free port, so the printed URL is predictable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen = {}

    def probe():
        deadline = time.time() + 20
        while time.time() < deadline and "html" not in seen:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    seen["html"] = r.read(200)
            except OSError:
                time.sleep(0.1)
        _thread.interrupt_main()

    threads = []

    def on_ready(v):
        assert v.port == port
        threads.append(threading.Thread(target=probe, daemon=True))
        threads[0].start()

    # interrupt_main() does nothing while SIGINT is ignored (e.g. pytest started in the
    # background by a non-interactive shell): install Python's default handler for the test.
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert view(scene_dir, ViewerConfig(port=port), on_ready) == 0
    finally:
        signal.signal(signal.SIGINT, old_handler)
    threads[0].join()
    assert b"<" in seen["html"]
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out
    with socket.socket() as s:  # the server is gone: the port can be bound again
        s.bind(("127.0.0.1", port))
