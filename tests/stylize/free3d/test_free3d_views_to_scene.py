"""Free3D views -> transforms.json -> a field, end to end on CPU with ground-truth renders
standing in for the generated views."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sceneforge.core.io import load_scene
from sceneforge.core.scene import SceneDataError
from sceneforge.stylize.free3d.data import RenderSetConfig, render_view_sets
from sceneforge.stylize.free3d.poses import to_source_frame
from sceneforge.stylize.free3d.views_to_scene import (
    SOURCE_POSITION,
    ViewsFieldConfig,
    assemble_views,
    train_views_field,
    views_to_field,
    write_views,
)

NUM_GENERATED = 16


@pytest.fixture(scope="module")
def views():
    """Ground-truth renders of one object: view 0 is the source, the rest stand in for the
    generated views; cameras in the source frame."""
    cfg = RenderSetConfig(num_views=NUM_GENERATED + 1, size=32, elevation_deg=(0.0, 40.0))
    vs = render_view_sets(["procedural:4"], cfg)[0]
    cams = vs.cameras()
    cams = cams.with_poses(to_source_frame(cams.cam_from_world, 0, vs.center))
    return vs, cams


def _scene(views, with_alpha: bool = True):
    vs, cams = views
    return assemble_views(
        vs.images[0],
        cams[0],
        vs.images[1:],
        cams[list(range(1, NUM_GENERATED + 1))],
        vs.alpha[0] if with_alpha else None,
        vs.alpha[1:] if with_alpha else None,
    )


def test_assemble_write_and_read_back(views, tmp_path: Path):
    vs, cams = views
    scene = _scene(views)
    assert scene.image_names[SOURCE_POSITION] == "source.png"
    assert scene.image_names[0] == "view_000.png" and scene.image_names[2] == "view_001.png"
    out = write_views(scene, tmp_path / "scene")
    data = json.loads((out / "transforms.json").read_text())
    assert len(data["frames"]) == NUM_GENERATED + 1
    assert all(
        (out / f["file_path"]).is_file() and (out / f["mask_path"]).is_file()
        for f in data["frames"]
    )
    back = load_scene(out)
    order = [back.image_names.index(n) for n in scene.image_names]
    assert torch.allclose(
        back.cameras.cam_from_world[order], scene.cameras.cam_from_world, atol=1e-9
    )
    assert torch.allclose(back.cameras.K[order], scene.cameras.K)
    src = back.image_names.index("source.png")
    assert torch.allclose(back.load_image(src), vs.images[0].permute(1, 2, 0), atol=0.6 / 255)
    assert torch.equal(back.load_mask(src), vs.alpha[0, 0] > 0.5)
    v3 = back.image_names.index("view_003.png")
    assert torch.allclose(back.load_image(v3), vs.images[4].permute(1, 2, 0), atol=0.6 / 255)
    # the source camera is the one at azimuth 0 of the source frame, looking at the origin
    T = back.cameras.cam_from_world[src]
    assert float(T[1, 3]) == pytest.approx(0.0, abs=1e-9) and float(T[0, 3]) == pytest.approx(
        0.0, abs=1e-9
    )
    # never overwritten
    before = (out / "transforms.json").read_bytes()
    with pytest.raises(SceneDataError, match="exists and is not empty"):
        write_views(scene, out)
    assert (out / "transforms.json").read_bytes() == before


def test_views_without_alpha_are_matted_on_white(views):
    vs, _ = views
    scene = _scene(views, with_alpha=False)
    ious = []
    for i, name in enumerate(scene.image_names):
        k = 0 if name == "source.png" else int(name[5:8]) + 1
        m, gt = scene.masks[i], vs.alpha[k, 0] > 0.5
        ious.append(float((m & gt).sum() / (m | gt).sum()))
    assert min(ious) > 0.85, ious


def _white_psnr(scene_dir: Path, eval_names: list[str]) -> float:
    scene = load_scene(scene_dir)
    errs = []
    for n in eval_names:
        img = scene.load_image(scene.image_names.index(n))
        errs.append(float(((img - 1.0) ** 2).mean()))
    return -10 * math.log10(sum(errs) / len(errs))


def test_views_to_field_trains_and_beats_baselines(views, tmp_path: Path, one_thread):
    scene = _scene(views)
    cfg = ViewsFieldConfig(max_steps=40, batch_rays=1024, num_threads=1, save_eval_images=False)
    res = views_to_field(scene, tmp_path / "out", cfg)
    scene_dir, run_dir = Path(res["scene_dir"]), Path(res["run_dir"])
    assert (scene_dir / "transforms.json").is_file() and (run_dir / "checkpoint.pt").is_file()
    written = json.loads((run_dir / "eval.json").read_text())
    assert written["steps"] == 40 and written["psnr"] == pytest.approx(res["psnr"])
    # every 8th view is held out; the source (index 1) always trains
    assert res["num_eval_images"] == 3 and res["num_train_images"] == NUM_GENERATED + 1 - 3
    held_out = [scene.image_names[i] for i in (0, 8, 16)]
    assert "source.png" not in held_out
    white = _white_psnr(scene_dir, held_out)
    first = train_views_field(
        scene_dir,
        tmp_path / "step1",
        ViewsFieldConfig(max_steps=1, batch_rays=1024, num_threads=1, save_eval_images=False),
    )
    assert res["psnr"] > white + 3.0, (res["psnr"], white)
    assert res["psnr"] > first["psnr"] + 1.0, (res["psnr"], first["psnr"])
    with pytest.raises(FileExistsError, match="step1: run folder exists"):
        train_views_field(scene_dir, tmp_path / "step1", cfg)
    with pytest.raises(SceneDataError, match="exists and is not empty"):
        views_to_field(scene, tmp_path / "out", cfg)
