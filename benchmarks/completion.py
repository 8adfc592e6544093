"""Scene-completion benchmark (issue 8): object removal on synthetic scenes with ground truth.

For each scene, an object is removed by a 3D box (the true background is rendered without it)
and three methods are compared inside the fill masks of every view:

- ``masked_only``: the field trained on unmasked pixels only (no dataset update);
- ``telea_update``: per-image Telea + the Inpaint Dataset Update (the paper's "individual
  inpainting" baseline);
- ``multiview_update``: ours, the depth-warping multi-view inpainter (backward mode: hole depth
  from the surrounding depth, visibility-checked look-ups in the other views) + the dataset
  update, warping with the field's rendered depth (what a photo-only capture has);
- ``multiview_update_rgbd``: the same warping with the scene's depth maps (an RGB-D capture).

Metrics: masked PSNR / SSIM of the renders against the truth, and multi-view consistency: the
filled pixels of view i are reprojected into every other view j with the **ground-truth** depth
(visible there) and the mean absolute colour difference between the two renders is reported.

``--sd-memory`` adds the memory of the diffusion path: random-init models built from the real
Stable Diffusion 2 inpainting configuration (no download), one joint denoising step on a 2x2
grid of 512x512 views with classifier-free guidance (peak CPU RSS here, peak CUDA memory on a
GPU). ``--json PATH`` writes one JSON object per (scene, method).

    .venv/bin/python benchmarks/completion.py --json /tmp/completion.json
    .venv/bin/python benchmarks/completion.py --sd-memory --methods none
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sceneforge.core.metrics import psnr, ssim
from sceneforge.core.synthetic import SyntheticSceneConfig
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import TrainerConfig
from sceneforge.inpaint.complete import CompleteConfig, complete_scene
from sceneforge.inpaint.dataset_update import DatasetUpdateConfig
from sceneforge.inpaint.masks import box_fill_masks
from sceneforge.inpaint.synthetic import object_removal_scene, tiles_removal_scene

METHODS = {  # name: (inpainter, rounds (None = --rounds), depth for warping)
    "masked_only": ("telea", 0, "render"),
    "telea_update": ("telea", None, "render"),
    "multiview_update": ("multiview", None, "render"),
    "multiview_update_rgbd": ("multiview", None, "scene"),
}

# Stable Diffusion 2 inpainting (stabilityai/stable-diffusion-2-inpainting) model configs.
SD2_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "use_linear_projection": True,
}
SD2_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD2_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def consistency_error(renders, fill, truth_depths, cameras) -> float:
    """Mean |colour_i - colour_j| of filled pixels of view i reprojected (ground-truth depth)
    into the views j where they are visible."""
    from sceneforge.core.cameras import pixel_centers, transform_points, unproject

    cams = cameras.to(dtype=torch.float64)
    errs = []
    n = len(renders)
    for i in range(n):
        if not bool(fill[i].any()):
            continue
        h, w = fill[i].shape
        pix = pixel_centers(h, w, dtype=torch.float64)[fill[i]]
        d = truth_depths[i][fill[i]].double()
        ok = d > 0
        pix, d = pix[ok], d[ok]
        rays = unproject(pix, cams.model, cams.params[i].expand(pix.shape[0], -1))
        pts = transform_points(cams.world_from_cam[i], rays * d[:, None])
        col_i = renders[i][fill[i]][ok]
        for j in range(n):
            if j == i:
                continue
            uv, z = cams[[j]].project(pts)
            uv, z = uv[0], z[0]
            u, v = uv[:, 0], uv[:, 1]
            inside = (z > 0) & (u >= 0.5) & (u <= w - 0.5) & (v >= 0.5) & (v <= h - 0.5)
            xi = (u - 0.5).round().long().clamp(0, w - 1)
            yi = (v - 0.5).round().long().clamp(0, h - 1)
            zj = truth_depths[j][yi, xi].double()
            vis = inside & (zj > 0) & ((zj - z).abs() < 0.02 * z)
            if not bool(vis.any()):
                continue
            grid = torch.stack([u / w * 2 - 1, v / h * 2 - 1], -1)[vis].float()
            col_j = F.grid_sample(
                renders[j].permute(2, 0, 1)[None], grid[None, None], align_corners=False
            )[0, :, 0].T
            errs.append((col_j - col_i[vis]).abs().mean(-1))
    return float(torch.cat(errs).mean()) if errs else float("nan")


def run_method(rs, fill, method: str, args, out_root: Path) -> dict:
    name, rounds, depth_source = METHODS[method]
    upd = DatasetUpdateConfig(
        warmup_steps=args.warmup,
        update_every=args.update_every,
        num_rounds=args.rounds if rounds is None else rounds,
        final_steps=args.final,
        depth_loss="none",
        depth_source=depth_source,
    )
    cfg = CompleteConfig(inpainter=name, progress=False, update=upd)
    tcfg = TrainerConfig(
        batch_rays=args.batch_rays,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=0,
        scene_box=args.scene_box,
        # low alpha threshold: works around the occupancy grid emptying itself at its first
        # update when the initial density is uniform (fields issue, reported)
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=args.samples, grid_alpha_threshold=1e-3)),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer, _ = complete_scene(rs.scene, fill, out_root / method, cfg, tcfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    renders = [trainer.render_camera(rs.scene.cameras, i)["rgb"] for i in range(len(rs.scene))]
    views = [i for i in range(len(renders)) if bool(fill[i].any())]
    mp = sum(psnr(renders[i], rs.truth_images[i], fill[i]) for i in views) / len(views)
    ms = sum(ssim(renders[i], rs.truth_images[i], fill[i]) for i in views) / len(views)
    ce = consistency_error(renders, fill, rs.truth_depths, rs.scene.cameras)
    return {
        "masked_psnr": mp,
        "masked_ssim": ms,
        "consistency_error": ce,
        "peak_mem_mb": peak_rss_mb(),
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": trainer.step,
    }


def sd_joint_step_memory(view_size: int = 512, grid: int = 2) -> dict:
    """Peak memory of one joint denoising step (CFG) on a ``grid x grid`` grid of views with
    random-init SD-2-inpainting models (plus VAE encode/decode of the views)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sceneforge.core.diffusion import GridConfig, JointGridDenoiser, vae_decode, vae_encode

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = torch.float16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**SD2_UNET).to(dev, dt).eval()
    vae = AutoencoderKL(**SD2_VAE).to(dev, dt).eval()
    text = CLIPTextModel(CLIPTextConfig(**SD2_TEXT)).to(dev, dt).eval()
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    params = sum(p.numel() for m in (unet, vae, text) for p in m.parameters())
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n = grid * grid
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids = torch.randint(0, 49408, (1, 77), generator=g).to(dev)
        emb = text(ids)[0]
        neg = text(torch.zeros_like(ids))[0]
        imgs = (torch.rand(n, 3, view_size, view_size, generator=g) * 2 - 1).to(dev, dt)
        cond_lat = vae_encode(vae, imgs, g, batch=1)
        lh = view_size // 8
        mask = torch.zeros(n, 1, lh, lh, device=dev, dtype=dt)
        mask[:, :, lh // 4 : 3 * lh // 4, lh // 4 : 3 * lh // 4] = 1
        sched.set_timesteps(20, device=dev)
        lat = torch.randn(n, 4, lh, lh, generator=g).to(dev, dt)
        den = JointGridDenoiser(unet, sched, GridConfig(grid, grid, True, 1), 7.5)
        t1 = time.perf_counter()
        lat = den(lat, sched.timesteps[:1], emb, neg, torch.cat([mask, cond_lat], 1))
        step_s = time.perf_counter() - t1
        vae_decode(vae, lat, batch=1)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        kind = "cuda_max_allocated"
    else:
        peak = peak_rss_mb()
        kind = "cpu_peak_rss"
    return {
        "peak_mem_mb": peak,
        "memory_kind": kind,
        "params_m": params / 1e6,
        "dtype": str(dt),
        "step_s": step_s,
        "wall_s": time.perf_counter() - t0,
    }


def _fmt(x, k: int) -> str:
    return "" if x is None else f"{x:.{k}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--scene", default="tiles", choices=["tiles", "objects"])
    p.add_argument("--size", type=int, default=32, help="image size (pixels)")
    p.add_argument("--views", type=int, default=12)
    p.add_argument("--seeds", default="0", help="comma-separated scene seeds")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--update-every", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--final", type=int, default=50)
    p.add_argument("--batch-rays", type=int, default=512)
    p.add_argument("--samples", type=int, default=48)
    p.add_argument(
        "--scene-box",
        default="bounded",
        choices=["auto", "bounded", "unbounded"],
        help="trainer scene box; bounded = from the scene's sparse (SfM-like) points",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sd-memory", action="store_true", help="measure one SD-2 joint 2x2 step")
    p.add_argument("--sd-view-size", type=int, default=512)
    p.add_argument("--out", default="/tmp/sceneforge_completion_bench")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m and m != "none"]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        if not methods:
            break
        if args.scene == "tiles":
            rs = tiles_removal_scene(args.views, args.size, seed)
        else:
            cfg = SyntheticSceneConfig(
                scene="objects",
                rig="orbit",
                num_views=args.views,
                width=args.size,
                height=args.size,
                seed=seed,
                num_objects=4,
                elevation_deg=(15.0, 45.0),
                ssaa=3,
                ground_plane=True,
            )
            rs = object_removal_scene(cfg, object_id=0)
        fill = box_fill_masks(rs.scene.cameras, rs.box, depths=rs.scene.depths)
        scene_name = f"{args.scene}_orbit_{args.views}x{args.size}px_seed{seed}"
        for m in methods:
            r = {"scene": scene_name, "method": m, **run_method(rs, fill, m, args, Path(args.out))}
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.sd_memory:
        r = {
            "scene": f"sd2_inpaint_random_init_2x2_{args.sd_view_size}px",
            "method": "sd_joint_step",
            "masked_psnr": None,
            "masked_ssim": None,
            "consistency_error": None,
            **sd_joint_step_memory(args.sd_view_size),
        }
        rows.append(r)
        print(json.dumps(r), flush=True)
    base = {r["scene"]: r for r in rows if r["method"] == "masked_only"}
    print(
        "\n| scene | method | masked PSNR | dPSNR vs masked-only | masked SSIM | consistency err | "
        "peak MB | wall s | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = base.get(r["scene"])
        dp = (
            ""
            if b is None or r["masked_psnr"] is None
            else f"{r['masked_psnr'] - b['masked_psnr']:+.2f}"
        )
        print(
            f"| {r['scene']} | {r['method']} | {_fmt(r['masked_psnr'], 2)} | {dp} | "
            f"{_fmt(r['masked_ssim'], 3)} | {_fmt(r['consistency_error'], 4)} | {r['peak_mem_mb']:.0f} | "
            f"{r['wall_s']:.1f} | {_fmt(r.get('cpu_s'), 1)} |"
        )
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
