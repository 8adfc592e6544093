"""The viewer's camera path panel: browser views as keyframes -> a nerfstudio camera_path.json
in the run folder (never replacing a file) -> the ``sceneforge render`` command that renders it.

The logic (:mod:`sceneforge.viewer.camera_path`) is tested on its own; the panel's callbacks
are driven on a real viser server (localhost, any free port) with a stand-in for the browser
client, whose camera carries what a browser reports (pose, vertical fov, canvas size).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_viewer import make_scene

from sceneforge.core.cameras import invert_rigid
from sceneforge.core.io import save_scene
from sceneforge.core.rotations import matrix_to_quat_wxyz, rotation_angle_deg
from sceneforge.core.synthetic import look_at
from sceneforge.fields.camera_paths import read_camera_path
from sceneforge.viewer import (
    CAMERA_PATHS_DIR,
    CameraPathRecorder,
    CameraPathRecordError,
    CameraPathSettings,
    ViewCamera,
    Viewer,
    ViewerConfig,
)
from sceneforge.viewer.camera_path import keyframe_cameras, render_command, safe_name

W, H = 800, 600  # the browser canvas


def client_camera(eye, target, fov_deg: float, width: int = W, height: int = H):
    """What viser's ``CameraHandle`` reports for a camera at ``eye`` looking at ``target``
    (z up): OpenCV ``world_from_cam`` as wxyz + position, vertical fov in radians."""
    cam_from_world = look_at(torch.tensor([eye], dtype=torch.float64), torch.tensor(target))
    world_from_cam = invert_rigid(cam_from_world)[0]
    return SimpleNamespace(
        wxyz=matrix_to_quat_wxyz(world_from_cam[:, :3]).numpy(),
        position=np.asarray(eye, dtype=np.float64),
        look_at=np.asarray(target, dtype=np.float64),
        fov=math.radians(fov_deg),
        image_width=width,
        image_height=height,
    ), cam_from_world[0]


#: Three views around the origin, each with its own field of view.
VIEWS = [
    ((3.0, 0.0, 1.0), (0.0, 0.0, 0.0), 50.0),
    ((0.0, 3.0, 1.5), (0.0, 0.0, 0.2), 60.0),
    ((-3.0, 0.5, 1.0), (0.1, 0.0, 0.0), 40.0),
]


def recorder(tmp_path: Path, views=VIEWS, long_side: int = 400) -> CameraPathRecorder:
    rec = CameraPathRecorder(tmp_path / CAMERA_PATHS_DIR, tmp_path, long_side)
    for eye, target, fov in views:
        rec.add(ViewCamera.from_viser(client_camera(eye, target, fov)[0]))
    return rec


def focal(fov_deg: float, height: int) -> float:
    return 0.5 * height / math.tan(math.radians(fov_deg) / 2)


def test_keyframes_round_trip_through_the_saved_file(tmp_path):
    rec = recorder(tmp_path)
    saved = rec.save(CameraPathSettings(smooth=False, fps=30))
    assert saved.path == tmp_path / CAMERA_PATHS_DIR / "camera_path.json"
    assert (saved.num_frames, saved.width, saved.height) == (3, 400, 300)  # the canvas aspect
    got = read_camera_path(saved.path)
    assert len(got) == 3
    assert (got.width == 400).all() and (got.height == 300).all()
    for k, (eye, target, fov) in enumerate(VIEWS):
        want = client_camera(eye, target, fov)[1]
        torch.testing.assert_close(got.cam_from_world[k], want, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.centers[k], torch.tensor(eye, dtype=torch.float64))
        f = focal(fov, 300)
        want_k = torch.tensor([[f, 0, 200], [0, f, 150], [0, 0, 1]], dtype=torch.float64)
        torch.testing.assert_close(got.K[k].double(), want_k, atol=1e-6, rtol=0)
    # the target lies on each camera's optical axis, in front of it
    for k, (_, target, _) in enumerate(VIEWS):
        px, depth = got[k].project(torch.tensor([target], dtype=torch.float64))
        want_px = torch.tensor([200.0, 150.0], dtype=px.dtype)
        torch.testing.assert_close(px.reshape(2), want_px)
        assert float(depth.reshape(())) > 0


def test_keyframes_of_training_cameras_project_like_them():
    """A training camera shown in the browser (its frustum pose and fov) and added as a
    keyframe at the training image size projects points as the training camera does."""
    from sceneforge.viewer import frustum_pose, vertical_fov

    scene = make_scene()
    wxyz, pos = frustum_pose(scene.cameras)
    fov = vertical_fov(scene.cameras)
    keys = [ViewCamera(tuple(wxyz[i]), tuple(pos[i]), float(fov[i]), W, H) for i in range(4)]
    cams = keyframe_cameras(keys, 40, 30)
    pts = torch.randn(30, 3, dtype=torch.float64) * 0.3
    for i in range(4):
        torch.testing.assert_close(cams[i].project(pts)[0], scene.cameras[i].project(pts)[0])


def test_smooth_path_passes_through_the_keyframes(tmp_path):
    rec = recorder(tmp_path)
    saved = rec.save(CameraPathSettings(num_frames=9, fps=24))  # keyframes at frames 0, 4, 8
    got = read_camera_path(saved.path)
    assert len(got) == saved.num_frames == 9
    keys = read_camera_path(rec.save(CameraPathSettings(smooth=False)).path)
    for frame, k in ((0, 0), (4, 1), (8, 2)):
        torch.testing.assert_close(
            got.cam_from_world[frame], keys.cam_from_world[k], atol=1e-6, rtol=0
        )
        torch.testing.assert_close(got.K[frame], keys.K[k], atol=1e-6, rtol=0)
    # half way between keyframes the field of view is half way too
    fy = got.K[:, 1, 1].double()
    fov = torch.rad2deg(2 * torch.atan(0.5 * 300 / fy))
    assert float(fov[2]) == pytest.approx(55.0, abs=1e-6)
    assert float(fov[6]) == pytest.approx(50.0, abs=1e-6)
    # smooth: no jumps between frames, rotations change gradually
    steps = (got.centers[1:] - got.centers[:-1]).norm(dim=-1)
    assert float(steps.max()) < 2.0 * float(steps.mean())
    R = got.cam_from_world[:, :, :3]
    angles = [float(rotation_angle_deg(R[i + 1] @ R[i].T)) for i in range(8)]
    assert max(angles) < 40.0 and min(angles) > 1.0


def test_saving_never_replaces_a_file(tmp_path):
    rec = recorder(tmp_path)
    first = rec.save(CameraPathSettings(name="orbit one", num_frames=5))
    text = first.path.read_text()
    rec.remove_last()
    second = rec.save(CameraPathSettings(name="orbit one", num_frames=5))
    third = rec.save(CameraPathSettings(name="orbit one.json", num_frames=5))
    assert first.path.name == "orbit_one.json"
    assert second.path.name == "orbit_one.v002.json" and third.path.name == "orbit_one.v003.json"
    assert first.path.read_text() == text  # untouched
    assert len(read_camera_path(first.path)) == 5 and len(read_camera_path(second.path)) == 5
    assert sorted(p.name for p in first.path.parent.iterdir()) == [
        "orbit_one.json",
        "orbit_one.v002.json",
        "orbit_one.v003.json",
    ]
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("  ") == "camera_path" and safe_name("a b/c") == "a_b_c"


def test_saving_needs_two_keyframes(tmp_path):
    rec = recorder(tmp_path, views=[])
    with pytest.raises(CameraPathRecordError, match="at least 2 keyframes, there is none"):
        rec.save(CameraPathSettings())
    rec = recorder(tmp_path, views=VIEWS[:1])
    with pytest.raises(CameraPathRecordError, match="at least 2 keyframes, there is 1"):
        rec.save(CameraPathSettings())
    assert not (tmp_path / CAMERA_PATHS_DIR).exists()
    with pytest.raises(CameraPathRecordError, match="not reported its view size"):
        rec.add(ViewCamera.from_viser(client_camera(*VIEWS[1], width=0, height=0)[0]))
    rec.add(ViewCamera.from_viser(client_camera(*VIEWS[1])[0]))
    with pytest.raises(CameraPathRecordError, match="number of frames"):
        rec.save(CameraPathSettings(num_frames=1))
    assert len(rec) == 2 and rec.remove_last() is not None and len(rec) == 1
    rec.clear()
    assert len(rec) == 0 and rec.remove_last() is None


def test_render_command_is_what_sceneforge_render_parses(tmp_path):
    """The command shown after saving parses as ``sceneforge render`` and names the file."""
    import tyro

    from sceneforge import commands

    run = tmp_path / "my run"
    saved = recorder(run).save(CameraPathSettings(fps=30, num_frames=4))
    argv = shlex.split(saved.command)
    assert argv[:2] == ["sceneforge", "render"]
    cmd = tyro.cli(
        commands.Render, args=argv[2:], config=(tyro.conf.PositionalMetavarFromFieldName,)
    )
    assert cmd.run_dir == run and cmd.out_dir == run / "path_renders" / "camera_path"
    assert cmd.config.path == f"file:{saved.path}" and cmd.config.fps == 30
    assert len(read_camera_path(cmd.config.path[len("file:") :])) == 4
    assert render_command(Path("out"), Path("out/camera_paths/a.json"), 24) == (
        "sceneforge render out out/path_renders/a --path file:out/camera_paths/a.json --fps 24"
    )


def _click(button, client) -> None:
    """Run ``button``'s click callbacks as viser does when a browser presses it."""
    import viser

    for cb in button._impl.update_cb:
        cb(viser.GuiEvent(client=client, client_id=0, target=button))


def test_viewer_panel_saves_a_path_into_the_run_folder(tmp_path, capsys):
    scene_dir = save_scene(make_scene(), tmp_path / "scene", "nerfstudio")
    v = Viewer(scene_dir, ViewerConfig(port=0, field=False))
    try:
        assert v.server.get_host() == "127.0.0.1"
        panel = v.camera_path
        assert panel.count_text.value == "0" and panel.save_button.disabled
        assert int(panel.long_side_number.value) == 40  # the training images' long side
        client = SimpleNamespace(camera=client_camera(*VIEWS[0])[0])
        _click(panel.add_button, client)
        _click(panel.save_button, client)  # disabled in a browser; still refused here
        assert panel.status_text.value.startswith("not saved: a camera path needs at least 2")
        assert not (scene_dir / CAMERA_PATHS_DIR).exists()
        for view in VIEWS[1:]:
            client.camera = client_camera(*view)[0]
            _click(panel.add_button, client)
        assert panel.count_text.value == "3" and not panel.save_button.disabled
        assert len(panel._nodes) == 4  # three keyframe frustums and the spline
        _click(panel.remove_button, client)
        assert panel.count_text.value == "2" and len(panel._nodes) == 3
        panel.frames_number.value = 11
        panel.long_side_number.value = 64
        panel.name_text.value = "fly by"
        _click(panel.save_button, client)
        path = scene_dir / CAMERA_PATHS_DIR / "fly_by.json"
        assert panel.saved_text.value == str(path) and panel.saved_text.visible
        assert panel.command_text.value == panel.last_saved.command
        assert f"--path file:{path}" in panel.command_text.value
        assert "needs a run trained on this scene" in panel.status_text.value
        got = read_camera_path(path)
        assert len(got) == 11 and (int(got.width[0]), int(got.height[0])) == (64, 48)
        for frame, k in ((0, 0), (10, 1)):
            want = client_camera(*VIEWS[k])[1]
            torch.testing.assert_close(got.cam_from_world[frame], want, atol=1e-6, rtol=0)
        _click(panel.save_button, client)
        assert panel.saved_text.value == str(path.with_name("fly_by.v002.json"))
        _click(panel.clear_button, client)
        assert panel.count_text.value == "0" and panel.save_button.disabled
        assert panel._nodes == []
        out = capsys.readouterr().out
        assert "render it with: sceneforge render" in out
    finally:
        v.stop()


def test_a_path_saved_on_a_run_renders_with_the_shown_command(tmp_path, monkeypatch):
    """The first-hour flow: open a trained run, add views, save, run the printed command."""
    from dataclasses import replace

    from sceneforge.cli import main
    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.fields.api import TrainConfig, train
    from sceneforge.fields.field import FieldConfig, TriPlaneConfig
    from sceneforge.fields.nerf_model import NerfConfig
    from sceneforge.fields.sampling import SamplerConfig
    from sceneforge.fields.trainer import TrainerConfig
    from sceneforge.viewer import frustum_pose, vertical_fov

    scene = replace(turntable_scene(num_views=4, size=16, num_points=10), masks=None)
    scene_dir = save_scene(scene, tmp_path / "scene", "nerfstudio")
    tcfg = TrainerConfig(
        max_steps=2,
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=0,
        nerf=NerfConfig(
            sampler=SamplerConfig(num_samples=8, grid_resolution=16),
            field=FieldConfig(
                triplane=TriPlaneConfig(resolutions=(16,), features=4),
                density_grid_resolution=16,
                hidden_dim=16,
                color_hidden_dim=16,
                sh_degree=1,
                appearance_dim=4,
            ),
        ),
    )
    run = tmp_path / "run"
    train(scene_dir, run, TrainConfig(trainer=tcfg, save_eval_images=False))
    v = Viewer(run, ViewerConfig(port=0, field=False))
    try:
        panel = v.camera_path
        wxyz, pos = frustum_pose(scene.cameras)
        fov = vertical_fov(scene.cameras)
        for i in (0, 1):  # the browser shows training cameras 0 and 1
            cam = SimpleNamespace(
                wxyz=wxyz[i], position=pos[i], fov=float(fov[i]), image_width=W, image_height=H
            )
            panel.add_keyframe(SimpleNamespace(camera=cam))
        panel.frames_number.value = 3
        panel.long_side_number.value = 16
        saved = panel.save()
        assert saved is not None and "needs a run" not in panel.status_text.value
    finally:
        v.stop()
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(saved.command)
    assert main(argv[1:]) == 0
    frames = sorted((run / "path_renders" / "camera_path" / "frames").glob("*.png"))
    assert [f.name for f in frames] == ["0000.png", "0001.png", "0002.png"]
    from sceneforge.core.image_io import read_image

    assert read_image(frames[0]).shape == (12, 16, 3)  # the saved size, the browser's aspect
