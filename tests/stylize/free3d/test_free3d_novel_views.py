"""``novel_views``: one image + a tiny random-weight Free3D folder -> posed views
(transforms.json, masks, contact sheet, record) -> optionally a field; bad inputs fail with a
message naming the file / spec and leave no output folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sceneforge.core.diffusion import DiffusionModelError
from sceneforge.core.image_io import ImageReadError
from sceneforge.core.io import load_scene
from sceneforge.fields.api import scene_source
from sceneforge.stylize.free3d.foreground import ForegroundError
from sceneforge.stylize.free3d.novel_views import (
    NovelViewsConfig,
    NovelViewsError,
    novel_views,
    view_sets,
)
from sceneforge.stylize.free3d.pipeline import build_tiny_pipeline
from sceneforge.stylize.free3d.poses import TargetSpecError, source_camera, target_cameras
from sceneforge.stylize.free3d.sampler import SamplerConfig
from sceneforge.stylize.free3d.views_to_scene import ViewsFieldConfig

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (many tiny ops)."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny pixel-space Free3D folder whose pose token and RCN are non-zero (so each view
    depends on its camera); cross-view attention stays zero (views of a set independent)."""
    pipe = build_tiny_pipeline(image_size=SIZE, seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.model.named_parameters():
            if name.startswith(("pose_token.", "rcn.")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("model") / "free3d"
    pipe.save_pretrained(path)
    return path


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r * r


def _object_rgb(h: int, w: int, inside: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    tex = np.stack([0.8 + 0.15 * np.sin(xx / 3.0), 0.2 + 0.1 * np.cos(yy / 4.0), 0.1 + 0 * xx], -1)
    img = np.where(inside[..., None], tex, 0.55)
    return (img * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def rgba_image(tmp_path_factory) -> Path:
    """An RGBA image: a textured disc off-centre on a transparent background."""
    h, w = 48, 64
    inside = _disc(h, w, 40, 22, 13)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = _object_rgb(h, w, inside)
    rgba[..., 3] = inside * 255
    path = tmp_path_factory.mktemp("input") / "object.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _cfg(model_dir: Path, **kw) -> NovelViewsConfig:
    sampler = SamplerConfig(num_steps=2, guidance_scale=2.0, seed=7)
    return replace(NovelViewsConfig(model=model_dir, poses="orbit:4", sampler=sampler), **kw)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def test_view_sets_split_evenly():
    assert view_sets(16) == [list(range(16))]
    assert view_sets(4, 8) == [[0, 1, 2, 3]]
    assert [len(s) for s in view_sets(16, 6)] == [6, 5, 5]
    assert sum(view_sets(7, 2), []) == list(range(7))
    with pytest.raises(ValueError, match="at least one"):
        view_sets(0)


def test_orbit_views_written_with_their_cameras(model_dir: Path, rgba_image: Path, tmp_path):
    out = tmp_path / "out"
    lines: list[str] = []
    res = novel_views(rgba_image, out, _cfg(model_dir), progress=lines.append)
    scene_dir = out / "scene"
    data = json.loads((scene_dir / "transforms.json").read_text())
    assert len(data["frames"]) == 5 and res["num_views"] == 4
    scene = load_scene(scene_dir)
    src = source_camera(SIZE)
    tgt = target_cameras("orbit:4", src)
    i = scene.image_names.index("source.png")
    assert torch.allclose(scene.cameras.cam_from_world[i], src.cam_from_world[0], atol=1e-6)
    assert torch.allclose(scene.cameras.K[i], src.K[0], atol=1e-6)
    for k in range(4):
        j = scene.image_names.index(f"view_{k:03d}.png")
        assert torch.allclose(scene.cameras.cam_from_world[j], tgt.cam_from_world[k], atol=1e-6)
        assert torch.allclose(scene.cameras.K[j], tgt.K[k], atol=1e-6)
    for j in range(len(scene)):
        assert tuple(scene.load_image(j).shape) == (SIZE, SIZE, 3)
        assert bool(scene.load_mask(j).any())
    # the source view is the centred input on white, its mask the object's alpha
    src_img = scene.load_image(i)
    assert float(src_img[0, 0].min()) > 0.99 and float(scene.load_mask(i).float().mean()) > 0.2
    # the generated views differ from each other (each depends on its camera)
    views = [scene.load_image(scene.image_names.index(f"view_{k:03d}.png")) for k in range(4)]
    assert float((views[0] - views[2]).abs().mean()) > 1e-3
    # contact sheet, record, log
    sheet = Image.open(out / "views.png")
    assert sheet.width < 4 * SIZE and sheet.height < 4 * SIZE
    rec = json.loads((out / "novel_views.json").read_text())
    assert rec["model"] == str(model_dir.resolve()) and rec["poses"] == "orbit:4"
    assert rec["seed"] == 7 and rec["share_noise"] is True and rec["sets"] == [4]
    assert rec["foreground"] == "alpha" and rec["train"] is False
    assert {"prepare_s", "load_s", "generate_s", "write_s", "total_s"} <= set(rec["timings"])
    assert res["scene_dir"] == str(scene_dir) and "field_dir" not in res
    log = (out / "log.txt").read_text()
    assert "[generate] step 2/2" in log and "done in" in log
    assert any("[generate] step 2/2" in line for line in lines)
    assert _leftovers(out) == []

    # re-running into the same folder is refused and changes nothing
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="not empty"):
        novel_views(rgba_image, out, _cfg(model_dir, poses="orbit:2"))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # ... unless told to overwrite; the new run replaces the old one as a whole
    novel_views(rgba_image, out, _cfg(model_dir, poses="orbit:2", overwrite=True))
    assert len(json.loads((scene_dir / "transforms.json").read_text())["frames"]) == 3
    assert json.loads((out / "novel_views.json").read_text())["poses"] == "orbit:2"
    assert _leftovers(out) == []


def test_views_in_several_sets_match_one_set(model_dir: Path, rgba_image: Path, tmp_path):
    """Without cross-view attention weights the views of a set are independent: sampling the
    targets in sets of 2 (same seed, shared noise) gives the same views as one set of 4."""
    one = novel_views(rgba_image, tmp_path / "one", _cfg(model_dir), progress=lambda m: None)
    two = novel_views(
        rgba_image, tmp_path / "two", _cfg(model_dir, views_per_set=2), progress=lambda m: None
    )
    assert one["sets"] == [4] and two["sets"] == [2, 2]
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "[generate] step 4/4" in log and "set 2/2" in log
    for k in range(4):
        a = np.asarray(Image.open(tmp_path / "one" / "scene" / "images" / f"view_{k:03d}.png"))
        b = np.asarray(Image.open(tmp_path / "two" / "scene" / "images" / f"view_{k:03d}.png"))
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, k


def test_train_continues_into_a_field(model_dir: Path, rgba_image: Path, tmp_path):
    out = tmp_path / "out"
    field = ViewsFieldConfig(
        max_steps=4, batch_rays=256, num_threads=1, device="cpu", save_eval_images=False
    )
    res = novel_views(
        rgba_image, out, _cfg(model_dir, train=True, field=field), progress=lambda m: None
    )
    ev = json.loads((out / "field" / "eval.json").read_text())
    assert ev["steps"] == 4 and ev["num_eval_images"] == 1  # view 0 of 5 is held out
    assert res["eval"]["steps"] == 4 and res["field_dir"] == str(out / "field")
    assert (out / "field" / "checkpoint.pt").is_file()
    assert json.loads((out / "novel_views.json").read_text())["eval"]["steps"] == 4
    # the run finds its views where OUT now is (not in the temporary folder it was built in)
    assert scene_source(out / "field").resolve() == (out / "scene").resolve()
    assert json.loads((out / "field" / "source.json").read_text())["scene_dir"] == str(
        (out / "scene").resolve()
    )
    assert "[train] step 4/4" in (out / "log.txt").read_text()
    assert _leftovers(out) == []


def test_rgb_image_without_alpha_is_matted(model_dir: Path, tmp_path):
    h, w = 40, 56
    inside = _disc(h, w, 30, 20, 11)
    path = tmp_path / "photo.jpg"
    Image.fromarray(_object_rgb(h, w, inside)).save(path, quality=95)
    out = tmp_path / "out"
    res = novel_views(path, out, _cfg(model_dir), progress=lambda m: None)
    assert res["foreground"] == "matting"
    scene = load_scene(out / "scene")
    mask = scene.load_mask(scene.image_names.index("source.png")).float()
    assert 0.2 < float(mask.mean()) < 0.8
    # a given mask file is used instead of matting
    mask_path = tmp_path / "mask.png"
    Image.fromarray((inside * 255).astype(np.uint8)).save(mask_path)
    res = novel_views(path, tmp_path / "out2", _cfg(model_dir, mask=mask_path), lambda m: None)
    assert res["foreground"] == "mask" and res["mask"] == str(mask_path.resolve())


def test_empty_foreground_errors_naming_the_file(model_dir: Path, tmp_path):
    path = tmp_path / "blank.png"
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 120  # transparent everywhere
    Image.fromarray(rgba, "RGBA").save(path)
    out = tmp_path / "out"
    with pytest.raises(ForegroundError, match=r"blank\.png.*empty"):
        novel_views(path, out, _cfg(model_dir), progress=lambda m: None)
    assert not out.exists() and _leftovers(out) == []


def test_model_folder_missing_a_part_names_it_and_writes_nothing(
    model_dir: Path, rgba_image: Path, tmp_path
):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "free3d_modules.safetensors").unlink()
    out = tmp_path / "out"
    with pytest.raises(DiffusionModelError, match=r"missing free3d_modules\.safetensors"):
        novel_views(rgba_image, out, _cfg(broken), progress=lambda m: None)
    assert not out.exists() and _leftovers(out) == []
    with pytest.raises(DiffusionModelError, match="not found"):
        novel_views(rgba_image, out, _cfg(tmp_path / "nowhere"), progress=lambda m: None)
    assert not out.exists()


def test_bad_inputs_error_before_writing(model_dir: Path, rgba_image: Path, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TargetSpecError, match="orbit:zero"):
        novel_views(rgba_image, out, _cfg(model_dir, poses="orbit:zero"), lambda m: None)
    with pytest.raises(TargetSpecError, match="cams.json"):
        novel_views(rgba_image, out, _cfg(model_dir, poses="file:cams.json"), lambda m: None)
    with pytest.raises(ImageReadError, match="missing.png"):
        novel_views(tmp_path / "missing.png", out, _cfg(model_dir), lambda m: None)
    with pytest.raises(NovelViewsError, match="--model"):
        novel_views(rgba_image, out, NovelViewsConfig(), lambda m: None)
    assert not out.exists() and _leftovers(out) == []
    # an output folder holding the input is refused even with overwrite
    with pytest.raises(NovelViewsError, match="may not hold the input image"):
        novel_views(rgba_image, rgba_image.parent, _cfg(model_dir, overwrite=True), print)
    assert rgba_image.is_file()


def test_a_failure_while_writing_leaves_no_output(
    model_dir: Path, rgba_image: Path, tmp_path, monkeypatch
):
    import sceneforge.stylize.free3d.novel_views as nv

    def boom(*args, **kwargs):
        raise RuntimeError("trainer failed")

    monkeypatch.setattr(nv, "views_to_field", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="trainer failed"):
        novel_views(rgba_image, out, _cfg(model_dir, train=True), progress=lambda m: None)
    assert not out.exists() and _leftovers(out) == []
    # an existing (empty) OUT stays as it was
    out.mkdir()
    with pytest.raises(RuntimeError, match="trainer failed"):
        novel_views(rgba_image, out, _cfg(model_dir, train=True), progress=lambda m: None)
    assert out.is_dir() and not any(out.iterdir()) and _leftovers(out) == []


def test_novel_views_command(model_dir, rgba_image, tmp_path, capsys):
    """``sceneforge novel-views IMAGE OUT --model PATH --poses orbit:N``: the verb's flags reach
    the job, the result is printed as a table; a missing model folder is a one-line error."""
    from sceneforge.cli import main

    out = tmp_path / "cli"
    args = ["novel-views", str(rgba_image), str(out), "--model", str(model_dir)]
    args += ["--poses", "orbit:3", "--sampler.num-steps", "2", "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    frames = json.loads((out / "scene" / "transforms.json").read_text())["frames"]
    assert len(frames) == 4
    record = json.loads((out / "novel_views.json").read_text())
    assert record["num_steps"] == 2 and record["poses"] == "orbit:3"
    assert any(ln.startswith("scene_dir ") for ln in printed.splitlines())
    assert "{'" not in printed
    missing = tmp_path / "no_model"
    bad = ["novel-views", str(rgba_image), str(tmp_path / "cli2"), "--model", str(missing)]
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("sceneforge novel-views: error: ") and str(missing) in err
    assert not (tmp_path / "cli2").exists()
