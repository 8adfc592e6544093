"""A pytest plugin (``-p skip_summary`` with ``tests/`` on the path, as ``make test`` runs it):
after the run, one line counting the skipped tests by what was missing.

``make test`` also passes ``-rs``, so pytest lists every skipped test with its reason above
this line; the plugin only groups those reasons (it never changes which tests skip).
"""

from __future__ import annotations

import re

import pytest

#: (label, pattern on the skip reason), first match wins; anything else is "other".
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("../shared data absent", re.compile(r"shared data|not available", re.I)),
    ("Chromium absent", re.compile(r"chromium|chromedriver", re.I)),
    ("CUDA absent", re.compile(r"\bcuda\b|\bgpu\b", re.I)),
    (
        "optional packages absent",
        re.compile(r"could not import|not installed|no module named", re.I),
    ),
)


def skip_reason(report) -> str:
    """The reason pytest recorded for a skipped test report."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def categorize(reasons: list[str]) -> dict[str, int]:
    """Counts per category (in :data:`CATEGORIES` order, then ``other``), zeros left out."""
    counts = {label: 0 for label, _ in CATEGORIES}
    counts["other"] = 0
    for r in reasons:
        label = next((lab for lab, pat in CATEGORIES if pat.search(r)), "other")
        counts[label] += 1
    return {k: v for k, v in counts.items() if v}


def summary_line(reasons: list[str]) -> str:
    """``skipped N: a ../shared data absent, b CUDA absent, ...`` (or ``skipped 0``)."""
    counts = categorize(reasons)
    if not counts:
        return "skipped 0"
    return f"skipped {len(reasons)}: " + ", ".join(f"{n} {k}" for k, n in counts.items())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # old-style wrapper: pytest >= 7
def pytest_terminal_summary(terminalreporter):
    """After pytest's short test summary (the ``-rs`` list), before its final counts."""
    yield
    reports = [r for r in terminalreporter.stats.get("skipped", []) if r.skipped]
    terminalreporter.write_line(summary_line([skip_reason(r) for r in reports]))
