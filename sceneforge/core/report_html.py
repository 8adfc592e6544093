"""Small pieces shared by the HTML reports (``sceneforge run``'s ``report.html`` and the human
capture's): a two-column table with escaped cells and a run record read with a clear error."""

from __future__ import annotations

import html
import json
from pathlib import Path


def read_run_json(path: Path) -> dict:
    """A run's JSON record; an unreadable one is an error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); delete it to redo the run") from e


def html_table(rows: list[tuple[str, object]]) -> str:
    """``<table>`` of ``(name, value)`` rows, both escaped."""
    cells = "".join(
        f"<tr><th align=left>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table border=1 cellpadding=4>{cells}</table>"


__all__ = ["html_table", "read_run_json"]
