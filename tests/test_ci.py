"""CI plumbing: ``.ci/run`` fails when the demo misses its quality floor (or crashes), and
``make test``'s skip summary (``tests/skip_summary.py``) counts skipped tests by what is absent.

``.ci/run`` runs here with a fake ``make`` (the real targets take many minutes): the fake
writes the ``demo.json`` a finished demo would write and exits as ``sceneforge demo`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_MAKE = """#!/bin/sh
case "$1" in
  demo)
    mkdir -p outputs/demo
    if [ -n "$DEMO_JSON" ]; then printf '%s' "$DEMO_JSON" > outputs/demo/demo.json; fi
    exit "${DEMO_RC:-0}" ;;
  test) exit "${TEST_RC:-0}" ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture
def ci(tmp_path):
    """Run a copy of ``.ci/run`` in a fake checkout; returns ``run(demo_json, demo_rc)``."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to(sys.executable)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("make", FAKE_MAKE), ("chromium", "#!/bin/sh\n"), ("chromedriver", "")):
        (bin_dir / name).write_text(text or "#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)

    def run(demo: dict | None, demo_rc: int, test_rc: int = 0) -> subprocess.CompletedProcess:
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        env.update(DEMO_RC=str(demo_rc), TEST_RC=str(test_rc))
        env["DEMO_JSON"] = json.dumps(demo) if demo is not None else ""
        return subprocess.run(
            ["bash", str(repo / ".ci" / "run")], env=env, capture_output=True, text=True
        )

    return run


def _demo(ok: bool) -> dict:
    return {"registered": "24/24", "heldout_psnr_db": 28.2 if ok else 19.0, "ok": ok}


def test_ci_passes_when_the_demo_meets_its_floor(ci):
    p = ci(_demo(True), 0)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "demo: quality floor met" in p.stdout


def test_ci_fails_when_the_demo_misses_its_floor(ci):
    p = ci(_demo(False), 1)  # `sceneforge demo` exits 1 below the floor
    assert p.returncode == 1
    assert "quality floor was not met" in p.stdout and '"heldout_psnr_db": 19.0' in p.stdout
    # a demo.json saying "ok": false fails CI even if the exit status did not say so
    assert ci(_demo(False), 0).returncode == 1


def test_ci_fails_when_the_demo_crashes(ci):
    p = ci(None, 3)  # no demo.json: a crash keeps its exit status
    assert p.returncode == 3 and "demo failed" in p.stdout
    p = ci(_demo(True), 2)  # finished and met the floor, then failed: still a failure
    assert p.returncode == 2 and "demo failed" in p.stdout


def test_ci_fails_when_make_test_fails(ci):
    p = ci(_demo(True), 0, test_rc=2)
    assert p.returncode == 2 and "make demo" not in p.stdout


# ----------------------------------------------------------------------------- skip summary

SKIPPING_TESTS = """
import pytest
import torch

def test_shared(shared_data):
    pass

@pytest.mark.skipif(True, reason="needs CUDA")
def test_cuda():
    pass

def test_browser():
    pytest.skip("chromium / chromedriver not installed (apt-get install chromium)")

def test_optional():
    pytest.importorskip("surely_not_an_installed_module_xyz")

def test_other():
    pytest.skip("Trainer.EDITING_INTERFACE not defined yet")

def test_runs():
    assert True
"""


def test_make_test_lists_skips_and_counts_them_by_cause(tmp_path):
    """``make test``'s pytest options (-rs, -p skip_summary) on a file of skipping tests."""
    (tmp_path / "test_skips.py").write_text(SKIPPING_TESTS)
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef shared_data():\n"
        "    pytest.skip('shared data not found at /nowhere')\n"
    )
    make = (REPO / "Makefile").read_text()
    assert "-rs" in make and "-p skip_summary" in make
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += ["-p", "skip_summary", "test_skips.py"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "SKIPPED [1] test_skips.py" in out and "shared data not found" in out  # -rs
    assert (
        "skipped 5: 1 ../shared data absent, 1 Chromium absent, 1 CUDA absent, "
        "1 optional packages absent, 1 other"
    ) in out
    assert "1 passed, 5 skipped" in out
    assert out.rindex("SKIPPED [") < out.index("skipped 5:")  # after the list of reasons


def test_skip_summary_categories():
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from skip_summary import summary_line
    finally:
        sys.path.remove(str(REPO / "tests"))
    assert summary_line([]) == "skipped 0"
    reasons = [
        "shared data not found at ../shared/data",
        "fern not available",
        "could not import 'open3d': No module named 'open3d'",
        "tinycudann comparison needs CUDA",
    ]
    assert summary_line(reasons) == (
        "skipped 4: 2 ../shared data absent, 1 CUDA absent, 1 optional packages absent"
    )


def _load_share_packages():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "share_packages", REPO / ".ci" / "share_packages.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_share_packages_hard_links_a_distribution(tmp_path):
    """The nerfstudio venv gets torch & co. as hard links of .venv's files (no second copy on
    disk): every RECORD file inside site-packages is linked, the dist-info included so that pip
    sees the distribution installed; console scripts outside site-packages are left out."""
    from importlib import metadata

    share_packages = _load_share_packages()
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("X = 1\n")
    (src / "pkg" / "lib.so").write_bytes(b"\0" * 1000)
    info = src / "pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        "pkg/__init__.py,,\npkg/lib.so,,\npkg-1.0.dist-info/METADATA,,\n"
        "pkg-1.0.dist-info/RECORD,,\n../../../bin/pkg-tool,,\n"
    )
    dst.mkdir()
    n, copied = share_packages.share(metadata.PathDistribution(info), dst)
    assert (n, copied) == (4, 0)
    for rel in ("pkg/__init__.py", "pkg/lib.so", "pkg-1.0.dist-info/METADATA"):
        assert (dst / rel).stat().st_ino == (src / rel).stat().st_ino
    assert not (tmp_path / "bin").exists()
    found = list(metadata.distributions(path=[str(dst)]))
    assert [d.metadata["Name"] for d in found] == ["pkg"]
    assert found[0].version == "1.0"
    # Sharing again replaces the links in place (a rebuilt .venv-ns).
    assert share_packages.share(metadata.PathDistribution(info), dst) == (4, 0)


def test_makefile_links_torch_into_the_nerfstudio_venv():
    """CI ran out of disk installing torch a second time into .venv-ns (CI log, 2026-12-04)."""
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("$(NS_STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "$(STAMP)" in recipe.splitlines()[0]
    assert recipe.index("share_packages.py") < recipe.index("pip install -q -e")
