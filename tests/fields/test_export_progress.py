"""Export progress: every stage is reported from 0 to its total, one call per unit (view
rendered, lattice chunk, view fused), through the API and the model's ``export``; the
``sceneforge export`` command shows it with an ETA, logs it to OUT_DIR/log.txt and prints its
result as a table (no Python dict repr)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from sceneforge.core.io import save_scene
from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.api import TrainConfig, load_trained, train
from sceneforge.fields.export import PROGRESS_UNITS, ExportConfig, export, export_trainer
from sceneforge.fields.trainer import TrainerConfig

pytest.importorskip("skimage")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 32x32 turntable (6 views, view 0 held out) trained for 20 steps, saved on disk."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export_progress")
    scene = turntable_scene(num_views=6, size=32)
    scene_dir = save_scene(scene, root / "scene", "colmap")
    run_dir = root / "run"
    trainer = TrainerConfig(
        batch_rays=512,
        scene_box="bounded",
        use_masks=False,
        progress=False,
        tensorboard=False,
        num_threads=1,
    )
    cfg = TrainConfig(max_steps=20, trainer=trainer, save_eval_images=False, device="cpu")
    train(scene_dir, run_dir, cfg)
    torch.set_num_threads(old)
    return scene, run_dir


class Recorder:
    """A progress callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))

    def stages(self) -> dict[str, int]:
        """Stage -> total, in order; checks each stage is one unbroken run of calls counting
        0, 1, ..., total with a fixed total."""
        out: dict[str, int] = {}
        k = 0
        while k < len(self.calls):
            stage, done, total = self.calls[k]
            assert stage not in out, f"{stage} reported twice: {self.calls}"
            assert stage in PROGRESS_UNITS, stage
            run = self.calls[k : k + total + 1]
            assert run == [(stage, d, total) for d in range(total + 1)], self.calls
            out[stage] = total
            k += total + 1
        return out


def num_train_views(run_dir) -> int:
    return json.loads((run_dir / "eval.json").read_text())["num_train_images"]


def test_point_cloud_and_depth_count_every_view(run, tmp_path):
    scene, run_dir = run
    rec = Recorder()
    cfg = ExportConfig(what="pointcloud", min_accumulation=0.0)
    res = export(run_dir, tmp_path, cfg, scene=scene, progress=rec)
    n = num_train_views(run_dir)
    assert n == 5 and res["num_points"] > 0
    assert rec.stages() == {"pointcloud": n}

    rec = Recorder()
    cfg = ExportConfig(what="depth", views="all", min_accumulation=0.0)
    res = export(run_dir, tmp_path, cfg, scene=scene, progress=rec)
    assert rec.stages() == {"depth": len(scene)} and res["num_depth_maps"] == len(scene)


def test_mesh_counts_lattice_chunks_level_views_and_colour_chunks(run, tmp_path):
    scene, run_dir = run
    rec = Recorder()
    cfg = ExportConfig(
        what="mesh", mesh_resolution=16, chunk_points=1000, level_views=3, min_accumulation=0.3
    )
    res = export(run_dir, tmp_path, cfg, scene=scene, progress=rec)
    assert res["mesh_vertices"] > 0
    # 16^3 = 4096 lattice points in chunks of 1000; every 2nd of 5 training views; vertices
    assert rec.stages() == {
        "mesh density": 5,
        "mesh level": 3,
        "mesh colours": math.ceil(res["mesh_vertices"] / 1000),
    }
    # a given iso level renders no view; the lattice is read before the level is checked
    rec = Recorder()
    level = ExportConfig(what="mesh", mesh_resolution=16, chunk_points=4096, mesh_level=1e9)
    with pytest.raises(ValueError, match="never crosses"):
        export(run_dir, tmp_path, level, scene=scene, progress=rec)
    assert rec.calls == [("mesh density", 0, 1), ("mesh density", 1, 1)]


def test_the_models_export_reports_to_the_callback_of_export_trainer(run, tmp_path):
    scene, run_dir = run
    trainer = load_trained(run_dir, scene)
    rec = Recorder()
    cfg = ExportConfig(what="depth", min_accumulation=0.0)
    export_trainer(trainer, tmp_path, cfg, progress=rec)
    assert rec.stages() == {"depth": num_train_views(run_dir)}
    before = list(rec.calls)
    export_trainer(trainer, tmp_path / "again", cfg)  # no callback now: none called
    assert rec.calls == before


def test_gaussians_report_too_and_all_skips_tsdf_without_open3d(run, tmp_path, monkeypatch):
    from sceneforge.fields.trainer import Trainer

    monkeypatch.setitem(sys.modules, "open3d", None)  # "import open3d" fails
    scene, _ = run
    cfg = TrainerConfig(
        model="gaussians", scene_box="bounded", progress=False, tensorboard=False, device="cpu"
    )
    trainer = Trainer(scene, cfg)  # initialised from the scene's points, untrained
    rec = Recorder()
    res = export_trainer(trainer, tmp_path, ExportConfig(what="all"), progress=rec)
    n = len(trainer.train_indices)
    assert rec.stages() == {"pointcloud": n, "depth": n}
    assert res["skipped"].startswith("tsdf (needs open3d") and "tsdf_mesh" not in res
    assert res["num_gaussians"] == scene.points.shape[0] and res["num_depth_maps"] == n
    with pytest.raises(ImportError, match="TSDF export needs open3d"):  # asked for: an error
        export_trainer(trainer, tmp_path, ExportConfig(what="tsdf"))


def test_tsdf_counts_rendered_and_fused_views(run, tmp_path):
    pytest.importorskip("open3d")
    scene, run_dir = run
    rec = Recorder()
    cfg = ExportConfig(what="tsdf", min_accumulation=0.0, tsdf_weight_threshold=0.0)
    export(run_dir, tmp_path, cfg, scene=scene, progress=rec)
    n = num_train_views(run_dir)
    assert rec.stages() == {"tsdf render": n, "tsdf fuse": n}


@pytest.mark.parametrize("what", ["pointcloud", "mesh", "all"])
def test_cli_export_shows_and_logs_progress_and_prints_a_table(
    run, tmp_path, capsys, monkeypatch, what
):
    from sceneforge.cli import main

    monkeypatch.setitem(sys.modules, "open3d", None)  # "all": the TSDF mesh is skipped
    _, run_dir = run
    out_dir = tmp_path / "out"
    flags = ["--what", what, "--min-accumulation", "0.3", "--mesh-resolution", "16"]
    flags += ["--chunk-points", "1000", "--level-views", "3"]
    assert main(["export", str(run_dir), str(out_dir), *flags]) == 0
    out = capsys.readouterr().out  # not a terminal: progress lines instead of a bar
    # stage -> (unit, total): 5 training views; 16^3 lattice points in chunks of 1000
    views = ("view", num_train_views(run_dir))
    stages = {"pointcloud": views}
    if what == "mesh":
        stages = {"mesh density": ("chunk", 5), "mesh level": ("view", 3)}
    elif what == "all":
        stages = {"pointcloud": views, "mesh density": ("chunk", 5), "depth": views}
    for stage, (unit, total) in stages.items():
        assert f"[export {stage}] {unit} 0/{total} (0%)" in out, out
        assert f"[export {stage}] {unit} {total}/{total} (100%)" in out, out
    first = next(iter(stages))
    assert "ETA" in out
    log = (out_dir / "log.txt").read_text()
    assert f"[export {first}] {stages[first][0]} 0/" in log and "ETA" in log
    # the result: aligned "name  value" rows, never a dict or list repr
    assert "{'" not in out and "['" not in out and "[{" not in out
    info = json.loads((out_dir / "export.json").read_text())
    keys = {"pointcloud": ["num_points"], "mesh": ["mesh_faces"]}
    for key in keys.get(what, ["num_points", "mesh_faces", "num_depth_maps"]):
        rows = [line.split() for line in out.splitlines() if line.startswith(key + " ")]
        assert rows == [[key, str(info[key])]], out
    if what == "all":
        rows = [ln.split(None, 1) for ln in out.splitlines() if ln.startswith("skipped ")]
        assert rows == [["skipped", "tsdf (needs open3d: pip install 'sceneforge[open3d]')"]]


def test_stage_progress_on_a_terminal_draws_bars_and_still_logs(tmp_path):
    from sceneforge.commands import StageProgress
    from sceneforge.core.progress import RunLog

    shown: list[str] = []
    log = RunLog(tmp_path / "log.txt", console=shown.append, interval_s=3600, terminal=True)
    with StageProgress(lambda: log, "export", {"a": "view"}) as progress:
        for stage, total in (("a", 3), ("b", 2)):
            for done in range(total + 1):
                progress(stage, done, total)
                assert progress.task.name == f"export {stage}" and progress.task.done == done
    assert shown == [] and progress.task is None  # a bar instead of lines; the last one ended
    lines = [ln.split(" ", 2)[2] for ln in (tmp_path / "log.txt").read_text().splitlines()]
    # the first unit (forced) and the last of each stage; the rest within the 1 h interval
    assert [ln.split("  ")[0] for ln in lines] == [
        "[export a] view 0/3 (0%)",
        "[export a] view 3/3 (100%)",
        "[export b] step 0/2 (0%)",
        "[export b] step 2/2 (100%)",
    ]


def test_info_prints_image_sizes_not_a_list_of_tuples(run, capsys):
    from sceneforge.cli import main

    _, run_dir = run
    assert main(["info", str(run_dir.parent / "scene")]) == 0
    out = capsys.readouterr().out
    assert "sizes: 32x32\n" in out and "[(" not in out and "{'" not in out


def test_cli_export_of_a_missing_run_is_an_error_that_leaves_no_output(tmp_path, capsys):
    from sceneforge.cli import main

    out_dir = tmp_path / "out"
    assert main(["export", str(tmp_path / "no_run"), str(out_dir)]) == 1
    assert "sceneforge export: error:" in capsys.readouterr().err
    assert not out_dir.exists()
