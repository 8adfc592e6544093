"""Sampling with Free3D (stylize/free3d/sampler.py, pipeline.py, prior.py): multi-view noise
sharing, guidance, seeds, latent space, local-folder loading and the novel-view prior."""

from __future__ import annotations

import shutil

import pytest
import torch

from sceneforge.core.diffusion import DiffusionModelError
from sceneforge.core.novel_view_prior import NovelViewPrior
from sceneforge.stylize.free3d import (
    Free3DPrior,
    SamplerConfig,
    build_tiny_pipeline,
    denoise,
    initial_noise,
    load_free3d,
    relative_pose,
    sample_views,
)
from sceneforge.stylize.free3d.rays import rays_for_views

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 12, 20  # the source image's size (the tiny model works at 16 x 16)


def _request(v=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    from sceneforge.core.cameras import make_rigid
    from sceneforge.core.rotations import angle_axis_to_matrix

    image = torch.rand(1, 3, H, W, generator=g)
    K = torch.tensor([[[18.0, 0, 10], [0, 18, 6], [0, 0, 1]]])
    poses = make_rigid(angle_axis_to_matrix(0.3 * torch.randn(1, v, 3, generator=g)),
                       0.3 * torch.randn(1, v, 3, generator=g))  # fmt: skip
    return image, K, poses


def _nonzero(pipe):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for mod in (pipe.model.rcn, pipe.model.cross_view, pipe.model.pose_token):
            for p in mod.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return pipe


def test_initial_noise_is_shared_across_the_views_of_a_set():
    g = torch.Generator().manual_seed(0)
    x = initial_noise(2, 3, (4, 5, 6), g, share=True)
    assert x.shape == (6, 4, 5, 6)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2]) and torch.equal(x[3], x[5])
    assert not torch.equal(x[0], x[3])
    y = initial_noise(2, 3, (4, 5, 6), torch.Generator().manual_seed(0), share=False)
    assert not torch.equal(y[0], y[1])


class _SpyScheduler:
    """A scheduler that records the latents of its first step (delegates everything)."""

    def __init__(self, inner):
        self.inner, self.first = inner, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, model_output, timestep, sample, eta=0.0, generator=None, return_dict=True):
        if self.first is None:
            self.first = sample.clone()
        return self.inner.step(model_output, timestep, sample, eta=eta, generator=generator,
                               return_dict=return_dict)  # fmt: skip


def _denoise_inputs(pipe, v=3):
    image, K, poses = _request(v)
    src = torch.nn.functional.interpolate(image, (16, 16))
    Ks = K * torch.tensor([16 / W, 16 / H, 1.0])[:, None]
    rays = rays_for_views(Ks, poses, 16, 16)
    return pipe.encode(src), pipe.image_embed(src), rays, poses.reshape(v, 3, 4)


@pytest.mark.parametrize("share", [True, False])
def test_the_sampler_starts_every_view_from_the_same_noise_when_sharing(share):
    pipe = _nonzero(build_tiny_pipeline())
    spy = _SpyScheduler(pipe.scheduler)
    lat, emb, rays, poses = _denoise_inputs(pipe)
    cfg = SamplerConfig(num_steps=2, guidance_scale=1.0, share_noise=share)
    out = denoise(pipe.model, spy, lat, emb, rays, poses, 3, cfg)
    first = spy.first
    assert torch.equal(first[0], first[1]) == share and torch.equal(first[1], first[2]) == share
    assert out.shape == (3, 3, 16, 16) and not torch.equal(out[0], out[1])  # rays differ


def test_shared_noise_and_identical_conditioning_give_identical_views():
    pipe = _nonzero(build_tiny_pipeline())
    lat, emb, rays, poses = _denoise_inputs(pipe)
    rays, poses = rays[:1].expand(3, -1, -1, -1), poses[:1].expand(3, -1, -1)
    for share in (True, False):
        cfg = SamplerConfig(num_steps=2, guidance_scale=2.0, share_noise=share)
        out = denoise(pipe.model, pipe.scheduler, lat, emb, rays, poses, 3, cfg)
        assert torch.allclose(out[0], out[2], atol=1e-5) == share


def test_sample_views_shape_range_seed_and_guidance():
    pipe = _nonzero(build_tiny_pipeline())
    image, K, poses = _request()
    cfg = SamplerConfig(num_steps=2, guidance_scale=3.0)
    a = sample_views(pipe, image, K, poses, config=cfg)
    assert a.shape == (1, 3, 3, H, W) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, sample_views(pipe, image, K, poses, config=cfg))
    other_seed = SamplerConfig(num_steps=2, guidance_scale=3.0, seed=1)
    assert not torch.allclose(a, sample_views(pipe, image, K, poses, config=other_seed))
    unguided = SamplerConfig(num_steps=2, guidance_scale=1.0)
    assert not torch.allclose(a, sample_views(pipe, image, K, poses, config=unguided))
    with_k = sample_views(pipe, image, K, poses, K[:, None].expand(1, 3, 3, 3), cfg)
    assert torch.allclose(with_k, a, atol=1e-6)


def test_latent_space_pipeline_saves_loads_and_samples_the_same(tmp_path):
    pipe = _nonzero(build_tiny_pipeline(latent_space=True))
    assert pipe.latent_factor == 2 and pipe.model.latent_channels == 4
    image, K, poses = _request(v=2)
    cfg = SamplerConfig(num_steps=2, guidance_scale=2.0)
    out = sample_views(pipe, image, K, poses, config=cfg)
    pipe.save_pretrained(tmp_path / "f3d")
    loaded = load_free3d(tmp_path / "f3d")
    assert loaded.vae is not None and type(loaded.scheduler) is type(pipe.scheduler)
    assert torch.allclose(sample_views(loaded, image, K, poses, config=cfg), out, atol=1e-6)


def test_a_folder_without_expected_components_names_them(tmp_path):
    build_tiny_pipeline(latent_space=True).save_pretrained(tmp_path / "f3d")
    shutil.rmtree(tmp_path / "f3d" / "vae")
    shutil.rmtree(tmp_path / "f3d" / "image_encoder")
    (tmp_path / "f3d" / "free3d_modules.safetensors").unlink()
    with pytest.raises(DiffusionModelError) as e:
        load_free3d(tmp_path / "f3d")
    msg = str(e.value)
    for part in ("vae/config.json", "image_encoder/config.json", "free3d_modules.safetensors"):
        assert part in msg
    assert "scheduler" not in msg and "unet" not in msg
    with pytest.raises(DiffusionModelError, match="not found"):
        load_free3d(tmp_path / "missing")


def test_free3d_prior_implements_the_core_interface(tmp_path):
    pipe = _nonzero(build_tiny_pipeline())
    pipe.save_pretrained(tmp_path / "f3d")
    prior = Free3DPrior.from_folder(tmp_path / "f3d", config=SamplerConfig(num_steps=2))
    assert isinstance(prior, NovelViewPrior)
    image, K, poses = _request(v=2)
    views = prior.generate(image[0], K[0], poses[0], seed=4)
    assert views.shape == (2, 3, H, W)
    cfg = SamplerConfig(num_steps=2, seed=4)
    assert torch.allclose(views, sample_views(pipe, image, K, poses, config=cfg)[0], atol=1e-6)
    # the same request with world-frame cameras
    from sceneforge.core.cameras import make_rigid
    from sceneforge.core.rotations import angle_axis_to_matrix

    src = make_rigid(
        angle_axis_to_matrix(torch.tensor([0.1, 0.2, -0.3])), torch.tensor([1.0, 0, 2])
    )
    from sceneforge.core.cameras import compose_rigid

    tgt = compose_rigid(poses[0], src.expand(2, 3, 4))
    assert torch.allclose(relative_pose(src, tgt), poses[0], atol=1e-5)
    again = prior.generate_for_cameras(image[0], K[0], src, tgt, seed=4)
    assert torch.allclose(again, views, atol=1e-3)
