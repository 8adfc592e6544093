"""The command line reports bad input and machine faults as one clear line (exit code 1)."""

from __future__ import annotations

import errno

import pytest

from sceneforge.cli import main


def test_bad_input_is_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sceneforge info: error: ") and "does not exist" in err
    assert "Traceback" not in err and str(tmp_path / "nope") in err
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("no photos here")
    assert main(["reconstruct", str(tmp_path / "imgs"), str(tmp_path / "out")]) == 1
    assert "need at least 2 images" in capsys.readouterr().err


def test_disk_full_is_reported_and_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import sceneforge.commands as commands

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(commands.Info, "run", full)
    assert main(["info", str(tmp_path)]) == 1
    assert "No space left on device" in capsys.readouterr().err

    def bug(self):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(commands.Info, "run", bug)
    with pytest.raises(ZeroDivisionError):
        main(["info", str(tmp_path)])
    monkeypatch.setattr(commands.Info, "run", full)
    monkeypatch.setenv("SCENEFORGE_DEBUG", "1")
    with pytest.raises(OSError):
        main(["info", str(tmp_path)])


def test_a_missing_optional_package_is_one_line(tmp_path, monkeypatch, capsys):
    """``export --what tsdf`` without open3d (and every lazy import of an extra): the message
    that names the package, not a traceback; a broken import inside sceneforge stays a bug."""
    import sys

    import sceneforge.commands as commands
    from sceneforge.core.meshes import load_mesh

    mesh = tmp_path / "m.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    monkeypatch.setitem(sys.modules, "trimesh", None)  # as if not installed
    monkeypatch.setattr(commands.Info, "run", lambda self: load_mesh(mesh))
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "needs trimesh: pip install trimesh" in err and "Traceback" not in err

    def broken_import(self):
        import sceneforge_no_such_package  # noqa: F401

    monkeypatch.setattr(commands.Info, "run", broken_import)
    with pytest.raises(ModuleNotFoundError):
        main(["info", str(tmp_path)])
