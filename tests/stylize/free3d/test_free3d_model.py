"""The Free3D network (stylize/free3d/model.py, rcn.py, cross_view.py): zero-initialised
additions, locality of RCN, view permutation, cross-view influence, saving and loading."""

from __future__ import annotations

import shutil

import pytest
import torch

from sceneforge.core.diffusion import DiffusionModelError
from sceneforge.stylize.free3d.model import (
    Free3DConfig,
    Free3DModel,
    build_tiny,
    load_free3d_model,
    tiny_unet,
)
from sceneforge.stylize.free3d.rays import rays_for_views

S, D = 16, 16  # image side (pixel space), embedding width

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(b=1, v=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    K = torch.tensor([[20.0, 0, 8], [0, 20, 8], [0, 0, 1]]).expand(b, 3, 3)
    aa = 0.3 * torch.randn(b, v, 3, generator=g)
    from sceneforge.core.cameras import make_rigid
    from sceneforge.core.rotations import angle_axis_to_matrix

    poses = make_rigid(angle_axis_to_matrix(aa), 0.5 * torch.randn(b, v, 3, generator=g))
    rays = rays_for_views(K, poses, S, S).float()
    return {
        "noisy": torch.randn(b * v, 3, S, S, generator=g),
        "t": 500,
        "source_latent": torch.randn(b, 3, S, S, generator=g),
        "image_embed": torch.randn(b, 1, D, generator=g),
        "rays": rays,
        "num_views": v,
        "target_from_source": poses.reshape(b * v, 3, 4),
    }


def _plain_unet(model: Free3DModel, x):
    """The same weights in a UNet without any Free3D hook, fed as Free3D feeds its UNet."""
    base = tiny_unet(3, (16, 32), D, S)
    base.load_state_dict(model.unet.state_dict())
    v = x["num_views"]
    inp = torch.cat([x["noisy"], x["source_latent"].repeat_interleave(v, 0)], 1)
    emb = x["image_embed"].repeat_interleave(v, 0)
    with torch.no_grad():
        return base(inp, x["t"], encoder_hidden_states=emb, return_dict=False)[0]


def _randomise(module: torch.nn.Module, std: float = 0.3, seed: int = 5) -> None:
    """Give the zero-initialised weights of a Free3D addition non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


def _run(model, x, **over):
    with torch.no_grad():
        return model(**{**x, **over})


@pytest.mark.parametrize(
    "enabled",
    [
        {"rcn": True, "cross_view": False, "pose_token": False},
        {"rcn": False, "cross_view": True, "pose_token": False},
        {"rcn": False, "cross_view": False, "pose_token": True},
        {"rcn": True, "cross_view": True, "pose_token": True},
    ],
    ids=["rcn", "cross_view", "pose_token", "all"],
)
def test_zero_init_leaves_the_unet_unchanged(enabled):
    model = build_tiny(**enabled).eval()
    x = _inputs(b=2, v=3)
    out = _run(model, x)
    ref = _plain_unet(model, x)
    assert (out - ref).abs().max() < 1e-6
    # and the additions do act once their weights are non-zero (the check above can fail)
    for name in ("rcn", "cross_view", "pose_token"):
        if enabled[name]:
            _randomise(getattr(model, name))
    assert (_run(model, x) - ref).abs().max() > 1e-3


def test_rcn_modulates_every_groupnorm_at_every_resolution():
    model = build_tiny(cross_view=False, pose_token=False)
    norms = [n for n, m in model.unet.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    assert sorted(model.rcn.norm_names) == sorted(norms)
    assert any("down_blocks.0" in n for n in norms) and any("mid_block" in n for n in norms)
    assert "conv_norm_out" in norms
    seen = set()
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.add(tuple(o.shape[-2:])))
        for m in model.unet.modules()
        if isinstance(m, torch.nn.GroupNorm)
    ]
    _run(model, _inputs(v=1))
    for h in hooks:
        h.remove()
    assert {(16, 16), (8, 8)} <= seen


def test_rcn_modulation_is_pointwise():
    """Changing one pixel's ray changes every norm's (scale, shift) only at that pixel's cell."""
    model = build_tiny(cross_view=False, pose_token=False)
    _randomise(model.rcn)
    rays = _inputs(v=1)["rays"]
    rays2 = rays.clone()
    rays2[0, :, 5, 10] += torch.tensor([0.3, -0.2, 0.1, 0.5, 0.5, -0.5])
    head = next(iter(model.rcn.heads.values()))
    for h, w in [(16, 16), (8, 8)]:
        with torch.no_grad(), model.rcn.conditioned(rays):
            a = torch.cat(head.scale_shift(h, w), 1)
        with torch.no_grad(), model.rcn.conditioned(rays2):
            b = torch.cat(head.scale_shift(h, w), 1)
        changed = ((a - b).abs().amax(1)[0] > 0).nonzero().tolist()
        f = 16 // h
        assert changed == [[5 // f, 10 // f]]


def test_one_pixel_ray_changes_the_output_locally():
    model = build_tiny(cross_view=False, pose_token=False).eval()
    _randomise(model.rcn)
    x = _inputs(v=1)
    rays2 = x["rays"].clone()
    rays2[0, :, 5, 10] += torch.tensor([0.3, -0.2, 0.1, 0.5, 0.5, -0.5])
    diff = (_run(model, x) - _run(model, x, rays=rays2)).abs().sum(1)[0]
    assert diff.max() > 1e-3
    i, j = divmod(int(diff.argmax()), S)
    assert max(abs(i - 5), abs(j - 10)) <= 2, (i, j)
    near = torch.zeros(S, S, dtype=torch.bool)
    near[3:8, 8:13] = True
    assert diff[near].mean() > 3 * diff[~near].mean()


def _nonzero_model(**cfg):
    model = build_tiny(**cfg).eval()
    for name in ("rcn", "cross_view", "pose_token"):
        if getattr(model, name) is not None:
            _randomise(getattr(model, name))
    return model


def test_permuting_the_views_permutes_the_outputs():
    model = _nonzero_model()
    x = _inputs(b=2, v=4)
    out = _run(model, x)
    perm = torch.tensor([2, 0, 3, 1])
    idx = torch.cat([perm, perm + 4])  # the same permutation within both sets
    px = {**x, "noisy": x["noisy"][idx], "rays": x["rays"][idx]}
    px["target_from_source"] = x["target_from_source"][idx]
    assert torch.allclose(_run(model, px), out[idx], atol=1e-5)


@pytest.mark.parametrize("cross_view", [True, False])
def test_views_influence_each_other_only_with_cross_view_attention(cross_view):
    model = _nonzero_model(cross_view=cross_view)
    x = _inputs(b=1, v=3)
    noisy2 = x["noisy"].clone()
    noisy2[0] += 0.5  # change view 0 only
    delta = (_run(model, x) - _run(model, x, noisy=noisy2)).abs().flatten(1).amax(1)
    assert delta[0] > 1e-3
    if cross_view:
        assert (delta[1:] > 1e-4).all()
    else:
        assert (delta[1:] == 0).all()


def test_cross_view_attention_stays_within_a_set():
    model = _nonzero_model()
    x = _inputs(b=3, v=1)  # three sets of one view each
    noisy2 = x["noisy"].clone()
    noisy2[0] += 0.5
    delta = (_run(model, x) - _run(model, x, noisy=noisy2)).abs().flatten(1).amax(1)
    assert delta[0] > 1e-3 and (delta[1:] == 0).all()


def test_pose_token_is_required_when_configured():
    model = build_tiny()
    x = _inputs()
    with pytest.raises(ValueError, match="target_from_source"):
        _run(model, x, target_from_source=None)
    with pytest.raises(ValueError, match="multiple of num_views"):
        _run(model, x, num_views=2)


def test_unet_without_a_source_latent_input_is_rejected():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
        cross_attention_dim=D, attention_head_dim=4, norm_num_groups=8,
    )  # fmt: skip
    with pytest.raises(ValueError, match="in_channels = 2 \\* out_channels"):
        Free3DModel(unet, Free3DConfig())


def test_a_deep_copy_has_its_own_hooks():
    import copy

    model = build_tiny().eval()
    x = _inputs(b=1, v=2)
    ref = _run(model, x)
    twin = copy.deepcopy(model)
    _randomise(twin.rcn)
    _randomise(twin.cross_view)
    assert (_run(twin, x) - ref).abs().max() > 1e-3
    assert torch.equal(_run(model, x), ref)
    twin.detach()
    assert torch.equal(_run(twin, x), ref)  # hooks gone: the plain UNet (zero pose token)
    _randomise(model.rcn)
    assert (_run(model, x) - ref).abs().max() > 1e-3  # the original still has its hooks
    model.attach()  # idempotent: attaching again does not stack a second modulation
    once = _run(model, x)
    model.attach()
    assert torch.equal(_run(model, x), once)


def test_save_and_load_round_trip(tmp_path):
    model = _nonzero_model()
    x = _inputs(b=1, v=2)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "unet" / "config.json").is_file()
    loaded = load_free3d_model(tmp_path / "m")
    assert loaded.config == model.config
    assert torch.equal(_run(loaded, x), _run(model, x))


def test_missing_components_are_named(tmp_path):
    build_tiny().save_pretrained(tmp_path / "m")
    with pytest.raises(DiffusionModelError, match="not found"):
        load_free3d_model(tmp_path / "nowhere")
    (tmp_path / "m" / "free3d_modules.safetensors").unlink()
    shutil.rmtree(tmp_path / "m" / "unet")
    with pytest.raises(DiffusionModelError) as e:
        load_free3d_model(tmp_path / "m")
    msg = str(e.value)
    assert "free3d_modules.safetensors" in msg and "unet/config.json" in msg
    assert "free3d_config.json" not in msg


def test_weights_that_do_not_fit_the_config_are_rejected(tmp_path):
    build_tiny(cross_view=False).save_pretrained(tmp_path / "m")
    cfg = (tmp_path / "m" / "free3d_config.json").read_text()
    (tmp_path / "m" / "free3d_config.json").write_text(
        cfg.replace('"cross_view": false', '"cross_view": true')
    )
    with pytest.raises(DiffusionModelError, match="missing \\['cross_view"):
        load_free3d_model(tmp_path / "m")
