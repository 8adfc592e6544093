"""Bundle adjustment: Jacobians, convergence, gauge, freezing, robust losses, gradients."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sceneforge.core.cameras import MODEL_PARAMS
from sceneforge.recon.ba import (
    BAOptions,
    bundle_adjust,
    evaluate_cost,
    make_synthetic_problem,
    perturb_problem,
    plot_cost,
    project_observations,
    project_with_jacobians,
)

MODELS = ["BAL", "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"]
TIGHT = dict(function_tolerance=1e-15, gradient_tolerance=1e-14, parameter_tolerance=1e-15)


@pytest.mark.parametrize("model", MODELS)
def test_analytic_jacobians_match_autograd(model):
    p = make_synthetic_problem(model, 3, 4)
    c, k = p.cam_idx, p.point_idx
    args = (p.rotation[c], p.translation[c], p.intrinsics[c], p.points[k])
    pix, depth, jpose, jintr, jpt = project_with_jacobians(model, *args)
    ref, ref_depth = project_observations(model, *args)
    torch.testing.assert_close(pix, ref, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(depth, ref_depth)
    assert bool((depth > 0).all())
    # The per-camera path (rotation matrices and SO(3) Jacobians once per camera) agrees.
    per_cam = project_with_jacobians(
        model, p.rotation, p.translation, p.intrinsics, p.points[k], cam_index=c
    )
    for a, b in zip(per_cam, (pix, depth, jpose, jintr, jpt)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)
    for i in range(0, len(c), 3):
        jac = torch.autograd.functional.jacobian(
            lambda r, t, f, x: project_observations(model, r[None], t[None], f[None], x[None])[0][
                0
            ],
            tuple(a[i] for a in args),
        )
        torch.testing.assert_close(jpose[i], torch.cat([jac[0], jac[1]], 1), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(jintr[i], jac[2], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(jpt[i], jac[3], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("model", ["BAL", "OPENCV"])
def test_chunked_projection_matches_per_observation(model):
    """Runs of ``chunk`` slots sharing a camera (BA's slot layout) give the same columns."""
    from sceneforge.recon.ba.residuals import projection_columns
    from sceneforge.recon.ba.structure import pad_by_camera

    p = make_synthetic_problem(model, 4, 30, visibility=0.6)
    src, pads = pad_by_camera(p.cam_idx.numpy(), 8)
    cam, pt = p.cam_idx[src], p.point_idx[src]
    full = projection_columns(
        model, p.rotation, p.translation, p.intrinsics, p.points, cam, True, True, pt
    )
    chunked = projection_columns(
        model, p.rotation, p.translation, p.intrinsics, p.points, cam[::8], True, True, pt, 8
    )
    for a, b in zip(
        [full.u, full.v, full.depth, *full.cam_u, *full.cam_v, *full.point_u, *full.point_v],
        [chunked.u, chunked.v, chunked.depth, *chunked.cam_u, *chunked.cam_v]
        + [*chunked.point_u, *chunked.point_v],
        strict=True,
    ):
        assert a.shape == b.shape == (len(src),)
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-12)


def test_slot_layout_pads_each_camera_to_whole_chunks():
    from sceneforge.recon.ba.structure import pad_by_camera

    cam = np.array([2, 0, 1, 0, 2, 2, 0, 1, 2, 2, 2])
    src, pads = pad_by_camera(cam, 4)
    slot_cam = cam[src]
    assert len(src) % 4 == 0 and bool((np.diff(slot_cam) >= 0).all())
    # every run is a whole number of chunks; every observation has exactly one real slot
    _, counts = np.unique(slot_cam, return_counts=True)
    assert bool((counts % 4 == 0).all())
    real = np.setdiff1d(np.arange(len(src)), pads)
    assert sorted(src[real].tolist()) == list(range(len(cam)))
    # real slots keep the input order within a camera (stable); pads repeat their camera
    assert src[real].tolist() == [1, 3, 6, 2, 7, 0, 4, 5, 8, 9, 10]
    assert len(pads) == len(src) - len(cam) == 1 + 2 + 2


def test_rotation_jacobian_near_zero_angle():
    x = torch.randn(5, 3, dtype=torch.float64)
    rot = torch.zeros(5, 3, dtype=torch.float64)
    rot[1:] = 1e-6 * torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64).expand(5, 3)
    intr = torch.tensor([100.0, 10.0, 20.0, 30.0], dtype=torch.float64).expand(5, 4)
    _, _, jpose, _, _ = project_with_jacobians("PINHOLE", rot, t, intr, x)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(
            lambda r, xi=x[i : i + 1]: project_observations(
                "PINHOLE", r[None], t[:1], intr[:1], xi
            )[0][0],
            rot[i],
        )
        torch.testing.assert_close(jpose[i, :, :3], jac, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_noise_free_problem_reaches_zero_cost(model):
    truth = make_synthetic_problem(model, 5, 30, visibility=0.8)
    start = perturb_problem(truth, 1e-2)
    opts = BAOptions(
        num_threads=1,
        constant_intrinsics=tuple(n for n in ("cx", "cy") if n in MODEL_PARAMS[model]),
    )
    res, summ = bundle_adjust(start, replace(opts, **TIGHT, max_iterations=200))
    assert summ.initial_cost > 1.0
    assert summ.final_cost < 1e-12, summ
    assert summ.costs[0] == summ.initial_cost and summ.costs[-1] == summ.final_cost
    torch.testing.assert_close(float(evaluate_cost(res)), summ.final_cost, rtol=1e-6, atol=1e-14)


def _scipy_reference(problem, opts):
    """Independent solve with scipy's TRF on the free parameters (gauge fixed identically)."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    from sceneforge.recon.ba.structure import gauge_scale_coordinate

    free_pose = torch.ones(problem.num_cameras, 6, dtype=torch.bool)
    free_pose[opts.gauge_camera] = False
    k, coord = gauge_scale_coordinate(problem, opts)
    free_pose[k, 3 + coord] = False
    free_intr = torch.ones_like(problem.intrinsics, dtype=torch.bool)
    free_intr[:, 1:3] = False  # cx, cy constant
    free = torch.cat(
        [
            free_pose.reshape(-1),
            free_intr.reshape(-1),
            torch.ones(problem.num_points * 3, dtype=torch.bool),
        ]
    )
    nc = problem.num_cameras
    x0 = torch.cat(
        [
            torch.cat([problem.rotation, problem.translation], 1).reshape(-1),
            problem.intrinsics.reshape(-1),
            problem.points.reshape(-1),
        ]
    )

    def unpack(x):
        full = x0.clone()
        full[free] = torch.as_tensor(x)
        pose = full[: 6 * nc].reshape(nc, 6)
        n_int = problem.intrinsics.numel()
        intr = full[6 * nc : 6 * nc + n_int].reshape(problem.intrinsics.shape)
        pts = full[6 * nc + n_int :].reshape(-1, 3)
        return replace(
            problem, rotation=pose[:, :3], translation=pose[:, 3:], intrinsics=intr, points=pts
        )

    def fun(x):
        q = unpack(x)
        c, k = q.cam_idx, q.point_idx
        pix, _ = project_observations(
            q.model, q.rotation[c], q.translation[c], q.intrinsics[c], q.points[k]
        )
        return (pix - q.observations).reshape(-1).numpy()

    out = scipy_opt.least_squares(
        fun, x0[free].numpy(), method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=2000
    )
    return unpack(out.x), 0.5 * float(np.sum(out.fun**2))


def test_noisy_optimum_matches_scipy():
    truth = make_synthetic_problem("SIMPLE_RADIAL", 4, 12, noise_px=1.0, seed=3)
    start = perturb_problem(truth, 5e-3)
    opts = BAOptions(
        num_threads=1,
        gauge="fix_camera_and_scale",
        constant_intrinsics=("cx", "cy"),
        **TIGHT,
        max_iterations=200,
    )
    ours, summ = bundle_adjust(start, opts)
    ref, ref_cost = _scipy_reference(start, opts)
    assert summ.final_cost > 1.0  # noisy: the optimum is not zero
    assert abs(summ.final_cost - ref_cost) <= 1e-9 * ref_cost
    torch.testing.assert_close(ours.points, ref.points, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.intrinsics, ref.intrinsics, rtol=1e-5, atol=1e-6)


def test_gauge_fixes_camera_and_scale():
    truth = make_synthetic_problem("BAL", 5, 30, noise_px=0.5)
    start = perturb_problem(truth, 1e-2)
    opts = BAOptions(num_threads=1, gauge="fix_camera_and_scale", gauge_camera=2, **TIGHT)
    res, _ = bundle_adjust(start, opts)
    torch.testing.assert_close(res.rotation[2], start.rotation[2], rtol=0, atol=0)
    torch.testing.assert_close(res.translation[2], start.translation[2], rtol=0, atol=0)
    changed_t = (res.translation != start.translation).sum().item()
    assert changed_t == 3 * 4 - 1  # 4 free cameras, one coordinate pinned for the scale
    # Gauge-fixed solutions are unique: a second start reaches the same cameras.
    res2, _ = bundle_adjust(perturb_problem(truth, 1e-2, seed=7), opts)
    res2b, _ = bundle_adjust(
        replace(res2, rotation=start.rotation.clone(), translation=start.translation.clone()), opts
    )
    torch.testing.assert_close(res2b.points, res.points, rtol=0, atol=1e-7)


def test_freezing_points_and_intrinsics():
    truth = make_synthetic_problem("RADIAL", 4, 20, noise_px=0.3)
    start = perturb_problem(truth, 1e-3)
    res, _ = bundle_adjust(
        start, BAOptions(num_threads=1, fix_points=True, intrinsics="fixed", fixed_cameras=(0,))
    )
    assert torch.equal(res.points, start.points)
    assert torch.equal(res.intrinsics, start.intrinsics)
    assert torch.equal(res.rotation[0], start.rotation[0])
    assert not torch.equal(res.rotation[1], start.rotation[1])
    res, _ = bundle_adjust(start, BAOptions(num_threads=1, constant_intrinsics=("cx", "cy", "k2")))
    assert torch.equal(res.intrinsics[:, 1:3], start.intrinsics[:, 1:3])
    assert torch.equal(res.intrinsics[:, 4], start.intrinsics[:, 4])
    assert not torch.equal(res.intrinsics[:, 0], start.intrinsics[:, 0])


def test_shared_intrinsics():
    truth = make_synthetic_problem("SIMPLE_RADIAL", 4, 30)
    truth = replace(truth, intrinsics=truth.intrinsics[:1].clone())
    c, k = truth.cam_idx, truth.point_idx
    pix, _ = project_observations(
        "SIMPLE_RADIAL",
        truth.rotation[c],
        truth.translation[c],
        truth.intrinsics.expand(4, -1)[c],
        truth.points[k],
    )
    truth = replace(truth, observations=pix)
    start = perturb_problem(truth, 1e-2)
    assert start.shared_intrinsics
    res, summ = bundle_adjust(
        start,
        BAOptions(
            num_threads=1,
            intrinsics="shared",
            constant_intrinsics=("cx", "cy"),
            **TIGHT,
            max_iterations=200,
        ),
    )
    assert res.intrinsics.shape == (1, 4)
    assert summ.final_cost < 1e-12
    torch.testing.assert_close(res.intrinsics, truth.intrinsics, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss", ["huber", "cauchy", "soft_l1"])
def test_robust_loss_downweights_outliers(loss):
    truth = make_synthetic_problem("PINHOLE", 6, 40, noise_px=0.2, seed=5)
    g = torch.Generator().manual_seed(0)
    bad = torch.randperm(truth.num_observations, generator=g)[:15]
    obs = truth.observations.clone()
    obs[bad] += 60.0 * (torch.rand(15, 2, generator=g, dtype=torch.float64) - 0.5).sign()
    start = perturb_problem(replace(truth, observations=obs), 2e-3)
    opts = BAOptions(num_threads=1, gauge="fix_camera_and_scale", intrinsics="fixed")
    plain, _ = bundle_adjust(start, opts)
    robust, summ = bundle_adjust(start, replace(opts, loss=loss, loss_scale=2.0))
    err_plain = (plain.points - truth.points).norm(dim=1).median()
    err_robust = (robust.points - truth.points).norm(dim=1).median()
    assert err_robust < 0.3 * err_plain, (err_robust, err_plain)
    # Reported cost is the robust cost.
    assert abs(float(evaluate_cost(robust, loss, 2.0)) - summ.final_cost) <= 1e-9 * summ.final_cost


@pytest.mark.parametrize("method", ["triggs", "irls"])
def test_robust_methods_converge_to_stationary_point(method):
    truth = make_synthetic_problem("BAL", 4, 20, noise_px=3.0, seed=2)
    start = perturb_problem(truth, 1e-3)
    opts = BAOptions(
        num_threads=1,
        gauge="fix_camera_and_scale",
        loss="cauchy",
        loss_scale=1.0,
        robust_method=method,
        **TIGHT,
        max_iterations=100,
    )
    res, _ = bundle_adjust(start, opts)
    pts = res.points.clone().requires_grad_(True)
    cost = evaluate_cost(replace(res, points=pts), "cauchy", 1.0)
    (g,) = torch.autograd.grad(cost, pts)
    # IRLS-type steps converge linearly, so only near-stationarity is asserted.
    assert float(g.abs().max()) < 1e-3


def _solve_points(obs, weights, start, opts):
    res, _ = bundle_adjust(replace(start, observations=obs, weights=weights), opts)
    return torch.cat(
        [res.points.reshape(-1), res.translation.reshape(-1), res.intrinsics.reshape(-1)]
    )


@pytest.mark.parametrize("exact", [True, False])
def test_implicit_gradients_match_finite_differences(exact):
    truth = make_synthetic_problem("BAL", 5, 25, noise_px=0.5, seed=4)
    start = perturb_problem(truth, 1e-3)
    weights = 0.5 + torch.rand(start.num_observations, dtype=torch.float64)
    opts = BAOptions(
        num_threads=1,
        gauge="fix_camera_and_scale",
        intrinsics="fixed",
        implicit_exact_hessian=exact,
        function_tolerance=0.0,
        gradient_tolerance=1e-10,
        parameter_tolerance=1e-15,
        max_iterations=60,
    )
    obs = start.observations.clone().requires_grad_(True)
    w = weights.clone().requires_grad_(True)
    res, _ = bundle_adjust(replace(start, observations=obs, weights=w), opts)
    probe = torch.randn(res.points.shape, dtype=torch.float64)
    probe_t = torch.randn(res.translation.shape, dtype=torch.float64)
    loss = (res.points * probe).sum() + (res.translation * probe_t).sum()
    g_obs, g_w = torch.autograd.grad(loss, (obs, w))
    assert float(g_obs.abs().max()) > 1e-3

    def f(o, ww):
        r, s = bundle_adjust(replace(start, observations=o, weights=ww), opts)
        assert s.termination == "CONVERGENCE", s  # re-solved to rounding level
        return float((r.points * probe).sum() + (r.translation * probe_t).sum())

    eps = 1e-4
    # Exact Hessian: matches finite differences; Gauss-Newton: first-order in the residuals.
    tol = 1e-6 if exact else 3e-2
    scale = float(g_obs.abs().max())
    for i, j in [(0, 0), (5, 1), (17, 0)]:
        o1, o2 = obs.detach().clone(), obs.detach().clone()
        o1[i, j] += eps
        o2[i, j] -= eps
        fd = (f(o1, weights) - f(o2, weights)) / (2 * eps)
        assert abs(fd - float(g_obs[i, j])) <= tol * scale, (i, j, fd, float(g_obs[i, j]))
    scale = float(g_w.abs().max())
    for i in [2, 9]:
        w1, w2 = weights.clone(), weights.clone()
        w1[i] += eps
        w2[i] -= eps
        fd = (f(start.observations, w1) - f(start.observations, w2)) / (2 * eps)
        assert abs(fd - float(g_w[i])) <= tol * scale, (i, fd, float(g_w[i]))


def test_differentiation_requires_fixed_gauge():
    p = make_synthetic_problem("BAL", 3, 8)
    obs = p.observations.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="gauge"):
        bundle_adjust(replace(p, observations=obs), BAOptions(num_threads=1))


def test_float32_and_threads():
    truth = make_synthetic_problem("BAL", 5, 30, dtype=torch.float32, noise_px=0.5)
    start = perturb_problem(truth, 1e-2)
    res, summ = bundle_adjust(start, BAOptions(num_threads=2))
    assert res.points.dtype == torch.float32
    assert summ.final_cost < 0.05 * summ.initial_cost
    assert summ.num_threads == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    truth = make_synthetic_problem("RADIAL", 5, 30, noise_px=0.5)
    start = perturb_problem(truth, 1e-2)
    cpu, s_cpu = bundle_adjust(start, BAOptions(num_threads=1, **TIGHT))
    gpu, s_gpu = bundle_adjust(start.to("cuda"), BAOptions(num_threads=1, **TIGHT))
    assert abs(s_cpu.final_cost - s_gpu.final_cost) <= 1e-8 * s_cpu.final_cost
    torch.testing.assert_close(gpu.points.cpu(), cpu.points, rtol=0, atol=1e-6)


def test_summary_and_plot(tmp_path):
    start = perturb_problem(make_synthetic_problem("BAL", 4, 20, noise_px=0.5), 1e-2)
    _, summ = bundle_adjust(start, BAOptions(num_threads=1))
    assert summ.termination == "CONVERGENCE"
    assert len(summ.costs) == summ.iterations + 1
    assert all(b <= a for a, b in zip(summ.costs, summ.costs[1:]))
    out = plot_cost(summ, tmp_path / "cost.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CONVERGENCE" in str(summ)


def test_real_bal_problems_reach_ceres_cost(shared_data):
    from sceneforge.recon.bal import bal_cost, read_bal

    # Ceres (pycolmap 4.2.1) reaches ~4e-20 on this toy and 2945.245 on the cheiral set.
    toy = read_bal(shared_data / "bal" / "gtsam_dubrovnik-3-7-pre.txt")
    res, summ = bundle_adjust(toy, BAOptions(num_threads=1, max_iterations=200))
    assert bal_cost(res) < 1e-12, summ
    p = read_bal(shared_data / "bal" / "derived_shrink-1800-cheiral.txt")
    res, summ = bundle_adjust(p, BAOptions(num_threads=1))
    assert bal_cost(res) <= 2945.245 * (1 + 1e-5), summ
