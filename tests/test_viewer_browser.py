"""The viewer, tested for real: a viser server in-process, the page in headless Chromium.

The browser test checks (a) on the server that the client connected and was sent the camera
and point nodes (and lists them in its scene tree), and (b) in the screenshot that the pixels
where a saturated red point cloud projects (projection computed here from the camera the
browser reports) are red, and pixels away from it are not.
The field test checks the page shows the field's render; the camera path test presses the
panel's buttons in the page and reads the saved file back.
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
from test_viewer import CAMERA_COLORS, _wait, make_scene

from sceneforge.core.io import save_scene
from sceneforge.core.rotations import quat_wxyz_to_matrix
from sceneforge.viewer import (
    FieldSource,
    RunContents,
    ViewCamera,
    Viewer,
    ViewerConfig,
    find_run,
    frustum_pose,
    vertical_fov,
)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    return save_scene(make_scene(), tmp_path_factory.mktemp("viewer") / "scene", "nerfstudio")


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


def test_browser_records_and_saves_a_camera_path(scene_dir, browser, tmp_path):
    """The camera path panel in the page: two views added with its button, saved with its
    Save button; the file holds the browser's cameras."""
    from selenium.webdriver.common.by import By

    from sceneforge.fields.camera_paths import read_camera_path
    from sceneforge.viewer.camera_path import keyframe_cameras

    v = Viewer(scene_dir, ViewerConfig(port=0, camera_path_dir=tmp_path))
    try:
        browser.get(v.url)
        client = _wait(lambda: next(iter(v.server.get_clients().values()), None), 30, "client")
        _wait(lambda: client.camera.image_width > 0, 10, "the client's camera")

        def button(label: str):
            xpath = f"//button[contains(., '{label}')]"

            def usable():
                found = browser.find_elements(By.XPATH, xpath)
                return [b for b in found if b.is_displayed() and b.is_enabled()]

            return _wait(usable, 10, f"the {label!r} button")[0]

        title = "//*[text()='Camera path (sceneforge render)']"
        _wait(lambda: browser.find_elements(By.XPATH, title), 10, "the panel")[0].click()
        want = []
        for k, (eye, fov) in enumerate((((0.0, -2.0, 0.5), 60.0), ((2.0, 0.5, 0.8), 45.0)), 1):
            client.camera.position = eye
            client.camera.look_at = (0.0, 0.0, 0.0)
            client.camera.fov = math.radians(fov)
            _wait(
                lambda eye=eye, fov=fov: (
                    np.allclose(client.camera.position, eye, atol=1e-4)
                    and abs(client.camera.fov - math.radians(fov)) < 1e-4
                ),
                10,
                "the browser to report the new camera",
            )
            want.append(ViewCamera.from_viser(client.camera))
            button("Add keyframe").click()
            _wait(lambda k=k: len(v.camera_path.recorder) == k, 10, f"keyframe {k}")
        assert v.camera_path.count_text.value == "2"
        v.camera_path.smooth_box.value = False
        button("Save camera path").click()
        _wait(lambda: v.camera_path.last_saved is not None, 10, "the saved path")
        got = read_camera_path(tmp_path / "camera_path.json")
        w, h = int(got.width[0]), int(got.height[0])
        assert max(w, h) == 40 and abs(w / h - want[0].width / want[0].height) < 0.05
        ref = keyframe_cameras(want, w, h)
        torch.testing.assert_close(got.cam_from_world, ref.cam_from_world, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.K, ref.K, atol=1e-6, rtol=0)
        # the page shows the command (a read-only text area)
        shown = _wait(
            lambda: [
                t
                for t in browser.find_elements(By.TAG_NAME, "textarea")
                if "sceneforge render" in (t.get_attribute("value") or "")
            ],
            10,
            "the render command in the page",
        )
        assert f"file:{tmp_path / 'camera_path.json'}" in shown[0].get_attribute("value")
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
