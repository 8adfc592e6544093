"""Camera paths (``fields/camera_paths.py``): orbit, spiral, interpolation through the
training cameras, nerfstudio camera_path.json files and the forward-facing test."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.rotations import rotation_angle_deg
from sceneforge.core.synthetic import forward_rig, orbit_rig
from sceneforge.fields.camera_paths import (
    CameraPathError,
    interpolate_cameras,
    is_forward_facing,
    mean_pose,
    orbit_cameras,
    read_camera_path,
    scene_depth_range,
    slerp,
    spiral_cameras,
    view_directions,
    write_camera_path,
)

W, H = 40, 30


def _cams(cam_from_world: torch.Tensor, f: float = 36.0) -> Cameras:
    n = len(cam_from_world)
    params = torch.tensor([[f, f, W / 2, H / 2]] * n, dtype=torch.float64)
    return Cameras("PINHOLE", params, torch.full((n,), W), torch.full((n,), H), cam_from_world)


def _orbit() -> Cameras:
    return _cams(orbit_rig(12, (0.0, 0.0, 0.5), 3.0, elevation_deg=(15.0, 45.0)))


def _forward() -> Cameras:
    return _cams(forward_rig(12, (0.0, 0.0, 0.5), 4.0))


def _assert_rotations(cams: Cameras) -> None:
    R = cams.cam_from_world[:, :, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(len(R), dtype=R.dtype))


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between rotation matrices (batched)."""
    return rotation_angle_deg(a.transpose(-1, -2) @ b)


def test_orbit_is_upright_and_circles_the_centre():
    cams = _orbit()
    center = torch.tensor([0.0, 0.0, 0.5])
    path = orbit_cameras(cams, center, 24)
    _assert_rotations(path)
    assert len(path) == 24 and int(path.width[0]) == W and int(path.height[0]) == H
    # frame 0 sits at the first camera's azimuth: it must look like that camera, not be rolled
    # upside down (the down axis of the image stays the world's down)
    ang = _angle_deg(path.cam_from_world[0, :, :3], cams.cam_from_world[0, :, :3].double())
    assert float(ang) < 20.0
    down = path.cam_from_world[:, 1, :3]
    assert bool((down[:, 2] < 0).all())  # world z is up in orbit_rig
    # every frame looks at the centre, at a constant distance
    d = path.centers.double() - center.double()
    fwd = view_directions(path)
    torch.testing.assert_close(
        (-d / d.norm(dim=-1, keepdim=True) * fwd).sum(-1), torch.ones(24, dtype=torch.float64)
    )
    assert float(d.norm(dim=-1).std()) < 1e-9


def test_forward_facing_test():
    assert is_forward_facing(_forward())
    assert not is_forward_facing(_orbit())
    # a full orbit at 45 degrees of elevation: every direction within 45 degrees of the mean,
    # yet the cameras surround the scene
    ring = _cams(orbit_rig(16, (0.0, 0.0, 0.0), 3.0, elevation_deg=(45.0, 45.0)))
    assert not is_forward_facing(ring)
    # a forward capture with one camera turned 90 degrees away is not forward-facing
    fw = _forward().cam_from_world.clone()
    turn = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=fw.dtype)
    fw[0, :, :3] = turn @ fw[0, :, :3]
    assert not is_forward_facing(_cams(fw))


def test_spiral_stays_near_the_mean_camera_and_looks_at_the_focus():
    cams = _forward()
    near, far = 3.0, 5.0
    path = spiral_cameras(cams, 40, near, far)
    _assert_rotations(path)
    mean = mean_pose(cams)
    mean_center = -mean[:, :3].T @ mean[:, 3]
    offsets = cams.centers.double() - mean_center
    spread = float(offsets.norm(dim=-1).max())
    dist = (path.centers.double() - mean_center).norm(dim=-1)
    assert float(dist.max()) <= 1.01 * spread  # within the cameras' own spread
    assert float(dist.max()) > 0.3 * spread  # and it does move
    # every frame looks at one focus point on the mean camera's axis, between near and far
    focus_depth = 1.0 / (0.25 / (0.9 * near) + 0.75 / (5.0 * far))
    assert near < focus_depth < 5 * far
    target = mean_center + focus_depth * mean[2, :3]
    to_target = target - path.centers.double()
    cos = (to_target / to_target.norm(dim=-1, keepdim=True) * view_directions(path)).sum(-1)
    torch.testing.assert_close(cos, torch.ones(40, dtype=torch.float64))
    # the image up stays the mean camera's up (no roll)
    assert float((path.cam_from_world[:, 1, :3].double() @ mean[1, :3]).min()) > 0.95


def test_scene_depth_range_from_points_or_box():
    cams = _forward()
    g = torch.Generator().manual_seed(0)
    pts = torch.tensor([[0.0, 0.0, 0.5]]).expand(100, 3) + 0.1 * torch.randn(100, 3, generator=g)
    near, far = scene_depth_range(cams, pts)
    assert 3.0 < near < far < 5.0
    aabb = torch.tensor([[-1.0, -1.0, -0.5], [1.0, 1.0, 1.5]])
    near2, far2 = scene_depth_range(cams, None, aabb)
    assert 0 < near2 < near and far2 > far
    with pytest.raises(ValueError, match="behind every camera"):
        scene_depth_range(cams, torch.tensor([[0.0, -20.0, 0.5]]))


def test_interpolation_passes_through_the_cameras_smoothly():
    cams = _orbit()[[0, 1, 2, 3, 4]]
    path = interpolate_cameras(cams, 4 * 4 + 1)
    _assert_rotations(path)
    torch.testing.assert_close(
        path.cam_from_world[::4].double(), cams.cam_from_world.double(), atol=1e-9, rtol=0
    )
    # between cameras: small steps, no jumps
    step = (path.centers[1:] - path.centers[:-1]).norm(dim=-1)
    gap = (cams.centers[1:] - cams.centers[:-1]).norm(dim=-1)
    assert float(step.max()) < 0.5 * float(gap.max())
    turn = _angle_deg(path.cam_from_world[1:, :, :3], path.cam_from_world[:-1, :, :3])
    assert float(turn.max()) < 20.0
    with pytest.raises(ValueError, match="at least 2 cameras"):
        interpolate_cameras(cams[[0]], 10)


def test_slerp_halfway_and_shorter_arc():
    q0 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    a = math.radians(90)
    q1 = torch.tensor([math.cos(a / 2), 0.0, 0.0, math.sin(a / 2)], dtype=torch.float64)
    mid = slerp(q0, q1, torch.tensor([0.5], dtype=torch.float64))[0]
    want = torch.tensor([math.cos(a / 4), 0, 0, math.sin(a / 4)], dtype=torch.float64)
    torch.testing.assert_close(mid, want)
    # -q1 is the same rotation: the shorter arc gives the same halfway rotation
    mid2 = slerp(q0, -q1, torch.tensor([0.5], dtype=torch.float64))[0]
    torch.testing.assert_close(mid2, want)


def test_camera_path_file_round_trip(tmp_path):
    cams = interpolate_cameras(_orbit(), 9)
    path = write_camera_path(tmp_path / "camera_path.json", cams, fps=12)
    data = json.loads(path.read_text())
    assert data["render_width"] == W and data["render_height"] == H and data["fps"] == 12
    assert len(data["camera_path"]) == 9 and len(data["camera_path"][0]["camera_to_world"]) == 16
    back = read_camera_path(path)
    torch.testing.assert_close(back.cam_from_world, cams.cam_from_world.double(), atol=1e-9, rtol=0)
    torch.testing.assert_close(back.K, cams.K.double(), atol=1e-9, rtol=0)
    assert back.width.tolist() == [W] * 9 and back.height.tolist() == [H] * 9
    # nested 4x4 rows read the same
    for frame in data["camera_path"]:
        m = frame["camera_to_world"]
        frame["camera_to_world"] = [m[0:4], m[4:8], m[8:12], m[12:16]]
    (tmp_path / "nested.json").write_text(json.dumps(data))
    nested = read_camera_path(tmp_path / "nested.json")
    torch.testing.assert_close(nested.cam_from_world, back.cam_from_world)


def test_nerfstudio_camera_path_conventions(tmp_path):
    """An identity OpenGL camera_to_world looks down world -z with image up = world +y;
    the focal length follows the vertical fov as nerfstudio's three.js camera does."""
    eye4 = [1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2.0, 0, 0, 0, 1]
    f = tmp_path / "ns.json"
    f.write_text(
        json.dumps(
            {
                "render_width": 200,
                "render_height": 100,
                "camera_path": [{"camera_to_world": eye4, "fov": 90.0, "aspect": 2.0}],
            }
        )
    )
    c = read_camera_path(f)
    torch.testing.assert_close(c.centers[0], torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(
        view_directions(c)[0], torch.tensor([0.0, 0, -1], dtype=torch.float64)
    )
    torch.testing.assert_close(
        c.cam_from_world[0, 1, :3], torch.tensor([0.0, -1, 0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        c.K[0], torch.tensor([[50.0, 0, 100], [0, 50, 50], [0, 0, 1]], dtype=torch.float64)
    )


def test_bad_camera_path_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(CameraPathError, match="bad.json: not a readable camera path"):
        read_camera_path(bad)
    bad.write_text(json.dumps({"render_width": 4, "render_height": 4, "camera_path": [{}]}))
    with pytest.raises(CameraPathError, match="bad.json: not a nerfstudio camera path"):
        read_camera_path(bad)
    frame = {"camera_to_world": [2.0] + [0.0] * 15, "fov": 50}
    bad.write_text(json.dumps({"render_width": 4, "render_height": 4, "camera_path": [frame]}))
    with pytest.raises(CameraPathError, match="not orthonormal"):
        read_camera_path(bad)
    with pytest.raises(CameraPathError, match="missing.json"):
        read_camera_path(tmp_path / "missing.json")
