"""``sceneforge eval RUN_DIR``: held-out metrics of a trained run at full size (like ``ns-eval``).

Training evaluates its held-out views (every ``holdout_every``-th image, never trained on) at
the training downscale and writes ``eval.json``. This command renders the same views again at
full size (or ``--downscale``) from the run's checkpoint and writes PSNR / SSIM (plus the
colour-corrected ``_cc`` variants, masked ones when the scene has masks, LPIPS when its weights
are given) per view and on average. The result goes to ``RUN_DIR/eval.json`` when that name is
free, else to the next free ``eval.vNNN.json`` (the training's ``eval.json`` is kept): nothing
in the run folder is overwritten.

LPIPS (Zhang et al. 2018, AlexNet variant) needs weights on the local disk (nothing is
downloaded): a state dict as ``lpips.LPIPS(net="alex").state_dict()`` saves it (keys
``net.sliceK.I.weight`` / ``.bias`` of the AlexNet convolutions and ``linK.model.1.weight`` of the
five linear heads; ``scaling_layer.*`` optional). The layout and the computation follow the
``lpips`` package's module; they are tested on random weights, not compared with that package.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sceneforge.core import run_files
from sceneforge.core.atomic import write_json_versioned


class EvalError(ValueError):
    """Bad input to ``sceneforge eval`` (run folder, LPIPS weights, options): names the file."""


@dataclass
class EvalConfig:
    """Held-out evaluation of a trained run (``sceneforge eval RUN_DIR``)."""

    downscale: int = 1
    """Evaluate at 1/downscale of the photos' size (1 = full size)."""
    max_images: int = 0
    """Evaluate at most this many held-out views (0 = all)."""
    lpips_weights: Path | None = None
    """Local LPIPS (AlexNet) weights file; LPIPS is skipped without it."""
    color_correct: bool = True
    """Also report colour-corrected metrics (psnr_cc, ssim_cc)."""
    out: Path | None = None
    """Output JSON (default RUN_DIR/eval.json; a taken name gets the next free .vNNN)."""
    device: str | None = None
    """Torch device: auto, cpu, cuda, cuda:N (default: the run's)."""


# ----------------------------------------------------------------------------- LPIPS

#: torchvision AlexNet ``features`` index of each LPIPS layer's convolution, and its channels.
_ALEX_CONVS = ((0, 64), (3, 192), (6, 384), (8, 256), (10, 256))
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPS:
    """LPIPS distance with AlexNet features, weights read from a local file (lower = closer)."""

    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        import torch
        import torchvision

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LPIPS weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle with other objects, a truncated or foreign file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise EvalError(f"{path}: not a readable LPIPS weights file ({first})") from e
        if not isinstance(state, dict):
            raise EvalError(f"{path}: LPIPS weights must be a state dict, got {type(state)}")
        features = torchvision.models.alexnet(weights=None).features
        conv_state, self.lins = {}, []
        for k, (idx, channels) in enumerate(_ALEX_CONVS):
            for part in ("weight", "bias"):
                key = f"net.slice{k + 1}.{idx}.{part}"
                if key not in state:
                    raise EvalError(f"{path}: LPIPS weights lack {key!r}")
                conv_state[f"{idx}.{part}"] = state[key]
            lin = state.get(f"lin{k}.model.1.weight")
            if lin is None or tuple(lin.shape) != (1, channels, 1, 1):
                raise EvalError(
                    f"{path}: LPIPS weights need 'lin{k}.model.1.weight' of shape "
                    f"(1, {channels}, 1, 1), got {None if lin is None else tuple(lin.shape)}"
                )
            self.lins.append(lin.float().to(device))
        try:
            features.load_state_dict(conv_state)
        except RuntimeError as e:
            raise EvalError(f"{path}: LPIPS AlexNet weights do not fit ({e})") from e
        self.features = features.float().eval().to(device)
        shift = state.get("scaling_layer.shift", torch.tensor(_SHIFT).reshape(1, 3, 1, 1))
        scale = state.get("scaling_layer.scale", torch.tensor(_SCALE).reshape(1, 3, 1, 1))
        self.shift = shift.float().reshape(1, 3, 1, 1).to(device)
        self.scale = scale.float().reshape(1, 3, 1, 1).to(device)
        self.device = device

    def _feats(self, img):
        x = (img.permute(2, 0, 1)[None].float().to(self.device) * 2 - 1 - self.shift) / self.scale
        out, last = [], 0
        for idx, _ in _ALEX_CONVS:
            relu = idx + 1  # each LPIPS layer ends after the ReLU following its convolution
            for layer in self.features[last : relu + 1]:
                x = layer(x)
            last = relu + 1
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def __call__(self, pred, target) -> float:
        """LPIPS between two ``H W 3`` images in [0, 1]."""
        import torch

        with torch.no_grad():
            total = 0.0
            for fa, fb, lin in zip(self._feats(pred), self._feats(target), self.lins):
                d = torch.nn.functional.conv2d((fa - fb).pow(2), lin)
                total += float(d.mean())
        return total


# ----------------------------------------------------------------------------- evaluation


def find_trained_run(run_dir: str | Path) -> Path:
    """The folder holding the checkpoint: ``RUN_DIR`` itself, the ``field/`` stage of a
    ``sceneforge run`` output folder, or the ``train/`` stage of a ``sceneforge human`` one."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run folder not found")
    if (run / run_files.CHECKPOINT).is_file():
        return run
    for stage in (run_files.FIELD_DIR, run_files.HUMAN_TRAIN_DIR):  # run / human capture
        if (run / stage / run_files.CHECKPOINT).is_file():
            return run / stage
    raise FileNotFoundError(
        f"{run}: no {run_files.CHECKPOINT} (not a trained run; `sceneforge train` or "
        "`sceneforge run` writes one)"
    )


def evaluate_run(
    run_dir: str | Path, config: EvalConfig | None = None, log: Callable[[str], None] = print
) -> tuple[dict, Path]:
    """Render the held-out views of a trained run and score them; returns the result and the
    JSON file it was written to."""
    from sceneforge.core.devices import resolve_device
    from sceneforge.core.metrics import psnr, ssim
    from sceneforge.core.progress import RunLog
    from sceneforge.fields.api import load_trained
    from sceneforge.fields.camera_opt import eval_cameras
    from sceneforge.fields.datasets import downscale_image, downscale_mask
    from sceneforge.fields.evaluation import color_correct

    cfg = config or EvalConfig()
    if cfg.downscale < 1:
        raise EvalError(f"--downscale must be >= 1, got {cfg.downscale}")
    if cfg.max_images < 0:
        raise EvalError(f"--max-images must be >= 0, got {cfg.max_images}")
    run = find_trained_run(run_dir)
    device = None if cfg.device is None else str(resolve_device(cfg.device))
    lpips = LPIPS(cfg.lpips_weights) if cfg.lpips_weights is not None else None
    t0 = time.perf_counter()
    trainer = load_trained(run, device=device)
    idx = list(trainer.eval_indices)
    if not idx:
        raise EvalError(f"{run}: this run has no held-out views (trained with holdout_every 0)")
    if cfg.max_images:
        idx = idx[: cfg.max_images]
    scene, ds = trainer.scene, cfg.downscale
    # held-out poses in the refined training cameras' frame (camera refinement; else as given)
    cams = eval_cameras(trainer)
    vals: dict[str, list[float]] = {}
    views = []
    rl = log if isinstance(log, RunLog) else RunLog(None, console=log)
    with rl.task("eval", len(idx), unit="view") as task:
        for k, i in enumerate(idx):
            name = scene.image_names[i]
            gt = downscale_image(scene.load_image(i), ds)
            opts = trainer.model.view_options(i)  # e.g. a human4d image's own frame
            pred = trainer.render_camera(cams, i, downscale=ds, **opts)["rgb"].cpu()
            if pred.shape != gt.shape:
                raise EvalError(
                    f"{name}: render {tuple(pred.shape)} and photo {tuple(gt.shape)} differ in "
                    "size; try another --downscale"
                )
            row = {"name": name, "psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
            if cfg.color_correct:
                cc = color_correct(pred, gt)
                row.update({"psnr_cc": psnr(cc, gt), "ssim_cc": ssim(cc, gt)})
            m = scene.load_mask(i)
            m = downscale_mask(m, ds) if m is not None else None
            if m is not None and bool(m.any()):
                row.update({"psnr_masked": psnr(pred, gt, m), "ssim_masked": ssim(pred, gt, m)})
            if lpips is not None:
                row["lpips"] = lpips(pred, gt)
            views.append(row)
            for key, v in row.items():
                if key != "name":
                    vals.setdefault(key, []).append(v)
            mean = sum(vals["psnr"]) / len(vals["psnr"])
            task.update(k + 1, f"psnr {mean:.2f}")
    result: dict = {key: sum(v) / len(v) for key, v in vals.items()}
    h, w = int(pred.shape[0]), int(pred.shape[1])
    result.update(
        {
            "run_dir": str(run.resolve()),
            "steps": trainer.step,
            "downscale": ds,
            "image_size": [w, h],
            "num_eval_images": len(idx),
            "lpips_weights": None if lpips is None else str(Path(cfg.lpips_weights).resolve()),
            "wall_s": time.perf_counter() - t0,
            **trainer.describe(),
            "views": views,
        }
    )
    if not all(math.isfinite(result[k]) for k in ("psnr", "ssim")):
        raise EvalError(f"{run}: non-finite held-out metrics ({result['psnr']}, {result['ssim']})")
    out = write_json_versioned(cfg.out or run / run_files.EVAL, result)
    return result, out


def format_table(result: dict) -> str:
    """The averages of :func:`evaluate_run` as a short table."""
    rows = [("views", str(result["num_eval_images"]))]
    rows.append(("image size", "x".join(str(x) for x in result["image_size"])))
    names = {
        "psnr": "PSNR (dB)",
        "ssim": "SSIM",
        "lpips": "LPIPS",
        "psnr_cc": "PSNR colour-corrected (dB)",
        "ssim_cc": "SSIM colour-corrected",
        "psnr_masked": "PSNR masked (dB)",
        "ssim_masked": "SSIM masked",
    }
    for key, label in names.items():
        if key in result:
            v = result[key]
            rows.append((label, f"{v:.2f}" if key.startswith("psnr") else f"{v:.4f}"))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b:>8}" for a, b in rows)


__all__ = [
    "LPIPS",
    "EvalError",
    "EvalConfig",
    "evaluate_run",
    "find_trained_run",
    "format_table",
]
