"""Hard-link installed distributions from one virtual environment into another.

`make venv-ns` builds a second venv for nerfstudio (numpy<2) beside `.venv`. Both need the same
torch / torchvision / triton / nvidia-* wheels (about 5.4 GB), and CI machines have run out of
disk installing them twice. Run with the *source* venv's Python::

    .venv/bin/python .ci/share_packages.py .venv-ns torch torchvision triton 'nvidia-*'

Every file a matching distribution's RECORD lists inside site-packages (its dist-info included)
is hard-linked into the target venv's site-packages, so pip there sees the distribution as
installed and keeps it when it satisfies the requirements. Files outside site-packages (console
scripts, whose shebangs name the source venv) are left out. Hard links cost no disk; pip replacing
or removing a shared file in one venv unlinks it there and leaves the other venv untouched. When
the two folders are on different file systems the files are copied instead.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path


def _target_site_packages(venv: Path) -> Path:
    """site-packages of ``venv`` for this Python version (both venvs use the same interpreter)."""
    rel = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    path = venv / rel
    if not path.is_dir():
        raise SystemExit(f"share_packages: {path} is not a directory (create the venv first)")
    return path


def _matching(patterns: list[str]) -> list[metadata.Distribution]:
    found = []
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if any(fnmatch.fnmatch(name, p.lower()) for p in patterns):
            found.append(dist)
    return found


def share(dist: metadata.Distribution, target: Path) -> tuple[int, int]:
    """Link (or copy) one distribution's site-packages files into ``target``; (files, copied)."""
    root = Path(dist.locate_file("")).resolve()
    files = dist.files or []
    n = copied = 0
    for rel in files:
        if rel.parts and rel.parts[0] == "..":
            continue  # console scripts and data outside site-packages
        src = root / rel
        if not src.is_file():
            continue
        dst = target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
            copied += 1
        n += 1
    return n, copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target_venv", type=Path, help="venv to link the distributions into")
    parser.add_argument("patterns", nargs="+", help="distribution names, fnmatch patterns")
    args = parser.parse_args(argv)
    target = _target_site_packages(args.target_venv)
    dists = _matching(args.patterns)
    if not dists:
        print(f"share_packages: nothing installed matches {args.patterns}", file=sys.stderr)
        return 0
    total = total_copied = 0
    for dist in dists:
        n, copied = share(dist, target)
        total += n
        total_copied += copied
    print(
        f"share_packages: {len(dists)} distributions, {total} files into {target}"
        + (f" ({total_copied} copied, not linked)" if total_copied else " (hard links)")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
