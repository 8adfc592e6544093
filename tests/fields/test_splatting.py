"""Gaussian splatting: projection and SH against gsplat's torch reference, the tiled torch
rasterizer against its per-pixel loop reference (values and gradients), a small fit, and the
torch backend against gsplat's CUDA kernels (GPU only)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from sceneforge.core.rotations import quat_wxyz_to_matrix
from sceneforge.fields import splat_compositing
from sceneforge.fields.splatting import (
    Projection,
    gsplat_available,
    project_gaussians,
    quat_scale_to_covariance,
    rasterize_gaussians,
    rasterize_reference,
    render_gaussians,
    sh_to_rgb,
)


def _camera(gen: torch.Generator, w: int, h: int, dtype=torch.float64):
    """A random rotation and translation, and intrinsics with ~60 degrees of field of view."""
    R = quat_wxyz_to_matrix(torch.randn(4, generator=gen, dtype=dtype))
    T = torch.eye(4, dtype=dtype)
    T[:3, :3] = R
    T[:3, 3] = torch.randn(3, generator=gen, dtype=dtype)
    f = 0.9 * w * (1 + 0.2 * torch.rand((), generator=gen, dtype=dtype))
    K = torch.tensor([[f, 0, w / 2 + 0.7], [0, 1.1 * f, h / 2 - 0.4], [0, 0, 1]], dtype=dtype)
    return T, K


def _gaussians(gen, n, T, K, w, h, dtype=torch.float64, z=(0.5, 4.0), sigma_px=(0.5, 3.0)):
    """Gaussians placed in the camera frame (depth range ``z``; some off-screen, with sizes of
    about ``sigma_px`` pixels), returned in world coordinates."""
    depth = z[0] + (z[1] - z[0]) * torch.rand(n, generator=gen, dtype=dtype)
    px = torch.rand(n, generator=gen, dtype=dtype) * (w + 8) - 4
    py = torch.rand(n, generator=gen, dtype=dtype) * (h + 8) - 4
    cam = torch.stack(
        [(px - K[0, 2]) / K[0, 0] * depth, (py - K[1, 2]) / K[1, 1] * depth, depth], -1
    )
    R, t = T[:3, :3], T[:3, 3]
    means = (cam - t) @ R
    lo, hi = math.log(sigma_px[0]), math.log(sigma_px[1])
    sig = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=gen, dtype=dtype))
    scales = sig * depth[:, None] / K[0, 0]
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    return means, quats, scales


def _projection(gen, n, w, h, dtype=torch.float64, opaque=False, antialiased=False):
    T, K = _camera(gen, w, h, dtype)
    sigma_px = (2.0, 5.0) if opaque else (0.5, 3.0)
    means, quats, scales = _gaussians(gen, n, T, K, w, h, dtype, (-1.0, 4.0), sigma_px)
    covars = quat_scale_to_covariance(quats, scales)
    proj = project_gaussians(means, covars, T, K, w, h, antialiased=antialiased)
    lo = 0.98 if opaque else 0.05
    opac = lo + (0.999 - lo) * torch.rand(n, generator=gen, dtype=dtype)
    return proj, opac


def _leaf(proj: Projection) -> Projection:
    """The projection's tensors as leaves (gradients w.r.t. them)."""
    comp = proj.opacity_compensation
    return Projection(
        proj.means2d.detach().requires_grad_(),
        proj.conics.detach().requires_grad_(),
        proj.depths.detach().requires_grad_(),
        proj.radii,
        None if comp is None else comp.detach(),
    )


# -- projection, covariance and SH against gsplat's torch reference ----------------------------


def test_covariance_matches_gsplat():
    ref = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    s = torch.rand(50, 3, generator=gen, dtype=torch.float64) + 0.01
    cov, _ = ref._quat_scale_to_covar_preci(q, s, compute_preci=False)
    torch.testing.assert_close(quat_scale_to_covariance(q, s), cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("antialiased", [False, True])
def test_projection_matches_gsplat_torch_reference(dtype, antialiased):
    ref = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")
    gen = torch.Generator().manual_seed(2)
    w, h = 64, 48
    for _ in range(5):
        T, K = _camera(gen, w, h, dtype)
        means, quats, scales = _gaussians(gen, 300, T, K, w, h, dtype, z=(-1.0, 6.0))
        means[:5] = (torch.tensor([0.0, 0.0, 0.005], dtype=dtype) - T[:3, 3]) @ T[:3, :3]
        covars = quat_scale_to_covariance(quats, scales)
        proj = project_gaussians(means, covars, T, K, w, h, antialiased=antialiased)
        radii, m2d, depths, conics, comp = ref._fully_fused_projection(
            means, covars, T[None], K[None], w, h, 0.3, 0.01, 1e10, antialiased
        )
        radii, m2d, depths, conics = radii[0].max(-1).values, m2d[0], depths[0], conics[0]
        valid = radii > 0
        assert 50 < int(valid.sum()) < 300  # behind the camera, too near and off-screen culled
        assert not bool(valid[:5].any())
        tol = {"rtol": 1e-5, "atol": 1e-5}
        if dtype == torch.float64:
            assert torch.equal(proj.radii, radii.to(torch.int32))
        else:  # a ceil may land on the other side of an integer
            assert torch.equal(proj.radii > 0, valid)
            assert int((proj.radii - radii).abs().max()) <= 1
            assert float((proj.radii != radii).float().mean()) < 0.02
        torch.testing.assert_close(proj.depths, depths, **tol)
        torch.testing.assert_close(proj.means2d[valid], m2d[valid], **tol)
        torch.testing.assert_close(proj.conics[valid], conics[valid], **tol)
        if antialiased:
            torch.testing.assert_close(proj.opacity_compensation[valid], comp[0][valid], **tol)
        else:
            assert proj.opacity_compensation is None


def test_opacity_aware_radii_cull_faint_and_keep_the_image():
    gen = torch.Generator().manual_seed(3)
    w, h = 24, 20
    T, K = _camera(gen, w, h)
    means, quats, scales = _gaussians(gen, 40, T, K, w, h, sigma_px=(1.0, 4.0))
    covars = quat_scale_to_covariance(quats, scales)
    opac = torch.rand(40, generator=gen, dtype=torch.float64)
    opac[:4] = 0.5 / 255
    plain = project_gaussians(means, covars, T, K, w, h)
    tight = project_gaussians(means, covars, T, K, w, h, opacities=opac)
    assert bool((tight.radii <= plain.radii).all()) and not bool((tight.radii[:4] > 0).any())
    assert int((tight.radii < plain.radii).sum()) > 10
    colors = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    a = rasterize_gaussians(plain, colors, opac, w, h, tile_size=4)
    b = rasterize_gaussians(tight, colors, opac, w, h, tile_size=4)
    for k in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    ref = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed")
    gen = torch.Generator().manual_seed(4)
    sh = torch.randn(100, 16, 3, generator=gen)
    dirs = torch.randn(100, 3, generator=gen) * 3
    expected = (ref._spherical_harmonics(degree, dirs, sh) + 0.5).clamp_min(0)
    got = sh_to_rgb(sh, dirs, degree)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert bool((got == 0).any())  # the clamp is exercised
    if degree == 0:
        torch.testing.assert_close(got, (0.28209479177387814 * sh[:, 0] + 0.5).clamp_min(0))
    with pytest.raises(ValueError):
        sh_to_rgb(sh[:, : degree**2], dirs, degree)


# -- the tiled rasterizer against the per-pixel loop -------------------------------------------


@pytest.mark.parametrize(
    ("tile_size", "block", "d", "opaque", "antialiased"),
    [
        (4, 64, 3, False, False),
        (16, 4, 3, True, False),
        (4, 3, 5, True, True),
        (5, 7, 5, False, True),
    ],
)
def test_rasterizer_matches_loop_reference(
    one_thread, monkeypatch, tile_size, block, d, opaque, antialiased
):
    gen = torch.Generator().manual_seed(10 + tile_size + d)
    w, h = 12, 10
    proj, opac = _projection(gen, 20, w, h, opaque=opaque, antialiased=antialiased)
    assert 10 <= int((proj.radii > 0).sum()) < 20
    colors = torch.rand(20, d, generator=gen, dtype=torch.float64)
    bg = torch.rand(d, generator=gen, dtype=torch.float64)
    # a small chunk budget splits the tiles into several chunks; small blocks carry the
    # transmittance from block to block
    fast = rasterize_gaussians(proj, colors, opac, w, h, bg, tile_size, 2000, block)
    slow = rasterize_reference(proj, colors, opac, w, h, bg)
    for k in ("rgb", "alpha", "depth"):
        assert fast[k].shape == slow[k].shape
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-5, atol=1e-5)
    # without background the colour is the weighted sum alone
    nobg = rasterize_gaussians(proj, colors, opac, w, h, None, tile_size)
    torch.testing.assert_close(nobg["rgb"] + (1 - nobg["alpha"])[..., None] * bg, fast["rgb"])
    if opaque:  # the transmittance stop changed some pixels
        monkeypatch.setattr(splat_compositing, "TRANSMITTANCE_MIN", 0.0)
        nostop = rasterize_gaussians(proj, colors, opac, w, h, bg, tile_size)
        assert float((nostop["rgb"] - fast["rgb"]).abs().max()) > 1e-6


def test_rasterizer_float32_matches_reference(one_thread):
    gen = torch.Generator().manual_seed(5)
    proj64, opac64 = _projection(gen, 20, 12, 10)
    p = proj64
    proj = Projection(p.means2d.float(), p.conics.float(), p.depths.float(), p.radii)
    colors = torch.rand(20, 3, generator=gen)
    fast = rasterize_gaussians(proj, colors, opac64.float(), 12, 10, tile_size=4)
    slow = rasterize_reference(proj, colors, opac64.float(), 12, 10)
    for k in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-5, atol=1e-5)


def test_rasterizer_gradients_match_loop_reference(one_thread):
    gen = torch.Generator().manual_seed(6)
    w, h = 12, 10
    proj, opac = _projection(gen, 20, w, h, opaque=True, antialiased=True)
    colors = torch.rand(20, 4, generator=gen, dtype=torch.float64)
    bg = torch.rand(4, generator=gen, dtype=torch.float64)
    wts = [torch.randn(h, w, *s, generator=gen, dtype=torch.float64) for s in ((4,), (), ())]
    grads = []
    for fn in (rasterize_gaussians, rasterize_reference):
        leaf = _leaf(proj)
        c, o = colors.clone().requires_grad_(), opac.clone().requires_grad_()
        kw = {"tile_size": 4, "block": 3} if fn is rasterize_gaussians else {}
        out = fn(leaf, c, o, w, h, bg, **kw)
        loss = sum((out[k] * wk).sum() for k, wk in zip(("rgb", "alpha", "depth"), wts))
        loss.backward()
        grads.append([leaf.means2d.grad, leaf.conics.grad, leaf.depths.grad, c.grad, o.grad])
    for a, b in zip(*grads):
        assert float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_rasterizer_gradient_of_some_inputs_only(one_thread):
    gen = torch.Generator().manual_seed(13)
    proj, opac = _projection(gen, 20, 12, 10)
    colors = torch.rand(20, 3, generator=gen, dtype=torch.float64)
    full = _leaf(proj)
    c_full, c_only = colors.clone().requires_grad_(), colors.clone().requires_grad_()
    rasterize_gaussians(full, c_full, opac, 12, 10, tile_size=4)["rgb"].sum().backward()
    rasterize_gaussians(proj, c_only, opac, 12, 10, tile_size=4)["rgb"].sum().backward()
    assert float(c_only.grad.abs().max()) > 0
    torch.testing.assert_close(c_only.grad, c_full.grad, rtol=0, atol=1e-14)


def test_occluded_gaussians_are_skipped_and_get_no_gradient(one_thread, monkeypatch):
    # a near, nearly opaque, wide Gaussian makes the next one (as wide) stop every pixel; the
    # 10 others hide behind them
    gen = torch.Generator().manual_seed(12)
    w, h, n = 12, 10, 12
    means2d = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h])
    means2d[:3] = torch.tensor([[5.0, 4.0], [7.0, 6.0], [6.0, 5.0]], dtype=torch.float64)
    conics = torch.tensor([0.3, 0.05, 0.4], dtype=torch.float64).repeat(n, 1)
    conics[:3] = torch.tensor([0.0002, 0.0, 0.0002], dtype=torch.float64)
    depths = torch.cat([torch.tensor([1.0, 1.2, 1.5]), 2 + torch.rand(n - 3, generator=gen)])
    depths = depths.double()
    radii = torch.full((n,), 40, dtype=torch.int32)
    opac = torch.full((n,), 0.8, dtype=torch.float64)
    opac[:3] = 0.999
    colors = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    seen, blocks = [], []
    composite, backward = splat_compositing.composite, splat_compositing.composite_backward

    def spy(px, py, mean, *args, **kwargs):
        seen.append((mean.shape[1], torch.is_grad_enabled()))
        return composite(px, py, mean, *args, **kwargs)

    def spy_backward(*args):
        blocks.append(len(args[7]))  # the blocks whose Gaussians get gradients
        return backward(*args)

    monkeypatch.setattr(splat_compositing, "composite", spy)
    monkeypatch.setattr(splat_compositing, "composite_backward", spy_backward)
    grads = []
    for fn in (rasterize_gaussians, rasterize_reference):
        leaf = _leaf(Projection(means2d, conics, depths, radii))
        c, o = colors.clone().requires_grad_(), opac.clone().requires_grad_()
        kw = {"tile_size": 4, "block": 4} if fn is rasterize_gaussians else {}
        out = fn(leaf, c, o, w, h, **kw)
        (out["rgb"].sum() + out["depth"].sum() + out["alpha"].sum()).backward()
        grads.append([leaf.means2d.grad, leaf.conics.grad, leaf.depths.grad, c.grad, o.grad])
        assert bool((out["alpha"] > 0.99).all())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)
        assert float(a[1:].abs().max()) == 0 and float(a[0].abs().max()) > 0
    # the forward pass stopped after the first block; the backward pass used only that block
    assert seen[0] == (n, False) and blocks == [1]


def test_rasterizer_gradcheck(one_thread):
    # 4 Gaussians over a 6x5 image cut into 4x4 tiles; every (pixel, Gaussian) alpha is kept far
    # from the 1/255 threshold and the transmittance far from the stop, so the output is smooth
    means2d = torch.tensor([[1.2, 1.4], [4.1, 2.2], [2.7, 3.9], [5.5, 0.3]], dtype=torch.float64)
    cov = torch.tensor(
        [
            [[4.0, 0.8], [0.8, 3.0]],
            [[3.0, -1.0], [-1.0, 5.0]],
            [[6.0, 0.5], [0.5, 2.5]],
            [[3.5, 0.0], [0.0, 4.5]],
        ],
        dtype=torch.float64,
    )
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    depths = torch.tensor([2.0, 1.0, 3.0, 1.5], dtype=torch.float64)
    radii = torch.full((4,), 8, dtype=torch.int32)
    colors = torch.rand(4, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    opac = torch.tensor([0.6, 0.5, 0.7, 0.4], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(5) + 0.5, torch.arange(6) + 0.5, indexing="ij")
    dx = xs.reshape(-1, 1).double() - means2d[:, 0]
    dy = ys.reshape(-1, 1).double() - means2d[:, 1]
    sig = 0.5 * (conics[:, 0] * dx**2 + conics[:, 2] * dy**2) + conics[:, 1] * dx * dy
    alpha = opac * torch.exp(-sig)
    assert float((alpha - 1 / 255).abs().min()) > 1e-4 and float(alpha.max()) < 0.99
    assert float((1 - alpha).prod(-1).min()) > 1e-3

    def fn(m, c, col, o):
        out = rasterize_gaussians(Projection(m, c, depths, radii), col, o, 6, 5, tile_size=4)
        return out["rgb"], out["alpha"], out["depth"]

    args = tuple(t.clone().requires_grad_() for t in (means2d, conics, colors, opac))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


def test_empty_and_all_culled_render_the_background():
    bg = torch.tensor([0.2, 0.4, 0.6])
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    for n in (0, 5):
        means = torch.zeros(n, 3)
        means[:, 2] = -2.0  # behind the camera
        colors = torch.rand(n, 3, generator=torch.Generator().manual_seed(8)).requires_grad_()
        out = render_gaussians(
            means,
            torch.ones(n, 4),
            torch.full((n, 3), 0.1),
            torch.full((n,), 0.5),
            colors,
            torch.eye(4),
            K,
            16,
            12,
            background=bg,
            backend="torch",
        )
        assert out["rgb"].shape == (12, 16, 3) and out["radii"].shape == (n,)
        torch.testing.assert_close(out["rgb"], bg.expand(12, 16, 3))
        assert not out["alpha"].detach().any() and not out["depth"].detach().any()
        out["rgb"].sum().backward()  # the outputs stay in the graph
        assert float(colors.grad.abs().sum()) == 0


# -- render_gaussians ---------------------------------------------------------------------------


def test_render_depth_and_means2d_gradients():
    # one opaque Gaussian straight ahead: depth / alpha at its centre is its depth
    K = torch.tensor([[30.0, 0, 10], [0, 30.0, 8], [0, 0, 1]])
    means = torch.tensor([[0.0, 0.0, 2.5], [0.5, 0.2, -1.0]], requires_grad=True)
    colors = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]])
    out = render_gaussians(
        means,
        torch.tensor([[1.0, 0, 0, 0]] * 2),
        torch.full((2, 3), 0.2),
        torch.tensor([0.99, 0.99]),
        colors,
        torch.eye(4)[:3],
        K,
        20,
        16,
        retain_means2d=True,
    )
    assert out["rgb"].shape == (16, 20, 3)
    assert out["radii"].tolist()[1] == 0 and out["radii"].tolist()[0] > 0
    surface = (out["depth"] / out["alpha"].clamp_min(1e-8)).detach()
    assert abs(float(surface[8, 10]) - 2.5) < 1e-5 and float(out["alpha"][8, 10].detach()) > 0.9
    torch.testing.assert_close(out["means2d"][0].detach(), torch.tensor([10.0, 8.0]))
    (out["rgb"][:, 11:, 0].sum() + out["rgb"][:, :9, 0].sum()).backward()
    g = out["means2d"].grad
    assert g is not None and g.shape == (2, 2) and float(g[1].abs().sum()) == 0
    assert float(g[0].abs().sum()) > 0 and means.grad is not None


def test_render_backend_errors():
    args = (torch.zeros(1, 3), torch.ones(1, 4), torch.ones(1, 3), torch.ones(1), torch.ones(1, 3))
    cam = (torch.eye(4), torch.eye(3), 4, 4)
    with pytest.raises(ValueError, match="unknown backend"):
        render_gaussians(*args, *cam, backend="cuda")
    with pytest.raises(ValueError if gsplat_available() else ImportError, match="gsplat"):
        render_gaussians(*args, *cam, backend="gsplat")  # CPU tensors, or gsplat missing
    assert gsplat_available() == (importlib.util.find_spec("gsplat") is not None)
    with pytest.raises(ValueError, match="4x4 or 3x4"):
        render_gaussians(*args, torch.eye(3), torch.eye(3), 4, 4)


def test_fit_lowers_the_error(one_thread):
    gen = torch.Generator().manual_seed(9)
    w = h = 24
    K = torch.tensor([[24.0, 0, 12], [0, 24.0, 12], [0, 0, 1]])
    cam = torch.eye(4)

    def random_set(n):
        xy = (torch.rand(n, 2, generator=gen) - 0.5) * 1.6
        z = 2 + torch.rand(n, 1, generator=gen)
        return {
            "means": torch.cat([xy * z, z], -1),
            "quats": torch.randn(n, 4, generator=gen),
            "log_scales": torch.log(0.03 + 0.1 * torch.rand(n, 3, generator=gen)),
            "logit_op": torch.randn(n, generator=gen),
            "colors": torch.rand(n, 3, generator=gen),
        }

    def render(p):
        return render_gaussians(
            p["means"],
            p["quats"],
            p["log_scales"].exp(),
            torch.sigmoid(p["logit_op"]),
            p["colors"],
            cam,
            K,
            w,
            h,
            background=torch.zeros(3),
            backend="torch",
        )["rgb"]

    with torch.no_grad():
        target = render(random_set(30))
    params = {k: v.requires_grad_() for k, v in random_set(50).items()}
    opt = torch.optim.Adam(params.values(), lr=0.02)
    first = None
    for _ in range(100):
        loss = (render(params) - target).pow(2).mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float((render(params) - target).pow(2).mean())
    assert final < 0.5 * first, (first, final)


# -- gsplat's CUDA kernels ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("antialiased", [False, True])
def test_torch_backend_matches_gsplat_cuda(antialiased):
    pytest.importorskip("gsplat", reason="gsplat is not installed")
    gen = torch.Generator().manual_seed(11)
    w, h = 64, 48
    T, K = _camera(gen, w, h, torch.float32)
    means, quats, scales = _gaussians(gen, 2000, T, K, w, h, torch.float32, z=(-0.5, 6.0))
    opac = torch.rand(2000, generator=gen)
    colors = torch.rand(2000, 5, generator=gen)
    bg = torch.rand(5, generator=gen)
    outs = []
    for backend, dev in (("torch", "cpu"), ("gsplat", "cuda")):
        m = means.detach().to(dev).requires_grad_()
        out = render_gaussians(
            m,
            quats.to(dev),
            scales.to(dev),
            opac.to(dev),
            colors.to(dev),
            T.to(dev),
            K.to(dev),
            w,
            h,
            background=bg.to(dev),
            backend=backend,
            antialiased=antialiased,
            retain_means2d=True,
        )
        (out["rgb"].sum() + out["depth"].sum()).backward()
        outs.append(
            {
                **{k: v.detach().cpu() for k, v in out.items()},
                "g2d": out["means2d"].grad.cpu(),
                "g3d": m.grad.cpu(),
            }
        )
    a, b = outs
    assert float(b["alpha"].max()) > 0.9
    # gsplat's fast-math exp can flip a skip (alpha vs 1/255) or the stop at a few pixels
    for k in ("rgb", "alpha", "depth"):
        diff = (a[k] - b[k]).abs() / b[k].abs().clamp_min(1.0)
        assert float(diff.max()) < 2e-2 and float((diff > 1e-3).float().mean()) < 1e-3, k
    assert float((a["radii"] != b["radii"]).float().mean()) < 0.01
    drawn = b["radii"] > 0
    torch.testing.assert_close(a["means2d"][drawn], b["means2d"][drawn], rtol=1e-5, atol=1e-3)
    scale = float(b["g2d"].abs().max())
    torch.testing.assert_close(a["g2d"], b["g2d"], rtol=1e-2, atol=1e-3 * scale)
    torch.testing.assert_close(
        a["g3d"], b["g3d"], rtol=1e-2, atol=1e-3 * float(b["g3d"].abs().max())
    )
