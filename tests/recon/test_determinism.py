"""Recon results depend on the inputs and the config only: not on torch's thread count, the
SIMD kernels ATen picks (``ATEN_CPU_CAPABILITY``), the machine's load or a timing.

Threads and SIMD widths change the order of float sums, so poses may move in their last bits;
every decision (registered images, initialisation, tracks, points) must be the same. Measured
on an AVX512 machine: SfM (float64) from the same tracks moves poses by <= 1e-11 relative; the
image path by 1-2e-6 with ATen's scalar kernels (``default``): the float32 patch refinement
of the tracks then ends up to 3e-3 px elsewhere (its Lucas-Kanade stops once an update is
below 3e-3 px, so a last-bit difference can add or save an iteration); hence 1e-5 there. The
inputs are made once, in this process, and read from disk by every run: the synthetic renderer
itself is float math, and its uint8 images differ by one level in a few pixels between SIMD
paths (measured: 3 of 8 forward-facing views), which is a different input, not a recon change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from test_sfm import FAST, _synthetic

#: One setting, in a fresh interpreter (ATen picks its SIMD level once, at start): SfM on exact
#: synthetic tracks, then ``reconstruct`` (SIFT, matching, refinement, SfM, files) on rendered
#: forward-facing views. argv: threads, tracks file, images folder, output folder.
SCRIPT = """
import json, sys
from pathlib import Path

import torch

from sceneforge.recon.mapping import RefinementConfig
from sceneforge.recon.reconstruct import ReconstructConfig, reconstruct
from sceneforge.recon.sfm import SfMConfig, reconstruct_from_tracks
from sceneforge.recon.tracks import Tracks

threads, tracks_file, images, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
torch.set_num_threads(threads)
sfm = SfMConfig(refinement=RefinementConfig(**REFINEMENT), num_threads=threads)
res = {"capability": torch.backends.cpu.get_cpu_capability()}
rec = reconstruct_from_tracks(Tracks.load(tracks_file), sfm)
res["tracks"] = {
    "registered": rec.registered.nonzero()[:, 0].tolist(),
    "registered_by": list(rec.registered_by),
    "init": rec.stats["init"],
    "points": int(rec.points.shape[0]),
    "poses": rec.cameras.cam_from_world.double().tolist(),
}
res["threads"] = torch.get_num_threads()
cfg = ReconstructConfig(
    sfm=sfm, features="sift", sift_backend="opencv", progress=False, write_png=False
)
summary = reconstruct(images, out, cfg)
frames = json.loads((out / "transforms.json").read_text())["frames"]
res["images"] = {
    "registered": summary["registered_images"],
    "init": summary["stats"]["init"],
    "tracks": summary["tracks"]["num_tracks"],
    "points": summary["num_points"],
    "observations": summary["num_observations"],
    "poses": [f["transform_matrix"] for f in sorted(frames, key=lambda f: f["file_path"])],
}
print(json.dumps(res))
""".replace("REFINEMENT", repr(asdict(FAST)))


def _run(tmp: Path, threads: int, capability: str | None) -> dict:
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    # OpenMP threads that sleep instead of spinning while they wait: the same results, but two
    # threads on a busy 2-core machine measured 10x slower spinning (44 s instead of 4 s).
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    out = tmp / f"out_{threads}_{capability}"
    args = [
        str(tmp / "run.py"),
        str(threads),
        str(tmp / "orbit.npz"),
        str(tmp / "images"),
        str(out),
    ]
    p = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, f"threads={threads} {capability=}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_threads_and_simd_kernels_change_no_decision(tmp_path):
    from sceneforge.core.image_io import write_image_atomic
    from sceneforge.core.synthetic import forward_scene

    (tmp_path / "run.py").write_text(SCRIPT)
    _, tracks = _synthetic("orbit", num_views=8)
    tracks.save(tmp_path / "orbit.npz")
    scene = forward_scene(num_views=8, size=256)
    for i, image in enumerate(scene.images):
        write_image_atomic(tmp_path / "images" / f"{i:02d}.png", image.numpy())
    native = torch.backends.cpu.get_cpu_capability()  # e.g. AVX512, AVX2, DEFAULT, SVE256
    # (threads, ATEN_CPU_CAPABILITY): the first run is the reference; the others change the
    # threads, the SIMD level, or both ("avx2" only where the CPU has it).
    settings: list[tuple[int, str | None]] = [(1, None), (2, None), (1, "default")]
    if native in ("AVX2", "AVX512"):
        settings.append((2, "avx2"))
    runs = [_run(tmp_path, t, c) for t, c in settings]
    assert [r["threads"] for r in runs] == [t for t, _ in settings]
    assert runs[2]["capability"] == "DEFAULT"
    if len(runs) > 3:
        assert runs[3]["capability"] == "AVX2"
    ref = runs[0]
    assert len(ref["tracks"]["registered"]) == 8
    assert len(ref["images"]["registered"]) >= 6 and ref["images"]["points"] > 100
    for (threads, cap), run in zip(settings[1:], runs[1:]):
        for part in ("tracks", "images"):
            a, b = ref[part], run[part]
            where = f"{part}, threads={threads}, ATEN_CPU_CAPABILITY={cap}"
            for key in a:
                if key != "poses":
                    assert a[key] == b[key], f"{where}: {key} {a[key]} != {b[key]}"
            pa, pb = np.asarray(a["poses"]), np.asarray(b["poses"])
            err = float(np.abs(pa - pb).max()) / max(1.0, float(np.abs(pa).max()))
            bound = 1e-6 if part == "tracks" else 1e-5  # float32 refinement (module docstring)
            assert err < bound, f"{where}: poses differ by {err:.2e} relative"


def test_auto_threads_do_not_read_the_load(monkeypatch):
    """``num_threads=0``: ``min(available_cores(), 4)``, the same every time, and never from
    ``/proc/stat`` (the idle cores of a moment made results depend on the machine's load)."""
    import builtins

    import sceneforge.recon.features as features
    from sceneforge.recon.sfm import sfm_threads

    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc"):
            raise AssertionError(f"sfm_threads read {file}")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    first = sfm_threads(0)
    assert first == sfm_threads(0) == sfm_threads(-1) == min(features.available_cores(), 4)
    for cores, want in ((1, 1), (2, 2), (4, 4), (16, 4)):
        monkeypatch.setattr(features, "available_cores", lambda c=cores: c)
        assert sfm_threads(0) == want
    assert sfm_threads(None) is None and sfm_threads(3) == 3
