"""keep_freed_memory: the solver's freed temporaries are reused, not page-faulted in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# Four solves of one generated problem in a fresh process (glibc's default thresholds at the
# start); prints the minor page faults of each solve.
SCRIPT = """
import json, resource, sys, torch
from sceneforge.recon.ba import BAOptions, bundle_adjust, make_synthetic_problem, perturb_problem
torch.set_num_threads(1)
keep = sys.argv[1] == "keep"
p = perturb_problem(make_synthetic_problem("BAL", 16, 3000, noise_px=0.5, visibility=0.6))
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bundle_adjust(p, BAOptions(max_iterations=5, num_threads=1, keep_freed_memory=keep))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults(mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_solves_reuse_freed_memory():
    kept, default = _faults("keep"), _faults("default")
    # Later solves fault (almost) nothing in; with glibc's defaults they keep faulting.
    assert sum(kept[1:]) * 10 < sum(default[1:]), (kept, default)


def test_is_idempotent():
    from sceneforge.core.heap import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()
