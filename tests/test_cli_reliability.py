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
