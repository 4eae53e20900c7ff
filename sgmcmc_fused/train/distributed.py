"""The trainers' view of ``torch.distributed``: which process this is, and the few collectives they use.

Under ``torchrun --nproc_per_node=K`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) `init_world` joins the process group: gloo for CPU training, NCCL for CUDA, one GPU per
local rank. Run directly, it returns the single-process world and touches nothing.

Data parallelism needs no noise communication: the samplers' noise is a function of (seed, step,
element) (docs/spec.md#noise-stream), so every rank draws the same noise and, after DDP's gradient all-reduce, applies
the same update.
"""

from __future__ import annotations

import datetime
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import content_digest
from .options import ConfigError
from .run_control import InterruptFlag, Stop

#: The store key where a rank that stops early (Ctrl-C, --stop-after-steps, an error) leaves its exit
#: status, for the ranks waiting in `wait_for_ranks`.
_STOP_KEY = "sgmcmc_fused/stopped"


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, writes logs, checkpoints and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group if launched by torchrun with WORLD_SIZE > 1.

    Args:
        device: the device asked for; a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process).
    Returns:
        (world, device to train on).
    Raises:
        ConfigError: a CUDA run with more local processes than GPUs.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible): start at "
                "most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # A generous timeout: ranks wait for each other while one of them evaluates or checkpoints.
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30),
            **({"device_id": device} if device.type == "cuda" else {}),
        )  # fmt: skip
    return World(rank, size, local_rank), device


def shutdown(world: World, *, wait_for_all: bool = True) -> None:
    """Leave the process group at the end of a distributed run.

    With `wait_for_all` (a normal exit), first wait until every rank is done: a rank that tore its
    connections down while another still finished its work could make gloo abort that one.
    """
    if world.distributed and dist.is_initialized():
        # Free the run's DDP reducers (and the gloo work they hold) now, while the group is alive: an
        # object in a reference cycle would otherwise be freed at interpreter exit, after the group is
        # gone, where gloo's destructors can abort the process ("terminate called without an active
        # exception").
        gc.collect()
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def run_in_world(device: torch.device, body: Callable[[World, torch.device], int]) -> int:
    """`init_world`, then body(world, device) (returns the exit status), then `shutdown`: after waiting
    for every rank when body returns, at once when it raises."""
    world, device = init_world(device)
    try:
        status = body(world, device)
    except BaseException:
        announce_stop(world, 1)  # ranks waiting for this one's chains leave instead of waiting on
        shutdown(world, wait_for_all=False)
        raise
    shutdown(world)
    return status


def shard(n: int, world: World) -> slice:
    """This rank's part of range(n) when n items are split into world.size near-equal contiguous parts
    (the first n % size ranks get one more)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def wait_for_ranks(world: World, name: str, interrupted: InterruptFlag | bool, poll_seconds: float = 0.5) -> None:
    """Wait until every rank has reached the point `name` (a barrier for ranks that work alone, such as
    independent chains), without the process group's timeout and heeding Ctrl-C: one rank's chains may
    take hours longer than another's (--chains 3 on 2 processes: rank 0 trains a chain more).

    Raises:
        Stop: this rank was interrupted while waiting (it tells the others), or another rank stopped
            early (`announce_stop`): the chains waited for will not come in this run.
    """
    if not world.distributed:
        return
    store = dist.distributed_c10d._get_default_store()
    key = f"sgmcmc_fused/arrived/{name}"
    store.add(key, 1)
    while store.add(key, 0) < world.size:  # all arrived: done, whatever a rank announces afterwards
        if store.check([_STOP_KEY]):
            status = int(store.get(_STOP_KEY))
            raise Stop(f"another process stopped (exit status {status}) before every rank reached {name}", status)
        if interrupted:
            store.add(key, -1)  # this rank leaves: the others must not count it as arrived
            announce_stop(world, interrupted.status)
            raise Stop(f"{interrupted.name} while waiting for the other processes at {name}", interrupted.status)
        time.sleep(poll_seconds)


def announce_stop(world: World, status: int) -> None:
    """Tell the ranks waiting in `wait_for_ranks` that this one stopped early, with its exit status (the
    first rank's to stop stands)."""
    if not (world.distributed and dist.is_initialized()):
        return
    try:
        store = dist.distributed_c10d._get_default_store()
        if not store.check([_STOP_KEY]):
            store.set(_STOP_KEY, str(status))
    except RuntimeError:  # the store is gone with its host rank: its waiters are gone too
        pass


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any (so all ranks stop at the same step)."""
    if not world.distributed:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_ranks(t: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of `t` over all ranks (a new tensor; `t` itself when not distributed)."""
    if not world.distributed:
        return t
    total = t.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def gather_dim(local: torch.Tensor, dim: int, world: World) -> torch.Tensor:
    """Concatenate every rank's `local` along `dim`, in rank order, on every rank.

    The ranks' sizes along `dim` may differ (`shard`); all other dimensions must agree. The result is
    on `local`'s device.
    """
    if not world.distributed:
        return local
    sizes = [int(s) for s in gather_objects(local.shape[dim], world)]
    width = max(sizes)
    pad = list(local.shape)
    pad[dim] = width - local.shape[dim]
    padded = torch.cat([local, local.new_zeros(pad)], dim) if pad[dim] else local.contiguous()
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes, strict=True)], dim)


def check_replicas_equal(tensors: list[torch.Tensor], world: World, what: str) -> None:
    """Raise if `tensors` (e.g. the parameters) are not bitwise equal on every rank.

    Compares a SHA-256 digest per rank, so only 64 bytes per rank travel.
    """
    if not world.distributed:
        return
    digests = gather_objects(content_digest([t.detach() for t in tensors]), world)
    if len(set(digests)) != 1:
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f"{what} differ between ranks (ranks {differing} differ from rank 0)")


def data_parallel(model: torch.nn.Module, world: World, device: torch.device, seed: int) -> torch.nn.Module:
    """The module to call forward on: `model` itself alone, else `model` wrapped in DDP.

    Call it right after building `model` from the shared seed (identical on every rank). Every rank
    other than 0 then reseeds torch's RNG from (seed, rank): each rank's dropout masks its own share of
    the batch, so the ranks' streams must differ.
    """
    if not world.distributed:
        return model
    if world.rank:
        torch.manual_seed((seed + 0x9E3779B97F4A7C15 * world.rank) % 2**64)
    # Gradients as views of DDP's buckets: no copy in and out of them, no second copy in memory.
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
    )


def rng_states(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This process's torch CPU RNG state and, training on CUDA, its device's RNG state."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_states(states: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def replica_checkpoint_state(params: list[torch.Tensor], world: World, what: str) -> dict[str, Any]:
    """Checkpoint entries of a data-parallel replica (collective; every rank calls it): checks that the
    ranks' `params` are bitwise equal and returns {"world_size", and every rank's RNG states}."""
    state: dict[str, Any] = {"world_size": world.size}
    if world.distributed:
        check_replicas_equal(params, world, what)
        state["rank_rng_states"] = gather_objects(rng_states(_device_of(params)), world)
    return state


def restore_replica_state(ck: dict[str, Any], world: World, device: torch.device, path: Any) -> None:
    """Restore this rank's RNG states from a checkpoint written by `replica_checkpoint_state`.

    Raises:
        ConfigError: the checkpoint was written by another number of data-parallel processes.
    """
    saved = int(ck.get("world_size", 1))
    if saved != world.size:
        how = f"torchrun --nproc_per_node={saved} -m ..." if saved > 1 else "one process (python -m ...)"
        raise ConfigError(
            f"{path} was written by {saved} data-parallel process(es); resume it with the same number: {how}"
        )
    if world.distributed:
        set_rng_states(ck["rank_rng_states"][world.rank], device)


def _device_of(params: list[torch.Tensor]) -> torch.device:
    return params[0].device if params else torch.device("cpu")
