"""Data-parallel training under ``torchrun``: one global batch, split by rank, gradients summed.

``sceneforge train`` runs unchanged under ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on
CUDA). :func:`from_env` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` / ``MASTER_PORT``), picks the device (``auto`` / ``cuda`` become
``cuda:LOCAL_RANK``) and joins the process group; without torchrun (or with one process) it
returns :data:`SINGLE`, whose every method is the identity, so one-process training is
unchanged.

How a step is shared (:class:`DistContext`):

- every rank draws the same global batch from the trainer's seeded generator (same seed, same
  state: the generator never diverges) and trains on its contiguous slice of it
  (:meth:`DistContext.shard`; whole patches stay on one rank);
- the model's random draws for its slice are taken where the one-process run would take them
  (:meth:`DistContext.shard_draws`): the generator is advanced past the earlier ranks' rows
  first, and after the forward pass set to where the whole batch would have left it;
- each loss term is weighted by the rank's share (:class:`Shard`): the photometric mean by the
  fraction of the batch's valid pixels on the rank, per-row terms (mask loss, editors' loss
  hooks: means over the rows) by its fraction of rows, batch-independent terms (the model's
  regularisers, the camera regulariser) counted on rank 0 only; the gradients are then summed
  over the ranks (:meth:`DistContext.backward`), which reproduces the gradient of the global
  loss up to float summation order. An explicit all-reduce rather than ``DistributedDataParallel``:
  the trainer calls the model's ``train_outputs`` / ``regularizers``, not ``forward``;
- rank 0's clock decides time budgets and the time schedule (:meth:`DistContext.from_main`),
  so every rank stops at the same step with the same learning rate;
- only rank 0 writes files (checkpoints, tensorboard, eval.json, history) and evaluates.

A rank that dies makes the others' next collective fail; the failure is re-raised as a
:class:`DistributedError` naming the rank (gloo notices a closed peer at once; otherwise
``trainer.dist_timeout_s`` bounds the wait). Models whose per-row randomness is known
(:data:`SHARD_DRAWS`) train data-parallel; others are refused with a clear error.

Whole-view batches (``batch images``, the Gaussians' default) hold ``views_per_step`` distinct
views, by default one per rank: under N ranks a step draws N views and each rank renders one
(as gsplat's multi-GPU trainer: the global batch grows with the ranks), so the run equals one
process with ``--trainer.views-per-step N``. Gaussians also train on ``batch patches`` (whole
patches per rank). Either way the gradients are summed as above, and the densification statistics (2D-mean gradients and radii of every view of
the step) are gathered from every rank in rank order (:meth:`DistContext.gather_rows`), so every
rank's strategy (default or MCMC) sees the global batch's numbers, decides the same with the
same generator, and the Gaussian sets stay identical without copying them.

Dataset updates (``sceneforge complete``) share their views between the ranks with
:meth:`DistContext.map_shared`, :meth:`DistContext.sum_tensor` and
:meth:`DistContext.share_tensor` (see ``sceneforge.inpaint.dataset_update``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from sceneforge.core.devices import resolve_device
from sceneforge.fields.datasets import PatchLayout, RayBatch

SHARD_DRAWS: dict[str, int] = {"nerf": 1, "gaussians": 0}
"""Scene models that train data-parallel -> float32 uniform draws per batch row that their
``train_outputs`` take from the trainer's generator, in row order (NeRF: one stratified-jitter
fraction per ray; Gaussians: none; tests check two ranks against one process)."""

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets for every process (``MASTER_*``: the rendezvous of rank 0)."""


class DistributedError(RuntimeError):
    """A collective of a data-parallel run failed (a peer died or timed out) or the run cannot
    be data-parallel; the message names this rank and what to check."""


@dataclass(frozen=True)
class Shard:
    """This rank's slice ``rows`` of a global batch and the weights of its loss terms."""

    batch: RayBatch
    """The rows this rank trains on."""
    rows: slice
    """Where they lie in the global batch."""
    total_rows: int
    """Rows of the global batch."""
    photometric: float
    """Weight of the photometric mean: this slice's valid pixels / the batch's."""
    per_row: float
    """Weight of per-row means (mask loss, loss hooks): this slice's rows / the batch's."""
    once: float
    """Weight of batch-independent terms (regularisers): 1 on rank 0, 0 elsewhere."""


def split_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``[start, stop)`` ranges covering ``0 .. n - 1``, sizes differing by
    at most one (the first ranks get the extra ones)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for r in range(parts):
        stop = start + base + (1 if r < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def slice_batch(batch: RayBatch, rows: slice) -> RayBatch:
    """Rows ``rows`` of a batch (a patch batch: ``rows`` must hold whole patches)."""
    patches = batch.patches
    if patches is not None:
        size = patches.height * patches.width
        if rows.start % size or rows.stop % size:
            raise ValueError(f"rows {rows} cut a {patches.height}x{patches.width} patch")
        p = slice(rows.start // size, rows.stop // size)
        patches = PatchLayout(
            patches.view[p], patches.y0[p], patches.x0[p], patches.height, patches.width
        )
    return dataclasses.replace(
        batch,
        origins=batch.origins[rows],
        directions=batch.directions[rows],
        rgb=batch.rgb[rows],
        image_idx=batch.image_idx[rows],
        pixel_idx=batch.pixel_idx[rows],
        z_per_t=batch.z_per_t[rows],
        patches=patches,
        valid=None if batch.valid is None else batch.valid[rows],
    )


def shard(batch: RayBatch, rank: int, world: int) -> Shard:
    """Rank ``rank``'s contiguous slice of ``batch`` (whole patches of a patch batch) and its
    loss weights (:class:`Shard`); the whole batch with weights 1 when ``world`` is 1."""
    n = int(batch.rgb.shape[0])
    if world == 1:
        return Shard(batch, slice(0, n), n, 1.0, 1.0, 1.0)
    unit = 1 if batch.patches is None else batch.patches.height * batch.patches.width
    if n // unit < world:
        raise DistributedError(
            f"a batch of {n // unit} {'rays' if unit == 1 else 'patches or views'} cannot be "
            f"split over {world} ranks: raise --trainer.batch-rays (rays, patches) or "
            "--trainer.views-per-step (whole views)"
        )
    start, stop = split_bounds(n // unit, world)[rank]
    rows = slice(start * unit, stop * unit)
    part = slice_batch(batch, rows)
    if batch.valid is None:
        photometric = (rows.stop - rows.start) / n
    else:
        total = int(batch.valid.sum())
        photometric = int(part.valid.sum()) / total if total else 1.0 / world
    once = 1.0 if rank == 0 else 0.0
    return Shard(part, rows, n, photometric, (rows.stop - rows.start) / n, once)


def skip_draws(generator: torch.Generator, n: int) -> None:
    """Advance ``generator`` past ``n`` float32 uniform draws (as ``torch.rand(n)`` would)."""
    if n > 0:
        torch.rand(n, generator=generator, device=generator.device)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (world size 1: one process, no-op)."""

    rank: int = 0
    """Global rank (0 writes the files)."""
    world_size: int = 1
    """Processes training together."""
    local_rank: int = 0
    """Rank on this machine (picks the CUDA device)."""
    backend: str = ""
    """``gloo`` or ``nccl`` (empty: no process group)."""
    device: torch.device = torch.device("cpu")
    """Where this rank trains."""
    timeout_s: float = 1800.0
    """Most seconds a collective waits for the other ranks."""
    comm: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    """Seconds spent in collectives (``seconds``) and their number (``calls``), for benchmarks."""

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other ranks to talk to."""
        return self.world_size > 1

    def _fail(self, what: str, e: BaseException) -> DistributedError:
        return DistributedError(
            f"rank {self.rank} of {self.world_size}: {what} with the other ranks failed "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e}); "
            "another rank stopped (killed, out of memory or an error: see its output) or did "
            f"not answer within trainer.dist_timeout_s={self.timeout_s:g} s. The last checkpoint "
            "rank 0 wrote is intact: resume from it."
        )

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except (RuntimeError, OSError) as e:
            if isinstance(e, DistributedError):
                raise
            raise self._fail(what, e) from e
        self.comm["seconds"] = self.comm.get("seconds", 0.0) + time.perf_counter() - t0
        self.comm["calls"] = self.comm.get("calls", 0.0) + 1

    def check_model(self, model: str, batch_kind: str, views_per_step: int = 0) -> None:
        """Refuse (clear error) a model, or a whole-view batch too small to split, that cannot
        train data-parallel (``views_per_step`` 0: one view per rank)."""
        if not self.active:
            return
        if model not in SHARD_DRAWS:
            raise DistributedError(
                f"the {model!r} model does not train data-parallel yet (supported: "
                f"{', '.join(sorted(SHARD_DRAWS))}); run it as one process"
            )
        if batch_kind == "images" and 0 < views_per_step < self.world_size:
            raise DistributedError(
                f"--trainer.views-per-step {views_per_step} whole views cannot be split over "
                f"{self.world_size} ranks: use at least {self.world_size} (or 0: one per rank)"
            )

    def shard(self, batch: RayBatch) -> Shard:
        """This rank's part of the global ``batch`` (see :func:`shard`)."""
        return shard(batch, self.rank, self.world_size)

    @contextmanager
    def shard_draws(self, generator: torch.Generator, part: Shard, model: str) -> Iterator[None]:
        """Inside the block the model draws its slice's randomness from the global batch's
        stream; on exit the generator is where the whole batch would have left it."""
        if not self.active:
            yield
            return
        k = SHARD_DRAWS[model]
        state = generator.get_state()
        skip_draws(generator, part.rows.start * k)
        yield
        generator.set_state(state)
        skip_draws(generator, part.total_rows * k)

    def weigh(self, term: Tensor, share: float) -> Tensor:
        """``term * share`` (``term`` itself on one process)."""
        return term * share if self.active else term

    def global_stats(self, *values: Tensor) -> list[Tensor]:
        """Detached weighted per-rank values summed over the ranks (the global batch's loss,
        mse, ...; every rank gets the same numbers, so every rank sees a divergence)."""
        if not self.active:
            return [v.detach() for v in values]
        buf = torch.stack([v.detach().reshape(()).double() for v in values]).to(self.device)
        with self._collective("summing the loss"):
            dist.all_reduce(buf)
        return list(buf.cpu().unbind())

    def backward(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Backward pass of this rank's weighted loss, then (several ranks) the gradients summed
        over the ranks; returns whether the optimiser should step. A parameter without a
        gradient on every rank keeps none (Adam skips it, as on one process)."""
        if loss.requires_grad:
            loss.backward()
        if not self.active:
            return loss.requires_grad
        params = [p for g in optimizer.param_groups for p in g["params"]]
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
        with self._collective("summing the gradients"):
            has = has.to(self.device)
            dist.all_reduce(has, op=dist.ReduceOp.MAX)
            used = [p for p, h in zip(params, has.cpu().tolist(), strict=True) if h]
            if not used:
                return False
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in used]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
        offset = 0
        for p in used:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
        return True

    def from_main(self, *values: float) -> tuple[float, ...]:
        """Rank 0's ``values`` on every rank (clock readings: when to stop, the time
        schedule)."""
        if not self.active:
            return values
        buf = torch.tensor(values, dtype=torch.float64, device=self.device)
        with self._collective("sharing rank 0's clock"):
            dist.broadcast(buf, 0)
        return tuple(buf.cpu().tolist())

    def sync(self, facts: dict, *modules: torch.nn.Module) -> None:
        """At the start of training: check that every rank has rank 0's ``facts`` (step,
        dataset version: all started from the same checkpoint) and copy rank 0's parameters
        and buffers of ``modules`` to every rank."""
        if not self.active:
            return
        main = self.share_object(facts)
        if main != facts:
            raise DistributedError(
                f"rank {self.rank} of {self.world_size} starts at {facts}, rank 0 at {main}: "
                "every rank must resume from the same checkpoint (put OUT_DIR on a disk that "
                "every machine sees)"
            )
        with self._collective("copying rank 0's parameters"), torch.no_grad():
            for m in modules:
                for t in [*m.parameters(), *m.buffers()]:
                    dist.broadcast(t.data, 0)

    def share_object(self, obj):
        """Rank 0's picklable ``obj`` on every rank (e.g. the eval results)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        with self._collective("receiving rank 0's results"):
            dist.broadcast_object_list(box, 0)
        return box[0]

    def owned(self, n: int) -> range:
        """This rank's contiguous share of ``n`` work items (:func:`split_bounds`; all of them
        on one process)."""
        start, stop = split_bounds(n, self.world_size)[self.rank]
        return range(start, stop)

    def map_shared(self, fn: Callable, items: list) -> list:
        """``[fn(x) for x in items]`` on every rank, each rank computing only its share
        (:meth:`owned`): the results (tensors, or containers of them) are moved to the CPU and
        gathered in item order (e.g. the views a dataset update renders)."""
        if not self.active:
            return [fn(x) for x in items]
        mine = [_to_cpu(fn(items[i])) for i in self.owned(len(items))]
        parts: list = [None] * self.world_size
        with self._collective("gathering the ranks' results"):
            dist.all_gather_object(parts, mine)
        return [x for p in parts for x in p]

    def share_tensor(self, t: Tensor) -> Tensor:
        """Rank 0's ``t`` on every rank (every rank passes a tensor of the same shape and
        dtype; e.g. the images of a dataset update, so that every rank's dataset is rank 0's)."""
        if not self.active:
            return t
        buf = t.detach().to(self.device).contiguous().clone()
        with self._collective("receiving rank 0's tensor"):
            dist.broadcast(buf, 0)
        return buf.to(t.device)

    def sum_tensor(self, t: Tensor) -> Tensor:
        """``t`` summed over the ranks (e.g. per-view predictions that each rank filled in for
        its own views and left 0 elsewhere)."""
        if not self.active:
            return t
        buf = t.detach().to(self.device).contiguous().clone()
        with self._collective("summing a tensor"):
            dist.all_reduce(buf)
        return buf.to(t.device)

    def gather_rows(self, t: Tensor) -> Tensor:
        """Every rank's ``t`` (any number of rows, the rest of the shape alike) concatenated
        along the first dimension in rank order, on every rank (e.g. per-view statistics of
        each rank's share of a batch)."""
        if not self.active:
            return t
        with self._collective("gathering per-view statistics"):
            n = torch.tensor([t.shape[0]], device=self.device)
            sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
            dist.all_gather(sizes, n)
            rows = [int(s) for s in sizes]
            buf = torch.zeros((max(rows), *t.shape[1:]), dtype=t.dtype, device=self.device)
            buf[: t.shape[0]] = t.detach().to(self.device)
            parts = [torch.empty_like(buf) for _ in range(self.world_size)]
            dist.all_gather(parts, buf)
        return torch.cat([p[:r] for p, r in zip(parts, rows, strict=True)]).to(t.device)

    def close(self) -> None:
        """Leave the process group (when there is one)."""
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def finish_command(ok: bool) -> None:
    """End of a command under torchrun: the ranks meet (``ok``) and leave the process group (a
    rank that exits while another still reports made gloo abort that one at exit)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if ok:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _to_cpu(x):
    """``x`` with its tensors (also inside dicts, lists and tuples) moved to the CPU."""
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


SINGLE = DistContext()
"""One process: every method is the identity."""


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)``
    without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise DistributedError(f"bad torchrun environment ({e})") from e
    return rank, world, local


def rank_device(name: str, local_rank: int, world: int) -> torch.device:
    """The device of a rank: ``auto`` / ``cuda`` become ``cuda:LOCAL_RANK`` when CUDA is
    available and the run has several ranks; ``cuda:N`` and ``cpu`` are kept."""
    dev = resolve_device(name)
    if world > 1 and dev.type == "cuda" and dev.index is None:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local_rank} has no GPU (this machine has "
                f"{torch.cuda.device_count()}): start at most that many processes per node"
            )
        dev = torch.device("cuda", local_rank)
    return dev


def from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """The data-parallel context of this process: :data:`SINGLE`-like (only the device
    resolved) without torchrun, else the process group joined (gloo on CPU, NCCL on CUDA;
    an existing group is reused)."""
    rank, world, local = env_world()
    dev = rank_device(device, local, world)
    if world <= 1:
        return dataclasses.replace(SINGLE, device=dev, timeout_s=timeout_s)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dist.is_initialized():
        backend = str(dist.get_backend())
    else:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise DistributedError(
                f"WORLD_SIZE={world} but {', '.join(missing)} is not set: start the run with "
                "torchrun (see README: Several GPUs or machines)"
            )
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        except (RuntimeError, ValueError, OSError) as e:
            raise DistributedError(
                f"rank {rank} of {world}: cannot join the process group ({backend} at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): {e}"
            ) from e
    return DistContext(rank, world, local, backend, dev, timeout_s)


def _local_rank(target: Callable, rank: int, world: int, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    target(rank, *args)


def spawn_local(
    target: Callable, world: int, args: tuple = (), timeout_s: float = 600.0
) -> list[int | None]:
    """Run ``target(rank, *args)`` (a picklable top-level function) in ``world`` new processes
    with torchrun's environment on this machine (``MASTER_ADDR`` 127.0.0.1, a free port): what
    tests and benchmarks start instead of the ``torchrun`` command. Waits ``timeout_s`` in all,
    then kills the ranks still running; returns each rank's exit code (None: killed)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_local_rank, args=(target, r, world, port, args)) for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(deadline - time.monotonic(), 1))
    codes: list[int | None] = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes


__all__ = [
    "ENV_VARS",
    "SHARD_DRAWS",
    "SINGLE",
    "DistContext",
    "DistributedError",
    "finish_command",
    "Shard",
    "env_world",
    "from_env",
    "rank_device",
    "shard",
    "skip_draws",
    "slice_batch",
    "spawn_local",
    "split_bounds",
]
