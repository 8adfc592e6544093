"""Held-out evaluation helpers that separate colour (exposure, white balance) from geometry.

Photo collections such as NeRD's blowtorch change exposure and white balance between photos;
a field with per-image appearance renders held-out views with the *mean* appearance, so part
of its held-out error is a global colour shift, not wrong geometry or texture. Two standard
ways to measure without that shift:

* :func:`color_correct` - a per-image least-squares affine colour transform (3x3 matrix +
  bias) of the render onto the ground truth before the metric ("colour-corrected" PSNR, as
  reported by mip-NeRF 360 / Zip-NeRF; theirs is a per-channel quadratic fit, ours affine).
* NeRF-W's protocol (models with per-image appearance, e.g.
  :meth:`sceneforge.fields.nerf_model.NerfModel.fit_unseen_appearance`): the held-out image's
  appearance is optimised on the left half of the image (model frozen) and the metric is
  computed on the right half only.

:func:`evaluate_heldout` is the trainer's held-out evaluation (every model, same metrics). It is
bounded: held-out images are rendered at the working (training) resolution, and images larger
than a pixel budget at a further integer downscale (:func:`eval_downscale`); full-size
evaluation is ``sceneforge eval``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def fit_color_affine(
    pred: Float[Tensor, "H W 3"],
    target: Float[Tensor, "H W 3"],
    mask: Bool[Tensor, "H W"] | None = None,
) -> Float[Tensor, "4 3"]:
    """Least-squares ``M`` with ``[pred, 1] @ M ~= target`` over the (masked) pixels.

    Solved in float64; a (near) singular system (e.g. a constant render) falls back to the
    minimum-norm solution, so it never fails.
    """
    if pred.shape != target.shape or pred.shape[-1] != 3:
        raise ValueError(f"fit_color_affine: shapes {tuple(pred.shape)} and {tuple(target.shape)}")
    x, y = pred.reshape(-1, 3).double(), target.reshape(-1, 3).double()
    if mask is not None:
        m = mask.reshape(-1)
        if not bool(m.any()):
            raise ValueError("fit_color_affine: the mask selects no pixel")
        x, y = x[m], y[m]
    a = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    # normal equations with a tiny ridge: 4x4, stable for any image size
    ata = a.T @ a + 1e-8 * torch.eye(4, dtype=a.dtype)
    return torch.linalg.lstsq(ata, a.T @ y).solution


def apply_color_affine(
    img: Float[Tensor, "... 3"], affine: Float[Tensor, "4 3"]
) -> Float[Tensor, "... 3"]:
    """``[img, 1] @ affine`` clamped to ``[0, 1]``."""
    x = img.double()
    out = x @ affine[:3].to(x) + affine[3].to(x)
    return out.clamp(0.0, 1.0).to(img.dtype)


def color_correct(
    pred: Float[Tensor, "H W 3"],
    target: Float[Tensor, "H W 3"],
    mask: Bool[Tensor, "H W"] | None = None,
) -> Float[Tensor, "H W 3"]:
    """``pred`` after the affine colour transform that best maps it onto ``target`` (fitted on
    the ``mask`` pixels when given, applied to the whole image)."""
    return apply_color_affine(pred, fit_color_affine(pred, target, mask))


def bar_callback(bar, task, what: str | None = None) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback for task ``task`` of the rich progress ``bar``:
    it advances the task, or with ``what`` shows ``what done/total`` as its description."""
    if what is None:
        return lambda done, total: bar.update(task, completed=done)
    return lambda done, total: bar.update(task, description=f"{what} {done}/{total}")


def eval_downscale(height: int, width: int, downscale: int, max_pixels: int) -> int:
    """The downscale of a full-size ``height x width`` image for evaluation: ``downscale``
    times the smallest integer that brings it to at most ``max_pixels`` pixels (0 = any)."""
    k = 1
    while max_pixels > 0 and (height // (downscale * k)) * (width // (downscale * k)) > max_pixels:
        k += 1
    return downscale * k


def evaluate_heldout(
    trainer,
    max_images: int | None = None,
    save_dir: Path | None = None,
    color_correct_metrics: bool = True,
    appearance_fit_steps: int = 0,
    max_pixels: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Held-out PSNR / SSIM of ``trainer``'s model over whole images, plus ``psnr_masked`` /
    ``ssim_masked`` over the mask's True pixels when the scene has masks (renders use the mean
    appearance).

    With ``color_correct_metrics`` the same metrics with a ``_cc`` suffix after
    :func:`color_correct` (for the masked ones fitted on the masked pixels only). With
    ``appearance_fit_steps`` > 0 and a model with per-image appearance, also NeRF-W's left-half
    / right-half metrics ``psnr_right_fit`` / ``psnr_right_mean``.

    Images are rendered at the training downscale, or at :func:`eval_downscale` when they have
    more than ``max_pixels`` pixels there (> 0); the result states ``train_downscale``,
    ``working_size`` (largest training view), ``eval_downscale`` (the largest used) and
    ``eval_size`` (largest evaluated image, ``WxH``). ``progress(done, total)`` is called after
    every image.
    """
    from sceneforge.core.image_io import write_image_atomic
    from sceneforge.core.metrics import psnr, ssim
    from sceneforge.fields.datasets import downscale_image, downscale_mask

    idx = trainer.eval_indices[:max_images] if max_images else trainer.eval_indices
    if not idx:
        raise ValueError("no held-out images to evaluate (holdout_every = 0 or too few images)")
    from sceneforge.fields.camera_opt import eval_cameras

    model, scene, ds = trainer.model, trainer.scene, trainer.downscale
    cams = eval_cameras(trainer)  # held-out poses in the refined cameras' frame (refinement)
    fit_steps = appearance_fit_steps if getattr(model, "has_appearance", False) else 0
    vals: dict[str, list[float]] = {}
    samples, rays = 0, 0
    used, eval_size = ds, (0, 0)
    t0 = time.perf_counter()
    for n, i in enumerate(idx):
        h, w = int(scene.cameras.height[i]), int(scene.cameras.width[i])
        eds = eval_downscale(h, w, ds, max_pixels)
        used = max(used, eds)
        gt = downscale_image(scene.load_image(i), eds)
        opts = model.view_options(i)
        r = trainer.render_camera(cams, i, downscale=eds, **opts)
        pred = r["rgb"]
        eval_size = max(eval_size, (pred.shape[1], pred.shape[0]), key=lambda s: s[0] * s[1])
        m = scene.load_mask(i)
        m = downscale_mask(m, eds) if m is not None else None
        m = m if m is not None and bool(m.any()) else None
        preds = {"": pred}
        if color_correct_metrics:
            preds["_cc"] = color_correct(pred, gt)
        for sfx, p in preds.items():
            vals.setdefault("psnr" + sfx, []).append(psnr(p, gt))
            vals.setdefault("ssim" + sfx, []).append(ssim(p, gt))
            if m is not None:
                pm_ = p if not sfx else color_correct(pred, gt, m)
                vals.setdefault("psnr_masked" + sfx, []).append(psnr(pm_, gt, m))
                vals.setdefault("ssim_masked" + sfx, []).append(ssim(pm_, gt, m))
        samples += int(r.get("num_samples", 0))
        rays += pred.shape[0] * pred.shape[1]
        if fit_steps > 0:
            right = torch.zeros(pred.shape[:2], dtype=torch.bool)
            right[:, pred.shape[1] // 2 :] = True
            vals.setdefault("psnr_right_mean", []).append(psnr(pred, gt, right))
            o, d, _ = cams.rays(i, downscale=eds)
            left = ~right.reshape(-1)
            try:
                model.fit_unseen_appearance(
                    o.float()[left],
                    d.float()[left],
                    gt.reshape(-1, 3)[left],
                    fit_steps,
                    trainer.cfg.batch_rays,
                    seed=i,
                )
                fitted = trainer.render_camera(cams, i, downscale=eds, **opts)["rgb"]
            finally:
                model.clear_unseen_appearance()
            fit = torch.where(right[..., None], fitted, pred)
            vals.setdefault("psnr_right_fit", []).append(psnr(fit, gt, right))
        if save_dir is not None:
            name = Path(scene.image_names[i]).stem
            write_image_atomic(save_dir / f"{name}_pred.png", pred)
            write_image_atomic(save_dir / f"{name}_gt.png", gt)
        if progress is not None:
            progress(n + 1, len(idx))
    wh = max(trainer.view_shape(j)[::-1] for j in range(trainer.num_views))
    res: dict = {k: sum(v) / len(v) for k, v in vals.items()}
    res.update(
        {
            "num_eval_images": len(idx),
            "steps": trainer.step,
            "eval_samples_per_ray": samples / max(rays, 1),
            "eval_rays_per_s": rays / max(time.perf_counter() - t0, 1e-9),
            "train_downscale": ds,
            "working_size": f"{wh[0]}x{wh[1]}",
            "eval_downscale": used,
            "eval_size": f"{eval_size[0]}x{eval_size[1]}",
        }
    )
    return res


__all__ = [
    "apply_color_affine",
    "bar_callback",
    "color_correct",
    "eval_downscale",
    "evaluate_heldout",
    "fit_color_affine",
]
