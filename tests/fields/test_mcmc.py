"""3DGS-MCMC (fields/mcmc.py): Eq. 9 against the paper's double sum, the position noise against
gsplat's torch covariance, relocation / growth with their optimiser moments, determinism, and
training with exact resume in the one trainer; gsplat's CUDA relocation kernel on a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sceneforge.core.synthetic import turntable_scene
from sceneforge.fields.gaussian_model import GaussiansConfig
from sceneforge.fields.mcmc import (
    N_MAX,
    MCMCConfig,
    MCMCStrategy,
    mcmc_regularizers,
    position_noise,
    relocated_opacity_scale,
    relocated_opacity_scale_reference,
)
from sceneforge.fields.trainer import Trainer, TrainerConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eq9_closed_form_matches_the_papers_double_sum():
    gen = torch.Generator().manual_seed(0)
    ratios = torch.tensor([1, 2, 3, 4, 7, 12, 25, 40, N_MAX, N_MAX + 9])
    o = torch.rand(ratios.numel(), generator=gen, dtype=torch.float64) * 0.9 + 0.05
    s = torch.rand(ratios.numel(), 3, generator=gen, dtype=torch.float64) + 0.1
    new_o, new_s = relocated_opacity_scale(o, s, ratios)
    ref_o, ref_s = relocated_opacity_scale_reference(o, s, ratios)
    torch.testing.assert_close(new_o, ref_o, rtol=1e-12, atol=0)
    # the literal double sum cancels catastrophically for large r; the closed form does not
    small = ratios <= 25
    torch.testing.assert_close(new_s[small], ref_s[small], rtol=1e-9, atol=0)
    # one copy is the Gaussian itself; r copies composite back to the old opacity
    assert new_o[0] == o[0] and torch.equal(new_s[0], s[0])
    r = ratios.clamp(max=N_MAX).double()
    torch.testing.assert_close(1 - (1 - new_o) ** r, o, rtol=1e-12, atol=1e-12)
    assert bool((new_o[1:] < o[1:]).all())


def test_position_noise_uses_the_covariance_and_spares_opaque_gaussians():
    gen = torch.Generator().manual_seed(1)
    n = 64
    quats = torch.randn(n, 4, generator=gen)
    log_s = torch.randn(n, 3, generator=gen) * 0.5 - 2
    z = torch.randn(n, 3, generator=gen)
    transparent = torch.full((n,), -3.0)  # opacity 0.047
    opaque = torch.full((n,), 8.0)  # opacity 0.9997
    noise = position_noise(quats, log_s, transparent, z, 2.0)
    assert float(position_noise(quats, log_s, opaque, z, 2.0).abs().max()) < 1e-6 * float(
        noise.abs().max()
    )
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")
    covars, _ = torch_impl._quat_scale_to_covar_preci(
        quats, torch.exp(log_s), compute_covar=True, compute_preci=False, triu=False
    )
    gate = torch.sigmoid(100 * ((1 - torch.sigmoid(transparent)) - 0.995))
    expected = torch.einsum("nij,nj->ni", covars, z * gate[:, None] * 2.0)
    torch.testing.assert_close(noise, expected, rtol=1e-5, atol=1e-7)


def _set(n: int, dead: int, gen: torch.Generator):
    params = torch.nn.ParameterDict(
        {
            "means": torch.randn(n, 3, generator=gen),
            "quats": torch.randn(n, 4, generator=gen),
            "scales": torch.randn(n, 3, generator=gen) - 2,
            "opacities": torch.rand(n, generator=gen) * 4 - 2,
            "sh0": torch.randn(n, 1, 3, generator=gen),
        }
    )
    with torch.no_grad():
        params["opacities"][:dead] = -9.0  # opacity 1.2e-4: dead
    opt = torch.optim.Adam([{"name": k, "params": [p], "lr": 1e-3} for k, p in params.items()])
    loss = sum(p.pow(2).sum() for p in params.values())
    loss.backward()
    opt.step()
    return params, opt


def _check_copies(params, opt, before, moments, fresh, sources, n_total):
    """Every row in ``fresh`` is a copy of one row in ``sources`` (same mean, opacity, scales,
    rotation, colour), both with zero Adam moments; rows neither fresh nor drawn keep their
    values and moments; each drawn row and its copies composite to its old opacity."""
    means = params["means"].detach()
    m_after = opt.state[params["means"]]["exp_avg"]
    assert m_after.shape == (n_total, 3)
    drawn = set()
    for i in fresh.tolist():
        src = sources[(means[sources] == means[i]).all(-1)]
        assert src.numel() == 1, i
        j = int(src)
        drawn.add(j)
        for k in ("opacities", "scales", "quats", "sh0"):
            assert torch.equal(params[k].detach()[i], params[k].detach()[j]), (i, k)
        assert bool((m_after[i] == 0).all()) and bool((m_after[j] == 0).all())
    untouched = [i for i in sources.tolist() if i not in drawn]
    assert untouched
    for k in ("means", "opacities", "scales"):
        assert torch.equal(params[k].detach()[untouched], before[k][untouched]), k
    assert torch.equal(m_after[untouched], moments["means"][untouched])
    opa = torch.sigmoid(params["opacities"].detach())
    for j in drawn:
        copies = int((means == means[j]).all(-1).sum())
        assert copies >= 2
        o_old = float(torch.sigmoid(before["opacities"][j]))
        assert abs((1 - (1 - float(opa[j])) ** copies) - o_old) < 1e-5
        ratio = torch.exp(params["scales"].detach()[j] - before["scales"][j])
        assert bool((ratio < 1.5).all()) and bool((ratio > 0).all())


def _snapshot(params, opt):
    before = {k: v.detach().clone() for k, v in params.items()}
    moments = {k: opt.state[p]["exp_avg"].clone() for k, p in params.items()}
    return before, moments


def test_dead_gaussians_are_relocated_onto_live_ones():
    gen = torch.Generator().manual_seed(2)
    n, dead = 200, 30
    params, opt = _set(n, dead, gen)
    before, moments = _snapshot(params, opt)
    cfg = MCMCConfig(refine_start_iter=0, refine_every=10, noise_lr=0.0, cap_max=n)
    counts = MCMCStrategy(cfg).step(10, params, opt, 1.0, torch.Generator().manual_seed(3))
    assert counts == {"relocated": dead, "added": 0, "num_gaussians": n}
    assert bool((torch.sigmoid(params["opacities"].detach()) > cfg.min_opacity).all())
    _check_copies(params, opt, before, moments, torch.arange(dead), torch.arange(dead, n), n)
    # not a refine step: nothing moves (no noise either with noise_lr 0)
    after = {k: v.detach().clone() for k, v in params.items()}
    counts = MCMCStrategy(cfg).step(11, params, opt, 1.0, torch.Generator().manual_seed(3))
    assert counts == {"relocated": 0, "added": 0, "num_gaussians": n}
    assert all(torch.equal(after[k], params[k].detach()) for k in after)


def test_growth_adds_copies_of_opacity_weighted_draws_up_to_the_cap():
    gen = torch.Generator().manual_seed(12)
    n = 200
    params, opt = _set(n, 0, gen)
    before, moments = _snapshot(params, opt)
    cfg = MCMCConfig(refine_start_iter=0, refine_every=10, noise_lr=0.0, cap_max=207)
    counts = MCMCStrategy(cfg).step(20, params, opt, 1.0, torch.Generator().manual_seed(3))
    assert counts == {"relocated": 0, "added": 7, "num_gaussians": 207}  # min(cap, 1.05 n)
    _check_copies(params, opt, before, moments, torch.arange(n, 207), torch.arange(n), 207)
    counts = MCMCStrategy(cfg).step(30, params, opt, 1.0, torch.Generator().manual_seed(3))
    assert counts["added"] == 0 and counts["num_gaussians"] == 207  # at the cap


def test_noise_is_drawn_from_the_generator_and_the_means_lr():
    gen = torch.Generator().manual_seed(4)
    params, opt = _set(50, 0, gen)
    runs = []
    for _ in range(2):
        p = torch.nn.ParameterDict({k: v.detach().clone() for k, v in params.items()})
        o = torch.optim.Adam([{"name": k, "params": [v], "lr": 1e-3} for k, v in p.items()])
        MCMCStrategy(MCMCConfig()).step(1, p, o, 1.0, torch.Generator().manual_seed(5))
        runs.append(p["means"].detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], params["means"].detach())
    for g in opt.param_groups:
        g["lr"] = 0.0
    still = params["means"].detach().clone()
    MCMCStrategy(MCMCConfig()).step(1, params, opt, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(params["means"].detach(), still)


def test_regularizers_are_the_papers_l1_terms():
    logits, log_s = torch.tensor([0.0, 2.0]), torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
    reg = mcmc_regularizers(MCMCConfig(opacity_reg=0.1, scale_reg=0.2), logits, log_s)
    assert float(reg["opacity_reg"]) == pytest.approx(0.1 * float(torch.sigmoid(logits).mean()))
    assert float(reg["scale_reg"]) == pytest.approx(0.2 * 2.0)
    assert mcmc_regularizers(MCMCConfig(opacity_reg=0, scale_reg=0), logits, log_s) == {}


def _trainer_cfg() -> TrainerConfig:
    mcmc = MCMCConfig(refine_start_iter=5, refine_every=10, cap_max=400)
    return TrainerConfig(
        model="gaussians",
        max_steps=40,
        progress=False,
        tensorboard=False,
        device="cpu",
        scene_box="bounded",
        render=dataclasses.replace(TrainerConfig().render, background="black"),
        gaussians=GaussiansConfig(
            sh_degree=1,
            sh_degree_interval=20,
            strategy="mcmc",
            mcmc=mcmc,
            init="random",
            num_random=300,
        ),
    )


def test_mcmc_trains_grows_to_the_cap_and_resumes_exactly(tmp_path):
    scene = turntable_scene(num_views=8, size=32)
    straight = Trainer(scene, _trainer_cfg())
    assert straight.cfg.gaussians.init_opacity == 0.5  # the mcmc preset, written out
    assert straight.model.num_gaussians == 300
    first = straight.train(max_steps=1)["loss"]
    last = straight.train()
    assert last["loss"] < first
    assert 300 < straight.model.num_gaussians <= 400
    assert straight.describe()["strategy"] == "mcmc"
    half = Trainer(scene, _trainer_cfg(), tmp_path)
    half.train(max_steps=25)
    half.save_checkpoint(tmp_path / "c.pt")
    back = Trainer.from_checkpoint(tmp_path / "c.pt", scene)
    back.train()
    a = {k: v for k, v in straight.model.state_dict().items() if torch.is_tensor(v)}
    b = {k: v for k, v in back.model.state_dict().items() if torch.is_tensor(v)}
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a checkpoint of one strategy does not silently resume as the other
    cfg = _trainer_cfg()
    cfg.gaussians.strategy = "default"
    other = Trainer(scene, cfg)
    with pytest.raises(ValueError, match="mcmc"):
        other.model.set_extra_state(back.model.get_extra_state())


def test_agrees_with_gsplat_mcmc_strategy(monkeypatch):
    """Same parameters, moments and random stream: gsplat's MCMCStrategy on CPU tensors (its
    CUDA Eq. 9 kernel swapped for ours, its CUDA covariance for its torch reference) and ours
    relocate, grow and perturb alike; the moments differ only where ours also zeroes them."""
    strategy_mod = pytest.importorskip("gsplat.strategy")
    ops = pytest.importorskip("gsplat.strategy.ops")
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    monkeypatch.setattr(
        ops,
        "compute_relocation",
        lambda opacities, scales, ratios, binoms: relocated_opacity_scale(
            opacities, scales, ratios.clamp(1, N_MAX)
        ),
    )
    monkeypatch.setattr(ops, "quat_scale_to_covar_preci", torch_impl._quat_scale_to_covar_preci)
    gen = torch.Generator().manual_seed(9)
    params, opt = _set(300, 40, gen)
    pa = torch.nn.ParameterDict({k: v.detach().clone() for k, v in params.items()})
    oa = {k: torch.optim.Adam([{"params": [p], "name": k}], lr=1e-3) for k, p in pa.items()}
    for k, p in pa.items():
        oa[k].state[p] = {m: v.clone() for m, v in opt.state[params[k]].items()}
    theirs = strategy_mod.MCMCStrategy(refine_start_iter=0, refine_every=100, cap_max=310)
    state = theirs.initialize_state()
    ours = MCMCStrategy(MCMCConfig(refine_start_iter=0, refine_every=100, cap_max=310))
    for step, lr in ((100, 1e-4), (101, 5e-5)):
        torch.manual_seed(step)  # gsplat draws from the global RNG
        theirs.step_post_backward(pa, oa, state, step, {}, lr=lr)
        for g in opt.param_groups:
            g["lr"] = lr
        counts = ours.step(step, params, opt, 1.0, torch.Generator().manual_seed(step))
        for k in pa:
            assert pa[k].shape == params[k].shape, (step, k)
            torch.testing.assert_close(params[k].detach(), pa[k].detach(), rtol=1e-6, atol=1e-7)
            mine, gs = opt.state[params[k]]["exp_avg"], oa[k].state[pa[k]]["exp_avg"]
            same = (mine == gs).reshape(mine.shape[0], -1).all(-1)
            assert bool((mine[~same] == 0).all()), (step, k)  # only our extra zeroing
            if k == "means" and step == 100:
                assert 0 < int((~same).sum()) <= 2 * 40 + 10
    assert counts["num_gaussians"] == 310


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_eq9_matches_gsplats_cuda_relocation_kernel():
    relocation = pytest.importorskip("gsplat.relocation", reason="gsplat is not installed")
    import math

    gen = torch.Generator().manual_seed(6)
    n = 500
    ratios = torch.randint(1, 9, (n,), generator=gen)
    o = torch.rand(n, generator=gen) * 0.9 + 0.05
    s = torch.rand(n, 3, generator=gen) + 0.1
    binoms = torch.tensor([[math.comb(a, b) for b in range(N_MAX)] for a in range(N_MAX)]).float()
    go, gs = relocation.compute_relocation(o.cuda(), s.cuda(), ratios.cuda(), binoms.cuda())
    ours_o, ours_s = relocated_opacity_scale(o, s, ratios)
    torch.testing.assert_close(go.cpu(), ours_o, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gs.cpu(), ours_s, rtol=1e-3, atol=1e-6)
    # and the strategy itself runs on CUDA tensors
    gen = torch.Generator().manual_seed(7)
    params, opt = _set(100, 10, gen)
    params = torch.nn.ParameterDict({k: v.detach().cuda() for k, v in params.items()})
    opt = torch.optim.Adam([{"name": k, "params": [p], "lr": 1e-3} for k, p in params.items()])
    counts = MCMCStrategy(MCMCConfig(refine_start_iter=0, refine_every=1)).step(
        1, params, opt, 1.0, torch.Generator(device="cuda").manual_seed(8)
    )
    assert counts["num_gaussians"] == 105 and params["means"].is_cuda
