"""4D human benchmark (issue 20): body fit accuracy and novel-view / novel-pose renders.

Data: a synthetic anny video (:func:`sceneforge.stylize.human.make_human_video`: a textured
person walking in a room with non-rigid "loose clothing" offsets the body model cannot
express, a static camera, exact cameras, masks and body parameters), with held-out cameras
(new views of training frames) and held-out poses (a motion the person never did, seen by the
training camera).

Rows (``--json``: one JSON object per line):

- ``mpjpe_mm_gt2d``: MPJPE of the body fit (:func:`~sceneforge.stylize.human.fit_body`, shape
  fitted too) from the ground-truth 2D keypoints with 2 px noise and the ground-truth masks;
- ``mpjpe_mm_mediapipe``: the same from MediaPipe's keypoints and masks on the rendered frames
  (skipped with a reason when the ``[human]`` extra is missing);
- ``novel_view_psnr_person`` / ``novel_pose_psnr_person``: person PSNR (the ground-truth person
  mask dilated by 4 px) of the 4D field trained by ``sceneforge human`` on the frames with
  MediaPipe's detections, at ``cpu_minutes`` of training; ``baseline_*`` rows: the fitted mesh
  with colours back-projected from the frames (:mod:`sceneforge.stylize.human.baseline`),
  composited over the ground-truth image where the mesh is absent (favours the baseline).

MPJPE is root-aligned (mean of the hips) over the landmarks the body model maps, in mm; PA-MPJPE
is printed beside it. ``cpu_minutes`` is training wall-clock minutes on this machine (2 cores:
about half its CPU minutes).

    .venv/bin/python benchmarks/human.py --json            # all rows (~30 min on 2 cores)
    .venv/bin/python benchmarks/human.py --only fit --json # the fit rows only (~3-6 min)
    .venv/bin/python benchmarks/human.py --quick           # smoke run (~2 min)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sceneforge.core.cameras import Cameras, compose_rigid, invert_rigid, transform_points
from sceneforge.core.image_io import write_image_atomic
from sceneforge.core.metrics import ssim
from sceneforge.stylize.human import (
    AnnyModel,
    FitConfig,
    HumanVideo,
    HumanVideoConfig,
    fit_body,
    make_human_video,
    mpjpe,
    pa_mpjpe,
    to_landmarks,
)
from sceneforge.stylize.human.baseline import backproject_colors, render_baseline
from sceneforge.stylize.human.capture import (
    HumanCaptureConfig,
    HumanTrainConfig,
    capture_human,
    usable_frames,
)
from sceneforge.stylize.human.capture_run import load_capture
from sceneforge.stylize.human.detections import PoseDetections
from sceneforge.stylize.human.field import HumanTrainerConfig
from sceneforge.stylize.human.metrics import person_psnr
from sceneforge.stylize.human.synthetic import HumanFrames


def frames_uint8(frames: HumanFrames) -> torch.Tensor:
    """The rendered images as ``uint8 [N, H, W, 3]`` (what a video file would hold)."""
    return (frames.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def gt_detections(
    video: HumanVideo, frames: HumanFrames, noise_px: float, seed: int
) -> PoseDetections:
    """Ground-truth 2D keypoints with Gaussian pixel noise, and the ground-truth masks."""
    g = torch.Generator().manual_seed(seed)
    kp = frames.keypoints_2d + noise_px * torch.randn(
        frames.keypoints_2d.shape, generator=g, dtype=frames.keypoints_2d.dtype
    )
    lm, conf = to_landmarks(kp, video.keypoint_ids)
    size = video.config.size
    return PoseDetections(
        keypoints=lm.float(),
        confidence=conf.float(),
        found=torch.ones(len(frames), dtype=torch.bool),
        image_size=(size, size),
        masks=frames.masks.clone(),
        source=f"ground truth + {noise_px:g} px noise",
    )


def mediapipe_detections(frames: HumanFrames) -> PoseDetections:
    """MediaPipe Pose (complexity 1) keypoints and masks on the rendered frames."""
    from sceneforge.stylize.human.detect import detect_pose

    return detect_pose(frames_uint8(frames))


def fit_errors(
    model, video: HumanVideo, frames: HumanFrames, det: PoseDetections, cfg: FitConfig
) -> dict:
    """Fit the body to ``det`` with the true cameras; MPJPE / PA-MPJPE (mm) of the mapped
    landmarks over the frames with a detection."""
    keep = det.found.nonzero()[:, 0].tolist()
    if not keep:
        raise RuntimeError(f"{det.source}: no frame has a person")
    d = det.subset(keep)
    cams = frames.cameras[keep]
    start = time.perf_counter()
    res = fit_body(model, d.keypoints.double(), cams, d.confidence.double(), d.masks, config=cfg)
    wall = time.perf_counter() - start
    kp3, ids = model.keypoints(model(res.pose, res.shape, res.transl))
    gt = frames.keypoints_3d[keep]
    hips = [ids.index(23), ids.index(24)]
    return {
        "mpjpe_mm": float(mpjpe(kp3.double(), gt.double(), hips).mean()),
        "pa_mpjpe_mm": float(pa_mpjpe(kp3.double(), gt.double()).mean()),
        "reprojection_px": float(res.reprojection_error_px.mean()),
        "frames": len(keep),
        "fit_s": wall,
        "result": res,
    }


def fit_rows(model, video: HumanVideo, args) -> list[dict]:
    """The body fit from ground-truth 2D keypoints + 2 px noise (and the true masks)."""
    det = gt_detections(video, video.train, 2.0, args.seed)
    r = fit_errors(model, video, video.train, det, FitConfig(fit_shape=True))
    return [
        {
            "metric": "mpjpe_mm_gt2d",
            "value": r["mpjpe_mm"],
            "cpu_minutes": 0.0,
            "pa_mpjpe_mm": r["pa_mpjpe_mm"],
            "reprojection_px": r["reprojection_px"],
            "frames": r["frames"],
            "fit_s": r["fit_s"],
            "detections": det.source,
            "target_mm": 30.0,
        }
    ]


# ----------------------------------------------------------------------------- the 4D field


def write_clip(frames: HumanFrames, folder: Path) -> Path:
    """The training frames as ``00000.png`` ... (what ``sceneforge human`` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(frames_uint8(frames)):
        write_image_atomic(folder / f"{i:05d}.png", img.float() / 255)
    return folder


class TruthDetector:
    """Ground-truth keypoints + noise and masks (runs without the ``[human]`` extra)."""

    name = "ground-truth-2px"

    def __init__(self, video: HumanVideo, seed: int) -> None:
        self.video, self.seed = video, seed

    def __call__(self, files: list[Path]) -> PoseDetections:
        idx = [int(p.stem) for p in files]
        return gt_detections(self.video, self.video.train, 2.0, self.seed).subset(idx)


def capture_frame(video: HumanVideo) -> torch.Tensor:
    """``cam_from_world`` of the training camera: the capture's world is that camera's frame
    (static camera, identity pose), so ``X_capture = T X_world``."""
    return video.train.cameras.cam_from_world[0].double()


def to_capture(cameras: Cameras, video: HumanVideo) -> Cameras:
    """Ground-truth cameras expressed in the capture's frame."""
    world_from_capture = invert_rigid(capture_frame(video))
    cfw = compose_rigid(
        cameras.cam_from_world.double(), world_from_capture.expand(len(cameras), 3, 4)
    )
    return Cameras(cameras.model, cameras.params, cameras.width, cameras.height, cfw)


def crop(cameras: Cameras, i: int, box: tuple[int, int, int, int]) -> Cameras:
    """Camera ``i`` cropped to the pixel box ``(x0, y0, x1, y1)`` (pinhole)."""
    x0, y0, x1, y1 = box
    p = cameras.params[i].clone().double()
    p[2] -= x0
    p[3] -= y0
    return Cameras(
        cameras.model,
        p[None],
        torch.tensor([x1 - x0]),
        torch.tensor([y1 - y0]),
        cameras.cam_from_world[i : i + 1].double(),
    )


def person_box(mask: torch.Tensor, pad: int) -> tuple[int, int, int, int]:
    ys, xs = mask.nonzero(as_tuple=True)
    h, w = mask.shape
    return (
        max(int(xs.min()) - pad, 0),
        max(int(ys.min()) - pad, 0),
        min(int(xs.max()) + pad + 1, w),
        min(int(ys.max()) + pad + 1, h),
    )


def fit_heldout_poses(
    run, video: HumanVideo, detector
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Bodies of the held-out-pose frames fitted (shape kept) to the detector's keypoints on
    those frames (the driving video of a new pose), in the capture's frame; only the frames
    where the detector found a usable person (their indices are returned first)."""
    f = video.heldout_poses
    det = detector(f)
    cfg = FitConfig(fit_shape=False)
    keep, dropped = usable_frames(det, [str(i) for i in range(len(f))], cfg)
    if dropped:
        print(f"[human] held-out poses without a usable detection: {dropped}", file=sys.stderr)
    d = det.subset(keep)
    cams = run.camera[[0] * len(keep)]
    res = fit_body(run.body, d.keypoints.double(), cams, d.confidence.double(), d.masks,
                   shape=run.fit.shape, config=cfg)  # fmt: skip
    return keep, res.pose, res.transl


def evaluate_capture(run, video: HumanVideo, new_poses, minutes: float) -> list[dict]:
    """Person PSNR of the 4D field and of the back-projected mesh on held-out views and poses
    (rendered on the person's box: the metric's pixels and a margin)."""
    body, fit = run.body, run.fit
    kept = run.kept  # kept[k] = extracted frame index = synthetic training frame index
    verts = fit.bodies(body).vertices.double()
    images = run.frames.permute(0, 3, 1, 2).float() / 255
    masks = None if run.detections.masks is None else run.detections.masks[kept]
    n = len(kept)
    colors = backproject_colors(verts, body.faces, images, run.camera[[0] * n], masks).colors
    anchor = run.train[len(run.train) // 2]
    cases = []
    hv = video.heldout_views
    cams = to_capture(hv.cameras, video)
    for i in range(len(hv)):
        k = kept.index(int(hv.frame[i])) if int(hv.frame[i]) in kept else None
        if k is None:
            continue
        cases.append(("novel_view", cams, i, hv, {"frame": k}, verts[k]))
    hp = video.heldout_poses
    cams = to_capture(hp.cameras, video)
    keep, pose, transl = new_poses
    with torch.no_grad():
        pv = body(pose.to(body.dtype), fit.shape.to(body.dtype), transl.to(body.dtype)).vertices
    for j, i in enumerate(keep):
        opts = {"frame": anchor, "pose": pose[j].float(), "transl": transl[j].float()}
        cases.append(("novel_pose", cams, i, hp, opts, pv[j].double()))
    vals: dict[str, list[float]] = {}
    for kind, cams, i, split, opts, v in cases:
        gt = split.images[i].permute(1, 2, 0).float()
        person = split.masks[i]
        x0, y0, x1, y1 = person_box(person, 8)
        cam = crop(cams, i, (x0, y0, x1, y1))
        gt_c, m_c = gt[y0:y1, x0:x1], person[y0:y1, x0:x1]
        pred = run.trainer.render_camera(cam, 0, -1, 1, **opts)["rgb"].clamp(0, 1)
        col, cover = render_baseline(v, body.faces, colors, cam, 0)
        base = col + (1 - cover[..., None]) * gt_c  # the true image where the mesh is absent
        vals.setdefault(kind, []).append(person_psnr(pred, gt_c, m_c))
        vals.setdefault("baseline_" + kind, []).append(person_psnr(base, gt_c, m_c))
        vals.setdefault(kind + "_ssim_box", []).append(ssim(pred, gt_c))
    rows = []
    for kind in ("novel_view", "novel_pose"):
        for prefix in ("", "baseline_"):
            xs = vals.get(prefix + kind, [])
            if not xs:
                continue
            rows.append(
                {
                    "metric": f"{prefix}{kind}_psnr_person",
                    "value": float(np.mean(xs)),
                    "cpu_minutes": minutes,
                    "images": len(xs),
                    "of": len(video.heldout_views if kind == "novel_view" else video.heldout_poses),
                    "target_db": None if prefix else (25.0 if kind == "novel_view" else 22.0),
                    **({} if prefix else {"ssim_box": float(np.mean(vals[kind + "_ssim_box"]))}),
                }
            )
    return rows


def render_rows(model, video: HumanVideo, args, work: Path) -> list[dict]:
    """Train ``sceneforge human`` on the clip for ``args.minutes`` (each budget continues the
    previous run) and evaluate after each; plus the MediaPipe body-fit row (the capture's own
    fit)."""
    clip = write_clip(video.train, work / "clip")
    mediapipe = importlib.util.find_spec("mediapipe") is not None and not args.truth_detector
    detector = None if mediapipe else TruthDetector(video, args.seed)
    held_detector = (
        mediapipe_detections
        if mediapipe
        else (lambda f: gt_detections(video, f, 2.0, args.seed + 1))
    )
    trainer = HumanTrainerConfig(
        device="cpu",
        num_threads=args.threads,
        progress=False,
        tensorboard=False,
        checkpoint_every=500,
    )
    cfg = HumanCaptureConfig(
        max_frames=len(video.train),
        max_image_size=args.size,
        focal_px=float(video.train.cameras.params[0, 0]),
        train=HumanTrainConfig(steps=0, heldout_every=0, trainer=trainer),
        render=False,
    )
    out = work / "capture"
    rows: list[dict] = []
    new_poses = None
    cpu0 = time.process_time()
    for minutes in args.minutes:
        cfg.train.max_seconds = 60.0 * minutes
        summary = capture_human(
            clip, out, cfg, detector, progress=lambda m: print(m, file=sys.stderr)
        )
        run = load_capture(out, cfg)
        if new_poses is None:
            new_poses = fit_heldout_poses(run, video, held_detector)
            rows.append(capture_fit_row(run, video, summary))
        cpu = time.process_time() - cpu0  # this process's CPU seconds so far (all stages)
        t0 = time.perf_counter()
        for r in evaluate_capture(run, video, new_poses, minutes):
            rows.append({**r, "steps": run.trainer.step, "process_cpu_s": round(cpu, 1)})
        print(f"[human] evaluated at {minutes:g} min in {time.perf_counter() - t0:.0f} s "
              f"(step {run.trainer.step})", file=sys.stderr)  # fmt: skip
    return rows


def capture_fit_row(run, video: HumanVideo, summary: dict) -> dict:
    """MPJPE of the capture's own body fit (its detector's keypoints, the shape fitted)."""
    body, fit = run.body, run.fit
    kp3, ids = body.keypoints(fit.bodies(body))
    gt3 = video.train.keypoints_3d[run.kept].double()
    gt = transform_points(capture_frame(video), gt3.reshape(-1, 3)).reshape(gt3.shape)
    hips = [ids.index(23), ids.index(24)]
    return {
        "metric": "mpjpe_mm_mediapipe"
        if "mediapipe" in summary["detector"]
        else "mpjpe_mm_capture",
        "value": float(mpjpe(kp3.double(), gt, hips).mean()),
        "cpu_minutes": 0.0,
        "pa_mpjpe_mm": float(pa_mpjpe(kp3.double(), gt).mean()),
        "reprojection_px": summary["fit_reprojection_error_px"],
        "frames": len(run.kept),
        "fit_s": summary["stages"].get("fit"),
        "detections": summary["detector"],
        "target_mm": 60.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON row per line")
    ap.add_argument("--quick", action="store_true", help="smoke run: few frames, short training")
    ap.add_argument("--only", choices=("fit", "render", "all"), default="all")
    ap.add_argument("--size", type=int, default=256, help="image size of the synthetic video")
    ap.add_argument("--frames", type=int, default=30, help="training frames")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5.0, 15.0],
                    help="training budgets (each continues the previous run)")  # fmt: skip
    ap.add_argument("--truth-detector", action="store_true",
                    help="ground-truth keypoints + 2 px noise instead of MediaPipe")  # fmt: skip
    ap.add_argument("--work", type=Path, default=None, help="keep the capture here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: 2 threads spin badly on a shared 2-core machine)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.size, args.minutes = 8, 192, [0.5]
    torch.set_num_threads(args.threads)
    model = AnnyModel(dtype=torch.float64)
    vcfg = HumanVideoConfig(
        size=args.size, num_frames=args.frames, camera="static", seed=args.seed, fps=15.0,
        heldout_stride=max(args.frames // 6, 1),
    )  # fmt: skip
    video = make_human_video(model, vcfg)
    rows = []
    if args.only in ("fit", "all"):
        rows += fit_rows(model, video, args)
    if args.only in ("render", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            rows += render_rows(model, video, args, args.work or Path(tmp))
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            extra = f"  PA {r['pa_mpjpe_mm']:.1f} mm" if "pa_mpjpe_mm" in r else ""
            print(f"{r['metric']:34s} {r['cpu_minutes']:5.1f} min {r['value']:8.2f}{extra}")
    return 0 if all(math.isfinite(r["value"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
