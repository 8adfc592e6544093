"""Observation -> canonical mapping on the tiny SMPL-format body (no SMPL file shipped)."""

from __future__ import annotations

import pytest
import torch

from sceneforge.stylize.human import SMPLModel, lbs_forward
from sceneforge.stylize.human.canonical import (
    NonRigidResidual,
    canonicalize,
    nearest_bone,
    signed_distance,
)


@pytest.fixture(scope="module")
def body(tiny_smpl_dir):
    model = SMPLModel.from_path(tiny_smpl_dir, dtype=torch.float64, pose_correctives=False)
    grid = model.skinning_grid(resolution=48, cache=False)
    return model, grid


def _posed(model, seed=0, scale=0.35):
    gen = torch.Generator().manual_seed(seed)
    pose = scale * torch.randn(1, 24, 3, generator=gen, dtype=torch.float64)
    transl = torch.tensor([[0.1, -0.05, 0.2]], dtype=torch.float64)
    return model(pose, transl=transl)


def _canonical_points(out, grid, n=400, seed=1):
    """Points near the canonical surface (vertices jittered by up to 1 cm)."""
    gen = torch.Generator().manual_seed(seed)
    v = out.canonical_vertices
    idx = torch.randint(v.shape[0], (n,), generator=gen)
    return v[idx] + 0.01 * (2 * torch.rand(n, 3, generator=gen, dtype=v.dtype) - 1)


def test_posed_points_map_back_to_canonical(body):
    model, grid = body
    out = _posed(model)
    x_c = _canonical_points(out, grid)
    w, _ = grid.lookup(x_c)
    x_o = lbs_forward(x_c, w, out.bone_transforms[0])
    assert (x_o - x_c).norm(dim=-1).max() > 0.1  # the pose really moves them
    m = canonicalize(x_o, out.bone_transforms[0], grid, out.canonical_joints, model.parents)
    err = (m.points - x_c).norm(dim=-1)
    assert m.valid.float().mean() > 0.97, m.residual.max()
    assert err[m.valid].max() < 1e-4
    assert torch.quantile(err, 0.95) < 1e-3
    # the blended transform maps the canonical point to the sample
    back = (m.transforms[:, :3, :3] @ m.points[:, :, None])[..., 0] + m.transforms[:, :3, 3]
    torch.testing.assert_close(back[m.valid], x_o[m.valid], atol=1e-3, rtol=0)


def test_far_points_are_not_human(body):
    model, grid = body
    out = _posed(model)
    far = torch.tensor(
        [[0.0, 0.0, 1.0], [1.5, 1.5, 0.0], [0.4, -0.2, -0.6], [5.0, 5.0, 5.0]],
        dtype=torch.float64,
    )
    m = canonicalize(far, out.bone_transforms[0], grid, out.canonical_joints, model.parents)
    assert not m.valid.any()
    empty = canonicalize(far[:0], out.bone_transforms[0], grid, out.canonical_joints, model.parents)
    assert empty.points.shape == (0, 3) and empty.valid.shape == (0,)


def test_nearest_bone_picks_the_segment():
    start = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    end = torch.tensor([[1.0, 0, 0], [1.0, 1, 0]])
    pts = torch.tensor([[0.5, 0.1, 0.0], [1.1, 0.6, 0.0], [-1.0, 0.0, 0.0]])
    assert nearest_bone(pts, start, end).tolist() == [0, 1, 0]


def test_canonical_point_gradcheck(body):
    """The differentiable step: gradients w.r.t. the samples and the bone transforms."""
    model, grid = body
    out = _posed(model, scale=0.2)
    x_c = _canonical_points(out, grid, n=5)
    w, _ = grid.lookup(x_c)
    x_o = lbs_forward(x_c, w, out.bone_transforms[0]).detach().requires_grad_(True)
    tr = out.bone_transforms[0].detach().clone().requires_grad_(True)
    joints, parents = out.canonical_joints, model.parents

    def fn(x, t):
        return canonicalize(x, t, grid, joints, parents).points

    assert torch.autograd.gradcheck(fn, (x_o, tr), eps=1e-6, atol=1e-5, fast_mode=True)


def test_signed_distance_matches_grid_and_gradcheck(body):
    model, grid = body
    v = model().canonical_vertices
    _, dist = grid.lookup(v)
    sd = signed_distance(grid, v)
    torch.testing.assert_close(sd.clamp_min(0), dist, atol=1e-6, rtol=0)
    # inside a limb octahedron: negative; far outside the grid: grows with the distance
    node = torch.nonzero(grid.sdf == grid.sdf.min())[:1].double()
    at_node = grid.origin + grid.voxel * node
    assert signed_distance(grid, at_node) == pytest.approx(float(grid.sdf.min()), abs=1e-6)
    assert signed_distance(grid, at_node) < 0
    far = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 6.0]], dtype=torch.float64)
    s_far = signed_distance(grid, far)
    assert s_far[1] - s_far[0] == pytest.approx(1.0, abs=1e-6)
    x = (v[:4] + 0.013).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: signed_distance(grid, p), (x,), eps=1e-6)


def test_nonrigid_residual_starts_at_zero_and_gradcheck():
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    res = NonRigidResidual(box, code_dim=4).double()
    x = torch.rand(6, 3, dtype=torch.float64)
    code = torch.randn(6, 4, dtype=torch.float64)
    assert res(x, code).abs().max() == 0
    torch.nn.init.normal_(res.mlp[-1].weight, std=0.1)
    x.requires_grad_(True)
    code.requires_grad_(True)
    assert torch.autograd.gradcheck(res, (x, code), eps=1e-6)
    assert res(x, code).abs().max() <= res.max_offset


def test_grid_blend_matches_lookup_and_blend(body):
    from sceneforge.stylize.human import blend_transforms
    from sceneforge.stylize.human.canonical import grid_blend

    model, grid = body
    out = _posed(model)
    x = _canonical_points(out, grid, n=50)
    x = torch.cat([x, torch.tensor([[0.0, 0.0, 4.0]], dtype=torch.float64)])  # outside
    w, dist = grid.lookup(x)
    blended, d2 = grid_blend(grid, x, out.bone_transforms[0])
    torch.testing.assert_close(blended, blend_transforms(w, out.bone_transforms[0]))
    torch.testing.assert_close(d2, dist)
