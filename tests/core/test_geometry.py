"""Rotations, camera models, rigid transforms and convention conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sceneforge.core import cameras as cam
from sceneforge.core import conventions as conv
from sceneforge.core import rotations as rot

D = torch.float64


def _rand_rot(n: int) -> torch.Tensor:
    return rot.angle_axis_to_matrix(torch.randn(n, 3, dtype=D))


def test_rodrigues_hand_value():
    R = rot.angle_axis_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=D))
    expected = torch.tensor([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=D)
    torch.testing.assert_close(R, expected, atol=1e-12, rtol=0)


def test_rotation_round_trips():
    aa = torch.randn(64, 3, dtype=D)
    R = rot.angle_axis_to_matrix(aa)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=D).expand(64, 3, 3))
    torch.testing.assert_close(rot.angle_axis_to_matrix(rot.matrix_to_angle_axis(R)), R)
    q = rot.matrix_to_quat_wxyz(R)
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(rot.quat_wxyz_to_matrix(q), R)
    torch.testing.assert_close(rot.quat_wxyz_to_matrix(rot.angle_axis_to_quat_wxyz(aa)), R)
    torch.testing.assert_close(rot.rot6d_to_matrix(rot.matrix_to_rot6d(R)), R)
    pts = torch.randn(64, 3, dtype=D)
    torch.testing.assert_close(rot.rotate_angle_axis(aa, pts), (R @ pts[..., None])[..., 0])
    # near pi the quaternion path must still be exact
    aa_pi = torch.tensor([[math.pi - 1e-9, 0.0, 0.0]], dtype=D)
    R_pi = rot.angle_axis_to_matrix(aa_pi)
    torch.testing.assert_close(rot.angle_axis_to_matrix(rot.matrix_to_angle_axis(R_pi)), R_pi)


def test_rotation_angle_deg():
    R = rot.angle_axis_to_matrix(torch.tensor([[0.0, math.radians(10.0), 0.0]], dtype=D))
    assert abs(float(rot.rotation_angle_deg(R)[0]) - 10.0) < 1e-9


@pytest.mark.parametrize("scale", [1.0, 1e-7, 0.0])
def test_rotation_gradchecks(scale):
    aa = (torch.randn(3, 3, dtype=D) * scale).requires_grad_()
    pts = torch.randn(3, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(rot.angle_axis_to_matrix, (aa,))
    assert torch.autograd.gradcheck(rot.rotate_angle_axis, (aa, pts))
    assert torch.autograd.gradcheck(rot.angle_axis_to_quat_wxyz, (aa,))


def test_rotation_gradchecks_other_parameterisations():
    q = torch.randn(4, 4, dtype=D, requires_grad=True)
    d6 = torch.randn(4, 6, dtype=D, requires_grad=True)
    R = _rand_rot(4).requires_grad_()
    assert torch.autograd.gradcheck(rot.quat_wxyz_to_matrix, (q,))
    assert torch.autograd.gradcheck(rot.rot6d_to_matrix, (d6,))
    assert torch.autograd.gradcheck(rot.matrix_to_quat_wxyz, (R,))
    assert torch.autograd.gradcheck(rot.quat_wxyz_to_angle_axis, (q,))


PARAMS = {
    "SIMPLE_PINHOLE": [500.0, 320.0, 240.0],
    "PINHOLE": [500.0, 510.0, 320.0, 240.0],
    "SIMPLE_RADIAL": [500.0, 320.0, 240.0, 0.05],
    "RADIAL": [500.0, 320.0, 240.0, 0.05, -0.02],
    "OPENCV": [500.0, 510.0, 320.0, 240.0, 0.05, -0.02, 0.001, -0.002],
    "BAL": [500.0, 0.05, -0.02],
}


def test_project_hand_values():
    p = torch.tensor([0.2, -0.1, 2.0], dtype=D)  # normalised (0.1, -0.05), r2 = 0.0125
    r2 = 0.0125
    uv, depth = cam.project(p, "PINHOLE", torch.tensor(PARAMS["PINHOLE"], dtype=D))
    torch.testing.assert_close(uv, torch.tensor([320 + 50.0, 240 - 25.5], dtype=D))
    assert float(depth) == 2.0
    uv, _ = cam.project(p, "RADIAL", torch.tensor(PARAMS["RADIAL"], dtype=D))
    f = 1 + 0.05 * r2 - 0.02 * r2 * r2
    torch.testing.assert_close(
        uv, torch.tensor([320 + 500 * 0.1 * f, 240 - 500 * 0.05 * f], dtype=D)
    )
    # OpenCV tangential terms by hand
    x, y, p1, p2 = 0.1, -0.05, 0.001, -0.002
    xd = x * f + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * f + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    uv, _ = cam.project(p, "OPENCV", torch.tensor(PARAMS["OPENCV"], dtype=D))
    torch.testing.assert_close(uv, torch.tensor([320 + 500 * xd, 240 + 510 * yd], dtype=D))
    # BAL: p = -P[:2] / P[2] for a point in front (P[2] < 0)
    pb = torch.tensor([0.2, -0.1, -2.0], dtype=D)
    uv, depth = cam.project(pb, "BAL", torch.tensor(PARAMS["BAL"], dtype=D))
    torch.testing.assert_close(uv, torch.tensor([500 * 0.1 * f, -500 * 0.05 * f], dtype=D))
    assert float(depth) == 2.0


@pytest.mark.parametrize("model", list(PARAMS))
def test_unproject_inverts_project(model):
    params = torch.tensor(PARAMS[model], dtype=D).expand(200, -1)
    pts = torch.randn(200, 3, dtype=D) * torch.tensor([0.6, 0.5, 0.3], dtype=D)
    pts[:, 2] += 3.0
    if model == "BAL":
        pts[:, 2] *= -1
    uv, depth = cam.project(pts, model, params)
    back = cam.unproject(uv, model, params) * depth[:, None]
    torch.testing.assert_close(back, pts, atol=1e-9, rtol=0)


@pytest.mark.parametrize("model", list(PARAMS))
def test_project_gradcheck(model):
    params = torch.tensor(PARAMS[model], dtype=D).expand(3, -1).clone().requires_grad_()
    pts = torch.randn(3, 3, dtype=D) * 0.3 + torch.tensor(
        [0, 0, 3.0 if model != "BAL" else -3.0], dtype=D
    )
    pts.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: cam.project(a, model, b)[0], (pts, params))


def test_undistort_inverts_distort_strong():
    dist = torch.tensor([-0.3, 0.1, 0.002, -0.001], dtype=D)
    xy = torch.rand(500, 2, dtype=D) - 0.5
    torch.testing.assert_close(cam.undistort(cam.distort(xy, dist), dist), xy, atol=1e-10, rtol=0)


def test_rigid_helpers_and_rays():
    R = _rand_rot(5)
    t = torch.randn(5, 3, dtype=D)
    T = cam.make_rigid(R, t)
    pts = torch.randn(5, 3, dtype=D)
    torch.testing.assert_close(
        cam.transform_points(cam.invert_rigid(T), cam.transform_points(T, pts)), pts
    )
    torch.testing.assert_close(
        cam.compose_rigid(T, cam.invert_rigid(T))[..., :3], torch.eye(3, dtype=D).expand(5, 3, 3)
    )
    H = cam.to_homogeneous(T)
    torch.testing.assert_close(H[:, :3, :], T)
    assert (H[:, 3] == torch.tensor([0, 0, 0, 1.0], dtype=D)).all()

    cams = cam.Cameras(
        "OPENCV",
        torch.tensor(PARAMS["OPENCV"], dtype=D).expand(5, -1).clone(),
        torch.full((5,), 640),
        torch.full((5,), 480),
        T,
    )
    world = cams.centers + 3.0 * cams.world_from_cam[:, :, 2] + 0.3 * torch.randn(5, 3, dtype=D)
    uv, depth = cams.project(world[:, None].expand(5, 1, 3).reshape(5, 1, 3))
    for i in range(5):
        o, d, z_per_t = cams.rays(i, pixels=uv[i])
        torch.testing.assert_close(d.norm(dim=-1), torch.ones(1, dtype=D))
        tpar = depth[i] / z_per_t
        torch.testing.assert_close(o + tpar[:, None] * d, world[i : i + 1], atol=1e-9, rtol=0)
    o, d, _ = cams.rays(0, downscale=4)
    assert o.shape == (160 * 120, 3) and d.shape == (160 * 120, 3)


def test_cameras_validation():
    bad = torch.eye(3, 4, dtype=D)[None].repeat(2, 1, 1)
    bad[1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite pose .*\[1\]"):
        cam.Cameras("PINHOLE", torch.ones(2, 4, dtype=D), torch.ones(2), torch.ones(2), bad)
    with pytest.raises(ValueError, match="PINHOLE cameras need params"):
        cam.Cameras(
            "PINHOLE",
            torch.ones(2, 3, dtype=D),
            torch.ones(2),
            torch.ones(2),
            bad[:1].repeat(2, 1, 1),
        )
    with pytest.raises(ValueError, match="unknown camera model"):
        cam.num_params("FISHEYE_42")


def test_model_conversion():
    p = torch.tensor([[500.0, 320.0, 240.0, 0.05]], dtype=D)
    o = cam.convert_params("SIMPLE_RADIAL", p, "OPENCV")
    torch.testing.assert_close(o, torch.tensor([[500, 500, 320, 240, 0.05, 0, 0, 0]], dtype=D))
    pts = torch.tensor([[0.3, -0.2, 2.0]], dtype=D)
    torch.testing.assert_close(
        cam.project(pts, "SIMPLE_RADIAL", p)[0], cam.project(pts, "OPENCV", o)[0]
    )
    assert cam.most_general_model(["PINHOLE", "SIMPLE_RADIAL"]) == "SIMPLE_RADIAL"
    with pytest.raises(ValueError):
        cam.convert_params("OPENCV", o, "PINHOLE")


def test_undistort_image_recovers_pinhole_content():
    h, w = 60, 80
    params = torch.tensor([70.0, 72.0, 40.0, 30.0, -0.2, 0.05, 0.001, 0.001], dtype=D)
    fx, fy, cx, cy, dist = cam.split_params("OPENCV", params)

    def f(u, v):  # smooth content defined on the pinhole image plane
        return torch.stack([torch.sin(u / 9.0), torch.cos(v / 7.0), (u + v) / (w + h)], dim=-1)

    grid = cam.pixel_centers(h, w, dtype=D)
    xy_d = torch.stack([(grid[..., 0] - cx) / fx, (grid[..., 1] - cy) / fy], dim=-1)
    xy = cam.undistort(xy_d, dist.expand(h, w, 4))
    distorted = f(xy[..., 0] * fx + cx, xy[..., 1] * fy + cy)
    und, pinhole = cam.undistort_image(distorted, "OPENCV", params)
    torch.testing.assert_close(pinhole, params[:4])
    inner = (slice(8, h - 8), slice(8, w - 8))
    err = (und - f(grid[..., 0], grid[..., 1]))[inner].abs()
    assert float(err.max()) < 0.02


def test_opengl_opencv_round_trip():
    wfc = cam.make_rigid(_rand_rot(4), torch.randn(4, 3, dtype=D))
    gl = conv.opencv_to_opengl_world_from_cam(wfc)
    torch.testing.assert_close(gl[..., 1], -wfc[..., 1])
    torch.testing.assert_close(gl[..., 2], -wfc[..., 2])
    torch.testing.assert_close(conv.opengl_to_opencv_world_from_cam(gl), wfc)


def test_llff_hand_example_and_round_trip():
    # camera at (1, 2, 3) looking along world -z with image down = world -y (OpenGL-like)
    down = torch.tensor([0.0, -1.0, 0.0], dtype=D)
    right = torch.tensor([1.0, 0.0, 0.0], dtype=D)
    back = torch.tensor([0.0, 0.0, 1.0], dtype=D)
    t = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    hwf = torch.tensor([480.0, 640.0, 500.0], dtype=D)
    poses = torch.stack([down, right, back, t, hwf], dim=-1)[None]
    cfw, hwf_out = conv.llff_to_opencv(poses)
    point = torch.tensor([1.0, 2.0, 0.0], dtype=D)  # 3 units in front of the camera
    pc = cam.transform_points(cfw[0], point)
    torch.testing.assert_close(pc, torch.tensor([0.0, 0.0, 3.0], dtype=D))
    above = cam.transform_points(cfw[0], torch.tensor([1.0, 3.0, 0.0], dtype=D))
    assert above[1] < 0  # world up is image up (negative y in OpenCV)
    torch.testing.assert_close(conv.opencv_to_llff(cfw, hwf_out), poses)


def test_bal_conversion_preserves_residuals():
    n = 4
    cfw = cam.make_rigid(
        rot.angle_axis_to_matrix(0.1 * torch.randn(n, 3, dtype=D)), torch.randn(n, 3, dtype=D)
    )
    params = torch.tensor([[400.0, 0.01, -0.001]], dtype=D).repeat(n, 1)
    pts = torch.randn(n, 3, dtype=D)
    pc = cam.transform_points(cfw, pts)
    pts = pts - (pc[:, 2:3] + 4.0) * cam.invert_rigid(cfw)[:, :, 2]  # push in front (-z)
    uv_bal, depth = cam.project(cam.transform_points(cfw, pts), "BAL", params)
    assert (depth > 0).all()
    cfw_cv, radial, obs_cv = conv.bal_to_opencv(cfw, params, uv_bal)
    uv_cv, depth_cv = cam.project(cam.transform_points(cfw_cv, pts), "RADIAL", radial)
    torch.testing.assert_close(uv_cv, obs_cv)
    torch.testing.assert_close(depth_cv, depth)
    back = conv.opencv_to_bal(cfw_cv, radial, obs_cv)
    torch.testing.assert_close(back[0], cfw)
    torch.testing.assert_close(back[1], params)
    torch.testing.assert_close(back[2], uv_bal)


def test_quaternion_order_matches_pycolmap():
    pycolmap = pytest.importorskip("pycolmap")
    R = _rand_rot(1)[0]
    q_wxyz = rot.matrix_to_quat_wxyz(R)
    r3 = pycolmap.Rotation3d(np.asarray(R.numpy()))
    q_xyzw = torch.tensor(np.asarray(r3.quat), dtype=D)
    q = conv.quat_xyzw_to_wxyz(q_xyzw)
    q = q if q[0] >= 0 else -q
    torch.testing.assert_close(q, q_wxyz)
    torch.testing.assert_close(conv.quat_wxyz_to_xyzw(q), q_xyzw if q_xyzw[3] >= 0 else -q_xyzw)


def test_undistorted_scene_resamples_onto_the_pinhole_camera():
    from sceneforge.core.scene import SceneData, undistorted_scene

    h, w, f, k1 = 48, 64, 50.0, -0.3
    params = torch.tensor([[f, w / 2, h / 2, k1]], dtype=torch.float64)
    pose = torch.eye(3, 4, dtype=torch.float64)[None]
    cams = cam.Cameras("SIMPLE_RADIAL", params, torch.tensor([w]), torch.tensor([h]), pose)

    def pattern(xn, yn):  # smooth in normalised (undistorted) image coordinates
        return torch.stack(
            [0.5 + 0.4 * torch.sin(9 * xn), 0.5 + 0.4 * torch.cos(9 * yn), 0.5 + 0 * xn], -1
        )

    grid = cam.pixel_centers(h, w, dtype=torch.float64)
    xy_d = torch.stack([(grid[..., 0] - w / 2) / f, (grid[..., 1] - h / 2) / f], -1)
    xy = cam.undistort(xy_d, torch.tensor([k1, 0, 0, 0], dtype=torch.float64).expand(h, w, 4))
    captured = pattern(xy[..., 0], xy[..., 1])  # what the distorted camera sees
    scene = SceneData(cams, ["a.png"], images=[(captured * 255 + 0.5).to(torch.uint8)])
    und = undistorted_scene(scene)
    assert und.cameras.model == "PINHOLE"
    torch.testing.assert_close(und.cameras.params[0], torch.tensor([f, f, w / 2, h / 2]).double())
    want = pattern((grid[..., 0] - w / 2) / f, (grid[..., 1] - h / 2) / f).float()
    got = und.load_image(0)
    inner = (slice(6, h - 6), slice(6, w - 6))  # the border samples outside the capture
    assert float((got[inner] - want[inner]).abs().max()) < 0.05
    assert float((scene.load_image(0)[inner] - want[inner]).abs().max()) > 0.1  # it did move


def test_pixel_to_grid_samples_pixel_centres_exactly():
    h, w = 5, 7
    img = torch.arange(h * w * 2, dtype=torch.float64).reshape(2, h, w)
    grid = cam.pixel_to_grid(cam.pixel_centers(h, w, dtype=torch.float64), h, w)
    out = torch.nn.functional.grid_sample(img[None], grid[None], align_corners=False)
    torch.testing.assert_close(out[0], img)
    # corners of the image are the grid's edges; half a pixel right of a centre: the mean
    corners = torch.tensor([[0.0, 0.0], [w, h]], dtype=torch.float64)
    torch.testing.assert_close(
        cam.pixel_to_grid(corners, h, w), torch.tensor([[-1.0, -1], [1, 1]]).double()
    )
    mid = cam.pixel_to_grid(torch.tensor([[[2.0, 1.5]]], dtype=torch.float64), h, w)
    got = torch.nn.functional.grid_sample(img[None], mid[None], align_corners=False)[0, :, 0, 0]
    torch.testing.assert_close(got, (img[:, 1, 1] + img[:, 1, 2]) / 2)
