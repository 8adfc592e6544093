"""Features of the 4D human capture from both fields, rendered as patches, distilled from the
style encoder, and stylized: on a tiny capture (the tiny SMPL-format body before a textured
wall, 48 px, 4 frames) trained here for a few seconds."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from test_style_stylizer import stripes
from torch import nn

from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh
from sceneforge.core.raster import Shading, render_view
from sceneforge.core.scene import SceneData
from sceneforge.core.synthetic import look_at
from sceneforge.core.torch_state import torch_threads
from sceneforge.fields.rendering import RenderConfig
from sceneforge.fields.trainer import Trainer
from sceneforge.stylize.human import SMPLModel
from sceneforge.stylize.human.field import (
    CanonicalHumanField,
    Human4DConfig,
    HumanFieldConfig,
    HumanTrainerConfig,
)

pytest.importorskip("onnxruntime", reason="needs the [style] extra")
pytest.importorskip("onnx2torch", reason="needs the [style] extra")

from sceneforge.stylize.human.style import (  # noqa: E402
    StyleEncoder,
    StyleTeacher,
    Stylizer,
    StylizerTrainConfig,
    TeacherConfig,
    train_stylizer,
)
from sceneforge.stylize.human.style.distill import (  # noqa: E402
    DistillConfig,
    FeatureViews,
    distill_features,
    encoder_targets,
    evaluate_distillation,
)
from sceneforge.stylize.human.style.feature_field import (  # noqa: E402
    EncoderTail,
    HumanFeatureRenderer,
    load_feature_renderer,
    save_feature_renderer,
)
from sceneforge.stylize.human.style.stylized import (  # noqa: E402
    render_stylized,
    warp_error,
    warp_frames,
    warp_to,
)

SIZE = 48
ANGLES = (0.0, 0.4, 0.8, 1.2)
CAMERA_X = (0.0, 0.15, 0.0, 0.15)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


def _pose(angle: float) -> torch.Tensor:
    pose = torch.zeros(24, 3)
    pose[16, 2] = angle  # raises the +x arm
    pose[18, 2] = -0.5 * angle
    return pose


def cameras(xs) -> Cameras:
    """Cameras 2.6 m in front of the body at heights 0.1 m, shifted sideways by ``xs``."""
    n, f = len(xs), (SIZE / 2) / (1.05 / 2.6)
    eyes = torch.tensor([[x, 0.1, 2.6] for x in xs])
    pose = look_at(eyes, eyes * torch.tensor([1.0, 1.0, 0.0]), (0, 1, 0))
    return Cameras(
        "PINHOLE",
        torch.tensor([[f, f, SIZE / 2, SIZE / 2]]).expand(n, 4).clone(),
        torch.full((n,), SIZE),
        torch.full((n,), SIZE),
        pose.float().reshape(n, 3, 4).clone(),
    )


def wall(n: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smoothly coloured wall 0.6 m behind the body (vertices, faces, colours)."""
    g = torch.linspace(-1.4, 1.4, n + 1)
    y, x = torch.meshgrid(g, g, indexing="ij")
    v = torch.stack([x, y, torch.full_like(x, -0.6)], -1).reshape(-1, 3)
    a = (torch.arange(n)[:, None] * (n + 1) + torch.arange(n)[None]).reshape(-1, 1)
    faces = torch.cat([a, a + 1, a + n + 2, a, a + n + 2, a + n + 1], 1).reshape(-1, 3)
    c = torch.stack(
        [torch.sin(3 * v[:, 0]), torch.cos(4 * v[:, 1]), torch.sin(2 * (v[:, 0] + v[:, 1]))], -1
    )
    return v.double(), faces, (0.35 + 0.25 * c).double()


@pytest.fixture(scope="module")
def scene(body_dir):
    body = SMPLModel.from_path(body_dir)
    poses = torch.stack([_pose(a) for a in ANGLES])
    out = body(poses)
    colors = (0.5 + 0.4 * torch.sin(4 * out.canonical_vertices)).double()
    wv, wf, wc = wall()
    cams = cameras(CAMERA_X)
    images = []
    for i in range(len(ANGLES)):
        verts = torch.cat([out.vertices[i].double(), wv])
        faces = torch.cat([body.faces, wf + out.vertices.shape[1]])
        mesh = Mesh(verts, faces, vertex_colors=torch.cat([colors, wc]))
        r = render_view(mesh, cams, i, shading=Shading(mode="albedo"))
        images.append((r.color.clamp(0, 1) * 255 + 0.5).to(torch.uint8))
    meta = {
        "aabb": [[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]],
        "human": {"frame": list(range(len(ANGLES))), "pose": poses, "transl": None},
    }
    return SceneData(cams, [f"f{i}.png" for i in range(len(ANGLES))], images=images, metadata=meta)


def config(body_dir, features: int = 24, background: bool = True, hidden: int = 32):
    h = Human4DConfig(
        body_model_path=str(body_dir),
        grid_resolution=40,
        human_samples=24,
        background_samples=16,
        lr=2e-2,
        field=HumanFieldConfig(num_feature_channels=features, feature_hidden_dim=hidden),
        background_features=background,
    )
    return HumanTrainerConfig(
        batch_rays=256,
        progress=False,
        tensorboard=False,
        checkpoint_every=0,
        log_every=0,
        device="cpu",
        num_threads=1,
        render=RenderConfig(background="black"),
        human4d=h,
        max_steps=120,
        holdout_every=0,
    )


@pytest.fixture(scope="module")
def encoder():
    return StyleEncoder()


@pytest.fixture(scope="module")
def tail():
    return EncoderTail()


@pytest.fixture(scope="module")
def captured(scene, body_dir, encoder, tail):
    """The capture trained 120 steps, then its features distilled 250 patch steps (pooled
    levels, the default)."""
    with torch_threads(1):
        tr = Trainer(scene, config(body_dir))
        for _ in range(120):
            tr.train_step()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the adapter's initial weights, whatever ran before
            renderer = HumanFeatureRenderer(tr.model, tail=tail)
        images = torch.stack([scene.load_image(i) for i in range(len(ANGLES))])
        views = FeatureViews(scene.cameras, list(range(4)), list(range(4)), images)
        targets = encoder_targets(encoder, images)
        before = evaluate_distillation(renderer, views, targets)
        state = {k: v.clone() for k, v in tr.model.state_dict().items()}
        flags = {n: p.requires_grad for n, p in tr.model.named_parameters()}
        cfg = DistillConfig(steps=250, patch=8, lr=1e-2, log_every=0)
        result = distill_features(renderer, encoder, views, cfg, targets)
        after = evaluate_distillation(renderer, views, targets)
    return {
        "trainer": tr,
        "renderer": renderer,
        "views": views,
        "before": before,
        "after": after,
        "state": state,
        "flags": flags,
        "result": result,
    }


STYLES = (
    ((0.9, 0.2, 0.1), (0.1, 0.2, 0.8)),
    ((0.9, 0.9, 0.2), (0.1, 0.6, 0.2)),
)


@pytest.fixture(scope="module")
def stylized(captured, encoder):
    """A stylizer trained 60 steps against the real teacher on the capture's frames."""
    teacher = StyleTeacher(TeacherConfig(threads=1))
    styles = [stripes(i + 1, c) for i, c in enumerate(STYLES)]
    with torch_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the initial weights, whatever ran before
        stylizer = Stylizer(encoder=encoder)
        res = train_stylizer(
            captured["views"].images,
            styles,
            teacher,
            StylizerTrainConfig(steps=60, log_every=0),
            stylizer,
        )
    return res.stylizer, teacher, styles


# ----------------------------------------------------------------------------- both fields


def surface_depth(render: dict) -> torch.Tensor:
    """Camera z of each pixel's surface: the person's own where the person holds most of the
    weight (the background field's floaters in front would pull ``depth`` off it), else the
    whole ray's."""
    acc, human = render["accumulation"], render["human"]
    return torch.where(
        human > 0.5 * acc,
        render["human_depth"] / human.clamp_min(1e-6),
        render["depth"] / acc.clamp_min(1e-6),
    )


def _rays() -> tuple[torch.Tensor, torch.Tensor]:
    """A ray beside the body (background only) and one through the chest."""
    eye = torch.tensor([0.0, 0.1, 2.6])
    targets = torch.tensor([[1.3, 0.0, 0.0], [0.0, 0.25, 0.0]])
    return eye.expand(2, 3), torch.nn.functional.normalize(targets - eye, dim=-1)


def test_default_off_builds_the_former_field(body_dir):
    """Without a feature MLP the human field is the former one: the same modules, the same
    initial weights for the same seed (the former inline ``nn.Sequential``), features = the
    MLP's extra outputs; the default model has no feature modules."""
    body = SMPLModel.from_path(body_dir)
    grid = body.skinning_grid(body._shape(None), 24, band=0.05)
    cfg = HumanFieldConfig(num_feature_channels=5)
    torch.manual_seed(3)
    new = CanonicalHumanField(cfg, grid)
    torch.manual_seed(3)
    former_tri = type(new.triplane)(cfg.triplane)
    n_in = former_tri.out_dim + new.posenc.out_dim
    former = nn.Sequential(
        nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 9)
    )
    assert new.feature_mlp is None
    assert [k for k in new.state_dict() if "feature" in k] == []
    for a, b in zip(former.state_dict().values(), list(new.mlp.state_dict().values())[:4]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(former_tri.parameters(), new.triplane.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    nn.init.normal_(new.mlp[-1].weight)
    x = grid.origin.float()[None] + 0.3
    u = ((x - new.box[0]) / (new.box[1] - new.box[0])).clamp(0, 1)
    h = new.mlp(torch.cat([new.triplane(u), new.posenc(2 * u - 1)], -1))
    torch.testing.assert_close(new(x)["features"], h[:, 4:], rtol=0, atol=0)
    assert dataclasses.asdict(Human4DConfig())["background_features"] is False


def test_features_composite_from_both_fields(scene, body_dir):
    """With constant features (background c, human d) every ray's features are
    ``c * (accumulation - human) + d * human``: both fields' samples, the renderer's weights.
    Without background features a background-only ray's features are exactly 0, and rgb,
    depth and accumulation do not depend on the background's features."""
    with torch_threads(1):
        on = Trainer(scene, config(body_dir, features=3)).model
        off = Trainer(scene, config(body_dir, features=3, background=False)).model
        missing, unexpected = off.load_state_dict(on.state_dict(), strict=False)
        assert unexpected and all(k.startswith("background_features.") for k in unexpected)
        assert not missing
        c, d = torch.tensor([0.7, -1.3, 2.0]), torch.tensor([-0.4, 0.9, 0.1])
        for model in (on, off):
            nn.init.zeros_(model.human.feature_mlp[-1].weight)
            model.human.feature_mlp[-1].bias.data.copy_(d)
        nn.init.zeros_(on.background_features.mlp[-1].weight)
        on.background_features.mlp[-1].bias.data.copy_(c)
        o, dirs = _rays()
        frames = torch.zeros(2, dtype=torch.long)
        with torch.no_grad():
            a = on.render_rays_of_frames(o, dirs, frames)
            b = off.render_rays_of_frames(o, dirs, frames)
    for k in ("rgb", "depth", "accumulation", "human"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert a["human"][0] == 0 and a["human"][1] > 0.5 and a["accumulation"][0] > 0.05
    bg_w, h_w = (a["accumulation"] - a["human"])[:, None], a["human"][:, None]
    torch.testing.assert_close(a["features"], c * bg_w + d * h_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b["features"], d * h_w, atol=1e-6, rtol=1e-6)
    assert (b["features"][0] == 0).all() and (a["features"][0].abs() > 0.03).all()
    # the person's own depth: none beside the body, the chest's front (2.5 m) through it
    surface = a["human_depth"][1] / a["human"][1]
    print(f"chest: depth / acc {a['depth'][1] / a['accumulation'][1]:.3f}, person {surface:.3f}")
    assert a["human_depth"][0] == 0 and (surface - 2.5).abs() < 0.1


# ----------------------------------------------------------------------------- patches


def test_encoder_tail_continues_the_encoder(encoder, tail):
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    levels = encoder(x)
    out = tail(levels[0])
    assert [f.shape for f in out] == [f.shape for f in levels]
    for a, b in zip(out, levels):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_patch_is_a_window_of_the_frame(captured):
    renderer, cams = captured["renderer"], captured["views"].cameras
    with torch.no_grad():
        full = renderer.render_frame(cams, 1, 1)
        patch = renderer.render_patch(cams, 1, 1, top=4, left=8, rows=4, cols=3)
    assert full.features.shape == (1, 24, SIZE // 4, SIZE // 4)
    assert patch.features.shape == (1, 24, 4, 3)
    torch.testing.assert_close(patch.features, full.features[..., 4:8, 8:11], atol=1e-5, rtol=0)
    torch.testing.assert_close(patch.depth, full.depth[4:8, 8:11], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- distillation


def test_distillation_lowers_the_feature_loss(captured):
    before, after, result = captured["before"], captured["after"], captured["result"]
    print(f"normalized feature error per level: {before} -> {after}; {result.seconds:.1f} s")
    # measured: 1.29/1.90/2.68 -> 0.61/0.54/0.43
    assert all(a < 0.7 * b for a, b in zip(after, before))
    assert after[0] < 0.75
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.6 * first


def test_tail_levels_distill_too(captured, encoder, tail):
    """The other way to the deeper levels (the encoder's tail on the rendered finest level)
    also learns, from the same capture before its distillation."""
    model = copy.deepcopy(captured["trainer"].model)
    model.load_state_dict(captured["state"])
    renderer = HumanFeatureRenderer(model, tail=tail, deep_levels="tail")
    assert isinstance(renderer.adapter, nn.Identity)  # a 24-channel field is the finest level
    views = captured["views"]
    with torch_threads(1):
        targets = encoder_targets(encoder, views.images)
        before = evaluate_distillation(renderer, views, targets)
        cfg = DistillConfig(steps=120, patch=8, lr=1e-2, log_every=0)
        distill_features(renderer, encoder, views, cfg, targets)
        after = evaluate_distillation(renderer, views, targets)
    print(f"tail levels: {before} -> {after}")  # measured 1.28/2.19/3.00 -> 0.93/1.08/1.17
    assert after[0] < 0.85 * before[0] and after[2] < 0.7 * before[2]


def test_pooled_levels_average_the_rays(captured, tail):
    renderer = captured["renderer"]
    x = torch.randn(1, 24, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        levels = renderer.levels(x)
        full = renderer.adapter(x)
    assert [f.shape for f in levels] == [(1, 24, 8, 12), (1, 32, 4, 6), (1, 96, 2, 3)]
    torch.testing.assert_close(levels[0], full[:, :24])
    torch.testing.assert_close(levels[1][..., 1, 2], full[:, 24:56, 2:4, 4:6].mean((-2, -1)))
    torch.testing.assert_close(levels[2][..., 1, 0], full[:, 56:, 4:8, 0:4].mean((-2, -1)))


def test_renderer_file_round_trip(captured, tail, tmp_path):
    renderer, model = captured["renderer"], captured["trainer"].model
    path = tmp_path / "renderer.pt"
    save_feature_renderer(path, renderer)
    again = load_feature_renderer(path, model, tail=tail)
    assert again.deep_levels == "pooled" and again.model is model
    x = torch.randn(1, 24, 4, 4)
    with torch.no_grad():
        for a, b in zip(renderer.levels(x), again.levels(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["renderer.pt"]
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_feature_renderer(tmp_path / "nothere.pt", model, tail=tail)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pt"):
        load_feature_renderer(tmp_path / "bad.pt", model, tail=tail)


def test_distillation_keeps_geometry_and_colour(captured):
    """Only the feature heads changed; the flags of the model's parameters are restored."""
    model, state = captured["trainer"].model, captured["state"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(
        k.startswith(("human.feature_mlp.", "background_features.")) for k in changed
    )
    assert {n: p.requires_grad for n, p in model.named_parameters()} == captured["flags"]


def test_renderer_errors(scene, body_dir, tail):
    with torch_threads(1):
        plain = Trainer(scene, config(body_dir, features=0)).model
        with pytest.raises(ValueError, match="num_feature_channels"):
            HumanFeatureRenderer(plain, tail=tail)
        shared = Trainer(scene, config(body_dir, features=8, hidden=0)).model
        renderer = HumanFeatureRenderer(shared, tail=tail)
    assert isinstance(renderer.adapter, nn.Conv2d)  # 8 -> 24 + 32 + 96 channels
    assert renderer.adapter.out_channels == 152
    with pytest.raises(ValueError, match="feature_hidden_dim"):
        renderer.feature_parameters()
    with pytest.raises(ValueError, match="deep_levels"):
        HumanFeatureRenderer(shared, tail=tail, deep_levels="deep")


# ----------------------------------------------------------------------------- stylized


def test_stylized_render_follows_style_and_strength(captured, stylized):
    stylizer, _, styles = stylized
    renderer, cams = captured["renderer"], captured["views"].cameras

    def render(style, alpha):
        return render_stylized(renderer, stylizer, cams, 2, style, alpha, frame=2)["rgb"]

    a, b = render(styles[0], 1.0), render(styles[1], 1.0)
    assert a.shape == (SIZE, SIZE, 3) and 0 <= a.min() and a.max() <= 1
    half, zero = render(styles[0], 0.5), render(styles[0], 0.0)
    posed = render_stylized(renderer, stylizer, cams, 2, styles[0], frame=2, pose=_pose(-0.5))
    print(
        f"style change {(a - b).abs().mean():.3f}, strength 1 vs 0.5 {(a - half).abs().mean():.3f}"
        f", 0.5 vs 0 {(half - zero).abs().mean():.3f}, new pose {(posed['rgb'] - a).abs().amax():.3f}"
    )
    assert (a - b).abs().mean() > 0.05  # measured 0.25 (strength: 0.07, 0.09; pose: 0.49)
    assert (a - half).abs().mean() > 0.02 and (half - zero).abs().mean() > 0.02
    # strength 0: AdaAttN passes the content through, the style plays no part
    torch.testing.assert_close(zero, render(styles[1], 0.0), rtol=0, atol=0)
    # a new pose renders (the arm lowered below the training range)
    assert (posed["rgb"] - a).abs().amax() > 0.1


def test_two_nearby_views_stylize_consistently(captured, stylized):
    """One frame from two cameras 3 cm apart: the stylized renders warped onto each other with
    the renderer's depth differ less than the teacher's per-frame stylizations of the two RGB
    renders, also per unit of contrast (not by being washed out)."""
    stylizer, teacher, styles = stylized
    model, renderer = captured["trainer"].model, captured["renderer"]
    cams = cameras((0.0, 0.03))
    with torch.no_grad(), torch_threads(1):
        ra, rb = (model.render_camera(cams, i, frame=1) for i in (0, 1))
        za, zb = surface_depth(ra), surface_depth(rb)
        valid = ra["accumulation"] > 0.5
        rgb = torch.stack([ra["rgb"], rb["rgb"]])
        for style in styles:
            feats = stylizer.style_features(style)
            ours = [render_stylized(renderer, stylizer, cams, i, feats, frame=1)["rgb"] for i in (0, 1)]  # fmt: skip
            errors = {}
            for name, (a, b) in {
                "ours": ours,
                "teacher": teacher(rgb, style),
                "stylizer_2d": stylizer(rgb, feats),
            }.items():
                warped, ok = warp_to(cams, 0, 1, b, za, valid, zb)
                assert ok.sum() > 0.5 * SIZE * SIZE
                errors[name] = (warp_error(a, warped, ok), float(a.std()))
            print(errors)
            # scale-free: the warp error per unit of the output's own contrast (std), so a
            # washed-out output cannot win. Measured (two styles): ours 0.026 / 0.24 = 0.11 and
            # 0.023 / 0.22 = 0.11, the teacher's 0.076 / 0.33 = 0.23 and 0.063 / 0.28 = 0.23.
            # The same stylizer on the RGB renders (2D encoder) is printed, not asserted: across
            # two cameras at one instant it is on a par (0.027 / 0.30 = 0.09, 0.019 / 0.27 =
            # 0.07); between frames ours is far ahead (next test).
            rel = {k: e / s for k, (e, s) in errors.items()}
            assert errors["ours"][0] < 0.5 * errors["teacher"][0]
            assert rel["ours"] < 0.65 * rel["teacher"]


def test_warp_of_the_rgb_render_is_nearly_exact(captured):
    """The warp itself: the capture's own RGB renders of two nearby cameras agree after it."""
    model = captured["trainer"].model
    cams = cameras((0.0, 0.03))
    with torch.no_grad(), torch_threads(1):
        ra, rb = (model.render_camera(cams, i, frame=1) for i in (0, 1))
    za, zb = surface_depth(ra), surface_depth(rb)
    valid = ra["accumulation"] > 0.5
    warped, ok = warp_to(cams, 0, 1, rb["rgb"], za, valid, zb)
    same, _ = warp_to(cams, 0, 0, ra["rgb"], za, valid, za)
    torch.testing.assert_close(same[valid], ra["rgb"][valid], atol=1e-4, rtol=0)
    shifted = warp_error(ra["rgb"], rb["rgb"], ok)  # no warp: the views' disparity shows
    assert warp_error(ra["rgb"], warped, ok) < 0.5 * shifted


def _frames(model, cams, frames=(1, 2)):
    """Renders of camera 0 at two frames, their surface depth, person and valid masks."""
    r = [model.render_camera(cams, 0, frame=f) for f in frames]
    human = r[0]["human"] > 0.5 * r[0]["accumulation"]
    return r, [surface_depth(x) for x in r], human, r[0]["accumulation"] > 0.5


def test_frame_warp_follows_the_body(captured):
    """Frame 2's RGB render warped onto frame 1's through the body (the arm moved 0.4 rad)
    matches it on the person far better than the unwarped image."""
    model, cams = captured["trainer"].model, captured["views"].cameras
    with torch.no_grad(), torch_threads(1):
        r, z, human, valid = _frames(model, cams)
        warped, ok = warp_frames(model, cams, 0, 1, 2, r[1]["rgb"], z[0], human, valid, z[1])
    person = ok & human
    moved = (r[0]["rgb"] - r[1]["rgb"]).abs().sum(-1) > 0.1
    print(f"person pixels {int(person.sum())}, moved {int((person & moved).sum())}")
    assert (person & moved).sum() >= 5
    sel = person & moved
    err = warp_error(r[0]["rgb"], warped, sel)
    raw = warp_error(r[0]["rgb"], r[1]["rgb"], sel)
    print(f"warped {err:.4f} vs unwarped {raw:.4f}")
    assert err < 0.5 * raw
    static = ok & ~human
    torch.testing.assert_close(warped[static], r[1]["rgb"][static], atol=1e-4, rtol=0)


def test_consecutive_frames_stylize_consistently(captured, stylized):
    """Frames 1 and 2 of one camera: the stylized renders warped onto each other through the
    body differ less than the teacher's per-frame stylizations of the RGB renders, also per
    unit of contrast (not by being washed out)."""
    stylizer, teacher, styles = stylized
    model, renderer = captured["trainer"].model, captured["renderer"]
    cams = captured["views"].cameras
    with torch.no_grad(), torch_threads(1):
        r, z, human, valid = _frames(model, cams)
        rgb = torch.stack([r[0]["rgb"], r[1]["rgb"]])
        for style in styles:
            feats = stylizer.style_features(style)
            ours = [render_stylized(renderer, stylizer, cams, 0, feats, frame=f)["rgb"] for f in (1, 2)]  # fmt: skip
            errors = {}
            for name, (a, b) in {
                "ours": ours,
                "teacher": teacher(rgb, style),
                "stylizer_2d": stylizer(rgb, feats),
            }.items():
                warped, ok = warp_frames(model, cams, 0, 1, 2, b, z[0], human, valid, z[1])
                errors[name] = (warp_error(a, warped, ok), float(a.std()))
            print(errors)
            # measured: ours 0.012 / 0.24 and 0.014 / 0.22, the teacher's 0.046 / 0.33 and
            # 0.037 / 0.28. The 2D stylizer (printed, not asserted) had 0.054 / 0.30 and
            # 0.039 / 0.27 here, but was on a par with ours on a 64 px capture.
            rel = {k: e / s for k, (e, s) in errors.items()}
            assert errors["ours"][0] < 0.5 * errors["teacher"][0]
            assert rel["ours"] < 0.7 * rel["teacher"]
