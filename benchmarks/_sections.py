"""One writer for the sections of ``benchmarks/RESULTS.md`` that benchmark scripts own."""

from __future__ import annotations

import os
from pathlib import Path

from sceneforge.core.atomic import atomic_write_text


def _heading_levels(lines: list[str]) -> list[int]:
    """Markdown heading level of each line (0 for text and for lines inside code fences)."""
    levels, fenced = [], False
    for ln in lines:
        if ln.startswith("```"):
            fenced = not fenced
        hashes = len(ln) - len(ln.lstrip("#"))
        levels.append(hashes if hashes and not fenced and ln[hashes:].startswith(" ") else 0)
    return levels


def replace_section(
    path: str | os.PathLike,
    heading: str,
    body: str,
    parent: str | None = None,
    first: bool = False,
) -> None:
    """Write ``heading`` + ``body`` in place of the section starting at the line ``heading``
    (which runs to the next heading of the same or a higher level), atomically.

    A missing section goes inside ``parent`` (created at the end if missing too): after the
    parent's last sub-section, or with ``first`` right after its introduction; without a
    parent it is appended to the file.
    """
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    levels = _heading_levels(lines)
    level = _heading_levels([heading])[0]

    def end(start: int, lvl: int) -> int:
        """Index of the first heading of level <= ``lvl`` after line ``start``."""
        return next((k for k in range(start + 1, len(lines)) if 0 < levels[k] <= lvl), len(lines))

    if heading in lines:
        a = lines.index(heading)
        b = end(a, level)
    elif parent is not None and parent in lines:
        p = lines.index(parent)
        a = b = end(p, level if first else _heading_levels([parent])[0])
    else:
        if parent is not None:
            lines += ["", parent]
        a = b = len(lines)
    head = lines[:a]
    while head and not head[-1].strip():
        head.pop()
    section = [heading, "", *body.strip("\n").splitlines()]
    tail = lines[b:]
    text = "\n".join([*head, *([""] if head else []), *section, *([""] if tail else []), *tail])
    atomic_write_text(path, text.rstrip("\n") + "\n")
