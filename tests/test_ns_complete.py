"""nerfstudio completion method (own venv: ``.venv-ns/bin/pytest -m nerfstudio
tests/test_ns_complete.py``). ``ns-train`` runs under a ``sitecustomize`` that makes LPIPS
construction (an AlexNet download) raise (``ns_env`` in tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.nerfstudio
pytest.importorskip("nerfstudio")


@pytest.fixture(scope="module")
def removal(tmp_path_factory):
    """A saved object-removal scene (the capture with the box) and the box around it."""
    from sceneforge.core.io import save_scene
    from sceneforge.inpaint.synthetic import tiles_removal_scene

    rs = tiles_removal_scene(num_views=9, size=32)
    out = tmp_path_factory.mktemp("nsc") / "scene"
    save_scene(rs.scene, out, format="colmap")
    return out, rs.box


def _fills(scene_dir: Path, box) -> tuple[list[int], list[torch.Tensor]]:
    """Training indices and their fill masks, computed independently of the plugin."""
    from sceneforge.core.io import load_scene
    from sceneforge.fields.trainer import split_indices
    from sceneforge.inpaint.masks import box_fill_mask, dilate

    scene = load_scene(scene_dir)
    train, _ = split_indices(len(scene), 8)
    return train, [dilate(box_fill_mask(scene.cameras, i, box), 1) for i in train]


def _digest(folder: Path) -> dict:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_datamanager_samples_only_unmasked_pixels_and_needs_a_mask(
    removal, monkeypatch, ns_env, tmp_path
):
    for k in ("NERFSTUDIO_METHOD_CONFIGS", "NERFSTUDIO_DATAPARSER_CONFIGS"):
        monkeypatch.setenv(k, ns_env[k])
    from sceneforge.nerfstudio.complete import CompletionDataManagerConfig
    from sceneforge.nerfstudio.dataparser import SceneforgeDataParserConfig

    scene_dir, box = removal
    train, fills = _fills(scene_dir, box)
    parser = SceneforgeDataParserConfig(data=scene_dir)
    dm = CompletionDataManagerConfig(
        dataparser=parser, mask_box=box, train_num_rays_per_batch=4096
    ).setup(device="cpu")
    assert len(dm.fill) == len(train) == 7
    assert all(torch.equal(a, b) for a, b in zip(dm.fill, fills))
    _, batch = dm.next_train(0)
    cam, y, x = batch["indices"].long().unbind(-1)
    in_fill = torch.stack(fills)[cam, y, x]
    assert batch["indices"].shape[0] == 4096 and not bool(in_fill.any())
    # one update (an untrained model): the holes are replaced and become trainable
    from sceneforge.nerfstudio.plugin import SceneforgeModelConfig

    model = SceneforgeModelConfig().setup(
        scene_box=dm.train_dataset.scene_box,
        num_train_data=len(dm.train_dataset),
        metadata=dm.train_dataset.metadata,
    )
    cached = dm.train_image_dataloader.cached_collated_batch
    before = [cached["image"][dm._pos(cached, j)].clone() for j in range(7)]
    assert dm.inpaint_update(model, 0) == 1 and dm.history[0]["strength"] == 1.0
    for j in range(7):
        now = cached["image"][dm._pos(cached, j)]
        f = fills[j]
        assert torch.equal(now[~f], before[j][~f])
        assert bool(cached["mask"][dm._pos(cached, j)][..., 0].all())
    _, batch = dm.next_train(1)
    cam, y, x = batch["indices"].long().unbind(-1)
    assert bool(torch.stack(fills)[cam, y, x].any())
    # resume: a fresh datamanager restores that version (8-bit PNGs) into its cached images
    dm.out_dir = tmp_path
    folder = dm.write_version({**dm.history[0], "step": 4})  # as if written after step 3
    dm2 = CompletionDataManagerConfig(
        dataparser=parser, mask_box=box, train_num_rays_per_batch=4096
    ).setup(device="cpu")
    assert dm2.restore(tmp_path / "datasets", start_step=3) == 0 and dm2.round == 0
    assert dm2.restore(tmp_path / "datasets", start_step=4) == 1
    assert (dm2.round, dm2.version, len(dm2.history)) == (1, 1, 1)
    cached2 = dm2.train_image_dataloader.cached_collated_batch
    for j in range(7):
        now, f = cached2["image"][dm2._pos(cached2, j)], fills[j]
        assert torch.equal(now[~f], before[j][~f])
        torch.testing.assert_close(
            now[f], cached["image"][dm._pos(cached, j)][f], atol=0.5 / 255 + 1e-6, rtol=0
        )
        assert bool(cached2["mask"][dm2._pos(cached2, j)][..., 0].all())
    assert folder == tmp_path / "datasets" / "v001"
    with pytest.raises(ValueError, match="nothing to fill"):
        CompletionDataManagerConfig(dataparser=parser).setup(device="cpu")


def test_ns_train_complete_two_updates_cpu(removal, ns_train, tmp_path):
    from sceneforge.core.image_io import read_image

    scene_dir, box = removal
    before = _digest(scene_dir)
    out = tmp_path / "outputs"
    schedule = [
        "--pipeline.datamanager.mask-box",
        *[str(v) for v in box],
        "--pipeline.datamanager.warmup-steps",
        "3",
        "--pipeline.datamanager.update-every",
        "2",
    ]
    rounds = "--pipeline.datamanager.num-rounds"
    ns_train("sceneforge-complete", scene_dir, out, 7, "t0", *schedule, rounds, "2", cwd=tmp_path)
    run_dir = out / "scene" / "sceneforge-complete" / "t0"
    assert sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    versions = sorted(p.name for p in (run_dir / "datasets").iterdir())
    assert versions == ["v001", "v002"]
    m1 = json.loads((run_dir / "datasets" / "v001" / "manifest.json").read_text())
    m2 = json.loads((run_dir / "datasets" / "v002" / "manifest.json").read_text())
    assert (m1["step"], m1["strength"], m2["step"], m2["strength"]) == (3, 1.0, 5, 0.4)
    assert m1["inpainter"] == "multiview" and len(m1["images"]) == 7
    train, fills = _fills(scene_dir, box)
    from sceneforge.core.io import load_scene

    scene = load_scene(scene_dir)
    changed = 0
    for j, i in enumerate(train):
        cap = scene.load_image(i)
        new = read_image(run_dir / "datasets" / "v002" / "images" / m2["images"][j])[..., :3]
        f = fills[j]
        assert torch.equal(new[~f], cap[~f])  # the capture, bit-exact, outside the holes
        changed += int(((new - cap).abs().amax(-1) > 0.05)[f].sum())
    assert changed > 0.3 * sum(int(f.sum()) for f in fills)  # the box is painted over
    assert _digest(scene_dir) == before  # the scene's files are never touched
    # resume from the last checkpoint (step 6) with a third round: the rounds continue
    load = ["--load-dir", str(run_dir / "nerfstudio_models")]
    ns_train(
        "sceneforge-complete", scene_dir, out, 3, "t1", *schedule, rounds, "3", *load, cwd=tmp_path
    )
    run2 = out / "scene" / "sceneforge-complete" / "t1"
    assert sorted(p.name for p in (run2 / "datasets").iterdir()) == ["v003"]
    m3 = json.loads((run2 / "datasets" / "v003" / "manifest.json").read_text())
    assert (m3["round"], m3["step"], m3["strength"]) == (3, 9, 0.4)
