"""The Inpaint Dataset Update under two gloo ranks (CPU) against one process: the same images
and grid groups, every rank's training set identical, only rank 0 writing dataset versions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from sceneforge.core.diffusion import GridConfig
from sceneforge.fields.distributed import ENV_VARS, SINGLE, DistContext, spawn_local
from sceneforge.fields.encodings import TriPlaneConfig
from sceneforge.fields.field import FieldConfig
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import Trainer, TrainerConfig
from sceneforge.inpaint.dataset_update import (
    DatasetUpdateConfig,
    InpaintDatasetUpdate,
    ShardedGridDenoiser,
    fill_at_dataset_resolution,
    masked_training_scene,
)
from sceneforge.inpaint.diffusion import SDInpaintConfig, SDInpainter
from sceneforge.inpaint.masks import box_fill_masks
from sceneforge.inpaint.synthetic import tiles_removal_scene

ROUNDS = 2


def _update(model: str, out: Path | None) -> dict:
    """A few steps of training and ``ROUNDS`` sd updates (2x2 grids: two grids per denoising
    step for the six views) on a tiny scene; returns the dataset, the groups and the params."""
    rs = tiles_removal_scene(num_views=6, size=32)
    fill = box_fill_masks(rs.scene.cameras, rs.box, depths=rs.scene.depths)
    tcfg = TrainerConfig(
        max_steps=8,
        batch_rays=256,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=0,
        device="cpu",
        num_threads=1,
        dist_timeout_s=60.0,
        scene_box="bounded",
        nerf=NerfConfig(
            field=FieldConfig(
                triplane=TriPlaneConfig(resolutions=(16, 32), features=4),
                density_grid_resolution=32,
                hidden_dim=16,
                color_hidden_dim=16,
                sh_degree=2,
                appearance_dim=4,
            ),
            sampler=SamplerConfig(num_samples=32, grid_resolution=16, grid_alpha_threshold=1e-3),
        ),
    )
    trainer = Trainer(masked_training_scene(rs.scene, fill), tcfg)
    local = fill_at_dataset_resolution(fill, trainer.train_indices, trainer.downscale)
    sd = SDInpainter(
        SDInpaintConfig(
            model=model, device="cpu", num_steps=3, resolution=32, grid=GridConfig(2, 2, True, 1)
        )
    )
    cfg = DatasetUpdateConfig(
        warmup_steps=3, update_every=2, num_rounds=ROUNDS, final_steps=1, depth_loss="l1"
    )
    upd = InpaintDatasetUpdate(trainer, local, sd, cfg, out)
    groups: list = []
    sd.denoiser.on_step = lambda i, g: groups.append(g)
    upd.run()
    return {
        "images": torch.stack([trainer.view_image(j) for j in range(trainer.num_views)]),
        "groups": groups,
        "holes": [int(f.any()) for f in local],
        "depth_target": upd.depth_target,
        "params": {k: v.detach().clone() for k, v in trainer.model.named_parameters()},
        "sharded": isinstance(sd.denoiser, ShardedGridDenoiser),
        "versions": [h["version"] for h in upd.history],
        "comm_calls": trainer.dist.comm.get("calls", 0),
    }


def _rank_main(rank: int, model: str, tmp: str) -> None:
    torch.set_num_threads(1)
    tmp_dir = Path(tmp)
    try:
        # rank 1 gets a folder of its own: it must stay empty (rank 0 writes the versions)
        res = _update(model, tmp_dir / ("dp" if rank == 0 else "dp_rank1"))
    except Exception as e:  # reported to the test
        res = {"error": f"{type(e).__name__}: {e}"}
    torch.save(res, tmp_dir / f"rank{rank}.pt")
    import torch.distributed as dist

    if dist.is_initialized() and "error" not in res:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tiny_sd_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp_update")
    for v in ENV_VARS:
        assert v not in os.environ, "run this test outside torchrun"
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    single = _update(str(tiny_sd_path), tmp / "single")
    codes = spawn_local(_rank_main, 2, (str(tiny_sd_path), str(tmp)), timeout_s=480)
    ranks = []
    for r, code in enumerate(codes):
        f = tmp / f"rank{r}.pt"
        assert f.is_file(), f"rank {r} exited with {code} and no result"
        ranks.append(torch.load(f, weights_only=False))
        assert "error" not in ranks[-1], ranks[-1]
    print(f"one process + two ranks: {time.perf_counter() - t0:.1f} s")
    return tmp, single, ranks


def test_two_ranks_update_the_dataset_as_one_process(runs):
    _, single, (r0, r1) = runs
    assert sum(single["holes"]) == 6 and not single["sharded"]
    assert r0["sharded"] and r1["sharded"]
    # every denoising step of every round: two full 2x2 grids (six views + two padded)
    assert len(single["groups"]) >= 2 * ROUNDS
    assert all(len(g) == 2 for g in single["groups"])
    assert r0["groups"] == r1["groups"] == single["groups"]  # one seeded group generator
    assert r0["versions"] == r1["versions"] == single["versions"] == [1, 2]
    # every rank holds rank 0's dataset (broadcast), and it is the one-process dataset
    assert torch.equal(r0["images"], r1["images"])
    exact = dict(atol=0, rtol=0, equal_nan=True)  # NaN: unknown depth outside the holes
    torch.testing.assert_close(r0["depth_target"], r1["depth_target"], **exact)
    diff = (r0["images"] - single["images"]).abs()
    print(f"two ranks vs one process: max {float(diff.max()):.2e}, {int((diff > 0).sum())} values")
    # the dataset holds 8-bit images: a float-rounding difference (the summation order of the
    # data-parallel gradients) moves a rare value by one step
    torch.testing.assert_close(r0["images"], single["images"], atol=1 / 255 + 1e-6, rtol=0)
    assert float((diff > 1e-6).float().mean()) < 1e-3
    # rendered depth is normalised by the accumulation, which magnifies those differences
    torch.testing.assert_close(
        r0["depth_target"], single["depth_target"], atol=1e-4, rtol=1e-4, equal_nan=True
    )
    assert not torch.equal(single["images"][0], torch.zeros_like(single["images"][0]))
    for k, v in single["params"].items():  # training on the updated datasets too (weights)
        if v.is_floating_point():
            torch.testing.assert_close(r0["params"][k], v, atol=1e-5, rtol=0, msg=k)
            assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert r0["comm_calls"] > 0 and r1["comm_calls"] == r0["comm_calls"]


def test_only_rank_0_writes_the_dataset_versions(runs):
    tmp, _, _ = runs
    assert not (tmp / "dp_rank1").exists()
    for v in ("v001", "v002"):
        a = json.loads((tmp / "dp" / "datasets" / v / "manifest.json").read_text())
        b = json.loads((tmp / "single" / "datasets" / v / "manifest.json").read_text())
        assert a == b
    assert not list((tmp / "dp").rglob("*.tmp*"))


def test_shares_of_work_cover_the_items_in_order():
    ctxs = [DistContext(rank=r, world_size=3, backend="gloo") for r in range(3)]
    assert [list(c.owned(7)) for c in ctxs] == [[0, 1, 2], [3, 4], [5, 6]]
    assert list(SINGLE.owned(4)) == [0, 1, 2, 3]
    assert SINGLE.map_shared(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]
    t = torch.arange(3.0)
    assert SINGLE.share_tensor(t) is t and SINGLE.sum_tensor(t) is t


def test_cli_complete_under_torchrun(tmp_path):
    """``sceneforge complete`` unchanged under ``torchrun --nproc_per_node 2`` (gloo): the
    outputs of one process, written once (rank 0), with two dataset versions."""
    import subprocess
    import sys
    from dataclasses import replace

    from sceneforge.core.io import save_scene
    from sceneforge.core.synthetic import turntable_scene
    from sceneforge.fields.api import TrainConfig, train

    scene = replace(turntable_scene(num_views=4, size=16, num_points=10), masks=None)
    scene_dir = save_scene(scene, tmp_path / "scene", "colmap")
    tcfg = TrainerConfig(
        max_steps=3,
        batch_rays=64,
        progress=False,
        tensorboard=False,
        holdout_every=0,
        checkpoint_every=0,
        log_every=0,
        device="cpu",
        num_threads=1,
        nerf=NerfConfig(sampler=SamplerConfig(num_samples=16, grid_alpha_threshold=1e-3)),
    )
    train(scene_dir, tmp_path / "run", TrainConfig(trainer=tcfg, save_eval_images=False))
    mesh = scene.metadata["mesh"]
    v = mesh.vertices[mesh.faces[mesh.face_object == 0].reshape(-1)]
    box = [str(x) for x in v.min(0).values.tolist() + v.max(0).values.tolist()]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "sceneforge.cli", "complete", str(tmp_path / "run"), str(out), "--mask-box"]
    cmd += [*box, "--inpainter", "telea", "--device", "cpu", "--update.warmup-steps", "2"]
    cmd += ["--update.update-every", "1", "--update.num-rounds", "2", "--update.final-steps", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    info = json.loads((out / "complete.json").read_text())
    assert info["steps"] == 4 and len(info["rounds"]) == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4
    assert sorted(p.name for p in (out / "datasets").iterdir()) == ["v001", "v002"]
    for sub in ("renders", "before_after", "masks"):
        assert len(list((out / sub).glob("*.png"))) == 4
    assert not list(out.rglob("*.tmp*"))
