"""``sceneforge.core.devices``: ``--device`` names and generator-driven draws on any device."""

from __future__ import annotations

import pytest
import torch

from sceneforge.core.devices import DeviceError, draw, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_is_cuda_with_cuda(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_an_error_suggesting_cpu(no_cuda, name):
    with pytest.raises(ValueError, match="--device cpu") as e:
        resolve_device(name)
    assert "CUDA" in str(e.value) and "not available" in str(e.value)
    assert repr(name) in str(e.value)
    assert isinstance(e.value, DeviceError)


def test_cuda_index_beyond_the_devices_is_an_error(two_gpus):
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x", "cuda:", ""])
def test_unknown_names_are_named_in_the_error(no_cuda, name):
    with pytest.raises(ValueError, match="unknown device") as e:
        resolve_device(name)
    assert repr(name) in str(e.value)


def test_device_error_is_user_facing_in_the_cli():
    from sceneforge.cli import _user_facing

    assert _user_facing(DeviceError("x"))


def test_draw_with_a_cpu_generator_is_bit_identical_to_a_direct_draw():
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    for fn, args, kw in [
        (torch.rand, ((5, 3),), {"dtype": torch.float64}),
        (torch.randn, ((4,),), {}),
        (torch.randperm, (100,), {}),
        (torch.randint, (10, (6,)), {}),
    ]:
        a = draw(fn, *args, generator=g1, device="cpu", **kw)
        b = fn(*args, generator=g2, device="cpu", **kw)
        assert a.device.type == "cpu" and a.dtype == b.dtype
        assert torch.equal(a, b), fn.__name__
    assert torch.equal(g1.get_state(), g2.get_state())


def test_draw_moves_to_the_target_device_and_draws_on_the_generator():
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    out = draw(torch.rand, (8,), generator=g1, device="meta")
    assert out.device.type == "meta"
    torch.rand((8,), generator=g2)  # the generator advanced exactly as a CPU draw does
    assert torch.equal(g1.get_state(), g2.get_state())


def test_draw_without_a_generator_draws_on_the_target_device():
    out = draw(torch.rand, (2, 2), device="meta")
    assert out.device.type == "meta" and out.shape == (2, 2)
    torch.manual_seed(5)
    a = draw(torch.rand, (3,), device="cpu")
    torch.manual_seed(5)
    assert torch.equal(a, torch.rand(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_draw_cpu_generator_on_cuda_gives_the_cpu_numbers():
    g1 = torch.Generator().manual_seed(11)
    g2 = torch.Generator().manual_seed(11)
    a = draw(torch.rand, (1000, 3), generator=g1, device="cuda")
    b = draw(torch.randperm, 4096, generator=g1, device="cuda")
    assert a.device.type == "cuda" and b.device.type == "cuda"
    assert torch.equal(a.cpu(), torch.rand((1000, 3), generator=g2))
    assert torch.equal(b.cpu(), torch.randperm(4096, generator=g2))
