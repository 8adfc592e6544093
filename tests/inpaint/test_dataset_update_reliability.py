"""A full disk while the Inpaint Dataset Update writes a version: the earlier version stays
intact and loadable, the error says what happened, no half-written folder is left."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import sceneforge.inpaint.rounds as rounds
from sceneforge.core.image_io import read_image
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import Trainer, TrainerConfig
from sceneforge.inpaint.dataset_update import (
    DatasetUpdateConfig,
    InpaintDatasetUpdate,
    masked_training_scene,
)
from sceneforge.inpaint.inpainters import TeleaInpainter
from sceneforge.inpaint.masks import box_fill_masks
from sceneforge.inpaint.synthetic import tiles_removal_scene


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("where", ["image", "rename"])
def test_disk_full_during_a_dataset_update(tmp_path, monkeypatch, where, one_thread):
    rs = tiles_removal_scene(num_views=3, size=16, num_points=200)
    fill = box_fill_masks(rs.scene.cameras, rs.box, depths=rs.scene.depths)
    cfg = TrainerConfig(
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=16)),
    )
    trainer = Trainer(masked_training_scene(rs.scene, fill), cfg)
    upd = InpaintDatasetUpdate(
        trainer, fill, TeleaInpainter(), DatasetUpdateConfig(depth_loss="none"), tmp_path
    )
    assert upd.update() == 1
    root = tmp_path / "datasets"
    v1 = root / "v001"
    before = _snapshot(v1)
    calls = {"n": 0}
    if where == "image":
        real = rounds.write_image_atomic

        def second_image_fails(path, image):  # the disk fills up at the 2nd image
            calls["n"] += 1
            if calls["n"] == 2:
                _enospc()
            real(path, image)

        monkeypatch.setattr(rounds, "write_image_atomic", second_image_fails)
    else:
        real_replace = os.replace

        def folder_rename_fails(src, dst):  # images written, the final rename fails
            if os.path.isdir(src):
                _enospc()
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", folder_rename_fails)
    with pytest.raises(OSError) as e:
        upd.update()
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    msg = str(e.value)
    assert str(root / "v002") in msg and "earlier versions are unchanged" in msg, msg
    # nothing else in datasets/: no v002, no hidden temporary folder
    assert sorted(p.name for p in root.iterdir()) == ["v001"]
    assert _snapshot(v1) == before
    manifest = json.loads((v1 / "manifest.json").read_text())
    assert manifest["version"] == 1 and len(manifest["images"]) == 3
    for name in manifest["images"]:
        img = read_image(v1 / "images" / name)
        assert img.shape == (16, 16, 3) and bool(torch.isfinite(img).all())
    # with space again, the next update writes a complete new version
    v = upd.update()
    assert (root / f"v{v:03d}" / "manifest.json").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["v001", f"v{v:03d}"]
