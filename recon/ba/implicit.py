"""Gradients of the optimum w.r.t. observations and weights by implicit differentiation."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from sceneforge.recon.ba.problem import BAProblem
from sceneforge.recon.ba.residuals import behind_camera_mask, project_observations, robust_cost
from sceneforge.recon.ba.schur import gather_params, linearise, schur_solve
from sceneforge.recon.ba.structure import Structure


def _free_params_grad(problem, st, options, params, obs, weights, create_graph: bool):
    """Gradient of the robust cost w.r.t. (rot, trans, intr, pts), frozen entries zeroed."""
    rot, trans, intr, pts = params
    p2 = replace(problem, observations=obs, weights=weights)
    r = _reference_residuals(p2, st, (rot, trans, intr, pts))
    cost = robust_cost(options.loss, options.loss_scale, r)
    grads = torch.autograd.grad(cost, (rot, trans, intr, pts), create_graph=create_graph)
    return _mask_params(st, grads)


def _reference_residuals(problem: BAProblem, st: Structure, params) -> Tensor:
    rot, trans, intr, pts = params
    r_o, t_o, k_o, x_o = gather_params(problem, st, rot, trans, intr, pts)
    pix, depth = project_observations(problem.model, r_o, t_o, k_o, x_o)
    r = pix - problem.observations
    if problem.weights is not None:
        r = r * problem.weights[:, None]
    if st.zero_behind:
        r = r * (~behind_camera_mask(depth.detach())).to(r.dtype)[:, None]
    if st.pad_rows is not None:
        r = r.index_fill(0, st.pad_rows, 0.0)
    return r


def _mask_params(st: Structure, p):
    rot, trans, intr, pts = p
    rot = rot * st.free_pose[:, :3]
    trans = trans * st.free_pose[:, 3:]
    intr = intr * st.free_intr if st.ni else torch.zeros_like(intr)
    pts = pts if st.free_points else torch.zeros_like(pts)
    return rot, trans, intr, pts


def _to_blocks(st: Structure, p) -> tuple[Tensor, Tensor]:
    rot, trans, intr, pts = p
    xc = torch.cat([rot, trans], -1).reshape(-1)
    if st.ni:
        xc = torch.cat([xc, intr.reshape(-1)])
    return xc, pts


def _from_blocks(st: Structure, xc: Tensor, xp: Tensor, intr_like: Tensor):
    pose = xc[: 6 * st.nc].reshape(st.nc, 6)
    intr = xc[6 * st.nc :].reshape(st.ni, st.P) if st.ni else torch.zeros_like(intr_like)
    return pose[:, :3], pose[:, 3:], intr, xp


class ImplicitBA(torch.autograd.Function):
    """Identity on the solved parameters; backward by implicit differentiation."""

    @staticmethod
    def forward(ctx, observations, weights, rot, trans, intr, pts, info):
        ctx.info = info
        ctx.save_for_backward(observations, weights, rot, trans, intr, pts)
        return rot.clone(), trans.clone(), intr.clone(), pts.clone()

    @staticmethod
    def backward(ctx, g_rot, g_trans, g_intr, g_pts):
        problem, st, options = ctx.info
        obs, weights, rot, trans, intr, pts = ctx.saved_tensors
        gouts = [
            torch.zeros_like(x) if g is None else g
            for g, x in zip((g_rot, g_trans, g_intr, g_pts), (rot, trans, intr, pts))
        ]
        bc, bp = _to_blocks(st, _mask_params(st, gouts))
        with torch.enable_grad():
            params = tuple(x.detach().requires_grad_(True) for x in (rot, trans, intr, pts))
            obs_d = obs.detach().requires_grad_(True)
            w_d = None if weights is None else weights.detach().requires_grad_(True)
            lin = linearise(problem.detach(), st, tuple(x.detach() for x in params), options)

            def precond(vc, vp):
                sol = schur_solve(st, lin, vc, vp, None, None)
                if sol is None:
                    raise RuntimeError(
                        "implicit BA gradient: the Gauss-Newton matrix is singular; fix the "
                        "gauge (options.gauge='fix_camera_and_scale') or freeze parameters"
                    )
                return sol

            if options.implicit_exact_hessian:
                w_const = None if w_d is None else w_d.detach()
                grad_fn = _free_params_grad(problem, st, options, params, obs, w_const, True)

                def hvp(vc, vp):
                    v = _from_blocks(st, vc, vp, intr)
                    live = [i for i, g in enumerate(grad_fn) if g.requires_grad]
                    hv = torch.autograd.grad(
                        [grad_fn[i] for i in live],
                        params,
                        grad_outputs=[v[i] for i in live],
                        retain_graph=True,
                        allow_unused=True,
                    )
                    hv = [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]
                    return _to_blocks(st, _mask_params(st, hv))

                vc, vp = _pcg(hvp, precond, bc, bp, options.implicit_cg_tolerance)
            else:
                vc, vp = precond(bc, bp)
            v = _mask_params(st, _from_blocks(st, vc, vp, intr))
            grads = _free_params_grad(problem, st, options, params, obs_d, w_d, True)
            inner = sum((g * vv).sum() for g, vv in zip(grads, v) if g.requires_grad)
            wrt = (obs_d,) if w_d is None else (obs_d, w_d)
            out = torch.autograd.grad(-inner, wrt, allow_unused=True)
        g_obs = out[0]
        g_w = out[1] if w_d is not None else None
        return g_obs, g_w, None, None, None, None, None


def _pcg(hvp, precond, bc: Tensor, bp: Tensor, tol: float, max_iter: int = 100):
    """Preconditioned CG on the two-block vector (camera side, points)."""

    def dot(a, b):
        return (a[0] * b[0]).sum() + (a[1] * b[1]).sum()

    x = precond(bc, bp)
    hx = hvp(*x)
    r = (bc - hx[0], bp - hx[1])
    bnorm = math.sqrt(float(dot((bc, bp), (bc, bp)))) or 1.0
    z = precond(*r)
    p = z
    rz = dot(r, z)
    for _ in range(max_iter):
        if math.sqrt(float(dot(r, r))) <= tol * bnorm:
            break
        hp = hvp(*p)
        alpha = rz / dot(p, hp)
        x = (x[0] + alpha * p[0], x[1] + alpha * p[1])
        r = (r[0] - alpha * hp[0], r[1] - alpha * hp[1])
        z = precond(*r)
        rz_new = dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        p = (z[0] + beta * p[0], z[1] + beta * p[1])
    return x
