"""The generated street walk: cameras exactly where the config puts them, depths that land on
the facades and the road of the generated geometry, textured facades (window grids, every
building its own), a curving street that turns as asked, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sceneforge.core.synthetic import depth_to_points, pixel_correspondences
from sceneforge.core.synthetic_street import (
    StreetConfig,
    centre_line,
    facade_texture,
    make_street,
    street_cameras,
)

TINY = dict(num_views=4, width=64, height=48, step=0.5, texels_per_metre=16, num_points=200)


@pytest.fixture(scope="module")
def street():
    return make_street(StreetConfig(**TINY))


def _centres(cam_from_world: torch.Tensor) -> torch.Tensor:
    R, t = cam_from_world[:, :, :3], cam_from_world[:, :, 3]
    return -(R.transpose(1, 2) @ t[..., None])[..., 0]


def test_cameras_walk_down_the_street(street):
    cfg = StreetConfig(**TINY)
    cams = street.cameras
    assert street.image_names == ["view_000.png", "view_001.png", "view_002.png", "view_003.png"]
    assert torch.equal(cams.cam_from_world, street_cameras(cfg))
    c = _centres(cams.cam_from_world)
    # straight street along +x: one step per frame, at eye height (+- the footsteps' bob)
    assert torch.allclose(c[:, 0], torch.arange(4, dtype=torch.float64) * cfg.step, atol=1e-9)
    assert (c[:, 2] - cfg.eye_height).abs().max() <= 0.03 + 1e-9
    assert c[:, 1].abs().max() <= cfg.sideways
    assert cams.params[0, 0] == pytest.approx(0.5 * 64 / math.tan(math.radians(35.0)))


def test_depths_land_on_the_generated_geometry(street):
    """Every rendered depth, unprojected with the exact camera, lies on a facade (|y| = half
    the street width), a side wall behind it, or the road (z = 0)."""
    half = StreetConfig().street_width / 2
    seen_facade = 0
    for i in range(len(street.cameras)):
        pts, valid = depth_to_points(street, i)
        obj = street.metadata["object_ids"][i]
        road = valid & (obj == -1)
        building = valid & (obj >= 0)
        assert int(road.sum()) > 0 and int(building.sum()) > 0.2 * valid.numel()
        assert pts[road][:, 2].abs().max() < 1e-6
        y = pts[building][:, 1].abs()
        assert (y >= half - 1e-6).all()
        on_facade = (y - half).abs() < 1e-6
        seen_facade += int(on_facade.sum())
        assert (pts[building][:, 2] >= -1e-9).all()
    assert seen_facade > 0
    # across views: a visible point of view 0 is what view 1's ray through its projection
    # hits (the same mesh and exact cameras)
    corr = pixel_correspondences(street, 0, 1)
    vis = corr.visible
    assert int(vis.sum()) > 100
    back = pixel_correspondences(street, 1, 0, corr.xy[vis])
    assert back.valid.all()
    assert torch.allclose(back.points, corr.points[vis], atol=1e-6)


def test_facades_are_textured_and_every_building_its_own(street):
    import cv2

    for i in range(len(street.cameras)):
        img = street.images[i].numpy()
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        lap = cv2.Laplacian(grey, cv2.CV_64F)
        building = street.metadata["object_ids"][i].numpy() >= 0
        assert lap[building].var() > 100, i
    a = facade_texture(torch.Generator().manual_seed(0), 8.0, 9.0, 16)
    b = facade_texture(torch.Generator().manual_seed(1), 8.0, 9.0, 16)
    assert a.shape == (144, 128, 3) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert (a - b).abs().mean() > 0.05
    # windows: many rows cross sharp frame / glass edges (noise alone changes slowly)
    grey = a.numpy().mean(-1)
    edges = np.abs(np.diff(grey, axis=1)) > 0.15
    assert edges.any(1).mean() > 0.2
    mats = [m.name for m in street.metadata["mesh"].materials if m.name.startswith("facade:")]
    assert len(mats) == len(set(mats)) >= 4


def test_curving_street_and_bad_configs():
    s = torch.tensor([0.0, 10.0, 20.0])
    xy, heading = centre_line(s, 20.0, 90.0)
    assert heading.tolist() == pytest.approx([0.0, math.pi / 4, math.pi / 2])
    r = 20.0 / (math.pi / 2)  # radius of the arc
    assert xy[-1].tolist() == pytest.approx([r, r])
    cfg = StreetConfig(num_views=5, step=5.0, turn_deg=90.0, look_deg=0.0)
    c = street_cameras(cfg)
    fwd = c[:, 2, :3]  # viewing directions in the world
    assert math.degrees(math.atan2(fwd[-1, 1], fwd[-1, 0])) == pytest.approx(90.0)
    assert torch.equal(
        make_street(StreetConfig(**TINY)).images[2], make_street(StreetConfig(**TINY)).images[2]
    )
    with pytest.raises(ValueError, match="at least 2 views"):
        street_cameras(StreetConfig(num_views=1))
    with pytest.raises(ValueError, match="building_height must be a range"):
        make_street(StreetConfig(**{**TINY, "building_height": (5.0, 2.0)}))
