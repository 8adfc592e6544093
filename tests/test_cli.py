"""The ``sceneforge`` CLI: registry, errors, and the verbs that run in seconds."""

from __future__ import annotations

import re

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


def test_version_from_package_metadata(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sceneforge {version('sceneforge')}"
    assert main(["-V"]) == 0
    assert version("sceneforge") in capsys.readouterr().out


def _help(name: str, flag: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([name, flag])
    assert e.value.code == 0
    return capsys.readouterr().out


#: Most lines a verb's ``--help`` may print (one screen-ish; ``--help-all`` has the rest).
HELP_LINE_BUDGET = 150
FLAG = re.compile(r"(?<![\w.-])--[a-z0-9][a-z0-9._-]*[a-z0-9*]")


@pytest.mark.parametrize("columns", ["80", "100"])
def test_verb_help_fits_a_screen(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    for name in COMMANDS:
        text = _help(name, "--help", capsys)
        lines = text.splitlines()
        assert len(lines) < HELP_LINE_BUDGET, (name, len(lines))
        assert max(len(ln) for ln in lines) <= int(columns), name
    run = _help("run", "--help", capsys)
    for flag in ("--mask-box", "--device", "--train.max-steps", "--render.num-frames"):
        assert flag in run
    assert "--train.trainer.*" in run and "--reconstruct.sfm.*" in run  # deep sections folded
    assert "--help-all" in run


def test_short_help_flags_are_the_parsers_flags(capsys, monkeypatch):
    """Every flag the short help prints is one tyro parses, and every tyro flag is either
    printed or inside a folded ``--SECTION.*``."""
    monkeypatch.setenv("COLUMNS", "100")
    for name in COMMANDS:
        short = set(FLAG.findall(_help(name, "--help", capsys)))
        full_text = _help(name, "--help-all", capsys)
        assert len(full_text.splitlines()) > 5, name
        full = set(FLAG.findall(full_text))
        folded = [f[:-1] for f in short if f.endswith(".*")]
        flags = {f for f in short if not f.endswith("*")} - {"--help-all"}
        assert flags <= full, (name, sorted(flags - full))
        # tyro's option lines (the box content starts with the flag); flags named inside
        # docstrings (e.g. ``--inpainter sd``) are not options
        bodies = [ln.strip("│ ") for ln in full_text.splitlines()]
        listed = {f for b in bodies if b.startswith("--") for f in FLAG.findall(b)}
        missing = {f for f in listed - flags if not f.startswith(tuple(folded))}
        assert name != "run" or len(listed) > 200  # the parse of tyro's help found its flags
        assert not missing, (name, sorted(missing))
    assert len(_help("run", "--help-all", capsys).splitlines()) > 3 * HELP_LINE_BUDGET


def test_short_help_takes_the_first_sentence_of_a_docstring():
    from sceneforge.cli_help import first_sentence

    assert first_sentence("Scene model (e.g. ``nerf``). Notes.") == "Scene model (e.g. nerf)."
    assert first_sentence("A ratio, i.e. 0.5 here.\nMore notes.") == "A ratio, i.e. 0.5 here."
    assert first_sentence("No full stop") == "No full stop" and first_sentence(None) == ""
