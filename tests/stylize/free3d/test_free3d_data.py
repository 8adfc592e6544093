"""Free3D training data: CPU renders with exact cameras, the render-folder format, the tuple
dataset and the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sceneforge.core.cameras import invert_rigid, to_homogeneous, transform_points
from sceneforge.core.conventions import opencv_to_opengl_world_from_cam
from sceneforge.core.scene import SceneDataError
from sceneforge.stylize.free3d.data import (
    RenderSetConfig,
    ViewTupleDataset,
    load_object,
    read_object_views,
    read_render_folder,
    render_view_set,
    render_view_sets,
    shared_mesh_sources,
    split_view_sets,
    write_object_views,
)
from sceneforge.stylize.free3d.poses import cam_spherical
from sceneforge.stylize.free3d.rays import relative_pose

CFG = RenderSetConfig(num_views=6, size=32)


@pytest.fixture(scope="module")
def sets():
    return render_view_sets([f"procedural:{i}" for i in range(4)], CFG)


def _bbox(mask: torch.Tensor) -> tuple[float, float, float, float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1


def test_renders_have_exact_cameras_white_background_and_alpha(sets):
    vs = sets[0]
    assert vs.images.shape == (6, 3, 32, 32) and vs.alpha.shape == (6, 1, 32, 32)
    assert vs.K.shape == (6, 3, 3) and vs.cam_from_world.shape == (6, 3, 4)
    assert set(vs.alpha.unique().tolist()) == {0.0, 1.0}
    bg = vs.alpha[:, 0] == 0
    assert torch.equal(vs.images.permute(1, 0, 2, 3)[:, bg], torch.ones(3, int(bg.sum())))
    assert not torch.allclose(vs.images.permute(1, 0, 2, 3)[:, ~bg], torch.tensor(1.0))
    # the object's vertices project (K, cam_from_world) onto its alpha's bounding box
    mesh = load_object("procedural:0")
    for i in range(len(vs)):
        pc = transform_points(vs.cam_from_world[i], mesh.vertices)
        uv = (pc @ vs.K[i].T)[:, :2] / pc[:, 2:]
        inside = (uv >= 0).all(1) & (uv <= 32).all(1)
        px0, py0 = uv[inside].amin(0).tolist()
        px1, py1 = uv[inside].amax(0).tolist()
        bx0, by0, bx1, by1 = _bbox(vs.alpha[i, 0] > 0)
        # pixel centres sample the silhouette: its box edges lie within half a pixel
        assert abs(px0 - bx0) < 0.55 and abs(py0 - by0) < 0.55, (i, (px0, py0), (bx0, by0))
        assert abs(px1 - bx1) < 0.55 and abs(py1 - by1) < 0.55, (i, (px1, py1), (bx1, by1))
    # cameras on a sphere looking at the centre, elevations and distances within the ranges
    assert torch.allclose(vs.cam_from_world[:, :2, 3], torch.zeros(6, 2).double(), atol=1e-9)
    _, el, r = cam_spherical(vs.cam_from_world)
    assert bool(((el >= -10) & (el <= 50)).all()) and bool(((r >= 1.8) & (r <= 2.2)).all())
    assert len({round(float(e), 3) for e in el}) == 6  # random elevations


def test_renders_are_deterministic_and_seeded(sets):
    again = render_view_sets(["procedural:0"], CFG)[0]
    assert torch.equal(again.images, sets[0].images)
    assert torch.equal(again.cam_from_world, sets[0].cam_from_world)
    other = render_view_set(load_object("procedural:0"), CFG, seed=5)
    assert not torch.allclose(other.cam_from_world, sets[0].cam_from_world)
    assert not torch.equal(sets[1].images, sets[0].images)  # another object


def test_supersampled_alpha_is_coverage():
    mesh = load_object("procedural:2")
    cfg = RenderSetConfig(num_views=2, size=32, ssaa=3)
    vs = render_view_set(mesh, cfg, seed=0)
    frac = (vs.alpha > 0.01) & (vs.alpha < 0.99)
    assert int(frac.sum()) > 20  # soft edges
    hard = render_view_set(mesh, RenderSetConfig(num_views=2, size=32), seed=0)
    agree = ((vs.alpha > 0.5) == (hard.alpha > 0.5)).float().mean()
    assert float(agree) > 0.97


def test_shared_meshes_render(shared_data: Path):
    sources, skipped = shared_mesh_sources(shared_data)
    if not sources:
        pytest.skip(f"no shared meshes: {skipped}")
    for src in sources:
        try:
            vs = render_view_sets([src], RenderSetConfig(num_views=2, size=24))[0]
        except ImportError as e:  # e.g. collada files without pycollada
            pytest.skip(f"{src}: {e}")
        cover = vs.alpha.mean((1, 2, 3))
        assert bool((cover > 0.01).all()) and bool((cover < 0.9).all()), (src, cover)
    assert shared_mesh_sources(shared_data / "nowhere")[1]  # missing files give reasons


def test_render_folder_round_trip_and_resize(sets, tmp_path: Path):
    for vs in sets[:2]:
        write_object_views(vs, tmp_path / "renders" / vs.name)
    back = read_render_folder(tmp_path / "renders")
    assert [b.name for b in back] == sorted(v.name for v in sets[:2])
    vs, b = sets[0], next(b for b in back if b.name == sets[0].name)
    assert torch.allclose(b.images, vs.images, atol=0.6 / 255)
    assert torch.equal(b.alpha, vs.alpha)
    assert torch.allclose(b.K, vs.K) and torch.allclose(b.cam_from_world, vs.cam_from_world)
    small = read_object_views(tmp_path / "renders" / vs.name, size=16)
    assert small.images.shape == (6, 3, 16, 16)
    assert torch.allclose(small.K[:, :2], vs.K[:, :2] / 2)
    with pytest.raises(SceneDataError, match="exists and is not an empty folder"):
        write_object_views(vs, tmp_path / "renders" / vs.name)


def _write_object(folder: Path, data: dict, n: int = 2, size=(8, 8), alpha=True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((*size, 4 if alpha else 3), 200, np.uint8)
        if alpha:
            arr[..., 3] = 0
            arr[2:6, 2:6, 3] = 255
        Image.fromarray(arr).save(folder / f"{i}.png")
    (folder / "cameras.json").write_text(json.dumps(data))


def test_render_folder_opengl_poses_and_fov(sets, tmp_path: Path):
    T = sets[0].cam_from_world[:2]
    gl = opencv_to_opengl_world_from_cam(invert_rigid(T))
    frames = [
        {"file": f"{i}.png", "world_from_cam": to_homogeneous(gl[i]).tolist()} for i in (0, 1)
    ]
    _write_object(tmp_path / "obj", {"convention": "blender", "fov_deg": 60.0, "frames": frames})
    vs = read_object_views(tmp_path / "obj")
    assert torch.allclose(vs.cam_from_world, T, atol=1e-9)
    assert float(vs.K[0, 0, 0]) == pytest.approx(4 / np.tan(np.radians(30)))
    assert float(vs.K[0, 0, 2]) == 4.0 and float(vs.K[0, 1, 2]) == 4.0
    assert torch.allclose(vs.images[:, :, 0, 0], torch.ones(2, 3))  # transparent -> white


def test_render_folder_errors_name_the_file(tmp_path: Path):
    eye = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2]]
    good = {"fov_deg": 50, "frames": [{"file": f"{i}.png", "cam_from_world": eye} for i in (0, 1)]}
    cases = {
        "nojson": (None, r"nojson/cameras.json: no such cameras file"),
        "badjson": ("{", r"badjson/cameras.json: not valid JSON"),
        "noframes": ({"frames": []}, "needs a non-empty 'frames' list"),
        "badfov": ({**good, "fov_deg": 0}, "fov_deg must lie in"),
        "nointr": ({"frames": good["frames"]}, r"frame 0 \(0.png\): no intrinsics"),
        "both": (
            {**good, "frames": [{"file": "0.png", "cam_from_world": eye, "world_from_cam": eye}]},
            r"frame 0 \(0.png\): give exactly one of",
        ),
        "skew": (
            {**good, "frames": [{"file": "0.png", "cam_from_world": [[2, 0, 0, 0]] + eye[1:]}]},
            r"frame 0 \(0.png\): rotation is not orthonormal",
        ),
        "missing": (
            {**good, "frames": [{"file": "9.png", "cam_from_world": eye}]},
            "9.png: no such",
        ),
        "convention": ({**good, "convention": "unity"}, "convention must be"),
    }
    for name, (data, match) in cases.items():
        folder = tmp_path / name
        if data is None:
            folder.mkdir()
        elif isinstance(data, str):
            _write_object(folder, {})
            (folder / "cameras.json").write_text(data)
        else:
            _write_object(folder, data)
        with pytest.raises(SceneDataError, match=match):
            read_object_views(folder)
    _write_object(tmp_path / "rgb", good, alpha=False)
    with pytest.raises(SceneDataError, match=r"rgb/0.png: no alpha channel and no mask"):
        read_object_views(tmp_path / "rgb")
    _write_object(tmp_path / "sizes", good)
    Image.fromarray(np.zeros((9, 8, 4), np.uint8)).save(tmp_path / "sizes" / "1.png")
    with pytest.raises(SceneDataError, match=r"sizes/1.png: image is 8x9 but the first view"):
        read_object_views(tmp_path / "sizes")
    with pytest.raises(SceneDataError, match="no object folders"):
        read_render_folder(tmp_path / "nojson")


def test_tuple_dataset_is_deterministic_and_in_the_source_frame(sets):
    ds = ViewTupleDataset(sets, num_targets=3, seed=7, samples_per_set=2)
    assert len(ds) == 8
    a, b = ds[5], ViewTupleDataset(sets, num_targets=3, seed=7, samples_per_set=2)[5]
    assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    c = ViewTupleDataset(sets, num_targets=3, seed=8, samples_per_set=2)
    assert any(not torch.equal(c[i]["view_indices"], ds[i]["view_indices"]) for i in range(8))
    item, vs = ds[5], sets[5 % 4]
    idx = item["view_indices"]
    assert idx.shape == (4,) and len(set(idx.tolist())) == 4
    assert torch.equal(item["source_image"], vs.images[idx[0]])
    assert torch.equal(item["target_images"], vs.images[idx[1:]])
    assert torch.equal(item["target_alpha"], vs.alpha[idx[1:]])
    assert item["target_cam_from_world"].shape == (3, 3, 4) and item["object_index"] == 1
    az, el, r = cam_spherical(item["source_cam_from_world"][None].double())
    _, el_w, r_w = cam_spherical(vs.cam_from_world[idx[:1]])
    assert float(az[0]) == pytest.approx(0.0, abs=1e-4)
    assert float(el[0]) == pytest.approx(float(el_w[0]), abs=1e-4)
    assert float(r[0]) == pytest.approx(float(r_w[0]), abs=1e-5)
    rel_world = relative_pose(
        vs.cam_from_world[idx[0]].expand_as(vs.cam_from_world[idx[1:]]), vs.cam_from_world[idx[1:]]
    )
    assert torch.allclose(item["target_from_source"].double(), rel_world, atol=1e-5)
    with pytest.raises(ValueError, match="has 6 views: 6 targets and a source need more"):
        ViewTupleDataset(sets, num_targets=6)


def test_split_holds_out_whole_objects(sets):
    train, val = split_view_sets(sets, val_fraction=0.25, seed=3)
    assert len(val) == 1 and len(train) == 3
    assert {v.name for v in train} | {v.name for v in val} == {v.name for v in sets}
    assert not {v.name for v in train} & {v.name for v in val}
    again = split_view_sets(sets, val_fraction=0.25, seed=3)[1]
    assert [v.name for v in again] == [v.name for v in val]
    picks = {split_view_sets(sets, 0.25, seed=s)[1][0].name for s in range(8)}
    assert len(picks) > 1  # the seed chooses
    assert split_view_sets(sets, 0.0)[1] == [] and len(split_view_sets(sets[:2], 0.01)[1]) == 1
