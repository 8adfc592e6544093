"""``--device`` of ``sceneforge run`` and ``sceneforge complete``: resolved once (``auto`` =
CUDA when available), bad names and missing CUDA are one-line errors before any work, and
the resolved device reaches training, completion and rendering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sceneforge.cli import main


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def images(tmp_path):
    import imageio.v3 as iio

    d = tmp_path / "images"
    d.mkdir()
    iio.imwrite(d / "a.png", np.zeros((8, 8, 3), np.uint8))
    return d


@pytest.mark.parametrize("verb", ["run", "complete"])
def test_cuda_without_cuda_is_a_one_line_error(no_cuda, images, tmp_path, capsys, verb):
    args = [verb, str(images if verb == "run" else tmp_path / "no_run"), str(tmp_path / "out")]
    args += ["--mask-box", "0", "0", "0", "1", "1", "1", "--device", "cuda"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sceneforge {verb}: error: device 'cuda' needs CUDA")
    assert "--device cpu" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("verb", ["run", "complete"])
def test_unknown_device_is_named(images, tmp_path, capsys, verb):
    args = [verb, str(images), str(tmp_path / "out"), "--mask-box", "0", "0", "0", "1", "1", "1"]
    assert main([*args, "--device", "tpu"]) == 1
    assert "unknown device 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize("cuda", [False, True])
def test_complete_resolves_auto(monkeypatch, tmp_path, cuda):
    import sceneforge.inpaint.complete as mod

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    seen = {}
    monkeypatch.setattr(
        mod, "complete", lambda run, out, cfg, progress=None: seen.update(cfg=cfg) or {}
    )
    args = ["complete", str(tmp_path / "run"), str(tmp_path / "out"), "--masks", "m"]
    assert main(args) == 0
    assert seen["cfg"].device == ("cuda" if cuda else "cpu")
    assert main([*args, "--device", "cpu"]) == 0
    assert seen["cfg"].device == "cpu"


def test_run_gives_the_device_to_training_unless_the_stage_has_its_own(
    monkeypatch, images, tmp_path
):
    import sceneforge.fields.api as api
    from sceneforge.fields.api import TrainConfig
    from sceneforge.pipeline import RunConfig, _Stages, run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = []
    monkeypatch.setattr(api, "train", lambda scene, out, cfg: seen.append(cfg.device) or {})
    for k, (cfg, want) in enumerate(
        [(RunConfig(), "cuda"), (RunConfig(train=TrainConfig(device="cpu")), "cpu")]
    ):
        out = tmp_path / f"out{k}"
        out.mkdir()
        _Stages(out).mark("reconstruct", 0.0)  # skip SfM: only the train stage runs
        run(images, out, cfg, log=lambda s: None, stop_after="train")
        assert seen[-1] == want
    assert RunConfig().device == "auto"
