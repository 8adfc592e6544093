"""``sceneforge materials RUN_DIR OUT``: a tiny trained run becomes a relightable GLB with its
fitted light and relit renders; the fit beats its starting guess; a second run writes new
versions; bad inputs give one clear error naming the path or the problem."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from sceneforge.cli import main
from sceneforge.core.io import save_scene
from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.api import TrainConfig, train
from sceneforge.fields.trainer import TrainerConfig

pytest.importorskip("skimage")
pytest.importorskip("trimesh")
pytestmark = pytest.mark.usefixtures("one_thread")

#: Tiny settings: 4 fit views and 1 held-out view at 32x32, a 24^3 lattice, 60 steps.
TINY = ["--views", "4", "--heldout", "1", "--resolution", "32", "--mesh-resolution", "24"]
TINY += ["--relight-views", "2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 32x32 turntable (6 views, one held out) trained for 40 steps (~5 s), on disk."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("materials")
    scene_dir = save_scene(turntable_scene(num_views=6, size=32), root / "scene", "colmap")
    trainer = TrainerConfig(
        batch_rays=512,
        scene_box="bounded",
        use_masks=False,
        progress=False,
        tensorboard=False,
        num_threads=1,
    )
    cfg = TrainConfig(max_steps=40, trainer=trainer, save_eval_images=False, device="cpu")
    train(scene_dir, root / "run", cfg)
    torch.set_num_threads(old)
    return root / "run"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_materials_end_to_end_and_versions(run_dir, tmp_path, capsys):
    from sceneforge.stylize.hyperdreamer.export import load_glb

    out = tmp_path / "asset"
    args = ["materials", str(run_dir), str(out), *TINY, "--max-faces", "1500", "--steps", "60"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fit_psnr" in printed and "materials.glb" in printed
    info = json.loads((out / "materials.json").read_text())
    assert info["steps"] == 60 and info["views"] == 4 and len(info["heldout_views"]) == 1
    # the face cap forced a coarser marching-cubes step
    assert 0 < info["faces"] <= 1500 and info["mesh_step"] >= 2
    # the fit beats its own start and the unlit vertex colours on the training views
    assert info["fit_psnr"] > info["initial_psnr"] + 1.0
    assert info["fit_psnr"] > info["vertex_color_psnr"]
    assert np.isfinite(info["heldout_psnr"])
    files = {k: out / v.rsplit("/", 1)[-1] for k, v in info["files"].items()}
    relit = {"relit_noon", "relit_sunset", "relit_studio"}
    assert set(files) == {"glb", "envmap", "envmap_png", "fit"} | relit
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0, path
    asset = load_glb(files["glb"])
    assert asset.faces.shape[0] == info["faces"]
    assert asset.base_color.shape[-1] == 3 and asset.metallic_roughness.shape[-1] == 4
    env = np.load(files["envmap"])
    assert env.shape == (8, 16, 3) and np.isfinite(env).all() and (env > 0).all()
    from PIL import Image

    assert Image.open(files["relit_noon"]).size == (2 * 32, 32)  # 2 views side by side
    assert Image.open(files["fit"]).size == (2 * 32, 2 * 32)  # photos over fitted renders
    before = {k: _digest(p) for k, p in files.items()}

    # a second run never overwrites: every file gets a v002 name
    assert main(["materials", str(run_dir), str(out), *TINY, "--max-faces", "1500"]) == 0
    assert (out / "materials.v002.json").is_file()
    second = json.loads((out / "materials.v002.json").read_text())
    for path in second["files"].values():
        assert ".v002." in path, path
    assert load_glb(second["files"]["glb"]).faces.shape[0] == second["faces"]
    assert {k: _digest(p) for k, p in files.items()} == before
    assert _digest(out / "materials.json") != _digest(out / "materials.v002.json")


def _error(args, capsys) -> str:
    assert main(args) == 1
    return capsys.readouterr().err


def test_errors_name_the_path_or_problem(run_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    err = _error(["materials", str(missing), str(tmp_path / "o1")], capsys)
    assert str(missing) in err and "no such run folder" in err

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    err = _error(["materials", str(empty), str(tmp_path / "o2")], capsys)
    assert str(empty) in err and "not a trained run" in err and "checkpoint.pt" in err

    err = _error(["materials", str(run_dir), str(run_dir)], capsys)
    assert "OUT is the run folder" in err and str(run_dir) in err

    out = tmp_path / "o3"
    err = _error(["materials", str(run_dir), str(out), *TINY, "--mesh-level", "1e9"], capsys)
    assert "empty mesh" in err and "1e+09" in err
    assert not out.exists()  # refused before anything was written

    err = _error(["materials", str(run_dir), str(out), *TINY, "--relight-maps", "moon"], capsys)
    assert "unknown environment map 'moon'" in err and "noon" in err
    err = _error(["materials", str(run_dir), str(out), "--views", "0"], capsys)
    assert "bad option: views = 0" in err
    err = _error(["materials", str(run_dir), str(out), "--init-specular", "0"], capsys)
    assert "init_specular" in err
    assert not out.exists()
