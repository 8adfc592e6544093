"""Shared fixtures: where the shared data lives, and deterministic torch settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SCENEFORGE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (override with SCENEFORGE_DATA); tests needing it skip if absent."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test (many small ops run much faster so on a busy 2-core CPU)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- nerfstudio plugin tests (run in .venv-ns) ---------------------------------------------------

NS_ENTRY_POINTS = {
    "NERFSTUDIO_METHOD_CONFIGS": (
        "sceneforge=sceneforge.nerfstudio.plugin:sceneforge_method,"
        "sceneforge-complete=sceneforge.nerfstudio.complete:sceneforge_complete_method"
    ),
    "NERFSTUDIO_DATAPARSER_CONFIGS": (
        "sceneforge-data=sceneforge.nerfstudio.dataparser:sceneforge_dataparser"
    ),
}

NO_LPIPS = """
import torchmetrics.image.lpip as _lpip


def _no_lpips(*args, **kwargs):
    raise RuntimeError("LPIPS constructed: it would download AlexNet weights")


_lpip.LearnedPerceptualImagePatchSimilarity.__init__ = _no_lpips
"""


@pytest.fixture(scope="module")
def ns_env(tmp_path_factory) -> dict:
    """Environment for ``ns-train`` / ``ns-eval`` subprocesses: our methods and dataparser
    registered without installing, and a ``sitecustomize`` that makes LPIPS construction (an
    AlexNet download) raise, so the runs prove the plugins never need that download."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(NO_LPIPS)
    e = dict(os.environ, **NS_ENTRY_POINTS)
    e["PYTHONPATH"] = os.pathsep.join([str(site), e.get("PYTHONPATH", "")])
    e["CUDA_VISIBLE_DEVICES"] = ""  # nerfacc/gsplat kernels would JIT-compile and crash
    return e


@pytest.fixture(scope="module")
def ns_run(ns_env):
    """``ns_run(["ns-train", ...], cwd)``: run a nerfstudio command of this venv under
    :func:`ns_env`; a non-zero exit fails the test with the command's output."""
    import subprocess
    import sys

    def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / cmd[0]), *cmd[1:]]
        p = subprocess.run(cmd, env=ns_env, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p

    return run


@pytest.fixture(scope="module")
def ns_train(ns_run):
    """``ns_train(method, data, out, iterations, timestamp, *extra, cwd=...)``: a tiny CPU
    ``ns-train`` run (tensorboard logging, 32^3 density grid, 256 rays per batch); ``extra``
    arguments come last, so they may override these."""

    def train(method: str, data: Path, out: Path, iterations: int, timestamp: str, *extra, cwd):
        cmd = [
            "ns-train",
            method,
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--max-num-iterations",
            str(iterations),
            "--machine.device-type",
            "cpu",
            "--vis",
            "tensorboard",
            "--timestamp",
            timestamp,
            "--pipeline.model.nerf.field.density-grid-resolution",
            "32",
            "--pipeline.datamanager.train-num-rays-per-batch",
            "256",
            *extra,
        ]
        return ns_run(cmd, cwd)

    return train
