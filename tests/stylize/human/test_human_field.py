"""The 4D human model (``human4d``) in the one trainer, on a tiny posed-body scene rendered
here with the mesh rasteriser (a static camera, one frame per image, the left arm raised a
little more in every frame)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh
from sceneforge.core.raster import Shading, render_view
from sceneforge.core.scene import SceneData
from sceneforge.core.synthetic import look_at
from sceneforge.core.torch_state import torch_threads
from sceneforge.fields.rendering import RenderConfig
from sceneforge.fields.sampling import ray_aabb
from sceneforge.fields.scene_model import MODELS
from sceneforge.fields.trainer import Trainer
from sceneforge.stylize.human import SMPLModel, lbs_forward
from sceneforge.stylize.human.field import (
    Human4DConfig,
    Human4DModel,
    HumanTrainerConfig,
)

SIZE = 32
SHOULDER, ELBOW = 16, 18  # the left arm's (+x) joints (17 is the right shoulder)
ANGLES = (0.0, 0.3, 0.6, 0.9, 1.2)


def _pose(angle: float) -> torch.Tensor:
    pose = torch.zeros(24, 3)
    pose[SHOULDER, 2] = angle  # about z: raises the +x arm
    pose[ELBOW, 2] = -0.5 * angle  # and bends the forearm back towards the horizontal
    return pose


def _camera(n: int) -> Cameras:
    f = (SIZE / 2) / (1.05 / 2.6)
    pose = look_at(torch.tensor([[0.0, 0.1, 2.6]]), torch.tensor([[0.0, 0.1, 0.0]]), (0, 1, 0))
    return Cameras(
        "PINHOLE",
        torch.tensor([[f, f, SIZE / 2, SIZE / 2]]).expand(n, 4).clone(),
        torch.full((n,), SIZE),
        torch.full((n,), SIZE),
        pose.float().expand(n, 3, 4).clone(),
    )


@pytest.fixture(scope="module")
def scene(body_dir):
    body = SMPLModel.from_path(body_dir)
    poses = torch.stack([_pose(a) for a in ANGLES])
    out = body(poses)
    colors = (0.5 + 0.4 * torch.sin(4 * out.canonical_vertices)).double()
    cams = _camera(len(ANGLES))
    images = []
    for i in range(len(ANGLES)):
        mesh = Mesh(out.vertices[i].double(), body.faces, vertex_colors=colors)
        r = render_view(mesh, cams, i, shading=Shading(mode="albedo"))
        images.append((r.color.clamp(0, 1) * 255 + 0.5).to(torch.uint8))
    meta = {
        "aabb": [[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]],
        "human": {"frame": list(range(len(ANGLES))), "pose": poses, "transl": None},
    }
    return SceneData(cams, [f"f{i}.png" for i in range(len(ANGLES))], images=images, metadata=meta)


def _config(body_dir, **kw) -> HumanTrainerConfig:
    h = Human4DConfig(
        body_model_path=str(body_dir),
        grid_resolution=40,
        human_samples=24,
        background_samples=16,
        lr=2e-2,
    )
    kw.setdefault("max_steps", 40)
    kw.setdefault("holdout_every", 0)
    return HumanTrainerConfig(
        batch_rays=256,
        progress=False,
        tensorboard=False,
        checkpoint_every=0,
        log_every=0,
        device="cpu",
        num_threads=1,  # 2 threads spin badly when the 2 cores are shared (5 steps: 17 s vs 1 s)
        render=RenderConfig(background="black"),
        human4d=h,
        **kw,
    )


@pytest.fixture(scope="module")
def trained(scene, body_dir):
    tr = Trainer(scene, _config(body_dir))
    losses = [tr.train_step()["loss"] for _ in range(40)]
    return tr, losses


def test_registered_and_in_the_trainer(trained):
    tr, _ = trained
    assert MODELS["human4d"] == "sceneforge.stylize.human.field:Human4DModel"
    assert isinstance(tr.model, Human4DModel) and tr.model_name == "human4d"
    assert tr.model.num_frames == len(ANGLES)


def test_loss_decreases(trained):
    _, losses = trained
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"human4d loss {first:.4f} -> {last:.4f}")
    assert last < 0.6 * first


def test_training_views_render_the_person(trained, scene):
    tr, _ = trained
    j = 2
    img = tr.render_view(j)
    gt = scene.load_image(j)
    assert img["rgb"].shape == (SIZE, SIZE, 3) and img["human"].shape == (SIZE, SIZE)
    person = gt.sum(-1) > 0.05
    # the person mask covers the person's pixels and hardly anything else
    assert img["human"][person].mean() > 0.7
    assert img["human"][~person].mean() < 0.15
    err = (img["rgb"] - gt).abs().mean()
    assert err < 0.08, err
    # ``depth`` is sum(w t), not normalised by accumulation (the renderer's convention), so the
    # surface's depth is depth / accumulation. Most person pixels are mostly opaque; the thin
    # octahedra's edge pixels (a 1-3 cm chord at 6.6 cm pixels) are not, and their raw depth is
    # proportionally short (measured: 89-92 of 93-94 pixels above 0.5, raw mean error 0.33-0.38
    # m, but depth / accumulation within 0.045 m on average, 0.14 m at most, of 2.6 m).
    acc = img["accumulation"]
    opaque = person & (acc > 0.5)
    assert opaque.sum() > 0.85 * person.sum()
    surface = img["depth"][opaque] / acc[opaque]
    # the body's front surface lies 2.4 m (the feet, z = 0.2) to 2.6 m (the arms) away
    assert (surface - 2.6).abs().mean() < 0.1
    assert (surface - 2.5).abs().max() < 0.2


def test_canonical_consistency(trained):
    """One canonical point posed into two frames maps back to the same canonical point and
    gets the same colour there."""
    tr, _ = trained
    model = tr.model
    with torch.no_grad(), torch_threads(tr.config.num_threads):
        out = model.posed_bodies(torch.tensor([0, 4]))
        v_c = out.canonical_vertices[ELBOW * 6 : ELBOW * 6 + 6]  # the elbow octahedron
        x_c = v_c * 0.7 + 0.3 * v_c.mean(0)  # inside it
        w, _ = model.grid.lookup(x_c)
        colors = []
        for k, f in enumerate((0, 4)):
            x_o = lbs_forward(x_c, w, out.bone_transforms[k])
            q = model.query_human(x_o, f)
            assert q["valid"].all()
            colors.append(q["rgb"])
        moved = lbs_forward(x_c, w, out.bone_transforms[1]) - lbs_forward(
            x_c, w, out.bone_transforms[0]
        )
    assert moved.norm(dim=-1).min() > 0.1
    torch.testing.assert_close(colors[0], colors[1], atol=0.02, rtol=0)


def _silhouette(body_dir, angle: float) -> torch.Tensor:
    """The posed mesh's person mask in camera 0 (the rasteriser, as the training images)."""
    body = SMPLModel.from_path(body_dir)
    out = body(_pose(angle)[None])
    mesh = Mesh(out.vertices[0].double(), body.faces)
    r = render_view(mesh, _camera(1), 0, shading=Shading(mode="albedo"))
    return r.color.sum(-1) > 0.05


def _iou(mask: torch.Tensor, truth: torch.Tensor) -> float:
    m = mask > 0.5
    return float((m & truth).sum() / (m | truth).sum())


def test_novel_pose_moves_the_mask(trained, body_dir):
    """New poses outside the training range (the arm lowered below, raised above it) render the
    posed body's silhouette, not the training frame's."""
    tr, _ = trained
    cams = tr.view_cameras()
    angles = (-0.6, 1.5)
    with torch.no_grad(), torch_threads(tr.config.num_threads):  # as the trainer renders
        tr.model.eval()
        masks = [tr.model.render_camera(cams, 0, frame=0, pose=_pose(a))["human"] for a in angles]
        frame0 = tr.model.render_camera(cams, 0, frame=0)["human"]
    truths = [_silhouette(body_dir, a) for a in angles]
    for i in range(2):
        mask, truth, other = masks[i], truths[i], truths[1 - i]
        # measured: IoU 0.94 / 0.98 with its own pose's silhouette, 0.75 with the other pose's
        # and 0.75-0.76 for frame 0's render (what ignoring the pose override would give)
        assert _iou(mask, truth) > 0.85
        assert _iou(mask, truth) > _iou(mask, other) + 0.1
        assert _iou(mask, truth) > _iou(frame0, truth) + 0.1
        # where only this pose has the arm (13 pixels each), this render has it, the other not
        only = truth & ~other
        assert only.sum() >= 8
        assert mask[only].mean() > 0.6 and masks[1 - i][only].mean() < 0.2


def test_background_rays_get_no_human_weight(trained):
    """Rays that miss the posed body's box and rays through the box that pass far from the body
    get exactly zero human weight; a ray through the chest is opaque human."""
    tr = trained[0]
    model = tr.model
    eye = torch.tensor([0.0, 0.1, 2.6])
    targets = torch.tensor(
        [
            [1.3, 0.0, 0.0],  # right of the stretched-out hand: misses the posed box
            [0.35, 0.0, 0.0],  # between the left arm and the leg: inside the box, no body
            # 8 cm below the left elbow's octahedron, beyond the 5 cm band: the density prior
            # alone would give it ~2e-4 (measured), the band test exactly 0
            [0.43, 0.27, 0.0],
            [0.0, 0.25, 0.0],  # the chest: the centre of joint 6's octahedron
        ]
    )
    origins = eye.expand(len(targets), 3)
    dirs = torch.nn.functional.normalize(targets - eye, dim=-1)
    frames = torch.zeros(len(targets), dtype=torch.long)
    with torch.no_grad(), torch_threads(tr.config.num_threads):
        out = model.render_rays_of_frames(origins, dirs, frames)
        verts = model.posed_bodies(frames[:1]).vertices[0]
    box = torch.stack([verts.amin(0), verts.amax(0)]) + torch.tensor([[-1.0], [1.0]]) * 0.05
    t0, t1 = ray_aabb(origins, dirs, box)
    assert bool(t1[0] <= t0[0]) and bool((t1[1:] > t0[1:]).all())
    assert (out["human"][:3] == 0).all()
    # measured 0.95 (the background field holds a little of the weight in front)
    assert out["human"][3] > 0.8
    surface = out["depth"][3] / out["accumulation"][3]
    assert (surface - 2.5).abs() < 0.1  # the chest's front (z = 0.1), 2.5 m away


def test_ray_box_interval():
    """Entry / exit distances of rays through the unit box as the field takes them
    (``ray_aabb``, entries behind the origin clamped to 0)."""
    origins = torch.tensor([[0.0, 0.0, 2.6], [0.0, 0.0, 2.6], [0.0, 0.0, 0.0], [0.0, 0, 2.6]])
    dirs = torch.nn.functional.normalize(
        torch.tensor([[0.0, 0, -1], [0.9, 0, -1], [1.0, 0, 0], [0.0, 0, 1]]), dim=-1
    )
    t0, t1 = ray_aabb(origins, dirs, torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    t0 = t0.clamp_min(0)
    torch.testing.assert_close(t0[[0, 2]], torch.tensor([1.6, 0.0]))
    torch.testing.assert_close(t1[[0, 2]], torch.tensor([3.6, 1.0]))
    # leaves x = 1 (t = 1.49) before it reaches z = 1 (t = 2.15); points away from the box
    assert bool(t1[1] <= t0[1]) and bool(t1[3] <= t0[3])


def test_export_reads_back(trained, tmp_path):
    tr, _ = trained
    files = tr.model.export(tmp_path / "out", tr.config, tr)
    saved = torch.load(files["human4d"], map_location="cpu", weights_only=True)
    assert saved["body_model"] == "smpl" and saved["num_frames"] == len(ANGLES)
    state = tr.model.state_dict()
    assert saved["state"].keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(saved["state"][k], v), k
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["human4d.pt"]  # no temp file left


def test_checkpoint_round_trip(scene, body_dir, tmp_path):
    cfg = _config(body_dir, max_steps=6)
    cfg.human4d.body_lr = 1e-3
    tr = Trainer(scene, cfg)
    for _ in range(3):
        tr.train_step()
    path = tr.save_checkpoint(tmp_path / "ckpt.pt")
    again = Trainer(scene, cfg)
    again.load_checkpoint(path)
    a, b = tr.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    fits = torch.stack([_pose(x) for x in ANGLES])
    assert not torch.equal(tr.model.pose, fits)
    # the refined poses are the model's own: the scene's fits are untouched
    assert torch.equal(scene.metadata["human"]["pose"], fits)
    s1 = tr.train_step()
    s2 = again.train_step()
    assert s1["loss"] == s2["loss"]
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert math.isfinite(s1["loss"])


def test_from_checkpoint_rebuilds_the_human4d_section(scene, body_dir, tmp_path):
    cfg = _config(body_dir, max_steps=2)
    cfg.human4d.human_samples = 20  # not the default: must come back from the checkpoint
    tr = Trainer(scene, cfg)
    tr.train_step()
    path = tr.save_checkpoint(tmp_path / "ckpt.pt")
    again = Trainer.from_checkpoint(path, scene)
    assert isinstance(again.config, HumanTrainerConfig)
    assert again.config.human4d.human_samples == 20
    assert again.config.human4d.field == cfg.human4d.field  # a lambda-built section, not a dict
    assert again.step == tr.step


def test_heldout_evaluation_renders_each_images_frame(scene, body_dir):
    from sceneforge.fields.evaluation import evaluate_heldout

    tr = Trainer(scene, _config(body_dir, max_steps=1, holdout_every=2))
    held = list(tr.eval_indices)
    seen: list[dict] = []
    real = tr.model.render_camera

    def spy(cameras, index, downscale=1, image_idx=-1, **kw):
        seen.append({"index": index, **kw})
        return real(cameras, index, downscale, image_idx, **kw)

    tr.model.render_camera = spy
    evaluate_heldout(tr)
    frames = scene.metadata["human"]["frame"]
    assert [s["index"] for s in seen] == held
    assert [s["frame"] for s in seen] == [frames[i] for i in held]
    assert any(frames[i] != 0 for i in held)  # frame 0 for all would fail here
