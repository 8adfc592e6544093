"""The canonical skinning-weight grid on a closed tube 'arm' with three joints."""

from __future__ import annotations

import math

import pytest
import torch

from sceneforge.stylize.human.lbs import batch_rigid_transform, lbs_forward, lbs_inverse
from sceneforge.stylize.human.skinning_grid import SkinningGrid

JOINT_X = (-0.5, 0.0, 0.5)


def tube(rings=21, segments=16, radius=0.08):
    """A closed cylinder along x (caps included), vertices [V,3] float64, faces [F,3]."""
    xs = torch.linspace(-0.6, 0.6, rings, dtype=torch.float64)
    ang = torch.arange(segments, dtype=torch.float64) * 2 * math.pi / segments
    ring = torch.stack([torch.zeros_like(ang), radius * ang.cos(), radius * ang.sin()], -1)
    verts = (ring[None] + torch.stack([xs, 0 * xs, 0 * xs], -1)[:, None]).reshape(-1, 3)
    caps = torch.tensor([[-0.6, 0, 0], [0.6, 0, 0]], dtype=torch.float64)
    verts = torch.cat([verts, caps])
    faces = []
    for r in range(rings - 1):
        for s in range(segments):
            a, b = r * segments + s, r * segments + (s + 1) % segments
            faces += [[a, b, a + segments], [b, b + segments, a + segments]]
    first, last = rings * segments, rings * segments + 1
    for s in range(segments):
        faces.append([first, (s + 1) % segments, s])
        top = (rings - 1) * segments
        faces.append([last, top + s, top + (s + 1) % segments])
    return verts, torch.tensor(faces)


def tube_weights(points):
    d2 = (points[:, :1] - torch.tensor(JOINT_X, dtype=points.dtype)) ** 2
    return torch.softmax(-d2 / 0.05, dim=-1)


@pytest.fixture(scope="module")
def grid():
    verts, faces = tube()
    return SkinningGrid.build(verts, faces, tube_weights(verts), resolution=48, padding=0.15)


def test_lookup_at_vertices_matches_vertex_weights(grid):
    verts, _ = tube()
    weights, dist = grid.lookup(verts)
    assert weights.shape == (len(verts), 3) and dist.shape == (len(verts),)
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(verts), dtype=verts.dtype))
    assert (weights - tube_weights(verts)).abs().max() < 0.05
    assert dist.max() < 0.02 and grid.is_human(dist).all()


def test_inside_is_human_and_far_points_are_not(grid):
    inside = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.02, -0.03]], dtype=torch.float64)
    _, d_in = grid.lookup(inside)
    assert (d_in == 0).all() and grid.is_human(d_in).all()
    far = torch.tensor([[0.0, 0.2, 0.0], [0.0, 0.0, -0.22], [5.0, 0.0, 0.0]], dtype=torch.float64)
    _, d_far = grid.lookup(far)
    assert not grid.is_human(d_far).any()
    assert d_far[0] == pytest.approx(0.12, abs=0.02)
    assert math.isinf(d_far[2])  # outside the grid


def test_forward_inverse_with_looked_up_weights():
    """Posed with the grid's weights at canonical points, inverse LBS returns them to 1e-5."""
    verts, faces = tube()
    grid = SkinningGrid.build(verts.float(), faces, tube_weights(verts).float(), resolution=32)
    joints = torch.tensor([[x, 0.0, 0.0] for x in JOINT_X])
    pose = torch.tensor([[[0.0, 0.0, 0.3], [0.0, 0.7, 0.4], [0.5, 0.0, 0.0]]])
    from sceneforge.core.rotations import angle_axis_to_matrix

    _, transforms = batch_rigid_transform(angle_axis_to_matrix(pose), joints[None], [-1, 0, 1])
    points = verts.float()[None] + 0.01 * torch.randn(1, len(verts), 3)
    weights, _ = grid.lookup(points)
    posed = lbs_forward(points, weights, transforms)
    assert (posed - points).abs().max() > 0.1
    assert (lbs_inverse(posed, weights, transforms) - points).abs().max() < 1e-5


def test_cache_file_reused_and_rebuilt_on_change(tmp_path):
    verts, faces = tube(rings=9, segments=8)
    weights = tube_weights(verts)
    path = tmp_path / "grid.pt"
    first = SkinningGrid.build(verts, faces, weights, resolution=16, cache_path=path)
    assert path.is_file()
    again = SkinningGrid.build(verts, faces, weights, resolution=16, cache_path=path)
    assert again.key == first.key
    torch.testing.assert_close(again.values, first.values)
    torch.testing.assert_close(again.indices, first.indices)
    moved = SkinningGrid.build(verts + 0.01, faces, weights, resolution=16, cache_path=path)
    assert moved.key != first.key
    assert SkinningGrid.load(path).key == moved.key


def test_top_k_keeps_largest_weights():
    verts, faces = tube(rings=9, segments=8)
    grid = SkinningGrid.build(verts, faces, tube_weights(verts), resolution=16, top_k=1)
    weights, _ = grid.lookup(verts[:4])
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, dtype=verts.dtype))


def test_points_only_grid_is_unsigned():
    verts, _ = tube(rings=9, segments=8)
    grid = SkinningGrid.build(verts, None, tube_weights(verts), resolution=16)
    _, dist = grid.lookup(torch.zeros(1, 3, dtype=torch.float64))
    assert dist[0] == pytest.approx(0.08, abs=0.03)  # centre of the tube: off the vertices


def test_gradcheck_lookup(grid):
    # points strictly inside cells (trilinear interpolation is smooth there)
    u = torch.tensor([[10.3, 11.6, 12.2], [20.7, 13.4, 9.55]], dtype=torch.float64)
    points = (grid.origin + grid.voxel * u).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: grid.lookup(p)[0], (points,))
    assert torch.autograd.gradcheck(lambda p: grid.lookup(p)[1], (points,))
