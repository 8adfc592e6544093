"""Data-parallel training (``fields.distributed``): two gloo ranks on CPU against one process,
only rank 0 writing, a dead rank, resuming at another world size, and ``torchrun`` on the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fields_analytic import sphere_scene

from sceneforge.fields.api import TrainConfig, train, train_hooks
from sceneforge.fields.datasets import PatchLayout, RayBatch
from sceneforge.fields.densify import DensifyConfig
from sceneforge.fields.distributed import (
    ENV_VARS,
    DistContext,
    DistributedError,
    from_env,
    shard,
    skip_draws,
    spawn_local,
    split_bounds,
)
from sceneforge.fields.encodings import TriPlaneConfig
from sceneforge.fields.field import FieldConfig
from sceneforge.fields.gaussian_model import GaussiansConfig
from sceneforge.fields.losses import masked_mean
from sceneforge.fields.mcmc import MCMCConfig
from sceneforge.fields.nerf_model import NerfConfig
from sceneforge.fields.sampling import SamplerConfig
from sceneforge.fields.trainer import TrainerConfig, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, MORE = 6, 9
"""Steps of the first run, and the total after resuming."""


def tiny_config(**kw) -> TrainerConfig:
    cfg = TrainerConfig(
        max_steps=STEPS,
        batch_rays=128,
        checkpoint_every=3,
        progress=False,
        tensorboard=False,
        device="cpu",
        num_threads=1,
        dist_timeout_s=60.0,
        nerf=NerfConfig(
            field=FieldConfig(
                triplane=TriPlaneConfig(resolutions=(16, 32), features=4),
                density_grid_resolution=32,
                hidden_dim=16,
                color_hidden_dim=16,
                sh_degree=2,
                appearance_dim=4,
            ),
            sampler=SamplerConfig(num_samples=32, grid_resolution=16, grid_update_every=4),
        ),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def gaussians_config(strategy: str, views_per_step: int | None = None) -> TrainConfig:
    """Gaussians on 8x8 patches (3 per step: 2 on rank 0, 1 on rank 1), or (``views_per_step``
    given) on whole views, the default batch; refining every 2 steps from step 1 with a low
    growth threshold, so that the set changes in the first steps."""
    cfg = tiny_config(model="gaussians", batch="patches", patch_size=8, batch_rays=192)
    if views_per_step is not None:
        cfg.batch, cfg.views_per_step = "auto", views_per_step
    cfg.checkpoint_every = 0
    cfg.gaussians = GaussiansConfig(
        num_random=300,
        sh_degree=0,
        strategy=strategy,
        densify=DensifyConfig(
            refine_start_iter=1, refine_every=2, grow_grad2d=1e-6, reset_every=1000
        ),
        mcmc=MCMCConfig(refine_start_iter=1, refine_every=2, growth=0.2),
    )
    return TrainConfig(max_steps=STEPS, trainer=cfg, save_eval_images=False)


def run_config(max_steps: int, **kw) -> TrainConfig:
    return TrainConfig(max_steps=max_steps, trainer=tiny_config(**kw), save_eval_images=False)


def scene():
    return sphere_scene(n_views=9, size=16)


def model_params(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "checkpoint.pt")["model"]


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):  # e.g. the densification strategy's state
            assert_close(a[k], b[k], atol)
        elif not isinstance(a[k], torch.Tensor):
            assert a[k] == b[k], k
        elif a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


# -- the rank processes ---------------------------------------------------------------------


def _die_at_step_4(tr) -> None:
    if tr.dist.rank == 1 and tr.step == 4:
        os._exit(3)  # a rank killed mid-run: no cleanup, its sockets just close


def _rank_main(rank: int, job: str, tmp: str) -> None:
    torch.set_num_threads(1)
    tmp_dir, result = Path(tmp), {}
    try:
        if job == "train":
            # rank 1 gets a folder of its own: it must stay empty (rank 0 writes everything)
            out = tmp_dir / ("dp" if rank == 0 else "dp_rank1")
            result["eval"] = train(None, out, run_config(STEPS), scene=scene())
            # resume a one-process checkpoint at world size 2 (every rank reads the same file)
            result["resumed"] = train(None, tmp_dir / "single_to_dp", run_config(MORE), scene())
            # rank 1 cannot see rank 0's checkpoint (a folder not shared between machines)
            out = tmp_dir / ("single" if rank == 0 else "not_shared")
            try:
                train(None, out, run_config(MORE), scene=scene())
            except DistributedError as e:
                result["not_shared"] = str(e)
        elif job == "gaussians":
            for strategy in ("default", "mcmc"):
                out = tmp_dir / (f"gs_{strategy}" if rank == 0 else f"gs_{strategy}_rank1")
                train(None, out, gaussians_config(strategy), scene=scene())
            # whole views, the default batch: one view per rank
            out = tmp_dir / ("gs_views" if rank == 0 else "gs_views_rank1")
            train(None, out, gaussians_config("default", views_per_step=0), scene=scene())
        elif job == "die":
            with train_hooks((1, _die_at_step_4)):
                train(None, tmp_dir / "die", run_config(40, checkpoint_every=2), scene=scene())
        else:
            raise ValueError(job)
    except Exception as e:  # reported to the test
        result["error"] = (type(e).__name__, str(e))
    finally:
        (tmp_dir / f"result_{job}_{rank}.json").write_text(json.dumps(result, default=str))
        import torch.distributed as dist

        if dist.is_initialized() and "error" not in result:
            dist.destroy_process_group()


def run_ranks(job: str, tmp: Path, world: int = 2, timeout_s: float = 240) -> list[dict]:
    """Start ``world`` rank processes (spawn) for ``job`` and return each one's result; a
    rank that exits without one gives ``{"exitcode": code}``."""
    codes = spawn_local(_rank_main, world, (job, str(tmp)), timeout_s)
    hung = [r for r, c in enumerate(codes) if c is None]
    assert not hung, f"ranks {hung} of job {job!r} still running after {timeout_s} s"
    out = []
    for r, code in enumerate(codes):
        f = tmp / f"result_{job}_{r}.json"
        out.append(json.loads(f.read_text()) if f.is_file() else {"exitcode": code})
    return out


# -- splitting a batch ------------------------------------------------------------------------


def test_split_bounds_cover_the_batch_in_order():
    assert split_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def _batch(n: int, valid=None, patches=None) -> RayBatch:
    g = torch.Generator().manual_seed(1)
    return RayBatch(
        torch.rand(n, 3, generator=g),
        torch.rand(n, 3, generator=g),
        torch.rand(n, 3, generator=g),
        torch.arange(n) % 3,
        torch.arange(n),
        torch.ones(n),
        patches,
        valid,
    )


def test_shard_weights_reproduce_the_global_masked_mean():
    valid = torch.rand(11, generator=torch.Generator().manual_seed(2)) > 0.4
    b = _batch(11, valid)
    err = torch.rand(11, 3, generator=torch.Generator().manual_seed(3))
    whole = masked_mean(err, valid)
    parts = [shard(b, r, 3) for r in range(3)]
    assert [p.rows for p in parts] == [slice(0, 4), slice(4, 8), slice(8, 11)]
    assert [p.once for p in parts] == [1.0, 0.0, 0.0]
    assert sum(p.per_row for p in parts) == pytest.approx(1.0)
    total = sum(p.photometric * masked_mean(err[p.rows], p.batch.valid) for p in parts)
    torch.testing.assert_close(total, whole)
    one = shard(b, 0, 1)
    assert one.batch is b and one.photometric == one.per_row == one.once == 1.0


def test_patch_batches_split_on_whole_patches():
    layout = PatchLayout(torch.arange(3), torch.zeros(3, dtype=torch.long), torch.arange(3), 2, 2)
    b = _batch(12, patches=layout)
    p = shard(b, 1, 2)
    assert p.rows == slice(8, 12) and p.batch.patches.view.tolist() == [2]
    assert torch.equal(p.batch.rgb, b.rgb[8:12])
    with pytest.raises(DistributedError, match="3 patches or views cannot be split over 4 ranks"):
        shard(b, 0, 4)


def test_skipped_draws_continue_the_global_stream():
    g = torch.Generator().manual_seed(5)
    whole = torch.rand((100, 1), generator=g)
    h = torch.Generator().manual_seed(5)
    skip_draws(h, 37)
    assert torch.equal(torch.rand((63, 1), generator=h), whole[37:])
    assert torch.equal(h.get_state(), g.get_state())


def test_without_torchrun_the_context_is_one_process(monkeypatch):
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    ctx = from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.active) == (0, 1, True, False)
    assert ctx.from_main(1.5, 2.0) == (1.5, 2.0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="MASTER_ADDR, MASTER_PORT is not set"):
        from_env("cpu")


def test_models_that_cannot_be_split_are_refused_under_torchrun():
    two = DistContext(rank=1, world_size=2, backend="gloo")
    with pytest.raises(DistributedError, match="'splats' model does not train data-parallel"):
        two.check_model("splats", "patches")
    with pytest.raises(DistributedError, match="views-per-step 1 whole views cannot be split"):
        two.check_model("gaussians", "images", 1)
    two.check_model("gaussians", "images")  # 0: one view per rank
    two.check_model("nerf", "images", 2)
    two.check_model("nerf", "patches")
    two.check_model("gaussians", "patches")
    DistContext().check_model("gaussians", "images", 1)  # one process: anything goes


# -- two gloo ranks -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process: ``single`` (STEPS steps); two ranks: ``dp`` (STEPS steps), then a copy of
    ``single`` resumed at world size 2 to MORE steps (``single_to_dp``); one process again: a
    copy of ``dp`` resumed at world size 1 to MORE steps (``dp_to_single``)."""
    tmp = tmp_path_factory.mktemp("dp")
    for v in ENV_VARS:
        assert v not in os.environ, "run this test outside torchrun"
    t0 = time.perf_counter()
    single_eval = train(None, tmp / "single", run_config(STEPS), scene=scene())
    shutil.copytree(tmp / "single", tmp / "single_to_dp")
    results = run_ranks("train", tmp)
    for r in results:
        assert "error" not in r and "exitcode" not in r, r
    shutil.copytree(tmp / "dp", tmp / "dp_to_single")
    train(None, tmp / "dp_to_single", run_config(MORE), scene=scene())
    print(f"one-process + two-rank + resumed runs: {time.perf_counter() - t0:.1f} s")
    return tmp, single_eval, results


def test_two_ranks_train_the_parameters_of_one_process(runs):
    tmp, _, _ = runs
    assert read_checkpoint(tmp / "dp" / "checkpoint.pt")["step"] == STEPS
    assert_close(model_params(tmp / "dp"), model_params(tmp / "single"), atol=1e-5)
    assert read_checkpoint(tmp / "dp" / "checkpoint.pt")["world_size"] == 2
    assert read_checkpoint(tmp / "single" / "checkpoint.pt")["world_size"] == 1


def test_only_rank_0_writes_and_every_rank_returns_its_results(runs):
    tmp, single_eval, (r0, r1) = runs
    assert sorted(p.name for p in (tmp / "dp").iterdir()) == sorted(
        p.name for p in (tmp / "single").iterdir()
    )
    assert list((tmp / "dp_rank1").iterdir()) == []  # created, nothing written
    assert r0["eval"] == r1["eval"]  # rank 0's evaluation, shared
    assert r0["eval"]["steps"] == STEPS
    assert r0["eval"]["psnr"] == pytest.approx(single_eval["psnr"], abs=1e-3)
    history = json.loads((tmp / "dp" / "history.json").read_text())["history"]
    single = json.loads((tmp / "single" / "history.json").read_text())["history"]
    assert [h["step"] for h in history] == [h["step"] for h in single]
    for a, b in zip(history, single, strict=True):  # the global batch's loss, not a shard's
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_resume_at_another_world_size(runs):
    tmp, _, (r0, _) = runs
    a = read_checkpoint(tmp / "single_to_dp" / "checkpoint.pt")
    b = read_checkpoint(tmp / "dp_to_single" / "checkpoint.pt")
    assert (a["step"], a["world_size"], b["step"], b["world_size"]) == (MORE, 2, MORE, 1)
    assert r0["resumed"]["steps"] == MORE
    # the same global batches: only the float summation order differs (not bit-exact)
    assert_close(a["model"], b["model"], atol=1e-4)


def test_ranks_that_start_from_different_checkpoints_stop(runs):
    tmp, _, (r0, r1) = runs
    assert "rank 1 of 2 starts at {'step': 0, 'dataset_version': 0}" in r1["not_shared"]
    assert "rank 0 at {'step': 6, 'dataset_version': 0}" in r1["not_shared"]
    assert "rank 0 of 2" in r0["not_shared"]  # its peer left: stopped too, with the error
    assert read_checkpoint(tmp / "single" / "checkpoint.pt")["step"] == STEPS  # untouched


@pytest.mark.parametrize("strategy", ["default", "mcmc", "views"])
def test_two_ranks_train_and_densify_gaussians_as_one_process(gaussian_runs, strategy):
    """Patch batches (both strategies) and whole views (``views``: default strategy, one view
    per rank against one process with two views per step)."""
    tmp = gaussian_runs
    dp, one = model_params(tmp / f"gs_{strategy}"), model_params(tmp / f"gs_{strategy}_single")
    n = one["params.means"].shape[0]
    assert n != 300  # the set changed (grown; MCMC: relocated and grown)
    assert dp["params.means"].shape[0] == n  # the same decisions on every rank
    params = [k for k, v in one.items() if k.startswith("params.") and v.numel()]
    diff = max(float((dp[k] - one[k]).abs().max()) for k in params)
    print(f"{strategy}: {n} Gaussians, max parameter difference {diff:.1e}")
    # Adam turns a sign flip of a ~0 gradient (float summation order) into a whole step of the
    # learning rate (quaternions: 1e-3): a few values may differ by up to two such steps
    for k in params:
        d = (dp[k] - one[k]).abs()
        assert float(d.max()) <= 2e-3 + 1e-6, k
        assert float((d > 1e-4).float().mean()) < 0.01, k
    assert_close(
        {k: v for k, v in dp.items() if k not in params},
        {k: v for k, v in one.items() if k not in params},
        atol=1e-4,
    )  # the strategy's state, the background
    assert not (tmp / f"gs_{strategy}_rank1").exists() or not list(
        (tmp / f"gs_{strategy}_rank1").iterdir()
    )


@pytest.fixture(scope="module")
def gaussian_runs(tmp_path_factory):
    """Gaussians (default strategy, then MCMC) by one process and by two ranks."""
    tmp = tmp_path_factory.mktemp("dp_gs")
    t0 = time.perf_counter()
    for strategy in ("default", "mcmc"):
        train(None, tmp / f"gs_{strategy}_single", gaussians_config(strategy), scene=scene())
    train(None, tmp / "gs_views_single", gaussians_config("default", 2), scene=scene())
    for r in run_ranks("gaussians", tmp):
        assert "error" not in r and "exitcode" not in r, r
    print(f"gaussians, one process + two ranks: {time.perf_counter() - t0:.1f} s")
    return tmp


def test_a_dead_rank_stops_the_others_and_keeps_the_last_checkpoint(tmp_path):
    t0 = time.perf_counter()
    r0, r1 = run_ranks("die", tmp_path, timeout_s=120)
    assert r1 == {"exitcode": 3}
    assert r0["error"][0] == "DistributedError", r0
    assert "rank 0 of 2" in r0["error"][1] and "last checkpoint" in r0["error"][1]
    assert time.perf_counter() - t0 < 60  # well inside dist_timeout_s: noticed, not waited out
    s = read_checkpoint(tmp_path / "die" / "checkpoint.pt")
    assert s["step"] == 4 and s["world_size"] == 2
    assert not list((tmp_path / "die").glob("*.tmp*"))


def _cli_train(launcher: list[str], scene_dir: Path, run: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher]
    cmd += ["-m", "sceneforge.cli", "train", str(scene_dir), str(run), "--max-steps", "3"]
    cmd += ["--device", "cpu", "--trainer.no-progress", "--trainer.no-tensorboard"]
    cmd += ["--trainer.batch-rays", "128", "--trainer.num-threads", "1", "--no-save-eval-images"]
    return cmd + list(extra)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(OMP_NUM_THREADS="1")
    return env


def test_cli_train_under_torchrun(tmp_path):
    from sceneforge.core.io import save_scene

    scene_dir = save_scene(scene(), tmp_path / "scene", "colmap")
    run = tmp_path / "run"
    cmd = _cli_train(["--standalone", "--nproc_per_node", "2"], scene_dir, run)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_clean_env())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ev = json.loads((run / "eval.json").read_text())
    assert ev["steps"] == 3 and ev["model"] == "nerf"
    assert read_checkpoint(run / "checkpoint.pt")["world_size"] == 2
    assert p.stdout.count("wrote ") == 1, p.stdout  # rank 0 alone prints the results


def test_cli_gaussians_on_two_nodes_with_the_readme_rendezvous_flags(tmp_path):
    """Two torchrun launchers (``--nnodes 2``, one process each, c10d rendezvous on this
    machine as the README's two-machine command): Gaussians on whole views, one per node."""
    import socket

    from sceneforge.core.io import save_scene

    scene_dir = save_scene(scene(), tmp_path / "scene", "colmap")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    procs = []
    for node in (0, 1):
        launcher = ["--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1"]
        launcher += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}"]
        launcher += ["--rdzv_id", "test_two_nodes"]
        cmd = _cli_train(launcher, scene_dir, run, "--model", "gaussians")
        cmd += ["--trainer.scene-box", "bounded"]
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_clean_env()
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert sum(o.count("wrote ") for o in outs) == 1  # rank 0 alone reports
    ev = json.loads((run / "eval.json").read_text())
    assert ev["steps"] == 3 and ev["model"] == "gaussians"
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["world_size"] == 2
