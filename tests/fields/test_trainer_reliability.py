"""Training faults: NaN/inf loss, non-finite parameters, a full disk while checkpointing,
kill -9 then resume (bit-exact on CPU), tampered pickles, bad images at training start."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fields_analytic import sphere_scene
from test_trainer import params_of, tiny_config

from sceneforge.core.cameras import Cameras
from sceneforge.core.scene import SceneData, SceneDataError
from sceneforge.fields.datasets import RayDataset
from sceneforge.fields.trainer import (
    CheckpointError,
    Trainer,
    TrainingDivergedError,
    read_checkpoint,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def scene():
    return sphere_scene(n_views=9, size=16)


def _same_params(a: Trainer, b: Trainer) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


# ----------------------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(scene, tmp_path, bad, one_thread):
    tr = Trainer(scene, tiny_config(checkpoint_every=5), tmp_path)

    def inject(t, batch, out):  # a loss term that blows up at the 7th step
        return out["rgb"].sum() * 0 + (bad if t.step == 6 else 0.0)

    tr.add_loss(inject)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingDivergedError) as e:
        tr.train(max_steps=20)
    msg = str(e.value)
    assert "step 7" in msg and str(bad) in msg and f"{ckpt} (step 5)" in msg, msg
    assert tr.step == 6  # the bad step changed nothing
    assert all(bool(torch.isfinite(p).all()) for p in tr.model.field.parameters())
    s = read_checkpoint(ckpt)
    assert s["step"] == 5
    assert all(bool(torch.isfinite(v).all()) for v in s["model"].values())
    resumed = Trainer.from_checkpoint(ckpt, scene)  # loadable, and training goes on from it
    resumed.train(max_steps=7)
    assert resumed.step == 7


def test_non_finite_parameters_are_never_checkpointed(scene, tmp_path, one_thread):
    tr = Trainer(scene, tiny_config())
    tr.train(max_steps=2)
    ckpt = tr.save_checkpoint(tmp_path / "checkpoint.pt")
    before = ckpt.read_bytes()
    with torch.no_grad():
        next(tr.model.field.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"non-finite parameters .*was not overwritten"):
        tr.save_checkpoint(ckpt)
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


# ----------------------------------------------------------------------------- disk full


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    scene, tmp_path, monkeypatch, where, one_thread
):
    tr = Trainer(scene, tiny_config())
    tr.train(max_steps=2)
    ckpt = tr.save_checkpoint(tmp_path / "checkpoint.pt")
    before = ckpt.read_bytes()
    tr.train(max_steps=4)
    if where == "torch.save":
        real_save = torch.save

        def half_then_full(obj, f, *a, **k):  # the disk fills up half-way through the file
            import io

            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            _enospc()

        monkeypatch.setattr(torch, "save", half_then_full)
    else:
        monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(OSError) as e:
        tr.save_checkpoint(ckpt)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert str(ckpt) in str(e.value) and "previous checkpoint" in str(e.value)
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left
    assert Trainer.from_checkpoint(ckpt, scene).step == 2


# ----------------------------------------------------------------------------- kill -9, resume

CHILD = """
import sys, time, torch
sys.path[:0] = [{here!r}]
torch.set_num_threads(1)
from fields_analytic import sphere_scene
from test_trainer import tiny_config
from sceneforge.fields.trainer import Trainer
tr = Trainer(sphere_scene(n_views=9, size=16), tiny_config(checkpoint_every=4), {out!r})
tr.add_hook(lambda t: time.sleep(0.15) if t.step >= 4 else None)  # a slow machine
tr.train(max_steps=40)
print("finished", flush=True)
"""


def test_kill_9_then_resume_equals_an_uninterrupted_run(scene, tmp_path, one_thread):
    out = tmp_path / "run"
    ckpt = out / "checkpoint.pt"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD.format(here=str(HERE), out=str(out)))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ckpt.exists(), child.communicate(timeout=5)
        time.sleep(0.5)  # mid-way between checkpoints (or while one is being written)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL  # killed, not finished
    # at most a temporary file of an interrupted write besides the complete checkpoint
    assert all(p.suffix == ".tmp" for p in out.iterdir() if p.name != "checkpoint.pt")
    resumed = Trainer.from_checkpoint(ckpt, scene, out)
    assert 4 <= resumed.step < 40 and resumed.step % 4 == 0
    resumed.train(max_steps=40)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # stale temp removed
    straight = Trainer(scene, tiny_config(checkpoint_every=4))
    straight.train(max_steps=40)
    _same_params(straight, resumed)
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


# ----------------------------------------------------------------------------- loading


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_tampered_pickle_is_refused_and_never_runs(scene, tmp_path, kind, one_thread):
    import pickle

    _Evil.marker = str(tmp_path / "PWNED")
    tr = Trainer(scene, tiny_config())
    state = tr.state_dict()
    state["model"]["extra"] = _Evil()
    bad = tmp_path / "tampered.pt"
    if kind == "torch.save":
        torch.save(state, bad)
    else:
        bad.write_bytes(pickle.dumps(state))
    with pytest.raises(CheckpointError, match="refusing to load.*tampered") as e:
        read_checkpoint(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(CheckpointError, match="refusing to load"):
        Trainer.from_checkpoint(bad, scene)
    assert not (tmp_path / "PWNED").exists()
    # torch's own default (used by the LightGlue / ALIKED / XFeat wheels) refuses it too
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad)
    assert not (tmp_path / "PWNED").exists()


def test_tracks_file_with_pickled_objects_is_refused(tmp_path):
    from sceneforge.recon.tracks import Tracks, TracksError

    _Evil.marker = str(tmp_path / "PWNED")
    bad = tmp_path / "tracks.npz"
    np.savez(bad, xy=np.array([_Evil()], dtype=object))
    with pytest.raises(TracksError, match="not a tracks file") as e:
        Tracks.load(bad)
    assert str(bad) in str(e.value) and not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- images


def test_training_set_names_a_corrupt_image_and_handles_mixed_sizes(tmp_path):
    sph = sphere_scene(n_views=3, size=16)
    cams = sph.cameras
    w = torch.tensor([16, 24, 16])
    h = torch.tensor([16, 12, 16])
    params = cams.params.clone()
    params[1, 2:] = torch.tensor([12.0, 6.0])
    mixed = Cameras(cams.model, params, w, h, cams.cam_from_world)
    # 8-bit values: the dataset keeps uint8 pixels, which round-trip 8-bit images exactly
    imgs = [torch.randint(0, 256, (int(h[i]), int(w[i]), 3)) / 255.0 for i in range(3)]
    ds = RayDataset(SceneData(cameras=mixed, image_names=["a", "b", "c"], images=imgs), [0, 1, 2])
    assert ds.shapes == [(16, 16), (12, 24), (16, 16)]
    assert torch.equal(ds.image(1), imgs[1])
    # a disk-backed scene with a corrupt file: the training set names it at start
    from sceneforge.core.image_io import write_image_atomic

    paths = []
    for i, im in enumerate(imgs):
        paths.append(tmp_path / f"im{i}.png")
        write_image_atomic(paths[-1], im)
    paths[2].write_bytes(b"\x89PNG truncated")
    disk = SceneData(cameras=mixed, image_names=["a", "b", "c"], image_paths=paths)
    with pytest.raises(SceneDataError, match="not a readable image") as e:
        Trainer(disk, tiny_config(holdout_every=0))
    assert str(paths[2]) in str(e.value)
