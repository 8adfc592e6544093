"""Decoder shapes; the 2D stylizer trained a few dozen CPU steps against the real teacher;
checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sceneforge.core.torch_state import torch_threads
from sceneforge.stylize.human.style.decoder import DecoderConfig, FeatureDecoder

pytest.importorskip("onnxruntime", reason="needs the [style] extra")
pytest.importorskip("onnx2torch", reason="needs the [style] extra")

from sceneforge.stylize.human.style.stylizer import (  # noqa: E402
    StylizerTrainConfig,
    load_stylizer,
    train_stylizer,
)
from sceneforge.stylize.human.style.teacher import StyleTeacher, TeacherConfig  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread: on a shared 2-core machine more threads contend and run slower."""
    with torch_threads(1):
        yield


def texture(seed: int, size: int = 64, cells: int = 6) -> torch.Tensor:
    """A smooth random colour texture, ``size² 3``."""
    low = torch.rand(1, 3, cells, cells, generator=torch.Generator().manual_seed(seed))
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return img.clamp(0, 1)[0].permute(1, 2, 0)


def stripes(seed: int, colors, size: int = 96) -> torch.Tensor:
    """Noisy diagonal stripes of two colours, ``size² 3``."""
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.arange(size)[:, None], torch.arange(size)[None]
    freq = float(torch.rand(1, generator=gen)) * 0.3 + 0.15
    band = (torch.sin(freq * (x + 0.5 * y)) > 0).float()[..., None]
    c = torch.tensor(colors)
    noise = 0.1 * torch.rand(size, size, 3, generator=gen)
    return (band * c[0] + (1 - band) * c[1] + noise).clamp(0, 1)


def test_decoder_shapes_and_gradients():
    torch.manual_seed(0)
    dec = FeatureDecoder((5, 7, 9), (4, 8, 16), DecoderConfig(level_width=8, image_width=8))
    feats = [
        torch.randn(2, c, 40 // s, 24 // s, requires_grad=True)
        for c, s in ((5, 4), (7, 8), (9, 16))
    ]
    assert feats[2].shape[-2:] == (2, 1)
    out = dec(feats)
    assert out.shape == (2, 3, 40, 24) and 0 <= out.min() and out.max() <= 1
    assert dec(feats, (37, 22)).shape == (2, 3, 37, 22)  # cropped at the top-left
    torch.testing.assert_close(dec(feats, (37, 22)), out[..., :37, :22])
    out.mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    with pytest.raises(ValueError, match="power of two"):
        FeatureDecoder((5,), (3,))
    with pytest.raises(ValueError, match="levels"):
        dec(feats[:2])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    contents = torch.stack([texture(i) for i in range(4)])
    styles = [
        stripes(10, [[0.9, 0.2, 0.1], [0.1, 0.1, 0.4]]),
        stripes(11, [[0.1, 0.8, 0.3], [0.9, 0.9, 0.2]]),
    ]
    ckpt = tmp_path_factory.mktemp("stylizer") / "stylizer.pt"
    cfg = StylizerTrainConfig(
        steps=50, batch_size=4, lr=2e-3, log_every=0, checkpoint=str(ckpt), checkpoint_every=20
    )
    result = train_stylizer(contents, styles, StyleTeacher(TeacherConfig(threads=1)), cfg)
    return result, contents, ckpt


def test_training_lowers_the_loss(trained):
    result, _, _ = trained
    first = lambda xs: sum(xs[:3]) / 3  # noqa: E731
    last = lambda xs: sum(xs[-10:]) / 10  # noqa: E731
    assert len(result.losses) == 50
    assert last(result.losses) < 0.4 * first(result.losses)
    assert last(result.teacher_losses) < 0.95 * first(result.teacher_losses)
    assert last(result.style_losses) < 0.3 * first(result.style_losses)


def test_held_out_style_changes_the_output(trained):
    result, contents, _ = trained
    held = [
        stripes(20, [[0.95, 0.95, 0.95], [0.05, 0.05, 0.05]]),
        stripes(21, [[0.2, 0.3, 0.9], [0.9, 0.5, 0.1]]),
    ]
    with torch.no_grad():
        a, b = result.stylizer(contents[:2], held[0]), result.stylizer(contents[:2], held[1])
        weak = result.stylizer(contents[:2], held[1], alpha=0.0)
    assert a.shape == b.shape == (2, 64, 64, 3)
    assert (a - b).abs().mean() > 0.03  # the style image matters
    assert a.std(dim=(1, 2)).min() > 0.01 and b.std(dim=(1, 2)).min() > 0.01  # not constant
    assert (a[0] - a[1]).abs().mean() > 0.02  # and the content matters
    assert (weak - b).abs().mean() > 0.01  # the strength control acts


def test_checkpoint_round_trip(trained, tmp_path):
    result, contents, ckpt = trained
    loaded, extra = load_stylizer(ckpt, encoder=result.stylizer.encoder)
    assert extra["step"] == 50 and len(extra["losses"]) == 50
    style = stripes(30, [[0.5, 0.1, 0.6], [0.9, 0.9, 0.8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(contents, style), result.stylizer(contents, style))
    assert "encoder" not in str(list(torch.load(ckpt, weights_only=True)["weights"]))
    bad = tmp_path / "bad.pt"
    torch.save({"format": "other"}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        load_stylizer(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_stylizer(tmp_path / "missing.pt")


def test_any_frame_size(trained):
    result, contents, _ = trained
    style = stripes(31, [[0.9, 0.9, 0.1], [0.1, 0.1, 0.1]], size=50)
    with torch.no_grad():
        odd = result.stylizer(contents[:1, :45, :37], style)
        full = result.stylizer(contents[:1], style)
    assert odd.shape == (1, 45, 37, 3) and torch.isfinite(odd).all()
    # the crop's stylization keeps the crop's layout: it follows the whole image's
    a, b = odd[0, :40, :32].flatten(), full[0, :40, :32].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8
