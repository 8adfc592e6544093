"""Progress of long stages: a log file in the output folder, periodic lines, a bar.

:class:`RunLog` is the ``log`` callable that :func:`sceneforge.pipeline.run` already passes
around, extended: every message also goes to a log file (``OUT_DIR/log.txt``, appended, with a
UTC time stamp), and :meth:`RunLog.task` reports a stage's progress (step, loss, ETA) as
periodic lines in that file whether or not stdout is a terminal. When stdout is not a terminal
(CI, ``nohup``, a pipe) the same lines go to the console too, since a live bar shows nothing
there; on a terminal a rich bar is shown instead, unless the stage draws its own (the
trainer's ``--train.trainer.progress``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def format_seconds(s: float) -> str:
    """``75.2`` -> ``1m15s``; ``3725`` -> ``1h02m05s``; non-finite -> ``?``."""
    if not math.isfinite(s) or s < 0:
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def stdout_is_terminal() -> bool:
    """Whether stdout is an interactive terminal."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


class Task:
    """One stage's progress: :meth:`update` with the units done (and what to show)."""

    def __init__(
        self,
        log: RunLog,
        name: str,
        total: int,
        start: int,
        unit: str,
        echo: bool,
        bar=None,
    ) -> None:
        self.log, self.name, self.unit = log, name, unit
        self.echo, self._bar = echo, bar
        self._total = int(total)
        self.start = self.done = int(start)
        self.t0 = time.perf_counter()
        self._last_line = -math.inf

    @property
    def total(self) -> int:
        """Units in all (settable: a stage may learn it once started)."""
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = int(value)
        if self._bar is not None:
            self._bar[0].update(self._bar[1], total=self._total)

    def rebase(self, start: int) -> None:
        """Count from ``start`` units done now (a resumed stage): the ETA uses later units only."""
        self.start = self.done = int(start)
        self.t0 = time.perf_counter()

    def eta_s(self) -> float:
        """Seconds left at the rate of this call so far (``nan`` before the first unit)."""
        n = self.done - self.start
        if n <= 0:
            return math.nan
        return (time.perf_counter() - self.t0) / n * max(self.total - self.done, 0)

    def line(self, info: str = "") -> str:
        pct = 100.0 * self.done / max(self.total, 1)
        elapsed = format_seconds(time.perf_counter() - self.t0)
        text = f"[{self.name}] {self.unit} {self.done}/{self.total} ({pct:.0f}%)"
        text += f"  {info}" if info else ""
        return text + f"  elapsed {elapsed}  ETA {format_seconds(self.eta_s())}"

    def update(self, done: int, info: str = "", force: bool = False) -> None:
        """Record ``done`` units; a line is written when ``interval_s`` has passed since the last
        one, at the last unit, or with ``force``."""
        self.done = int(done)
        if self._bar is not None:
            self._bar[0].update(self._bar[1], completed=self.done, description=self.name)
        now = time.perf_counter()
        last = self.done >= self.total
        if force or last or now - self._last_line >= self.log.interval_s:
            self._last_line = now
            self.log.write(self.line(info), echo=self.echo)


class RunLog:
    """A ``log(message)`` callable that also appends each message to ``path`` (when given)."""

    def __init__(
        self,
        path: str | Path | None,
        console: Callable[[str], None] = print,
        interval_s: float = 10.0,
        terminal: bool | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.console = console
        self.interval_s = float(interval_s)
        """Seconds between two progress lines of a task (the last unit is always written)."""
        self.terminal = stdout_is_terminal() if terminal is None else terminal
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, message: str, echo: bool = True) -> None:
        """Append ``message`` to the log file; print it too when ``echo``."""
        if echo:
            self.console(message)
        if self.path is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                for text in message.splitlines() or [""]:
                    f.write(f"{stamp} {text}\n")
        except OSError as e:
            msg = f"cannot append to the log file ({e.strerror or e})"
            raise OSError(e.errno, msg, str(self.path)) from e

    def __call__(self, message: str) -> None:
        self.write(message)

    @contextmanager
    def task(
        self, name: str, total: int, start: int = 0, unit: str = "step", own_bar: bool = False
    ) -> Iterator[Task]:
        """Progress of ``total`` units named ``name``: lines to the log file (and to the console
        when stdout is not a terminal); a rich bar on a terminal unless ``own_bar`` (the stage
        draws one itself)."""
        bar = rich_bar(name, total, start) if self.terminal and not own_bar else None
        task = Task(self, name, total, start, unit, echo=not self.terminal, bar=bar)
        try:
            yield task
        finally:
            if bar is not None:
                bar[0].stop()


def rich_bar(description: str, total: int, completed: int = 0, eta: bool = True):
    """A started rich progress bar ``(Progress, task_id)`` showing ``completed/total`` and the
    time remaining (``eta``) or elapsed; the caller stops it (``bar[0].stop()``)."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn() if eta else TimeElapsedColumn(),
    )
    bar = (p, p.add_task(description, total=total, completed=completed))
    p.start()
    return bar


def task_progress(task: Task) -> Callable[[int, int, str], None]:
    """A ``progress(done, total, message)`` callback (completion) reporting to ``task``;
    ``done == 0`` restarts the ETA's clock (the work before the first unit, e.g. building fill
    masks, does not count towards the rate)."""

    def progress(done: int, total: int, message: str = "") -> None:
        task.total = total
        if done <= 0:
            task.rebase(0)
        task.update(done, message, force=done <= 0)

    return progress


def trainer_progress(task: Task) -> Callable:
    """A trainer hook (every step) reporting the step, the last logged loss / PSNR and the ETA
    to ``task`` (the first call sets the task's start: a resumed run starts mid-way); a
    time-budget run (``schedule time``) counts seconds of training, not steps."""
    started = False

    def hook(trainer) -> None:
        nonlocal started
        cfg = trainer.config
        timed = getattr(cfg, "schedule", "steps") == "time" and cfg.max_seconds is not None
        done = int(trainer.wall_s) if timed else trainer.step
        if not started:
            started = True
            task.total = int(math.ceil(cfg.max_seconds)) if timed else cfg.max_steps
            task.unit = "second" if timed else task.unit
            task.rebase(done)
        hist = trainer.history
        info = f"step {trainer.step}  " if timed else ""
        if hist:
            h = hist[-1]
            info += f"loss {h.get('loss', math.nan):.4f}  psnr {h.get('psnr', math.nan):.2f}"
        task.update(done, info)

    return hook


__all__ = [
    "RunLog",
    "Task",
    "format_seconds",
    "rich_bar",
    "stdout_is_terminal",
    "task_progress",
    "trainer_progress",
]
