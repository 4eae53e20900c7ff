"""The trainers' view of ``torch.distributed``: which process this is, and the few collectives they use.

Under ``torchrun --nproc_per_node=K`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) `init_world` joins the process group: gloo for CPU training, NCCL for CUDA, one GPU per
local rank. Run directly, it returns the single-process world and touches nothing.

Data parallelism needs no noise communication: the samplers' noise is a function of (seed, step,
element) (SPEC §2), so every rank draws the same noise and, after DDP's gradient all-reduce, applies
the same update.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .checkpoint import content_digest
from .options import ConfigError


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
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def shard(n: int, world: World) -> slice:
    """This rank's part of range(n) when n items are split into world.size near-equal contiguous parts
    (the first n % size ranks get one more)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


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
