"""Body fitting to 2D keypoints (issue 20): accuracy on synthetic anny videos, noise,
temporal smoothness, metrics, input errors, the JSON round trip and float64 gradchecks.

Measured here (anny, 6 frames at 10 fps, 512 px virtual camera, subject shape known, 2 cores,
default FitConfig with the chain and hinge priors): from exact 2D keypoints MPJPE 26.0 mm /
PA-MPJPE 26.4 mm (reprojection 0.39 px); with 2 px noise MPJPE 46.8 mm / PA-MPJPE 42.4 mm
(reprojection 1.82 px); frame-to-frame jitter 22.9 mm with the temporal terms vs 41.9 mm
without. Before the chain and hinge priors: 28.3 / 20.5 mm exact, 42.3 / 29.9 mm with noise
(on this short, 512 px case the chain prior costs ~10 mm: hinge prior alone 36.4 / 27.1 mm;
on the issue's benchmark, 30 frames at 256 px, it is what brings 63 mm down to 42 mm, see
the fit module docstring). The bounds below leave ~20 % margin over these figures."""

from __future__ import annotations

import json

import pytest
import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.rotations import angle_axis_to_matrix
from sceneforge.stylize.human.fit import (
    FitConfig,
    _check_inputs,
    fit_body,
    hinge_penalty,
    mask_loss,
    project_pinhole,
    read_fit,
    robust_loss,
    to_landmarks,
    write_fit,
)
from sceneforge.stylize.human.fit_kinematics import KinematicBody, active_joints, hinge_frames
from sceneforge.stylize.human.metrics import mpjpe, pa_mpjpe, procrustes_align
from sceneforge.stylize.human.synthetic import HumanVideoConfig, make_human_video

SIZE = 512  # virtual image size: the keypoints are exact projections, no rendering needed


@pytest.fixture(scope="module")
def anny_case(anny_model):
    """A 6-frame walk with the camera rescaled to a 512 px image (person ~290 px tall)."""
    cfg = HumanVideoConfig(
        size=16, num_frames=6, fps=10.0, heldout_frames=0, heldout_views=0, ssaa=1
    )
    video = make_human_video(anny_model, cfg)
    f = video.train
    c = f.cameras
    cams = Cameras(
        c.model,
        c.params * SIZE / cfg.size,
        torch.full_like(c.width, SIZE),
        torch.full_like(c.height, SIZE),
        c.cam_from_world,
    )
    kp2 = torch.stack([cams[i].project(f.keypoints_3d[i])[0][0] for i in range(len(f))])
    return anny_model, video, cams, kp2


def _fit(case, noise: float, **kw):
    model, video, cams, kp2 = case
    g = torch.Generator().manual_seed(1)
    noisy = kp2 + noise * torch.randn(kp2.shape, generator=g, dtype=kp2.dtype)
    lm, conf = to_landmarks(noisy, video.keypoint_ids)
    cfg = FitConfig(fit_shape=False, **kw)
    res = fit_body(model, lm, cams, conf, shape=video.shape, config=cfg)
    kp3, ids = model.keypoints(model(res.pose, res.shape, res.transl))
    assert ids == video.keypoint_ids
    return res, kp3


def _hips(video) -> list[int]:
    return [video.keypoint_ids.index(23), video.keypoint_ids.index(24)]


@pytest.fixture(scope="module")
def noisy_fit(anny_case):
    return _fit(anny_case, 2.0)


def test_fit_from_exact_keypoints(anny_case):
    _, video, _, _ = anny_case
    res, kp3 = _fit(anny_case, 0.0)
    gt = video.train.keypoints_3d
    err = float(mpjpe(kp3, gt, _hips(video)).mean())
    pa = float(pa_mpjpe(kp3, gt).mean())
    print(f"exact 2D: MPJPE {err:.1f} mm, PA-MPJPE {pa:.1f} mm")
    assert err < 32.0 and pa < 32.0  # measured 26.0 / 26.4
    assert float(res.reprojection_error_px.max()) < 1.0
    assert res.pose.shape == (6, video.train.pose.shape[1], 3) and res.focal is None
    assert float((res.transl - video.train.transl).norm(dim=-1).max()) < 0.1


def test_fit_with_2px_noise(anny_case, noisy_fit):
    _, video, _, _ = anny_case
    res, kp3 = noisy_fit
    gt = video.train.keypoints_3d
    err = float(mpjpe(kp3, gt, _hips(video)).mean())
    pa = float(pa_mpjpe(kp3, gt).mean())
    print(f"2 px noise: MPJPE {err:.1f} mm, PA-MPJPE {pa:.1f} mm")
    assert err < 56.0 and pa < 51.0  # measured 46.8 / 42.4
    # residuals about the noise (2 px per axis: ~2.5 px mean distance), not more, nor 0
    rep = res.reprojection_error_px
    assert bool(((rep > 0.7) & (rep < 2.5)).all()), rep
    assert res.stage_losses["stage2"] < res.stage_losses["stage1"] * 10


def test_temporal_terms_reduce_jitter(anny_case, noisy_fit):
    _, video, _, _ = anny_case
    gt = video.train.keypoints_3d
    _, smooth = noisy_fit
    _, rough = _fit(anny_case, 2.0, smooth_pose=0.0, smooth_transl=0.0)

    def jitter(kp):  # error of the frame-to-frame motion (mm)
        return float(((kp[1:] - kp[:-1]) - (gt[1:] - gt[:-1])).norm(dim=-1).mean()) * 1000

    print(f"jitter {jitter(smooth):.1f} mm (smooth) vs {jitter(rough):.1f} mm")
    assert jitter(smooth) < 0.7 * jitter(rough)
    assert float(mpjpe(smooth, gt, _hips(video)).mean()) < float(
        mpjpe(rough, gt, _hips(video)).mean()
    )


def test_metrics():
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(3, 10, 3, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.linalg.det(q))[:, None, None]  # proper rotations
    moved = 2.5 * gt @ q.transpose(1, 2) + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    assert float(pa_mpjpe(moved, gt).max()) < 1e-9
    torch.testing.assert_close(procrustes_align(moved, gt), gt)
    assert float(mpjpe(moved, gt, root=0).min()) > 100.0  # not aligned: not 0
    offset = torch.tensor([0.03, 0.0, -0.04], dtype=torch.float64)  # 5 cm
    torch.testing.assert_close(mpjpe(gt + offset, gt, root=None), torch.full((3,), 50.0).double())
    shifted = gt.clone()
    shifted[:, 1:] += offset  # all but the root: 9 of 10 joints off by 50 mm
    torch.testing.assert_close(mpjpe(shifted, gt, root=0), torch.full((3,), 45.0).double())
    torch.testing.assert_close(mpjpe(gt + offset, gt, root=[0, 1]), torch.zeros(3).double())
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(pa_mpjpe(mirrored, gt).min()) > 1.0  # a reflection is not a similarity
    with pytest.raises(ValueError, match="F, K, 3"):
        mpjpe(gt, gt[:, :5])


def _tiny_inputs(frames: int = 3):
    """Landmarks of a fixed pose seen by a simple camera (for the error tests)."""
    kp = torch.full((frames, 33, 2), 50.0, dtype=torch.float64)
    kp += torch.arange(33, dtype=torch.float64)[:, None] * torch.tensor([1.0, 2.0]).double()
    cfw = torch.eye(3, 4, dtype=torch.float64).expand(1, 3, 4).clone()
    cfw[0, 2, 3] = 3.0
    cams = Cameras(
        "PINHOLE",
        torch.tensor([[100.0, 100.0, 64.0, 64.0]], dtype=torch.float64),
        torch.tensor([128]),
        torch.tensor([128]),
        cfw,
    )
    return kp, cams


def test_bad_inputs_raise(anny_model):
    kp, cams = _tiny_inputs()
    with pytest.raises(ValueError, match=r"\[F, 33, 2\]"):
        fit_body(anny_model, kp[:, :17], cams)
    conf = torch.ones(3, 33, dtype=torch.float64)
    conf[2] = 0.05  # frame 2: nothing above min_confidence
    with pytest.raises(ValueError, match="frame 2: 0 confident keypoints"):
        fit_body(anny_model, kp, cams, conf)
    nan = kp.clone()
    nan[1] = float("nan")  # non-finite keypoints count as missing
    with pytest.raises(ValueError, match="frame 1: 0 confident"):
        fit_body(anny_model, nan, cams)
    with pytest.raises(ValueError, match="2 cameras for 3 frames"):
        fit_body(anny_model, kp, cams[[0, 0]])
    with pytest.raises(ValueError, match="empty person mask"):
        fit_body(anny_model, kp, cams, masks=torch.zeros(3, 128, 128, dtype=torch.bool))
    with pytest.raises(ValueError, match="robust"):
        robust_loss(torch.ones(2), "cauchy", 1.0)


def test_json_round_trip(tmp_path, noisy_fit):
    res, _ = noisy_fit
    path = write_fit(tmp_path / "fit.json", res)
    assert json.loads(path.read_text())["format"] == "sceneforge.human_fit/1"
    back = read_fit(path)
    for name in ("pose", "shape", "transl", "reprojection_error_px"):
        torch.testing.assert_close(getattr(back, name), getattr(res, name).double())
    assert back.focal is None and back.joint_names == res.joint_names
    assert back.stage_losses == pytest.approx(res.stage_losses)
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temporary file left
    bad = json.loads(path.read_text())
    bad["pose"] = bad["pose"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="pose is"):
        read_fit(tmp_path / "bad.json")


def test_gradcheck_projection_and_losses():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    pts = (pts + torch.tensor([0.0, 0.0, 4.0]).double()).requires_grad_(True)
    cfw = torch.eye(3, 4, dtype=torch.float64).expand(2, 3, 4).clone()
    cfw[..., 3] += 0.1 * torch.randn(2, 3, generator=g, dtype=torch.float64)
    cfw.requires_grad_(True)
    focal = torch.tensor([[80.0, 90.0], [100.0, 100.0]], dtype=torch.float64, requires_grad=True)
    centre = torch.tensor([[32.0, 30.0], [31.0, 33.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(project_pinhole, (pts, cfw, focal, centre))
    cams = Cameras(
        "PINHOLE", torch.cat([focal, centre], -1).detach(), torch.tensor([64, 64]),
        torch.tensor([64, 64]), cfw.detach(),
    )  # fmt: skip
    ref = torch.stack([cams[i].project(pts[i].detach())[0][0] for i in range(2)])
    torch.testing.assert_close(project_pinhole(pts, cfw, focal, centre).detach(), ref)
    sq = torch.rand(7, generator=g, dtype=torch.float64).requires_grad_(True)
    for kind in ("gm", "huber", "l2"):
        assert torch.autograd.gradcheck(lambda x, k=kind: robust_loss(x, k, 0.5), (sq,))
    # the silhouette term: vertices inside the mask cost nothing outside, pulled in otherwise
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 4:12, 4:12] = True
    from scipy.ndimage import distance_transform_edt

    dist = torch.from_numpy(distance_transform_edt(~mask[0].numpy()))[None, None]
    pix = torch.tensor([[[8.0, 8.0]]], dtype=torch.float64)
    valid = torch.ones(1, 1, dtype=torch.bool)
    inside = torch.tensor([[[8.0, 8.0], [6.3, 9.1]]], dtype=torch.float64)
    assert float(mask_loss(inside, dist.double(), pix, valid, 10.0)) < 1e-4
    out = torch.tensor([[[8.0, 8.0], [14.3, 9.6]]], dtype=torch.float64, requires_grad=True)
    loss = mask_loss(out, dist.double(), pix, valid, 10.0).sum()
    loss.backward()
    assert float(loss.detach()) > 1e-3 and float(out.grad[0, 1, 0]) > 0  # moving left lowers it
    assert torch.autograd.gradcheck(
        lambda v: mask_loss(v, dist.double(), pix, valid, 10.0),
        (torch.tensor([[[8.2, 8.3], [14.3, 9.6]]], dtype=torch.float64, requires_grad=True),),
    )


def test_reduced_kinematics_match_the_model(anny_case):
    """The fit's reduced tree gives the model's keypoints for any pose, and its subsampled
    skinning the model's vertices when the joints it skips keep the canonical pose."""
    model, video, cams, kp2 = anny_case
    lm, conf = to_landmarks(kp2[:2], video.keypoint_ids)
    cfg = FitConfig()
    prob = _check_inputs(model, lm.double(), conf.double(), cams[[0, 1]], None, cfg)
    weights = model.canonical(model.default_shape())[2]
    active = active_joints(model, prob.lm_ids, weights)
    body = KinematicBody(model, prob, active, False, weights, 300)
    shape = model.default_shape().double() + 0.1
    body.linearise(shape, jacobian=False)
    g = torch.Generator().manual_seed(0)
    aa = 0.3 * torch.randn(2, model.num_joints, 3, generator=g, dtype=torch.float64)
    transl = torch.randn(2, 3, generator=g, dtype=torch.float64)
    kp, _ = body(angle_axis_to_matrix(aa), shape, transl)
    ref, _ = model.keypoints(model(aa, shape, transl))
    torch.testing.assert_close(kp, ref.double())
    kept = torch.zeros_like(aa)
    kept[:, [0, *active]] = aa[:, [0, *active]]
    _, verts = body(angle_axis_to_matrix(kept), shape, transl, verts=True)
    out = model(kept, shape, transl).vertices.double()[:, body.vsub]
    torch.testing.assert_close(verts, out)
    assert len(body.tree.nodes) < model.num_joints


def test_hinge_prior(anny_case):
    """Flexion is free, hyperextension and rotation off the axis are not; the ground-truth
    walk costs almost nothing and its mirrored (flipped) knees and elbows cost far more."""
    model, video, cams, kp2 = anny_case
    lm, conf = to_landmarks(kp2[:1], video.keypoint_ids)
    prob = _check_inputs(model, lm.double(), conf.double(), cams[[0]], None, FitConfig())
    weights = model.canonical(model.default_shape())[2]
    active = active_joints(model, prob.lm_ids, weights)
    body = KinematicBody(model, prob, active, False, weights, 10)
    body.linearise(model.default_shape().double())
    joints, axes, rest = hinge_frames(model, body, prob.lm_ids, active)
    names = [model.joint_names[j] for j in joints]
    assert names == ["lowerleg01.L", "lowerarm01.L", "lowerleg01.R", "lowerarm01.R"], names
    assert float(rest[0]) == 0.0 and float(rest[1]) > 0.5  # anny's elbows are bent at rest
    gt = angle_axis_to_matrix(video.train.pose.double())[:, joints]
    flipped = gt.transpose(-1, -2)
    assert float(hinge_penalty(gt, axes, rest).max()) < 0.02
    assert float(hinge_penalty(flipped, axes, rest).mean()) > 5 * float(
        hinge_penalty(gt, axes, rest).mean()
    )
    a = axes[:1]
    bend = angle_axis_to_matrix(0.8 * a)[None]
    assert float(hinge_penalty(bend, a, rest[:1])) < 1e-12  # flexion: free
    assert float(hinge_penalty(bend.transpose(-1, -2), a, rest[:1])) > 0.3  # hyperextension
    side = torch.linalg.cross(a[0], torch.tensor([0.0, 0.0, 1.0]).double())
    assert float(hinge_penalty(angle_axis_to_matrix(0.3 * side)[None, None], a, rest[:1])) > 0.05
    rot = angle_axis_to_matrix(torch.tensor([[[0.2, -0.4, 0.3]]]).double()).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: hinge_penalty(r, a, rest[:1]), (rot,))
