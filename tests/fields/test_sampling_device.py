"""A CPU ``torch.Generator`` drives samples on another device (the trainer keeps a CPU generator
for exact resume; PyTorch refuses ``torch.rand(..., generator=cpu_gen, device="cuda")``).

On CPU the check is emulated: torch's random functions are wrapped so that a generator on
another device than the requested one raises as CUDA does, and the sampler runs on ``meta``
tensors. With CUDA the samples are compared with the CPU ones.
"""

from __future__ import annotations

import functools

import pytest
import torch

from sceneforge.fields.field import SceneBox
from sceneforge.fields.sampling import OccupancyGrid, SamplerConfig, ray_intervals

RANDOM_FUNCTIONS = ("rand", "randn", "randint", "randperm")


def _strict(fn):
    """``fn`` that, like CUDA, refuses a generator living on another device than the output."""

    @functools.wraps(fn)
    def wrapped(*args, generator=None, device=None, **kwargs):
        if generator is not None:
            want = torch.device(device) if device is not None else torch.device("cpu")
            if want.type != generator.device.type:
                raise RuntimeError(
                    f"Expected a '{want.type}' device type for generator but found "
                    f"'{generator.device.type}'"
                )
        return fn(*args, generator=generator, device=device, **kwargs)

    return wrapped


@pytest.fixture
def strict_generators(monkeypatch):
    for name in RANDOM_FUNCTIONS:
        monkeypatch.setattr(torch, name, _strict(getattr(torch, name)))


def _rays(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    o = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(
        torch.randn(n, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1
    )
    return o.to(device), d.to(device)


BOXES = {
    "bounded": SceneBox(torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), contract=False),
    "contracted": SceneBox(torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), contract=True),
}
CFG = SamplerConfig(num_samples=24, grid_resolution=16, grid_warmup_steps=4)


def _density(u: torch.Tensor) -> torch.Tensor:
    return 10.0 * ((u - 0.5).norm(dim=-1) < 0.3).to(u.dtype)


def _grid_update(device, generator, step: int) -> tuple[OccupancyGrid, list[torch.Tensor]]:
    grid = OccupancyGrid(CFG, ref_step=0.1).to(device)
    seen: list[torch.Tensor] = []

    def density_fn(u):
        seen.append(u)
        return _density(u)

    grid.update(density_fn, step, generator)
    return grid, seen


def test_the_strict_emulation_rejects_the_old_cuda_failure(strict_generators):
    # the emulation itself must catch what CUDA refuses (else the next tests prove nothing)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RuntimeError, match="device type for generator"):
        torch.rand((2, 1), generator=g, device="meta")
    with pytest.raises(RuntimeError, match="device type for generator"):
        torch.randperm(10, generator=g, device="meta")


@pytest.mark.parametrize("box", list(BOXES))
def test_cpu_generator_drives_samples_on_another_device(strict_generators, box):
    g_meta = torch.Generator().manual_seed(0)
    g_cpu = torch.Generator().manual_seed(0)
    o, d = _rays(32, "meta")
    t, deltas, valid = ray_intervals(o, d, BOXES[box], CFG, g_meta)
    assert t.device.type == deltas.device.type == valid.device.type == "meta"
    ray_intervals(*_rays(32, "cpu"), BOXES[box], CFG, g_cpu)
    assert torch.equal(g_meta.get_state(), g_cpu.get_state())  # same draws, on the CPU


@pytest.mark.parametrize("step", [0, 100])  # warm-up (all cells) and random quarter
def test_cpu_generator_drives_a_grid_on_another_device(strict_generators, step):
    g_meta = torch.Generator().manual_seed(0)
    g_cpu = torch.Generator().manual_seed(0)
    grid, seen = _grid_update("meta", g_meta, step)
    assert grid.occupied.device.type == "meta" and seen[0].device.type == "meta"
    _grid_update("cpu", g_cpu, step)
    assert torch.equal(g_meta.get_state(), g_cpu.get_state())


def test_grid_update_without_a_generator_uses_the_grid_device(strict_generators):
    grid, seen = _grid_update("cpu", None, 100)
    assert grid.num_updates == 1 and seen[0].shape == (16**3 // 4, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("box", list(BOXES))
def test_cuda_samples_with_a_cpu_generator_equal_the_cpu_samples(box):
    g_gpu = torch.Generator().manual_seed(0)
    g_cpu = torch.Generator().manual_seed(0)
    tg, dg, vg = ray_intervals(*_rays(256, "cuda"), BOXES[box], CFG, g_gpu)
    tc, dc, vc = ray_intervals(*_rays(256, "cpu"), BOXES[box], CFG, g_cpu)
    assert tg.device.type == "cuda"
    torch.testing.assert_close(tg.cpu(), tc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dg.cpu(), dc, rtol=1e-4, atol=1e-5)
    assert torch.equal(vg.cpu(), vc)
    assert torch.equal(g_gpu.get_state(), g_cpu.get_state())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("step", [0, 100])
def test_cuda_grid_update_with_a_cpu_generator_equals_the_cpu_update(step):
    g_gpu = torch.Generator().manual_seed(0)
    g_cpu = torch.Generator().manual_seed(0)
    grid_g, seen_g = _grid_update("cuda", g_gpu, step)
    grid_c, seen_c = _grid_update("cpu", g_cpu, step)
    torch.testing.assert_close(torch.cat(seen_g).cpu(), torch.cat(seen_c), rtol=0, atol=1e-6)
    assert torch.equal(grid_g.occupied.cpu(), grid_c.occupied)
    assert torch.equal(g_gpu.get_state(), g_cpu.get_state())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trainer_steps_on_cuda_with_its_cpu_generator():
    from fields_analytic import sphere_scene

    from sceneforge.fields.trainer import Trainer, TrainerConfig

    cfg = TrainerConfig(max_steps=3, batch_rays=64, progress=False, tensorboard=False)
    cfg.device = "cuda"
    tr = Trainer(sphere_scene(n_views=9, size=16), cfg)
    assert tr.generator.device.type == "cpu"
    stats = tr.train()
    assert tr.step == 3 and torch.isfinite(torch.tensor(stats["loss"]))
