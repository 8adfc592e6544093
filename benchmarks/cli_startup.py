"""Start-up time of ``sceneforge --help`` (goal < 2 s), beside the cost it avoids.

The peer row is a bare ``import torch`` in a fresh interpreter: what every command would pay
at start-up if the CLI imported the engine eagerly. Prints a table and, with ``--json``,
one JSON object per row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time


def _time(cmd: list[str], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=str, default=None, help="write one JSON object per row")
    args = ap.parse_args()
    exe = shutil.which("sceneforge") or f"{sys.prefix}/bin/sceneforge"
    rows = [
        ("sceneforge --help", [exe, "--help"]),
        ("python -c 'import torch' (peer)", [sys.executable, "-c", "import torch"]),
    ]
    results = []
    for name, cmd in rows:
        med, best = _time(cmd, args.repeats)
        results.append({"command": name, "median_s": med, "min_s": best})
    ours = results[0]["median_s"]
    print(f"{'command':40s} {'median s':>9s} {'min s':>7s} {'ratio':>7s}")
    for r in results:
        print(
            f"{r['command']:40s} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['median_s'] / ours:7.2f}"
        )
    print(f"goal: sceneforge --help < 2 s -> {'met' if ours < 2.0 else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
