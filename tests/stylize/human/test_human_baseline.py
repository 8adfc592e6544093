"""The no-field baseline (fitted mesh + back-projected colours) and the person PSNR."""

from __future__ import annotations

import math

import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.meshes import Mesh, sphere_mesh
from sceneforge.core.metrics import psnr
from sceneforge.core.raster import Shading, render_view
from sceneforge.core.synthetic import look_at
from sceneforge.stylize.human.baseline import (
    backproject_colors,
    fill_unseen,
    render_baseline,
)
from sceneforge.stylize.human.metrics import person_psnr

SIZE = 48


def _cameras(azimuths_deg: list[float]) -> Cameras:
    az = torch.tensor(azimuths_deg, dtype=torch.float64).deg2rad()
    eye = torch.stack([2.0 * az.cos(), 2.0 * az.sin(), 0.4 * torch.ones_like(az)], -1)
    cfw = look_at(eye, torch.zeros(len(az), 3, dtype=torch.float64))
    f = SIZE / 2 / math.tan(math.radians(25))
    n = len(az)
    return Cameras(
        "PINHOLE",
        torch.tensor([f, f, SIZE / 2, SIZE / 2], dtype=torch.float64).expand(n, 4).clone(),
        torch.full((n,), SIZE),
        torch.full((n,), SIZE),
        cfw,
    )


def _sphere() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = sphere_mesh(radius=0.5, segments=32)
    v = m.vertices
    colors = (
        0.5 + 0.4 * torch.stack([(3 * v[:, 0]).sin(), (3 * v[:, 1]).cos(), v[:, 2]], -1)
    ).float()
    return v, m.faces, colors


def _render(v, faces, colors, cams, i):
    mesh = Mesh(v, faces, vertex_colors=colors)
    out = render_view(mesh, cams, i, ssaa=3, shading=Shading(mode="albedo"))
    return out.color, out.face >= 0


def test_backprojected_colours_match_the_surface_and_render_new_views():
    v, faces, colors = _sphere()
    cams = _cameras([0, 90, 180, 270, 45])
    renders = [_render(v, faces, colors, cams, i) for i in range(5)]
    images = torch.stack([r[0].permute(2, 0, 1) for r in renders[:4]])
    masks = torch.stack([r[1] for r in renders[:4]])
    vc = backproject_colors(v.expand(4, -1, -1), faces, images, cams[[0, 1, 2, 3]], masks)
    assert vc.seen.float().mean() > 0.75  # the caps are seen edge-on only
    err = (vc.colors[vc.seen] - colors[vc.seen]).abs().mean()
    assert err < 0.08, err  # bilinear samples of 48-px images
    # a view between the training ones: the baseline re-renders the surface closely
    color, cover = render_baseline(v, faces, vc.colors, cams, 4, ssaa=3)
    gt, gt_mask = renders[4]
    assert person_psnr(color, gt, gt_mask, dilate=0) > 24.0
    assert (cover > 0.5).eq(gt_mask).float().mean() > 0.99
    # wrong colours lose: the metric can fail
    assert person_psnr(color.flip(0), gt, gt_mask, dilate=0) < 20.0


def test_occluded_vertices_are_not_sampled():
    v, faces, _ = _sphere()
    front = v[:, 0] > 0  # the camera at azimuth 0 looks at the +x side
    colors = torch.where(front[:, None], torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0]))
    cams = _cameras([0])
    img, mask = _render(v, faces, colors, cams, 0)
    vc = backproject_colors(v[None], faces, img.permute(2, 0, 1)[None], cams, mask[None])
    assert bool(vc.seen.any())
    assert not bool((vc.seen & (v[:, 0] < -0.05)).any())  # nothing behind the sphere is seen
    # the unseen back took its colour from the seen neighbours (red), not the truth (blue)
    back = v[:, 0] < -0.3
    assert vc.colors[back, 0].mean() > 0.5


def test_fill_unseen_diffuses_neighbour_colours():
    faces = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    colors = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 0], [0, 0, 1.0], [0, 0, 0]])
    seen = torch.tensor([True, True, False, True, False])
    out = fill_unseen(colors, seen, faces, steps=100)
    assert torch.equal(out[seen], colors[seen])
    assert 0.3 < float(out[2, 0]) < 0.8 and float(out[4, 2]) > 0.5  # 4 only touches 2 and 3


def test_person_psnr_counts_the_dilated_mask_only():
    gt = torch.zeros(16, 16, 3)
    person = torch.zeros(16, 16, dtype=torch.bool)
    person[6:10, 6:10] = True
    pred = gt.clone()
    pred[0, 0] = 1.0  # far from the person: ignored
    assert person_psnr(pred, gt, person) == psnr(gt, gt)
    pred[4, 4] = 1.0  # inside the 4-px band: counted
    assert person_psnr(pred, gt, person) < 30.0
    assert (
        math.isinf(person_psnr(pred, gt, person, dilate=1))
        or person_psnr(pred, gt, person, dilate=1) > 100
    )
