"""Free3D target camera specs: the source frame, orbit specs, camera files and their errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sceneforge.core.cameras import Cameras, compose_rigid, invert_rigid
from sceneforge.core.conventions import opencv_to_opengl_world_from_cam
from sceneforge.core.io_common import as_4x4
from sceneforge.fields.camera_paths import write_camera_path
from sceneforge.stylize.free3d.poses import (
    TargetSpecError,
    cam_spherical,
    parse_target_spec,
    reanchor,
    source_camera,
    spherical_cam_from_world,
    target_cameras,
    to_source_frame,
)
from sceneforge.stylize.free3d.rays import relative_pose


def _rel(cam_from_world: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``target_from_source`` of every view (rays.relative_pose, batched over views)."""
    return relative_pose(source.expand_as(cam_from_world), cam_from_world)


def _looks_at_origin(cfw: torch.Tensor) -> bool:
    """Every camera's optical axis passes through the origin (projects to the image centre)."""
    p = cfw[:, :, 3]  # origin in camera coordinates
    return bool((p[:, :2].abs() < 1e-9).all() and (p[:, 2] > 0).all())


def test_source_camera_is_canonical():
    src = source_camera(size=64, fov_deg=50.0, radius=2.0, elevation_deg=20.0)
    az, el, r = cam_spherical(src.cam_from_world)
    assert float(az[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(el[0]) == pytest.approx(20.0)
    assert float(r[0]) == pytest.approx(2.0)
    assert _looks_at_origin(src.cam_from_world)
    # image up is world +z: the camera's -y axis has a positive z component, no roll
    down = src.cam_from_world[0, 1, :3]
    assert float(down[2]) < 0 and float(src.cam_from_world[0, 0, 2]) == pytest.approx(0.0)
    assert float(src.K[0, 0, 0]) == pytest.approx(32 / math.tan(math.radians(25)))


def test_orbit_spec_spacing_elevation_radius():
    src = source_camera(size=32, radius=1.5, elevation_deg=10.0)
    cams = target_cameras("orbit:3", src)
    az, el, r = cam_spherical(cams.cam_from_world)
    assert az.tolist() == pytest.approx([90.0, 180.0, -90.0])  # 4 equal steps with the source
    assert el.tolist() == pytest.approx([10.0] * 3) and r.tolist() == pytest.approx([1.5] * 3)
    assert _looks_at_origin(cams.cam_from_world)
    assert torch.equal(cams.params, src.params.expand(3, -1)) and int(cams.width[0]) == 32
    cams = target_cameras("orbit:4, elevation=30, radius=2.5, arc=-90, fov=40", src)
    az, el, r = cam_spherical(cams.cam_from_world)
    assert az.tolist() == pytest.approx([-22.5, -45.0, -67.5, -90.0])
    assert el.tolist() == pytest.approx([30.0] * 4) and r.tolist() == pytest.approx([2.5] * 4)
    assert float(cams.K[0, 0, 0]) == pytest.approx(16 / math.tan(math.radians(20)))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("orbit", "expected orbit:N"),
        ("spiral:4", "expected orbit:N"),
        ("orbit:x", "view count"),
        ("orbit:0", "at least one view"),
        ("orbit:4,elevation=abc", "elevation='abc' is not a number"),
        ("orbit:4,elevation=90", "elevation must lie"),
        ("orbit:4,radius=-1", "radius must be positive"),
        ("orbit:4,arc=0", "arc must be"),
        ("orbit:4,tilt=3", r"unknown option\(s\) \['tilt'\]"),
        ("orbit:4,elevation", "not key=value"),
        ("file:cams.json,frame=last", "frame must be source or first"),
    ],
)
def test_bad_specs_name_the_spec(spec, match):
    with pytest.raises(TargetSpecError, match=match) as e:
        parse_target_spec(spec)
    assert repr(spec) in str(e.value)


def test_camera_path_file_in_source_frame_and_reanchored(tmp_path: Path):
    src = source_camera(size=32, radius=2.0, elevation_deg=15.0)
    T = spherical_cam_from_world(
        torch.tensor([0.0, 40.0, 80.0]), torch.tensor([15.0, 20.0, 5.0]), torch.full((3,), 2.0)
    )
    f = 0.5 * 64 / math.tan(math.radians(25))
    file_cams = Cameras(
        "PINHOLE",
        torch.tensor([[f, f, 32.0, 32.0]] * 3, dtype=torch.float64),
        torch.full((3,), 64),
        torch.full((3,), 64),
        T,
    )
    path = write_camera_path(tmp_path / "camera_path.json", file_cams)
    got = target_cameras(f"file:{path}", src)
    assert torch.allclose(got.cam_from_world, T, atol=1e-9)
    assert int(got.width[0]) == 32 and float(got.K[0, 0, 0]) == pytest.approx(f / 2)
    # frame=first: the file's world is moved and turned; its first camera is the source
    M = spherical_cam_from_world(torch.tensor([130.0]), torch.tensor([-20.0]), torch.tensor([1.0]))
    moved = Cameras(
        "PINHOLE",
        file_cams.params,
        file_cams.width,
        file_cams.height,
        compose_rigid(T, M.expand(3, 3, 4)),
    )
    path2 = write_camera_path(tmp_path / "moved.json", moved)
    got2 = target_cameras(f"{path2},frame=first", src)
    assert len(got2) == 2
    rel_file = relative_pose(
        moved.cam_from_world[0].expand_as(moved.cam_from_world[1:]), moved.cam_from_world[1:]
    )
    rel_got = _rel(got2.cam_from_world, src.cam_from_world[0])
    assert torch.allclose(rel_got, rel_file, atol=1e-7)
    # with the source placed where the file's first camera was, the targets are the originals
    assert torch.allclose(got2.cam_from_world, T[1:], atol=1e-7)


def test_transforms_json_cameras_without_images(tmp_path: Path):
    src = source_camera(size=32, radius=2.0)
    T = spherical_cam_from_world(torch.tensor([30.0, 60.0]), torch.tensor([10.0, 10.0]), 2.0)
    gl = opencv_to_opengl_world_from_cam(invert_rigid(T))
    data = {
        "w": 32,
        "h": 32,
        "camera_angle_x": math.radians(49.0),
        "frames": [
            {"file_path": f"images/{i}.png", "transform_matrix": as_4x4(gl[i])} for i in range(2)
        ],
    }
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(data))
    got = target_cameras(str(path), src)
    assert torch.allclose(got.cam_from_world, T, atol=1e-9)
    data["frames"][1]["transform_matrix"][0][0] = 5.0
    path.write_text(json.dumps(data))
    with pytest.raises(TargetSpecError, match=r"transforms.json: frame 1.*not orthonormal"):
        target_cameras(str(path), src)
    del data["frames"][1]["transform_matrix"]
    path.write_text(json.dumps(data))
    with pytest.raises(TargetSpecError, match=r"frame 1: needs w, h"):
        target_cameras(str(path), src)
    (tmp_path / "other.json").write_text(json.dumps({"cameras": []}))
    with pytest.raises(TargetSpecError, match="neither a camera_path.json"):
        target_cameras(f"file:{tmp_path / 'other.json'}", src)
    with pytest.raises(TargetSpecError, match="no such cameras file"):
        target_cameras(f"file:{tmp_path / 'missing.json'}", src)


def test_to_source_frame_keeps_relative_poses_and_puts_source_at_azimuth_zero():
    center = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    T = spherical_cam_from_world(
        torch.tensor([75.0, 140.0, 300.0]),
        torch.tensor([25.0, -5.0, 40.0]),
        torch.tensor([1.7, 2.0, 2.4]),
        center,
    )
    S = to_source_frame(T, 1, center)
    az, el, r = cam_spherical(S)
    assert float(az[1]) == pytest.approx(0.0, abs=1e-9)
    assert el.tolist() == pytest.approx([25.0, -5.0, 40.0])  # elevations kept (+z stays up)
    assert r.tolist() == pytest.approx([1.7, 2.0, 2.4])
    assert _looks_at_origin(S)
    assert torch.allclose(_rel(S, S[1]), _rel(T, T[1]), atol=1e-9)
    # reanchor maps the anchor exactly onto the given source pose
    src = source_camera(radius=2.0, elevation_deg=-5.0).cam_from_world[0]
    R = reanchor(T, 1, src)
    assert torch.allclose(R[1], src, atol=1e-9)
    assert torch.allclose(R, S, atol=1e-9)  # same distance and elevation: the same frame
