"""The converted style predictor: ONNX parity, truncated multi-level features, gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs the [style] extra")
pytest.importorskip("onnx2torch", reason="needs the [style] extra")

from sceneforge.core.torch_state import torch_threads
from sceneforge.stylize.human.style.encoder import (  # noqa: E402
    EncoderConfig,
    StyleEncoder,
    convert_to_torch,
    predictor_float_model,
)
from sceneforge.stylize.human.style.onnx_models import cpu_session, model_path  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread: on a shared 2-core machine more threads contend and run slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def encoder():
    return StyleEncoder()


def test_full_converted_graph_matches_onnxruntime():
    model = predictor_float_model()
    x = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
    ref = cpu_session(model.SerializeToString(), 1).run(None, {"style_image": x})[0]
    with torch.no_grad():
        out = convert_to_torch(model)(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (1, 1, 1, 100)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    # the float graph stays close to the shipped int8 one (activation rounding dropped)
    quant = cpu_session(model_path("arbitrary_predict"), 1).run(None, {"style_image": x})[0]
    assert np.corrcoef(quant.ravel(), ref.ravel())[0, 1] > 0.999
    assert np.abs(quant - ref).max() < 0.1


def test_level_shapes(encoder):
    feats = encoder(torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)))
    assert [tuple(f.shape) for f in feats] == [(2, 24, 16, 24), (2, 32, 8, 12), (2, 96, 4, 6)]
    assert encoder.channels == (24, 32, 96) and encoder.strides == (4, 8, 16)
    assert all(torch.isfinite(f).all() for f in feats)
    assert all(f.std() > 1e-3 for f in feats)  # not a constant map


def test_other_blocks_and_bad_config():
    enc = StyleEncoder(EncoderConfig(blocks=(4, 9)))
    feats = enc(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 4, 4), (1, 64, 2, 2)]
    with pytest.raises(ValueError, match="blocks"):
        StyleEncoder(EncoderConfig(blocks=(3,)))
    with pytest.raises(ValueError, match="fine to coarse"):
        StyleEncoder(EncoderConfig(blocks=(12, 2)))


def test_frozen_and_differentiable_wrt_input(encoder):
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = sum(f.square().mean() for f in encoder(x))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
    # the gradient is the true one: a central difference along a random direction (float64)
    enc64 = copy.deepcopy(encoder).double()
    x64 = x.detach()[..., :32, :32].double().requires_grad_(True)

    def f(t):
        return sum(m.square().mean() for m in enc64(t))

    f(x64).backward()
    d = torch.randn(x64.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = d * 1e-7
    with torch.no_grad():
        fd = (f(x64 + d) - f(x64 - d)) / 2
    assert torch.isclose(fd, (x64.grad * d).sum(), rtol=1e-3, atol=0)
