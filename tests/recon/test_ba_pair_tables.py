"""Bundle adjustment's observation-pair tables in bounded memory (issue 25): pairs made for
groups of points and kept as int32 chunks, the Schur complement's pair term summed over
slices of chunks; the same pairs and the same solution as one table and one GEMM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sceneforge.recon.ba.schur as schur
from sceneforge.recon.ba import BAOptions, bundle_adjust, make_synthetic_problem, perturb_problem
from sceneforge.recon.ba.structure import PAIR_CHUNK, pair_chunk_tables

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(a: np.ndarray, b: np.ndarray, cams: np.ndarray, m: int) -> set[tuple[int, int, int]]:
    out = set()
    for k in range(a.shape[0]):
        for x, y in zip(a[k], b[k]):
            if x != m:
                assert y != m
                out.add((int(x), int(y), int(cams[k, 0]) * 1000 + int(cams[k, 1])))
    return out


def test_pair_tables_hold_every_pair_once_whatever_the_batch():
    rng = np.random.default_rng(0)
    m, nc = 400, 9
    cam = np.sort(rng.integers(0, nc, m))
    pt = rng.integers(0, 37, m)
    real = np.setdiff1d(np.arange(m), [3, 50, 51])  # the rest are padding slots
    a, b, cams = pair_chunk_tables(cam, pt, real, nc)
    assert a.dtype == np.int32 and a.shape[1] == PAIR_CHUNK and cams.shape == (a.shape[0], 2)
    got = _pairs(a, b, cams, m)
    want = set()
    for p in np.unique(pt[real]):
        obs = real[pt[real] == p]
        for i in range(len(obs)):
            for j in range(i + 1, len(obs)):
                x, y = obs[i], obs[j]
                if cam[x] > cam[y]:
                    x, y = y, x
                want.add((int(x), int(y), int(cam[x]) * 1000 + int(cam[y])))
    assert got == want
    assert sum(int((row != m).sum()) for row in a) == len(want)  # each pair once
    assert all(cam[x] == c // 1000 and cam[y] == c % 1000 for x, y, c in got)
    for batch in (1, 7, 100):  # groups of points: the same pairs, another chunking
        ab, bb, cb = pair_chunk_tables(cam, pt, real, nc, batch=batch)
        assert _pairs(ab, bb, cb, m) == want
    # no pairs at all
    a0, b0, c0 = pair_chunk_tables(cam, np.arange(m), real, nc)
    assert a0.shape == (0, PAIR_CHUNK) and c0.shape == (0, 2)


def test_solution_does_not_depend_on_the_gemm_slices(monkeypatch):
    truth = make_synthetic_problem("SIMPLE_RADIAL", 7, 60, noise_px=0.5, seed=2)
    start = perturb_problem(truth, 1e-2)
    opts = BAOptions(num_threads=1, gauge="fix_camera_and_scale", max_iterations=20)
    ref, summ = bundle_adjust(start, opts)
    monkeypatch.setattr(schur, "PAIR_CHUNKS_PER_GEMM", 3)
    sliced, summ_s = bundle_adjust(start, opts)
    assert summ.iterations == summ_s.iterations
    torch.testing.assert_close(sliced.points, ref.points, rtol=0, atol=1e-10)
    torch.testing.assert_close(sliced.translation, ref.translation, rtol=0, atol=1e-10)
    assert abs(summ_s.final_cost - summ.final_cost) <= 1e-9 * summ.final_cost
