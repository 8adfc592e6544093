"""Atomic writes of files and folders: readers see the previous content or the new, never a part.

A file is written to a temporary file in the target's folder and moved into place with
``os.replace``; a folder is built in a temporary sibling folder and swapped in (the previous
folder is moved aside until the new one is in place, and put back if that fails). On any
failure the temporary file or folder is removed, the previous target is left as it was, and an
OSError is re-raised naming the target (its ``errno`` kept). Written files get the permissions
a plain ``open()`` would give them (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_MODES = ("wb", "w", "wt")


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _naming(e: OSError, target: Path) -> OSError:
    """``e`` as an OSError whose message names ``target`` (same errno)."""
    if e.errno is None:
        return OSError(f"{target}: {e}")
    return OSError(e.errno, e.strerror or str(e), str(target))


@contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", fsync: bool = False
) -> Iterator[IO[Any]]:
    """Yield a file object (``mode`` ``"wb"``, or ``"w"`` for UTF-8 text) that replaces
    ``path`` when the ``with`` block ends without an exception.

    ``fsync`` flushes the data to the disk before the rename. On failure the temporary file is
    removed and ``path`` keeps its previous content; an OSError from the writer or the rename
    is re-raised naming ``path`` (an OSError naming another file is re-raised unchanged).
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_open: mode must be one of {_MODES}, got {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from e
    try:
        text = {} if "b" in mode else {"encoding": "utf-8"}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is not None and os.fspath(e.filename) not in (tmp, str(path)):
            raise
        raise _naming(e, path) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def atomic_write_json(
    path: str | os.PathLike, obj: Any, indent: int | None = 2, default: Any = None
) -> Path:
    """Write ``json.dumps(obj, indent=indent, default=default)`` to ``path`` atomically
    (serialised first: an unserialisable ``obj`` leaves no file behind); returns ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default))


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Delete the temporary files (``.<name>.*.tmp``) that :func:`atomic_open` of ``path``
    left behind in a process killed mid-write; returns how many were removed."""
    path = Path(path)
    n = 0
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            n += 1
    return n


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path`` that replaces ``path`` on success.

    The temporary folder (``.<name>.tmp-*``) is removed when the ``with`` block raises. An
    existing ``path`` (file or folder) is moved aside (``.<name>.old-*``) until the new folder
    is in place, put back if that rename fails, and deleted afterwards.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    except OSError as e:
        raise _naming(e, path) from e
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous version back
                raise
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _naming(e, path) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = [
    "atomic_dir",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "remove_stale_temps",
    "versioned_name",
    "write_bytes_versioned",
    "write_json_versioned",
]


def versioned_name(path: Path, n: int) -> Path:
    """``eval.json`` -> ``eval.json`` (n = 1), ``eval.v002.json`` (n = 2), ..."""
    return path if n == 1 else path.with_name(f"{path.stem}.v{n:03d}{path.suffix}")


def write_json_versioned(path: str | Path, obj: dict) -> Path:
    """Write ``obj`` as JSON to ``path``, or to the first free ``STEM.vNNN.SUFFIX`` when ``path``
    exists; returns the path written (see :func:`write_bytes_versioned`)."""
    return write_bytes_versioned(path, json.dumps(obj, indent=2, default=str).encode("utf-8"))


def write_bytes_versioned(
    path: str | Path, data: bytes, name: Callable[[Path, int], Path] = versioned_name
) -> Path:
    """Write ``data`` to the first free name ``name(path, n)``, n = 1, 2, ... (default:
    ``path``, then ``STEM.v002.SUFFIX``, ...); returns the path written. The data is written to
    a temporary file first and linked to a name that must not exist (``os.link``), so no file
    is ever overwritten, even by a concurrent writer, and a failed write leaves nothing
    behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        for n in range(1, 10000):
            target = name(path, n)
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
        raise OSError(f"{path}: 9999 versions exist already; move some away")
    except OSError as e:
        if isinstance(e, FileExistsError) or e.filename is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        Path(tmp).unlink(missing_ok=True)
