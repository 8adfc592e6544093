"""benchmarks/hyperdreamer.py --quick, procedural part (no shared data needed): the rows it
emits, their setup keys and that the measured values are the ones the benchmark claims."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "hyperdreamer.py"
pytestmark = pytest.mark.usefixtures("one_thread")


def _module():
    spec = importlib.util.spec_from_file_location("hyperdreamer_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_quick_procedural_rows(capsys):
    bench = _module()
    assert bench.main(["--quick", "--json", "--no-spider"]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    by = {r["metric"]: r for r in rows}
    assert set(by) >= {
        "relit_psnr_multiview",
        "relit_psnr_initial",
        "albedo_psnr",
        "export_roundtrip_psnr",
        "relit_psnr_singleview",
    }
    assert "prior_vs_noprior_psnr_gain" not in by
    assert "prior_vs_noprior_psnr_gain" in out.err  # says why it is not emitted
    for r in rows:
        assert isinstance(r["value"], float) and r["setup"] == "procedural"
    rel = by["relit_psnr_multiview"]
    assert (rel["geometry"], rel["views"], rel["resolution"]) == ("known", 6, 32)
    # the fit must relight better than its initial guess; the export must round-trip
    assert rel["value"] > by["relit_psnr_initial"]["value"] + 3.0  # measured 28.3 vs 21.0 dB
    assert by["export_roundtrip_psnr"]["value"] >= 35.0  # measured 72.4 dB
