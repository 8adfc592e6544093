"""The ``sceneforge`` CLI: registry, errors, and the verbs that run in seconds."""

from __future__ import annotations

import pytest

from sceneforge.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    assert main([]) == 2


def test_unknown_command(capsys):
    assert main(["recnostruct"]) == 2
    assert "unknown command 'recnostruct'" in capsys.readouterr().err


def test_every_command_builds_its_parser(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        assert "usage: sceneforge " + name in capsys.readouterr().out


def test_bundle_adjust_command(shared_data, tmp_path, capsys):
    src = shared_data / "bal" / "gtsam_dubrovnik-3-7-pre.txt"
    out, plot = tmp_path / "solved.txt", tmp_path / "cost.png"
    assert main(["bundle-adjust", str(src), "--out", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    final = float(text.split("final cost (BAL formula):")[1].split()[0])
    assert final < 1e-6
    assert out.stat().st_size > 0 and plot.stat().st_size > 1000
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        main(["bundle-adjust", str(out), "--out", str(out)])


def test_info_command(shared_data, capsys):
    assert main(["info", str(shared_data / "scenes" / "blowtorch")]) == 0
    out = capsys.readouterr().out
    assert "images: 67" in out and "masks: yes" in out
