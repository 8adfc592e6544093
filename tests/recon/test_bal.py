"""BAL reader/writer, scorer and malformed-file errors."""

from __future__ import annotations

import pytest
import torch

from sceneforge.recon.ba import evaluate_cost, make_synthetic_problem
from sceneforge.recon.bal import BALFormatError, bal_cost, read_bal, write_bal

GOOD = """2 2 3
0 0 1.5 -2.0
1 0 3.0 4.0
1 1 -1.0 0.5
0.1 0.2 0.3 1 2 -10 500 0.01 0.001
0 0 0 0 0 -10 400 0 0
0.5 0.5 0.5
-0.5 0.5 1.0
"""


def test_read_small(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text(GOOD)
    p = read_bal(f)
    assert (p.num_cameras, p.num_points, p.num_observations) == (2, 2, 3)
    assert p.model == "BAL"
    assert torch.equal(p.cam_idx, torch.tensor([0, 1, 1]))
    assert p.intrinsics[1, 0] == 400
    assert abs(bal_cost(p) - float(evaluate_cost(p))) < 1e-9 * max(1.0, bal_cost(p))


def test_write_read_roundtrip(tmp_path):
    p = make_synthetic_problem("BAL", 3, 10, noise_px=0.5)
    f = tmp_path / "out.txt"
    write_bal(p, f)
    q = read_bal(f)
    for a, b in [(p.rotation, q.rotation), (p.points, q.points), (p.observations, q.observations)]:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert abs(bal_cost(p) - bal_cost(q)) < 1e-9


def test_scorer_matches_reference_on_real_file(shared_data):
    p = read_bal(shared_data / "bal" / "gtsam_dubrovnik-3-7-pre.txt")
    assert abs(bal_cost(p) - float(evaluate_cost(p))) < 1e-9 * bal_cost(p)


@pytest.mark.parametrize(
    "text, pattern",
    [
        (GOOD.replace("2 2 3", "2 2 4", 1), r"p\.txt:\d+: header announces"),
        (GOOD.replace("1 0 3.0 4.0", "1 0 3.0 abc"), r"p\.txt:3: non-numeric value 'abc'"),
        (GOOD.replace("1 1 -1.0 0.5", "1 5 -1.0 0.5"), r"p\.txt:4: point index 5 out of range"),
        (GOOD.replace("1 1 -1.0 0.5", "2 1 -1.0 0.5"), r"p\.txt:4: camera index 2 out of range"),
        (
            GOOD.replace("1 0 3.0 4.0", "1.5 0 3.0 4.0"),
            r"p\.txt:3: observation indices must be integers",
        ),
        ("2 x 3\n", r"p\.txt:1: num_points must be an integer"),
        ("", r"p\.txt:1: header"),
        (GOOD.replace("0.5 0.5 0.5", "0.5 nan 0.5"), r"p\.txt:7: non-finite"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, pattern):
    f = tmp_path / "p.txt"
    f.write_text(text)
    with pytest.raises(BALFormatError, match=pattern):
        read_bal(f)


def test_missing_file(tmp_path):
    with pytest.raises(BALFormatError, match="cannot read"):
        read_bal(tmp_path / "nope.txt")
