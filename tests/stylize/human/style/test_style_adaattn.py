"""AdaAttN: the AdaIN limit, gradients, the strength control, seeded style subsampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sceneforge.core.torch_state import torch_threads
from sceneforge.stylize.human.style.adaattn import (
    AdaAttN,
    AdaAttNConfig,
    MultiLevelAdaAttN,
    adaattn,
    adain,
    concat_levels,
    instance_norm,
    style_subset,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread: on a shared 2-core machine more threads contend and run slower."""
    with torch_threads(1):
        yield


def _zero(dim):
    return lambda x: torch.zeros(x.shape[0], dim, *x.shape[2:], dtype=x.dtype)


def _identity(x):
    return x


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_uniform_attention_is_adain():
    content, style = _rand(2, 5, 6, 7, seed=0) * 2 + 1, _rand(2, 5, 4, 9, seed=1) * 3 - 2
    ck, sk = _rand(2, 8, 6, 7, seed=2), _rand(2, 8, 4, 9, seed=3)
    out = adaattn(content, style, ck, sk, _zero(4), _zero(4), _identity)
    ref = adain(content, style)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # adain itself: style's per-channel mean and std on the content's normalized layout
    assert torch.allclose(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-10)
    std = (style.var(dim=(2, 3), unbiased=False) + 1e-5).sqrt()
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), std, rtol=1e-4)
    # with real attention the result differs from AdaIN
    q = lambda x: x[:, :4] * 3  # noqa: E731
    assert (adaattn(content, style, ck, sk, q, q, _identity) - ref).abs().max() > 0.1


def test_attention_picks_the_matching_style_position():
    # content position keys equal to one style position's key, with sharp attention:
    # the output there is that style position's value (mean M, std ~0)
    style = _rand(1, 3, 1, 5, seed=4)
    sk = torch.eye(5, dtype=torch.float64).reshape(1, 5, 1, 5) * 50
    ck = sk[..., [2, 0]]  # content positions see style positions 2 and 0
    content = _rand(1, 3, 1, 2, seed=5)
    sharp = lambda x: 40 * x  # noqa: E731
    out = adaattn(content, style, ck, sk, sharp, _identity, _identity, eps=1e-12)
    # after Norm, content position 0's query scores style position 2 at 100, others <= 0
    torch.testing.assert_close(out[0, :, 0, 0], style[0, :, 0, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, :, 0, 1], style[0, :, 0, 0], atol=1e-5, rtol=0)


def test_gradcheck_float64():
    content = _rand(1, 2, 3, 3, seed=6).requires_grad_(True)
    style = _rand(1, 2, 2, 3, seed=7).requires_grad_(True)
    wq, wk = _rand(3, 4, seed=8).requires_grad_(True), _rand(3, 4, seed=9).requires_grad_(True)
    wv = _rand(2, 2, seed=10).requires_grad_(True)
    ck, sk = _rand(1, 4, 3, 3, seed=11), _rand(1, 4, 2, 3, seed=12)

    def f(c, s, a, b, v):
        return adaattn(
            c, s, ck, sk,
            lambda x: F.conv2d(x, a[..., None, None]),
            lambda x: F.conv2d(x, b[..., None, None]),
            lambda x: F.conv2d(x, v[..., None, None]),
            alpha=0.7, query_chunk=4,
        )  # fmt: skip

    assert torch.autograd.gradcheck(f, (content, style, wq, wk, wv))


def test_alpha_zero_is_content_and_alpha_blends():
    content, style = _rand(1, 4, 5, 5, seed=13), _rand(1, 4, 6, 6, seed=14)
    q = lambda x: x  # noqa: E731
    assert torch.equal(adaattn(content, style, content, style, q, q, q, alpha=0.0), content)
    full = adaattn(content, style, content, style, q, q, q)
    half = adaattn(content, style, content, style, q, q, q, alpha=0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * content)
    with pytest.raises(ValueError, match="alpha"):
        adaattn(content, style, content, style, q, q, q, alpha=1.5)


def test_query_chunks_change_nothing():
    content, style = _rand(2, 3, 7, 5, seed=15), _rand(1, 3, 4, 4, seed=16)  # one style, 2 contents
    q = lambda x: x  # noqa: E731
    a = adaattn(content, style, content, style, q, q, q, query_chunk=3)
    b = adaattn(content, style, content, style, q, q, q, query_chunk=10_000)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_style_subsampling_is_seeded():
    assert style_subset(100, None, 0) is None and style_subset(100, 100, 0) is None
    a, b, c = style_subset(100, 20, 0), style_subset(100, 20, 0), style_subset(100, 20, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == 20 and len(set(a.tolist())) == 20 and torch.all(a[1:] > a[:-1])
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(style_subset(100, 20, 0), a)

    content, style = _rand(1, 3, 4, 4, seed=17), _rand(1, 3, 10, 10, seed=18)
    q = lambda x: x  # noqa: E731
    run = lambda seed: adaattn(  # noqa: E731
        content, style, content, style, q, q, q, max_style_positions=20, seed=seed
    )
    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    # the subset is exactly the chosen positions: with uniform attention the output is AdaIN
    # of those positions alone
    keep = style_subset(100, 20, 0)
    sub = style.flatten(2)[..., keep].reshape(1, 3, 1, 20)
    uniform = adaattn(
        content, style, content, style, _zero(3), _zero(3), q, max_style_positions=20, seed=0
    )
    torch.testing.assert_close(uniform, adain(content, sub), rtol=1e-10, atol=1e-10)
    assert (uniform - adain(content, style)).abs().max() > 1e-3


def test_modules_multi_level():
    torch.manual_seed(0)
    channels = (4, 6, 8)
    content = [torch.randn(2, c, 16 // 2**i, 12 // 2**i) for i, c in enumerate(channels)]
    style = [torch.randn(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate(channels)]
    key = concat_levels(content, 2)
    assert key.shape == (2, 18, 4, 3)
    torch.testing.assert_close(key[:, 10:], content[2])
    model = MultiLevelAdaAttN(channels, AdaAttNConfig(key_dim=5, max_style_positions=30))
    assert [layer.f.in_channels for layer in model.levels] == [4, 10, 18]
    out = model(content, style)
    assert [o.shape for o in out] == [c.shape for c in content]
    assert all(torch.equal(o, c) for o, c in zip(model(content, style, alpha=0.0), content))
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None for p in model.parameters())
    # a zero query projection makes the module AdaIN of h(style)
    layer = AdaAttN(4, 4, AdaAttNConfig(key_dim=3))
    with torch.no_grad():
        layer.f.weight.zero_()
        layer.f.bias.zero_()
        layer.h.weight.copy_(torch.eye(4)[..., None, None])
        layer.h.bias.zero_()
    c, s = content[0], style[0]
    torch.testing.assert_close(layer(c, s, c, s), adain(c, s), rtol=1e-4, atol=1e-5)
    assert torch.allclose(instance_norm(c).mean(dim=(2, 3)), torch.zeros(2, 4), atol=1e-5)
