"""The README's quickstart stays true: every command and flag it shows exists, and the paths it
says results land in are the run's own file names (``sceneforge/core/run_files.py``).

The photo command runs end to end in ``tests/test_fern_run.py`` (with ``../shared``); a video
input in ``tests/test_video_input.py`` (up to the reconstruction); the report, video and log of
a whole run in ``tests/test_pipeline.py``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sceneforge.cli import COMMANDS, main
from sceneforge.core import run_files

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    m = re.search(r"^## Quickstart\n(.*?)^## ", text, flags=re.S | re.M)
    assert m, "README has no '## Quickstart' section"
    return m.group(1)


def _commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", _quickstart(), flags=re.S)
    assert block, "the quickstart has no bash block"
    lines = [ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines()]
    return [shlex.split(ln) for ln in lines if ln]


def test_readme_opens_with_make_demo_and_make_test():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    cmds = [ln.split("#", 1)[0].strip() for ln in first_block.splitlines()]
    assert cmds == ["make demo", "make test"]
    assert text.index("## Quickstart") < text.index("## Status")


def test_quickstart_commands_and_flags_exist(capsys):
    cmds = _commands()
    verbs = {c[1] for c in cmds}
    assert {"run", "view", "eval"} <= verbs
    helps: dict[str, str] = {}
    for c in cmds:
        assert c[0] == "sceneforge", c
        verb = c[1]
        assert verb in COMMANDS, c
        if verb not in helps:
            with pytest.raises(SystemExit) as e:
                main([verb, "--help-all"])
            assert e.value.code == 0
            helps[verb] = capsys.readouterr().out
        for tok in c[2:]:
            if tok.startswith("--"):
                assert re.search(rf"(^|[\s,\[]){re.escape(tok)}\b", helps[verb]), (tok, c)
    # a photo folder and a video file are both shown
    runs = [c for c in cmds if c[1] == "run"]
    assert any(c[2].endswith(".mp4") for c in runs) and any(c[2].endswith("/") for c in runs)
    devices = [c[c.index("--device") + 1] for c in runs if "--device" in c]
    assert devices == ["cuda"]


def test_quickstart_paths_are_the_runs_file_names():
    listed = set(re.findall(r"^\| `OUT/([^`]+)`", _quickstart(), flags=re.M))
    want = {
        run_files.REPORT_HTML,
        f"{run_files.RENDER_DIR}/{run_files.VIDEO}",
        run_files.LOG_FILE,
        run_files.PLAN,
        run_files.FIELD_DIR + "/",
        run_files.SFM_DIR + "/",
        run_files.IMAGES_DIR + "/",
        run_files.COMPLETE_DIR + "/",
    }
    assert listed == want
    text = _quickstart()
    assert f"`{run_files.SFM_MODEL_DIR.split('/')[0]}/`" in text  # the COLMAP model
    for name in (run_files.TRANSFORMS, run_files.SFM_SUMMARY, run_files.RECONSTRUCTION_PNG):
        assert f"`{name}`" in text, name
    for name in (run_files.CHECKPOINT, run_files.EVAL, f"{run_files.EVAL_DIR}/"):
        assert f"`{name}`" in text, name
    assert f"`OUT/{run_files.RENDER_DIR}/{run_files.FRAMES_DIR}/`" in text
