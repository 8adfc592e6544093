"""Adaptive density control: clone / split / prune decisions, Adam state surgery, opacity resets,
exact resume, and agreement with gsplat's DefaultStrategy."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from sceneforge.core.rotations import quat_wxyz_to_matrix
from sceneforge.fields.densify import Densifier, DensifyConfig

W, H = 100, 100  # normalisation: x * 50, y * 50


def as_params(t: dict[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    return {k: nn.Parameter(v.clone()) for k, v in t.items()}


def adam(params: dict[str, nn.Parameter]) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": [p], "name": k, "lr": 1e-3} for k, p in params.items()])


def warm(params, opt, seed: int = 0, steps: int = 2) -> None:
    """Give Adam non-zero moments (deterministic gradients)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        opt.zero_grad(set_to_none=True)


def four_gaussians() -> dict[str, torch.Tensor]:
    """A: small, high gradient (clone); B: large, high gradient (split); C: transparent
    (prune); D: high gradient once, low on average (kept as is)."""
    s = torch.tensor([0.005, 0.05, 0.005, 0.02]).log()[:, None].repeat(1, 3)
    s[1] = torch.tensor([0.05, 0.02, 0.01]).log()
    return {
        "means": torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]),
        "quats": torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, -0.3, 0.2], [1, 0, 0, 0], [1, 0, 0, 0]]),
        "scales": s,
        "opacities": torch.logit(torch.tensor([0.5, 0.6, 0.001, 0.7])),
        "sh0": torch.arange(12.0).reshape(4, 1, 3),
        "shN": torch.arange(4 * 3 * 3.0).reshape(4, 3, 3),
    }


def four_gaussian_stats(dens: Densifier) -> None:
    # pass 1: all visible; normalised gradient norms 5e-4, 5e-4, 0, 3e-4
    g1 = torch.tensor([[1e-5, 0], [0, 1e-5], [0, 0], [6e-6, 0]])
    dens.update_stats(g1, torch.tensor([3.0, 4.0, 2.0, 5.0]), W, H)
    # pass 2: A not visible (its huge gradient must not count), the others with zero gradient
    g2 = torch.tensor([[1.0, 1.0], [0, 0], [0, 0], [0, 0]])
    dens.update_stats(g2, torch.tensor([0.0, 4.0, 2.0, 5.0]), W, H)


def test_update_stats_normalisation_and_visibility():
    dens = Densifier()
    grad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]]) * 1e-5
    dens.update_stats(grad, torch.tensor([2, 0, 5]), 64, 48)
    st = dens.state
    expected = torch.tensor([32e-5, 0.0, math.hypot(3 * 32, 4 * 24) * 1e-5])
    torch.testing.assert_close(st["grad2d"], expected)
    assert st["count"].tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(st["radii2d"], torch.tensor([2 / 64, 0.0, 5 / 64]))
    # a batch of 2 cameras (loss averaged over them): gradients times 2; per-axis radii, a
    # Gaussian counts as visible only where both are > 0
    dens = Densifier()
    batch = torch.stack([grad, grad])
    radii = torch.tensor([[[2, 2], [1, 0], [5, 3]], [[0, 0], [1, 1], [1, 2]]])
    dens.update_stats(batch, radii, 64, 48)
    st = dens.state
    torch.testing.assert_close(st["grad2d"], torch.tensor([64e-5, 2 * 24e-5, 4 * expected[2]]))
    assert st["count"].tolist() == [1.0, 1.0, 2.0]
    torch.testing.assert_close(st["radii2d"], torch.tensor([2 / 64, 1 / 64, 5 / 64]))
    with pytest.raises(ValueError, match="radii"):
        dens.update_stats(grad, torch.ones(4), 64, 48)
    with pytest.raises(ValueError, match="statistics cover 3 Gaussians but the gradient has 2"):
        dens.update_stats(grad[:2], torch.ones(2), 64, 48)


def test_four_gaussians_clone_split_prune_and_adam_rows():
    params = as_params(four_gaussians())
    opt = adam(params)
    warm(params, opt)
    t = {k: p.detach().clone() for k, p in params.items()}
    before = {
        k: {m: opt.state[p][m].clone() for m in ("exp_avg", "exp_avg_sq")}
        for k, p in params.items()
    }
    dens = Densifier()
    four_gaussian_stats(dens)
    torch.testing.assert_close(dens.state["grad2d"][0], torch.tensor(5e-4))
    assert dens.state["count"].tolist() == [1.0, 2.0, 2.0, 2.0]

    out = dens.step(600, params, opt, scene_scale=1.0, generator=torch.Generator().manual_seed(3))
    assert out == {"cloned": 1, "split": 1, "pruned": 1, "num_gaussians": 5}
    # rows: A, D (kept), A' (clone), B1, B2 (children); C pruned
    src = [0, 3, 0, 1, 1]
    for k in ("quats", "sh0", "shN"):
        assert torch.equal(params[k], t[k][src]), k
    assert torch.equal(params["means"][:3], t["means"][[0, 3, 0]])
    assert torch.equal(params["opacities"], t["opacities"][src])
    assert torch.equal(params["scales"][:3], t["scales"][[0, 3, 0]])
    torch.testing.assert_close(params["scales"][3:], (t["scales"][1] - math.log(1.6)).expand(2, 3))
    # Adam moments follow the rows: kept ones unchanged, clone and children zero
    for k, p in params.items():
        grp = next(g for g in opt.param_groups if g["name"] == k)
        assert grp["params"] == [p] and p.requires_grad
        for m in ("exp_avg", "exp_avg_sq"):
            v = opt.state[p][m]
            assert torch.equal(v[:2], before[k][m][[0, 3]]), (k, m)
            assert not v[2:].any(), (k, m)
    assert len(opt.state) == len(params)  # the old Parameters' state is gone
    assert dens.state["count"].shape == (5,) and not dens.state["grad2d"].any()
    warm(params, opt, seed=1, steps=1)  # the optimizer still steps with the new shapes


def test_split_children_are_drawn_from_the_parent():
    m = 2000
    scales = torch.tensor([0.3, 0.1, 0.05])
    q = torch.tensor([0.8, 0.2, -0.4, 0.3])
    parent = torch.tensor([1.0, -2.0, 0.5])
    t = {
        "means": parent.expand(m, 3).clone(),
        "quats": q.expand(m, 4).clone(),
        "scales": scales.log().expand(m, 3).clone(),
        "opacities": torch.zeros(m),
        "sh0": torch.zeros(m, 1, 3),
        "shN": torch.zeros(m, 0, 3),
    }
    params = as_params(t)
    opt = adam(params)
    dens = Densifier()
    dens.update_stats(torch.full((m, 2), 1e-4), torch.ones(m), W, H)
    out = dens.step(700, params, opt, 1.0, torch.Generator().manual_seed(42))
    assert out == {"cloned": 0, "split": m, "pruned": 0, "num_gaussians": 2 * m}
    rot = quat_wxyz_to_matrix(q)
    local = (params["means"].detach() - parent) @ rot / scales  # R^T (x - mu) / s
    z = torch.randn((2, m, 3), generator=torch.Generator().manual_seed(42)).reshape(-1, 3)
    torch.testing.assert_close(local, z, atol=2e-5, rtol=1e-4)
    assert (local.abs() <= 3).float().mean() > 0.99  # within 3 sigma along each axis
    assert local.abs().max() < 5
    torch.testing.assert_close(local.mean(0), torch.zeros(3), atol=0.06, rtol=0)
    torch.testing.assert_close(local.std(0), torch.ones(3), atol=0.05, rtol=0)
    expected = (scales.log() - math.log(1.6)).expand(2 * m, 3)
    torch.testing.assert_close(params["scales"].detach(), expected)


def test_opacity_reset():
    n = 6
    t = four_gaussians()
    t = {k: torch.cat([v, v[:2]]) for k, v in t.items()}
    t["opacities"] = torch.logit(torch.tensor([0.9, 0.5, 0.007, 0.02, 0.0099, 0.6]))
    t["scales"] = torch.full((n, 3), math.log(0.02))
    params = as_params(t)
    opt = adam(params)
    warm(params, opt)
    t = {k: p.detach().clone() for k, p in params.items()}
    means_state = opt.state[params["means"]]["exp_avg"].clone()
    dens = Densifier()
    dens.update_stats(torch.zeros(n, 2), torch.ones(n), W, H)
    out = dens.step(2900, params, opt, 1.0, torch.Generator())  # refine, no reset
    assert out["num_gaussians"] == n and torch.equal(params["opacities"], t["opacities"])
    dens.update_stats(torch.zeros(n, 2), torch.ones(n), W, H)
    out = dens.step(3000, params, opt, 1.0, torch.Generator())  # refine, then reset
    assert out == {"cloned": 0, "split": 0, "pruned": 0, "num_gaussians": n}
    opa = torch.sigmoid(params["opacities"].detach())
    assert (opa <= 0.01).all()
    torch.testing.assert_close(opa[[0, 1, 3, 5]], torch.full((4,), 0.01))
    assert torch.equal(params["opacities"][[2, 4]], t["opacities"][[2, 4]])  # already below
    st = opt.state[params["opacities"]]
    assert not st["exp_avg"].any() and not st["exp_avg_sq"].any() and float(st["step"]) == 2
    assert torch.equal(opt.state[params["means"]]["exp_avg"], means_state)
    assert dens.is_reset_step(6000) and not dens.is_reset_step(0)
    assert not dens.is_reset_step(15_000) and not dens.is_reset_step(18_000)


def test_no_refinement_outside_the_window():
    t = four_gaussians()
    params = as_params(t)
    opt = adam(params)
    dens = Densifier(DensifyConfig(pause_refine_after_reset=200))
    for step in (0, 100, 500, 550, 601, 3100, 15_000, 15_100, 30_000):
        four_gaussian_stats(dens)
        objs = dict(params)
        out = dens.step(step, params, opt, 1.0, torch.Generator())
        assert out == {"cloned": 0, "split": 0, "pruned": 0, "num_gaussians": 4}, step
        assert all(params[k] is objs[k] for k in params), step
    out = dens.step(3200, params, opt, 1.0, torch.Generator())  # 200 steps after the reset
    assert out["num_gaussians"] == 5


def run(params, opt, dens, steps, seed):
    """Stats with large gradients, then ``dens.step``, at every step of ``steps``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in steps:
        n = params["means"].shape[0]
        g = torch.Generator().manual_seed(step)
        grad = torch.randn(n, 2, generator=g) * 1e-5
        dens.update_stats(grad, torch.rand(n, generator=g) * 10, W, H)
        out.append(dens.step(step, params, opt, 1.0, gen))
    return out


def test_state_dict_round_trip_gives_identical_next_decisions():
    t = four_gaussians()
    pa = as_params(t)
    oa = adam(pa)
    warm(pa, oa)
    da = Densifier()
    run(pa, oa, da, [597, 598, 599, 600, 650], seed=1)  # refined at 600, stats at 650
    # "checkpoint": model + optimizer + densifier state, restored into fresh objects
    buf = io.BytesIO()
    torch.save(da.state_dict(), buf)
    buf.seek(0)
    db = Densifier()
    db.load_state_dict(torch.load(buf, weights_only=True))
    pb = {k: nn.Parameter(p.detach().clone()) for k, p in pa.items()}
    ob = adam(pb)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))
    ra = run(pa, oa, da, [700, 750, 800], seed=2)
    rb = run(pb, ob, db, [700, 750, 800], seed=2)
    assert ra == rb and ra[0]["num_gaussians"] > 5
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
        assert torch.equal(oa.state[pa[k]]["exp_avg"], ob.state[pb[k]]["exp_avg"]), k
    for k in da.state:
        assert torch.equal(da.state[k], db.state[k]), k
    with pytest.raises(ValueError, match="keys"):
        db.load_state_dict({"grad2d": torch.zeros(3)})


def test_same_seed_same_result_other_seed_other_children():
    t = four_gaussians()
    results = []
    for seed in (5, 5, 6):
        params = as_params(t)
        opt = adam(params)
        run(params, opt, Densifier(), [600, 700, 800], seed=seed)
        results.append(params)
    for k in t:
        assert torch.equal(results[0][k], results[1][k]), k
    assert results[0]["means"].shape == results[2]["means"].shape
    assert not torch.equal(results[0]["means"], results[2]["means"])


def test_clear_errors():
    t = four_gaussians()
    params = as_params(t)
    opt = adam(params)
    with pytest.raises(RuntimeError, match="update_stats"):
        Densifier().step(600, params, opt, 1.0, torch.Generator())
    dens = Densifier()
    four_gaussian_stats(dens)
    no_sh = torch.optim.Adam([{"params": [params[k]], "name": k} for k in ("means", "quats")])
    with pytest.raises(ValueError, match="no param group named 'scales'"):
        dens.step(600, params, no_sh, 1.0, torch.Generator())
    with pytest.raises(ValueError, match="params lacks opacities"):
        dens.step(600, {k: v for k, v in params.items() if k != "opacities"}, opt, 1.0, None)


# ------------------------------------------------------------------------ gsplat agreement


def test_agrees_with_gsplat_default_strategy():
    """Same statistics, same Adam state, same split samples: gsplat's DefaultStrategy (its ops
    are plain torch and run on CPU tensors) and ours give the same Gaussians and moments."""
    strategy_mod = pytest.importorskip("gsplat.strategy")
    n, w, h, scene_scale = 200, 64, 48, 2.0
    g = torch.Generator().manual_seed(1)
    t = {
        "means": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "scales": math.log(0.01 * scene_scale) + 0.7 * torch.randn(n, 3, generator=g) - 0.5,
        "opacities": torch.logit(torch.rand(n, generator=g) * 0.3),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, 8, 3, generator=g),
    }
    t["scales"][:20] = math.log(0.4)  # too big after the first reset, even when split
    for cfg in ({}, {"refine_scale2d_stop_iter": 4000, "revised_opacity": True}):
        pa, pb = as_params(t), as_params(t)
        oa = {k: torch.optim.Adam([{"params": [p], "name": k}], lr=1e-3) for k, p in pa.items()}
        ob = adam(pb)
        gg = torch.Generator().manual_seed(2)
        for _ in range(2):  # identical Adam moments
            for k in pa:
                pa[k].grad = torch.randn(pa[k].shape, generator=gg)
                pb[k].grad = pa[k].grad.clone()
                oa[k].step()
            ob.step()
        strategy = strategy_mod.DefaultStrategy(**cfg)
        state = strategy.initialize_state(scene_scale=scene_scale)
        dens = Densifier(DensifyConfig(**cfg))
        decided = []
        for step in (598, 599, 600, 3099, 3100):
            m = pa["means"].shape[0]
            grad = torch.randn(1, m, 2, generator=gg) * 1.5e-5
            radii = (torch.rand(1, m, 2, generator=gg) * 8).int()
            radii *= (torch.rand(1, m, 1, generator=gg) > 0.2).int()
            means2d = torch.zeros(1, m, 2, requires_grad=True)
            means2d.grad = grad.clone()
            info = {"width": w, "height": h, "n_cameras": 1, "radii": radii}
            info.update(gaussian_ids=None, means2d=means2d)
            torch.manual_seed(100 + step)  # gsplat draws its split samples from the global RNG
            strategy.step_post_backward(pa, oa, state, step, info)
            dens.update_stats(grad[0], radii[0], w, h)
            out = dens.step(step, pb, ob, scene_scale, torch.Generator().manual_seed(100 + step))
            decided.append(out)
            for k in pa:
                assert pa[k].shape == pb[k].shape, (cfg, step, k)
                if k == "means":  # children: same samples, rotation matrices 1 ulp apart
                    torch.testing.assert_close(pb[k], pa[k], atol=1e-6, rtol=0)
                else:
                    assert torch.equal(pa[k], pb[k]), (cfg, step, k)
                for mom in ("exp_avg", "exp_avg_sq"):
                    assert torch.equal(oa[k].state[pa[k]][mom], ob.state[pb[k]][mom]), (step, k)
        # the comparison covers all three decisions
        assert all(decided[i][c] > 0 for i in (2, 4) for c in ("cloned", "split", "pruned"))
