"""The SfM pipeline: synthetic scenes against ground truth, a fern smoke test, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sceneforge.core.synthetic as S
from sceneforge.core.metrics import pose_metrics
from sceneforge.recon.intrinsics import CameraConfig
from sceneforge.recon.mapping import RefinementConfig
from sceneforge.recon.reconstruct import ReconstructConfig, reconstruct
from sceneforge.recon.sfm import SfMConfig, reconstruct_from_tracks, tracks_from_observations
from sceneforge.recon.sfm_error import SfMError


def _synthetic(rig: str, num_views: int = 8, noise_px: float = 0.0, seed: int = 0):
    cfg = S.SyntheticSceneConfig(
        scene="room" if rig == "walk" else "objects",
        rig=rig,
        num_views=num_views,
        width=320,
        height=240,
        num_points=1200,
        seed=seed,
    )
    mesh, r = S.build_scene_mesh(cfg)
    cams = S.scene_cameras(cfg, mesh, r).to(dtype=torch.float64)
    lo, hi = mesh.bounds()
    gen = torch.Generator().manual_seed(seed)
    pts, _, _ = S.sample_surface(mesh, cfg.num_points, gen)
    obs = S.observe_points(mesh, cams, pts, 1e-3 * float((hi - lo).norm()))
    xy = obs.xy.double() + noise_px * torch.randn(len(obs), 2, generator=gen, dtype=torch.float64)
    sizes = torch.stack([cams.height, cams.width], 1)
    return cams, tracks_from_observations(obs.image_idx, obs.point_idx, xy, sizes)


FAST = RefinementConfig(rounds=2, ba_iterations=15)


@pytest.mark.parametrize("rig", ["orbit", "forward"])
def test_synthetic_known_intrinsics_noise_free(rig):
    cams, tracks = _synthetic(rig)
    params = tuple(cams.params[0].tolist())
    cfg = SfMConfig(
        camera=CameraConfig(model="PINHOLE", params=params, fix_intrinsics=True), refinement=FAST
    )
    rec = reconstruct_from_tracks(tracks, cfg)
    assert bool(rec.registered.all())
    assert all(b == "global" for b in rec.registered_by)
    m = pose_metrics(rec.cameras.cam_from_world, cams.cam_from_world)
    assert m["mean_rot_err_deg"] < 0.5 and m["auc5"] > 0.95, m
    # known intrinsics stay fixed
    assert torch.equal(rec.cameras.params, cams.params)
    assert float(rec.reprojection_errors().mean()) < 0.05
    assert rec.points.shape[0] > 300 and rec.mean_track_length() > 2


@pytest.mark.parametrize("init", ["auto", "incremental"])
def test_synthetic_unknown_focal_noisy(init):
    cams, tracks = _synthetic("orbit", num_views=10, noise_px=0.5, seed=1)
    cfg = SfMConfig(camera=CameraConfig(model="SIMPLE_RADIAL"), refinement=FAST, init=init)
    rec = reconstruct_from_tracks(tracks, cfg)
    assert int(rec.registered.sum()) == 10
    if init == "incremental":
        assert all(b == "incremental" for b in rec.registered_by)
    # (auto: the initial focal length is off here, so only 14 of 44 relative rotations are
    # consistent and the incremental check runs; both initialisations end right.)
    m = pose_metrics(rec.cameras.cam_from_world, cams.cam_from_world)
    assert m["auc5"] > 0.8, m
    f_true = float(cams.params[0, 0])
    assert abs(float(rec.cameras.params[0, 0]) - f_true) / f_true < 0.03
    assert float(rec.reprojection_errors().mean()) < 1.0


def test_no_overlap_and_too_few_images():
    cams, tracks = _synthetic("orbit", num_views=4)
    empty = tracks.select(torch.zeros(tracks.num_tracks, dtype=torch.bool))
    with pytest.raises(SfMError, match="overlap"):
        reconstruct_from_tracks(empty)
    with pytest.raises(SfMError, match="at least 2"):
        reconstruct_from_tracks(
            tracks_from_observations(
                torch.zeros(3, dtype=torch.long),
                torch.arange(3),
                torch.zeros(3, 2),
                torch.tensor([[10, 10]]),
            )
        )


def test_reconstruct_bad_folders(tmp_path):
    with pytest.raises(SfMError, match="does not exist"):
        reconstruct(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "one").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "one" / "a.png")
    with pytest.raises(SfMError, match="at least 2"):
        reconstruct(tmp_path / "one", tmp_path / "out", ReconstructConfig(progress=False))
    (tmp_path / "one" / "b.png").write_bytes(b"not an image")
    with pytest.raises(SfMError, match="unreadable"):
        reconstruct(tmp_path / "one", tmp_path / "out", ReconstructConfig(progress=False))


def fern_images(shared_data: Path, folder: Path, count: int, shrink: int) -> Path:
    """The first ``count`` fern photos, ``shrink`` times smaller, as PNGs in ``folder``."""
    src = shared_data / "scenes" / "fern" / "images"
    if not src.is_dir():
        pytest.skip("fern not available")
    from PIL import Image

    folder.mkdir()
    for p in sorted(src.iterdir())[:count]:
        im = Image.open(p).convert("RGB")
        im.resize((im.width // shrink, im.height // shrink)).save(folder / (p.stem + ".png"))
    return folder


def test_fern_smoke_with_bad_images(shared_data, tmp_path):
    """8 fern images + a noise image (no overlap) + a corrupt file: a partial model listing them."""
    from PIL import Image

    imgs = fern_images(shared_data, tmp_path / "images", 8, 2)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (264, 353, 3), dtype=np.uint8)).save(imgs / "zz_noise.png")
    (imgs / "zz_corrupt.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    cfg = ReconstructConfig(
        features="sift",
        progress=False,
        sfm=SfMConfig(refinement=RefinementConfig(rounds=2, ba_iterations=15)),
    )
    summary = reconstruct(imgs, out, cfg)
    assert summary["num_registered"] >= 8
    assert "zz_noise.png" in summary["unregistered_images"]
    assert any("zz_corrupt.png" in u for u in summary["unreadable_images"])
    assert summary["mean_reproj_error_px"] < 1.5
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["num_points"] == summary["num_points"] > 300
    for f in (
        "sparse/0/cameras.bin",
        "sparse/0/images.bin",
        "sparse/0/points3D.bin",
        "transforms.json",
        "reconstruction.png",
    ):
        assert (out / f).is_file(), f
    import pycolmap

    model = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert model.num_reg_images() == summary["num_registered"]
    tj = json.loads((out / "transforms.json").read_text())
    assert len(tj["frames"]) == summary["num_registered"]
    with pytest.raises(SfMError, match="not empty"):
        reconstruct(imgs, out, cfg)
    assert Path(imgs / "zz_corrupt.png").read_bytes() == b"\x89PNG garbage"  # inputs untouched
