"""sceneforge.core.atomic: atomic file and folder writes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sceneforge.core.atomic import (
    atomic_dir,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temps,
)


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _files(folder) -> dict:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_write_bytes_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "data.bin"
    assert atomic_write_bytes(path, b"one") == path
    assert path.read_bytes() == b"one"
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["data.bin"]


def test_written_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        p = atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o640  # as open() would make it, not mkstemp's 0600


def test_text_and_json_round_trip(tmp_path):
    text = "héllo\nwörld ≥ 1\n"
    atomic_write_text(tmp_path / "t.txt", text)
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == text
    obj = {"a": [1, 2.5, None], "b": {"c": "d"}, "e": True}
    atomic_write_json(tmp_path / "o.json", obj)
    assert json.loads((tmp_path / "o.json").read_text()) == obj
    assert (tmp_path / "o.json").read_text() == json.dumps(obj, indent=2)
    atomic_write_json(tmp_path / "p.json", {"path": tmp_path}, indent=None, default=str)
    assert json.loads((tmp_path / "p.json").read_text()) == {"path": str(tmp_path)}


def test_unserialisable_json_leaves_the_previous_file(tmp_path):
    path = atomic_write_json(tmp_path / "o.json", {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["o.json"]


def test_atomic_open_streams_a_torch_save(tmp_path):
    path = tmp_path / "state.pt"
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save({"w": torch.arange(5)}, f)
    assert torch.equal(torch.load(path)["w"], torch.arange(5))
    with atomic_open(tmp_path / "z.npz") as f:
        np.savez_compressed(f, a=np.arange(3))
    with np.load(tmp_path / "z.npz") as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt", "z.npz"]


@pytest.mark.parametrize("error", ["oserror", "other"])
def test_failing_writer_keeps_the_previous_file_and_no_temp(tmp_path, error):
    path = atomic_write_bytes(tmp_path / "checkpoint.pt", b"previous")
    expected = OSError if error == "oserror" else ValueError
    with pytest.raises(expected) as e:
        with atomic_open(path) as f:
            f.write(b"half of the new cont")
            if error == "oserror":
                _enospc()
            raise ValueError("a bug in the writer")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    if error == "oserror":
        assert e.value.errno == errno.ENOSPC and str(path) in str(e.value)
    else:
        assert str(e.value) == "a bug in the writer"  # not wrapped


def test_failing_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "eval.json", "{}")
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(OSError) as e:
        atomic_write_text(path, '{"psnr": 30}')
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_oserror_naming_another_file_is_not_renamed(tmp_path):
    missing = tmp_path / "source.bin"
    with pytest.raises(FileNotFoundError) as e:
        with atomic_open(tmp_path / "copy.bin") as f:
            f.write(missing.read_bytes())
    assert e.value.filename == str(missing)
    assert list(tmp_path.iterdir()) == []


def test_text_mode_and_bad_mode(tmp_path):
    with atomic_open(tmp_path / "r.txt", "w") as f:
        f.write("ok\n")
    assert (tmp_path / "r.txt").read_text() == "ok\n"
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "r.txt", "a"):
            pass
    assert (tmp_path / "r.txt").read_text() == "ok\n"


KILLED_WRITER = """
import os, sys
from sceneforge.core.atomic import atomic_open
with atomic_open(sys.argv[1]) as f:
    f.write(b"half")
    f.flush()
    os._exit(0)  # killed mid-write: no cleanup runs
"""


def test_remove_stale_temps_of_a_killed_writer(tmp_path):
    path = atomic_write_bytes(tmp_path / "checkpoint.pt", b"previous")
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], check=True, timeout=60)
    left = sorted(p.name for p in tmp_path.iterdir() if p != path)
    assert len(left) == 1 and left[0].startswith(".checkpoint.pt.") and left[0].endswith(".tmp")
    (tmp_path / "other.pt.x.tmp").write_bytes(b"")  # not a temp file of checkpoint.pt
    assert remove_stale_temps(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "other.pt.x.tmp"]
    assert path.read_bytes() == b"previous"


def test_dir_replaces_a_folder(tmp_path):
    target = tmp_path / "sparse" / "0"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".0.tmp-")
        (tmp / "cameras.txt").write_text("v1")
    assert _files(target) == {"cameras.txt": b"v1"}
    with atomic_dir(target) as tmp:
        (tmp / "points.txt").write_text("v2")
    assert _files(target) == {"points.txt": b"v2"}
    assert [p.name for p in target.parent.iterdir()] == ["0"]


def test_dir_failing_writer_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "v001"
    with atomic_dir(target) as tmp:
        (tmp / "manifest.json").write_text("{}")
    before = _files(target)
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "manifest.json").write_text('{"half": ')
            raise RuntimeError("writer failed")
    assert _files(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["v001"]


def test_dir_failing_swap_restores_the_previous_folder(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    real = os.replace

    def new_folder_rename_fails(src, dst):
        if ".tmp-" in str(src):
            _enospc()
        return real(src, dst)

    monkeypatch.setattr(os, "replace", new_folder_rename_fails)
    with pytest.raises(OSError) as e:
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new")
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert _files(target) == {"a.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp, no .old- folder
