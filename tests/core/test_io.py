"""Scene data I/O: round trips, conventions, the shared scenes and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sceneforge.core.cameras import Cameras, make_rigid, transform_points
from sceneforge.core.image_io import list_images, write_image_atomic
from sceneforge.core.io import (
    detect_format,
    load_depth,
    load_scene,
    read_colmap,
    save_scene,
    validate_scene,
)
from sceneforge.core.rotations import angle_axis_to_matrix
from sceneforge.core.scene import Observations, SceneData, SceneDataError

W, H = 24, 16
MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def _params(model: str, n: int, gen: torch.Generator, centred: bool = False) -> torch.Tensor:
    """Random but plausible intrinsics of ``model`` for ``n`` W x H cameras."""
    f = 20 + 5 * torch.rand(n, generator=gen, dtype=torch.float64)
    f2 = 20 + 5 * torch.rand(n, generator=gen, dtype=torch.float64)
    cx = W / 2 + (0 if centred else torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)
    cy = H / 2 + (0 if centred else torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)
    cx, cy = torch.as_tensor(cx).expand(n), torch.as_tensor(cy).expand(n)
    k = 0.05 * (torch.rand(n, 4, generator=gen, dtype=torch.float64) - 0.5)
    cols = {
        "SIMPLE_PINHOLE": (f, cx, cy),
        "PINHOLE": (f, f2, cx, cy),
        "SIMPLE_RADIAL": (f, cx, cy, k[:, 0]),
        "RADIAL": (f, cx, cy, k[:, 0], k[:, 1]),
        "OPENCV": (f, f2, cx, cy, *k.unbind(-1)),
    }[model]
    return torch.stack(cols, dim=-1)


def make_scene(
    tmp: Path,
    model: str,
    n: int = 4,
    seed: int = 0,
    centred: bool = False,
    points: bool = True,
    masks: bool = True,
) -> SceneData:
    """A small disk-backed scene: random poses looking at the origin, tiny PNG images."""
    gen = torch.Generator().manual_seed(seed)
    R = angle_axis_to_matrix(0.3 * torch.randn(n, 3, generator=gen, dtype=torch.float64))
    t = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.1 + torch.tensor(
        [0.0, 0.0, 4.0], dtype=torch.float64
    )
    cams = Cameras(
        model,
        _params(model, n, gen, centred),
        torch.full((n,), W),
        torch.full((n,), H),
        make_rigid(R, t),
    )
    names = [f"img_{i:02d}.png" for i in range(n)]
    rng = np.random.default_rng(seed)
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    for name in names:
        write_image_atomic(tmp / "images" / name, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    mask_paths = None
    if masks:
        (tmp / "masks").mkdir(exist_ok=True)
        mask_paths = []
        for i, name in enumerate(names):
            if i == 1:  # one image without a mask
                mask_paths.append(None)
                continue
            m = (rng.random((H, W)) > 0.3).astype(np.uint8) * 255
            write_image_atomic(tmp / "masks" / name, m)
            mask_paths.append(tmp / "masks" / name)
    kw = {}
    if points:
        pts = torch.randn(30, 3, generator=gen, dtype=torch.float64) * 0.5
        xy, depth = cams.project(pts)
        img_idx, pt_idx = torch.nonzero(depth > 0, as_tuple=True)
        kw = dict(
            points=pts,
            point_colors=torch.randint(0, 256, (30, 3), generator=gen).to(torch.uint8),
            observations=Observations(img_idx, pt_idx, xy[img_idx, pt_idx]),
        )
    return SceneData(
        cameras=cams,
        image_names=names,
        image_paths=[tmp / "images" / n for n in names],
        mask_paths=mask_paths,
        root=tmp,
        **kw,
    )


def assert_same_cameras(a: SceneData, b: SceneData, tol: float = 1e-9) -> None:
    """Same names, model, sizes, intrinsics and poses (to ``tol``)."""
    assert a.image_names == b.image_names
    assert a.cameras.model == b.cameras.model
    assert torch.equal(a.cameras.width, b.cameras.width)
    assert torch.equal(a.cameras.height, b.cameras.height)
    torch.testing.assert_close(b.cameras.params, a.cameras.params.double(), atol=tol, rtol=0)
    torch.testing.assert_close(
        b.cameras.cam_from_world, a.cameras.cam_from_world.double(), atol=tol, rtol=0
    )


def assert_same_masks(a: SceneData, b: SceneData) -> None:
    for i in range(len(a)):
        ma, mb = a.load_mask(i), b.load_mask(i)
        assert (ma is None) == (mb is None)
        if ma is not None:
            assert torch.equal(ma, mb)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["colmap", "colmap-text"])
@pytest.mark.parametrize("model", MODELS)
def test_colmap_round_trip(tmp_path, model, fmt):
    scene = make_scene(tmp_path / "src", model)
    out = save_scene(scene, tmp_path / "out", format=fmt)
    model_dir = out / "sparse" / "0"
    assert (model_dir / ("cameras.bin" if fmt == "colmap" else "cameras.txt")).is_file()
    assert detect_format(out) == "colmap"
    back = load_scene(out, check_images=True)
    assert_same_cameras(scene, back)
    assert_same_masks(scene, back)
    torch.testing.assert_close(back.points, scene.points, atol=1e-12, rtol=0)
    assert torch.equal(back.point_colors, scene.point_colors)

    # Same observations (as sets of (image, point, xy)).
    def obs_set(s):
        o = s.observations
        return sorted(
            zip(o.image_idx.tolist(), o.point_idx.tolist(), map(tuple, o.xy.double().tolist()))
        )

    assert obs_set(back) == obs_set(scene)
    assert torch.allclose(back.load_image(2), scene.load_image(2))
    # A second round trip from the loaded scene is exact too.
    again = load_scene(save_scene(back, tmp_path / "again", format=fmt))
    assert_same_cameras(back, again)


def test_colmap_pose_matches_pycolmap(tmp_path):
    """Our quaternion conversion agrees with pycolmap's own Rigid3d matrix."""
    import pycolmap

    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    save_scene(scene, tmp_path / "out")
    rec = pycolmap.Reconstruction(str(tmp_path / "out" / "sparse" / "0"))
    for i in range(len(scene)):
        M = rec.image(i + 1).cam_from_world().matrix()
        np.testing.assert_allclose(M, scene.cameras.cam_from_world[i].numpy(), atol=1e-12)
    # COLMAP's own projection of a point agrees with ours.
    X = np.array([0.1, -0.2, 0.3])
    for i in range(len(scene)):
        uv = rec.image(i + 1).project_point(X)
        ours, _ = scene.cameras[i].project(torch.tensor(X)[None])
        np.testing.assert_allclose(uv, ours[0, 0].numpy(), atol=1e-9)


def test_colmap_mixed_models_and_mask_names(tmp_path):
    """Cameras of several models become the most general one; masks by name or stem."""
    import pycolmap

    src = make_scene(tmp_path / "src", "PINHOLE", n=3, points=False, masks=False)
    rec = pycolmap.Reconstruction()
    specs = [
        ("SIMPLE_PINHOLE", [20.0, 12.0, 8.0]),
        ("RADIAL", [21.0, 12.1, 7.9, 0.01, -0.002]),
        ("SIMPLE_RADIAL", [22.0, 11.9, 8.1, 0.02]),
    ]
    for i, (model, params) in enumerate(specs):
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(model=model, width=W, height=H, params=params, camera_id=i + 1)
        )
        pose = pycolmap.Rigid3d(src.cameras.cam_from_world[i].numpy())
        image = pycolmap.Image(name=src.image_names[i], camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pose)
    model_dir = tmp_path / "src" / "sparse" / "0"
    model_dir.mkdir(parents=True)
    rec.write_text(str(model_dir))
    (tmp_path / "src" / "masks").mkdir()
    write_image_atomic(tmp_path / "src" / "masks" / "img_00.png.png", np.zeros((H, W), np.uint8))
    write_image_atomic(tmp_path / "src" / "masks" / "img_02.jpg", np.full((H, W), 255, np.uint8))

    scene = load_scene(tmp_path / "src")
    assert scene.cameras.model == "RADIAL"
    torch.testing.assert_close(
        scene.cameras.params,
        torch.tensor(
            [
                [20.0, 12.0, 8.0, 0.0, 0.0],
                [21.0, 12.1, 7.9, 0.01, -0.002],
                [22.0, 11.9, 8.1, 0.02, 0],
            ],
            dtype=torch.float64,
        ),
    )
    torch.testing.assert_close(scene.cameras.cam_from_world, src.cameras.cam_from_world)
    assert scene.mask_paths[0].name == "img_00.png.png"
    assert scene.mask_paths[1] is None
    assert scene.mask_paths[2].name == "img_02.jpg"
    assert not scene.load_mask(0).any() and scene.load_mask(2).all()


@pytest.mark.parametrize("model", MODELS)
def test_nerfstudio_round_trip(tmp_path, model):
    scene = make_scene(tmp_path / "src", model)
    out = save_scene(scene, tmp_path / "out", format="nerfstudio")
    data = json.loads((out / "transforms.json").read_text())
    assert data["camera_model"] == model and "fl_x" in data["frames"][0]  # per-frame intrinsics
    back = load_scene(out)
    assert_same_cameras(scene, back)
    assert_same_masks(scene, back)
    torch.testing.assert_close(back.points, scene.points, atol=1e-12, rtol=0)
    assert torch.equal(back.point_colors, scene.point_colors)
    again = load_scene(save_scene(back, tmp_path / "again", format="nerfstudio"))
    assert_same_cameras(back, again)


def test_nerfstudio_shared_intrinsics_and_references(tmp_path):
    """Shared intrinsics go to the top level; copy_images=False references the originals."""
    scene = make_scene(tmp_path / "src", "OPENCV", points=False, masks=False)
    cams = scene.cameras
    scene.cameras = Cameras(
        cams.model,
        cams.params[:1].expand(len(cams), -1).clone(),
        cams.width,
        cams.height,
        cams.cam_from_world,
    )
    out = save_scene(scene, tmp_path / "out", format="nerfstudio", copy_images=False)
    data = json.loads((out / "transforms.json").read_text())
    assert "fl_x" in data and "fl_x" not in data["frames"][0]
    assert data["frames"][0]["file_path"].startswith("../src/images/")
    assert not (out / "images").exists()
    back = load_scene(out)
    assert_same_cameras(scene, back)
    assert back.image_paths[0].resolve() == scene.image_paths[0].resolve()


def test_llff_round_trip(tmp_path):
    scene = make_scene(tmp_path / "src", "SIMPLE_PINHOLE", centred=True)
    out = save_scene(scene, tmp_path / "out", format="llff")
    arr = np.load(out / "poses_bounds.npy")
    assert arr.shape == (len(scene), 17)
    back = load_scene(out)
    assert_same_cameras(scene, back)
    assert_same_masks(scene, back)
    # Bounds came from the sparse points: 0.1 / 99.9 percentiles of their depths (as LLFF).
    for i, name in enumerate(back.image_names):
        near, far = back.metadata["llff_bounds"][name]
        sel = scene.observations.point_idx[scene.observations.image_idx == i]
        z = transform_points(scene.cameras.cam_from_world[i], scene.points[sel])[:, 2]
        assert near == pytest.approx(np.percentile(z.numpy(), 0.1))
        assert far == pytest.approx(np.percentile(z.numpy(), 99.9))
        assert z.min() <= near < far <= z.max()
    again = load_scene(save_scene(back, tmp_path / "again", format="llff"))
    assert_same_cameras(back, again)
    assert again.metadata["llff_bounds"] == back.metadata["llff_bounds"]


def test_cross_format_conversion(tmp_path):
    """COLMAP -> nerfstudio -> LLFF -> COLMAP keeps a centred pinhole camera exactly."""
    scene = make_scene(tmp_path / "src", "SIMPLE_PINHOLE", centred=True)
    a = load_scene(save_scene(scene, tmp_path / "a", format="colmap"))
    b = load_scene(save_scene(a, tmp_path / "b", format="nerfstudio"))
    c = load_scene(save_scene(b, tmp_path / "c", format="llff"))
    d = load_scene(save_scene(c, tmp_path / "d", format="colmap-text"))
    for s in (a, b, c, d):
        assert_same_cameras(scene, s)
    assert_same_masks(scene, d)


def test_in_memory_scene_is_written(tmp_path):
    gen = torch.Generator().manual_seed(1)
    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    mem = SceneData(
        cameras=scene.cameras,
        image_names=scene.image_names,
        images=[
            torch.randint(0, 256, (H, W, 3), generator=gen).to(torch.uint8)
            for _ in scene.image_names
        ],
        masks=[torch.rand(H, W, generator=gen) > 0.5 for _ in scene.image_names],
        depths=[torch.rand(H, W, generator=gen) for _ in scene.image_names],
    )
    for fmt in ("colmap", "nerfstudio"):
        back = load_scene(save_scene(mem, tmp_path / fmt, format=fmt))
        assert_same_cameras(mem, back)
        for i in range(len(mem)):
            assert torch.equal((back.load_image(i) * 255).round().to(torch.uint8), mem.images[i])
            assert torch.equal(back.load_mask(i), mem.masks[i])
    for i in range(len(mem)):
        assert torch.equal(load_depth(back, i), mem.depths[i])
    # nerfstudio's 16-bit PNG depth in millimetres (depth_unit_scale_factor).
    from PIL import Image

    path = tmp_path / "nerfstudio" / "transforms.json"
    data = json.loads(path.read_text())
    mm = np.random.default_rng(0).integers(0, 60000, (H, W)).astype(np.uint16)
    Image.fromarray(mm).save(tmp_path / "nerfstudio" / "depths" / "d0.png")
    data["frames"][0]["depth_file_path"] = "depths/d0.png"
    data["depth_unit_scale_factor"] = 1e-3
    path.write_text(json.dumps(data))
    torch.testing.assert_close(
        load_depth(load_scene(path), 0), torch.from_numpy(mm.astype(np.float32) * 1e-3)
    )


# ----------------------------------------------------------------------------- conventions


def test_nerfstudio_opengl_convention(tmp_path):
    """An identity OpenGL camera looks down world -z; instant-ngp keys are understood."""
    write_image_atomic(tmp_path / "train" / "r_0.png", np.zeros((H, W, 3), np.uint8))
    fov = 2 * np.arctan(0.5 * W / 30.0)
    content = {
        "camera_angle_x": fov,
        "frames": [{"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist()}],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(content))
    scene = load_scene(tmp_path)
    assert scene.image_names == ["r_0.png"]
    assert scene.cameras.model == "SIMPLE_PINHOLE"
    torch.testing.assert_close(
        scene.cameras.params[0], torch.tensor([30.0, W / 2, H / 2], dtype=torch.float64)
    )
    # World point (0.1, 0.2, -2): in front (depth 2), right of and *above* the centre.
    uv, depth = scene.cameras.project(torch.tensor([[0.1, 0.2, -2.0]], dtype=torch.float64))
    assert depth.item() == pytest.approx(2.0)
    assert uv[0, 0, 0].item() == pytest.approx(W / 2 + 30 * 0.05)
    assert uv[0, 0, 1].item() == pytest.approx(H / 2 - 30 * 0.1)


def test_llff_convention_and_downscaled_images(tmp_path):
    """An LLFF row with columns (down, right, back) = world (y, x, -z) is the identity
    OpenCV camera; images at half size halve the focal length."""
    (tmp_path / "images").mkdir()
    write_image_atomic(tmp_path / "images" / "a.png", np.zeros((H // 2, W // 2, 3), np.uint8))
    R = np.stack([[0, 1, 0], [1, 0, 0], [0, 0, -1]], axis=1).astype(float)  # columns
    t = np.array([1.0, 2.0, 3.0])
    row = np.concatenate([np.c_[R, t, [H, W, 40.0]].ravel(), [0.5, 9.0]])
    np.save(tmp_path / "poses_bounds.npy", row[None])
    scene = load_scene(tmp_path)
    torch.testing.assert_close(
        scene.cameras.cam_from_world[0],
        torch.tensor([[1.0, 0, 0, -1], [0, 1, 0, -2], [0, 0, 1, -3]], dtype=torch.float64),
    )
    assert scene.cameras.model == "SIMPLE_PINHOLE"
    torch.testing.assert_close(
        scene.cameras.params[0], torch.tensor([20.0, W / 4, H / 4], dtype=torch.float64)
    )
    assert scene.metadata["llff_bounds"] == {"a.png": (0.5, 9.0)}


# ----------------------------------------------------------------------------- shared data


def test_shared_scenes_load_or_say_no_poses(shared_data):
    """Every shared photo set either loads (all images checked) or says it has no poses."""
    scenes = shared_data / "scenes"
    loaded, unposed = {}, {}
    for folder in sorted(p for p in scenes.iterdir() if p.is_dir()):
        try:
            loaded[folder.name] = load_scene(folder, check_images=True)
        except SceneDataError as e:
            assert "no poses found" in str(e) and str(folder) in str(e), str(e)
            unposed[folder.name] = len(list_images(folder / "images"))
    assert {"fern": 20, "sacre_coeur": 10}.items() <= unposed.items()
    blow = loaded["blowtorch"]
    assert len(blow) == 67 and blow.cameras.model == "SIMPLE_PINHOLE"
    assert int(blow.cameras.width[0]) == 1060 and int(blow.cameras.height[0]) == 707
    torch.testing.assert_close(
        blow.cameras.params[0, 1:], torch.tensor([530.0, 353.5], dtype=torch.float64)
    )
    assert all(m is not None for m in blow.mask_paths)
    assert blow.load_mask(0).shape == (707, 1060)
    assert len(blow.metadata["llff_bounds"]) == 67


def _dlt(P1: np.ndarray, P2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of matched pixels."""
    A = np.stack(
        [
            x1[:, :1] * P1[2] - P1[0],
            x1[:, 1:] * P1[2] - P1[1],
            x2[:, :1] * P2[2] - P2[0],
            x2[:, 1:] * P2[2] - P2[1],
        ],
        axis=1,
    )
    X = np.linalg.svd(A)[2][:, -1]
    return X[:, :3] / X[:, 3:]


def _reproj(P: np.ndarray, X: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.c_[X, np.ones(len(X))] @ P.T
    return np.linalg.norm(p[:, :2] / p[:, 2:] - x, axis=1), p[:, 2]


def test_blowtorch_poses_triangulate_sift_matches(shared_data):
    """SIFT matches between neighbouring blowtorch views triangulate, with the loaded
    cameras, to < 2 px median reprojection error in front of both cameras; the usual
    convention slip (LLFF columns read as right-down-back) does not."""
    cv2 = pytest.importorskip("cv2")
    scene = load_scene(shared_data / "scenes" / "blowtorch")
    cams = scene.cameras
    scale = 2  # half-resolution images; pixel coordinates scale by 1/2 (COLMAP centres)
    sift = cv2.SIFT_create(nfeatures=2000)

    def features(i):
        img = (scene.load_image(i).mean(-1).numpy() * 255).astype(np.uint8)
        h, w = img.shape
        small = cv2.resize(img, (w // scale, h // scale), interpolation=cv2.INTER_AREA)
        kp, desc = sift.detectAndCompute(small, None)
        return np.array([k.pt for k in kp]) + 0.5, desc  # OpenCV centres at 0 -> COLMAP 0.5

    def projection(i, cam_from_world):
        K = cams.K[i].numpy().copy()
        K[:2] /= scale
        return K @ cam_from_world.numpy()

    # A wrong reading: swap the first two camera axes (what a right-down-back slip does).
    swap = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    wrong = swap @ cams.cam_from_world
    centers = cams.centers
    errors, wrong_errors = [], []
    for i in (0, 12, 66):
        d = (centers - centers[i]).norm(dim=1)
        d[i] = float("inf")
        j = int(d.argmin())  # nearest camera: a neighbouring view
        k1, d1 = features(i)
        k2, d2 = features(j)
        matches = cv2.BFMatcher().knnMatch(d1, d2, k=2)
        good = [m for m, n in matches if m.distance < 0.75 * n.distance]
        assert len(good) >= 50, f"too few SIFT matches between views {i} and {j}"
        x1 = k1[[m.queryIdx for m in good]]
        x2 = k2[[m.trainIdx for m in good]]
        for poses, sink in ((cams.cam_from_world, errors), (wrong, wrong_errors)):
            P1, P2 = projection(i, poses[i]), projection(j, poses[j])
            X = _dlt(P1, P2, x1, x2)
            e1, z1 = _reproj(P1, X, x1)
            e2, z2 = _reproj(P2, X, x2)
            in_front = np.mean((z1 > 0) & (z2 > 0))
            sink.append((np.median(np.r_[e1, e2]) * scale, in_front))
    for err, in_front in errors:
        assert err < 2.0 and in_front > 0.9, errors
    assert all(err > 5.0 or in_front < 0.5 for err, in_front in wrong_errors), wrong_errors


# ----------------------------------------------------------------------------- bad input


def test_missing_folder(tmp_path):
    with pytest.raises(SceneDataError, match="does not exist") as e:
        load_scene(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(SceneDataError, match="does not exist"):
        read_colmap(tmp_path / "nope")


def test_corrupt_png(tmp_path):
    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    out = save_scene(scene, tmp_path / "out")
    bad = out / "images" / scene.image_names[2]
    bad.write_bytes(b"\x89PNG garbage, not an image" * 3)
    loaded = load_scene(out)  # lazy: found when the image is opened
    with pytest.raises(SceneDataError, match="not a readable image") as e:
        loaded.load_image(2)
    assert str(bad) in str(e.value)
    with pytest.raises(SceneDataError) as e:
        load_scene(out, check_images=True)
    assert str(bad) in str(e.value) and "1 bad image" in str(e.value)


def test_truncated_jpeg(tmp_path):
    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    jpg = tmp_path / "src" / "images" / "img_01.jpg"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    scene.image_paths[1] = jpg
    with pytest.raises(SceneDataError) as e:
        scene.load_image(1)
    assert str(jpg) in str(e.value)
    with pytest.raises(SceneDataError) as e:
        validate_scene(scene, decode=True)
    assert str(jpg) in str(e.value)


def test_image_of_wrong_size_is_named(tmp_path):
    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    out = save_scene(scene, tmp_path / "out")
    write_image_atomic(out / "images" / "img_03.png", np.zeros((H + 1, W, 3), np.uint8))
    with pytest.raises(SceneDataError, match=f"img_03.png: image is {W}x{H + 1}"):
        load_scene(out, check_images=True)


def test_llff_count_mismatch(tmp_path):
    scene = make_scene(tmp_path / "src", "SIMPLE_PINHOLE", centred=True, masks=False)
    out = save_scene(scene, tmp_path / "out", format="llff")
    write_image_atomic(out / "images" / "zz_extra.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(SceneDataError, match="4 poses but 5 images") as e:
        load_scene(out)
    assert str(out / "poses_bounds.npy") in str(e.value)


def test_llff_nan_pose(tmp_path):
    scene = make_scene(tmp_path / "src", "SIMPLE_PINHOLE", centred=True, masks=False)
    out = save_scene(scene, tmp_path / "out", format="llff")
    arr = np.load(out / "poses_bounds.npy")
    arr[2, 3] = np.nan
    np.save(out / "poses_bounds.npy", arr)
    with pytest.raises(SceneDataError, match="row 2 \\(image img_02.png\\) has a non-finite") as e:
        load_scene(out)
    assert str(out / "poses_bounds.npy") in str(e.value)


def test_nerfstudio_nan_and_non_rigid_pose(tmp_path):
    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    out = save_scene(scene, tmp_path / "out", format="nerfstudio")
    path = out / "transforms.json"
    data = json.loads(path.read_text())
    data["frames"][1]["transform_matrix"][0][3] = float("nan")
    path.write_text(json.dumps(data))
    with pytest.raises(SceneDataError, match="non-finite pose") as e:
        load_scene(out)
    assert str(path) in str(e.value) and "img_01.png" in str(e.value)
    data["frames"][1]["transform_matrix"][0][3] = 0.0
    data["frames"][1]["transform_matrix"][0][0] = 3.0
    path.write_text(json.dumps(data))
    with pytest.raises(SceneDataError, match="not orthonormal"):
        load_scene(out)


def test_colmap_nan_pose(tmp_path):
    import pycolmap

    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    out = save_scene(scene, tmp_path / "out")
    model_dir = out / "sparse" / "0"
    rec = pycolmap.Reconstruction(str(model_dir))
    T = scene.cameras.cam_from_world[2].numpy().copy()
    T[1, 3] = np.nan
    rec.frame(3).rig_from_world = pycolmap.Rigid3d(T)
    rec.write_binary(str(model_dir))
    with pytest.raises(SceneDataError, match="non-finite") as e:
        load_scene(out)
    assert "img_02.png" in str(e.value) and str(model_dir) in str(e.value)
    # Unparsable numbers in a text model: named as an unreadable model.
    text = save_scene(scene, tmp_path / "text", format="colmap-text")
    images_txt = text / "sparse" / "0" / "images.txt"
    lines = images_txt.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if line.endswith(" img_02.png"))
    fields = lines[k].split()
    fields[1] = "abc"  # the quaternion's w
    lines[k] = " ".join(fields)
    images_txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(SceneDataError, match="cannot read the COLMAP text model") as e:
        load_scene(text)
    assert str(text / "sparse" / "0") in str(e.value)


def test_nerfstudio_missing_frame_warns(tmp_path):
    scene = make_scene(tmp_path / "src", "PINHOLE", points=False, masks=False)
    out = save_scene(scene, tmp_path / "out", format="nerfstudio")
    (out / "images" / "img_01.png").unlink()
    with pytest.warns(UserWarning, match="images/img_01.png") as rec:
        back = load_scene(out)
    assert str(out / "transforms.json") in str(rec[0].message)
    assert back.image_names == ["img_00.png", "img_02.png", "img_03.png"]
    assert_same_cameras(scene.subset([0, 2, 3]), back)


def test_corrupt_model_files(tmp_path):
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (tmp_path / "sparse" / "0" / name).write_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(SceneDataError, match="cannot read the COLMAP binary model") as e:
        load_scene(tmp_path)
    assert str(tmp_path / "sparse" / "0") in str(e.value)
    (tmp_path / "sparse").rename(tmp_path / "old")
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(SceneDataError, match="not valid JSON"):
        load_scene(tmp_path)
    (tmp_path / "transforms.json").unlink()
    np.save(tmp_path / "poses_bounds.npy", np.zeros((2, 7)))
    with pytest.raises(SceneDataError, match="expected an N x 17"):
        load_scene(tmp_path)


def test_writers_are_atomic_and_protect_inputs(tmp_path):
    scene = make_scene(tmp_path / "src", "OPENCV", masks=False)
    # A camera LLFF cannot hold fails before anything appears at the destination.
    with pytest.raises(SceneDataError, match="LLFF poses_bounds.npy cannot store"):
        save_scene(scene, tmp_path / "llff", format="llff")
    assert not (tmp_path / "llff").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no temp folders left
    out = save_scene(scene, tmp_path / "out")
    with pytest.raises(SceneDataError, match="not empty"):
        save_scene(scene, out)
    loaded = load_scene(out)
    with pytest.raises(SceneDataError, match="refusing to overwrite"):
        save_scene(loaded, out, overwrite=True)
    before = (out / "sparse" / "0" / "cameras.bin").read_bytes()
    save_scene(scene, out, overwrite=True, format="colmap-text")
    assert (out / "sparse" / "0" / "cameras.txt").is_file()
    assert not (out / "sparse" / "0" / "cameras.bin").exists() and before


def test_subset_keeps_llff_bounds_by_name(tmp_path):
    scene = make_scene(tmp_path / "src", "SIMPLE_PINHOLE", centred=True, masks=False)
    full = load_scene(save_scene(scene, tmp_path / "a", format="llff"))
    part = full.subset([3, 1])
    back = load_scene(save_scene(part, tmp_path / "b", format="llff"))
    assert back.image_names == ["img_01.png", "img_03.png"]
    for name in back.image_names:
        assert back.metadata["llff_bounds"][name] == full.metadata["llff_bounds"][name]


def test_llff_bounds_without_points(tmp_path):
    """Without kept bounds or sparse points, bounds are a positive guess from the camera spread."""
    scene = make_scene(tmp_path / "src", "SIMPLE_PINHOLE", centred=True, points=False, masks=False)
    back = load_scene(save_scene(scene, tmp_path / "out", format="llff"))
    assert_same_cameras(scene, back)
    centers = scene.cameras.centers
    for i, name in enumerate(back.image_names):
        d = (centers[i] - centers.mean(0)).norm().item()
        assert back.metadata["llff_bounds"][name] == pytest.approx((0.1 * d, 2.0 * d))


def test_colmap_without_copying_images(tmp_path):
    scene = make_scene(tmp_path / "src", "RADIAL")
    out = save_scene(scene, tmp_path / "out", copy_images=False)
    assert not (out / "images").exists() and (out / "masks").is_dir()
    with pytest.raises(SceneDataError, match="no images folder found"):
        load_scene(out)
    back = load_scene(out, images_dir=tmp_path / "src" / "images", check_images=True)
    assert_same_cameras(scene, back)
    assert_same_masks(scene, back)
    with pytest.raises(SceneDataError, match="LLFF needs its images"):
        save_scene(scene, tmp_path / "llff", format="llff", copy_images=False)
