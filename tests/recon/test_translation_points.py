"""Which tracks feed translation averaging, and the agreement check after it."""

from __future__ import annotations

import torch

from sceneforge.recon.global_sfm import (
    TranslationAveragingConfig,
    translation_agreement_groups,
    translation_points,
)


def _vis() -> torch.Tensor:
    """6 images; tracks 0-9 long and only in images 0-3; image 5 (a fast turn) sees only
    three short tracks (10-12); track 13 is seen once."""
    vis = torch.zeros(14, 6, dtype=torch.bool)
    vis[:10, :4] = True
    vis[:10, 4] = torch.arange(10) % 2 == 0
    vis[10:13, 4:6] = True
    vis[13, 0] = True
    return vis


def test_every_image_keeps_its_longest_tracks():
    vis, solved = _vis(), torch.ones(6, dtype=torch.bool)
    only_global = translation_points(
        vis, solved, TranslationAveragingConfig(max_points=5, points_per_image=0)
    )
    # ties (tracks 0, 2, 4, ... have length 5) are broken by track index
    assert only_global.tolist() == [0, 2, 4, 6, 8]
    per_image = translation_points(
        vis, solved, TranslationAveragingConfig(max_points=5, points_per_image=2)
    )
    assert set(per_image.tolist()) == {0, 2, 4, 6, 8, 10, 11}  # image 5 gets its two longest
    assert bool(vis[per_image][:, 5].sum() >= 2)
    # unsolved images do not pull tracks in; single-image tracks never count
    solved[5] = False
    cfg = TranslationAveragingConfig(max_points=5, points_per_image=2)
    assert 13 not in translation_points(vis, solved, cfg).tolist()


def _line(n: int = 4):
    R = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
    centers = torch.stack([torch.tensor([float(k), 0.0, 0.0]) for k in range(n)]).double()
    edges = torch.tensor([[k, k + 1] for k in range(n - 1)])
    # t_rel = R_j (c_i - c_j), unit
    t_rel = torch.nn.functional.normalize(centers[edges[:, 0]] - centers[edges[:, 1]], dim=-1)
    return R, centers, edges, t_rel


def test_agreement_groups_find_a_misplaced_block():
    R, centers, edges, t_rel = _line()
    used, solved = torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    assert translation_agreement_groups(R, centers, edges, t_rel, used, solved) == 1
    moved = centers.clone()
    moved[2:] += torch.tensor([0.0, 3.0, 0.0], dtype=torch.float64)  # block 2-3 shifted sideways
    assert translation_agreement_groups(R, moved, edges, t_rel, used, solved) == 2
    # a pair that gave no constraint cannot link
    assert (
        translation_agreement_groups(
            R, centers, edges, t_rel, torch.tensor([1, 0, 1]).bool(), solved
        )
        == 2
    )
