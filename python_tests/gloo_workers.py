"""Worker processes for the multi-process tests: gloo on CPU, started by torch.multiprocessing.spawn.

The workers rendezvous through a file in the test's temporary folder (a FileStore: no TCP port is
picked, released and raced for), and leave through the trainers' own `distributed.shutdown`, which
frees reference cycles (DDP reducers hold the group) and waits for every rank before destroying
the group. A failed assertion in a worker fails the test (spawn re-raises it); a worker killed by a
signal prints its Python stack first (faulthandler), so the failure says where it happened.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from sgmcmc_fused.train.distributed import World, shutdown

WORLD_SIZE = 2
TIMEOUT = datetime.timedelta(seconds=60)


def spawn(worker, tmp_path, *args) -> None:
    """Run worker(rank, WORLD_SIZE, rendezvous_file, *args) in WORLD_SIZE fresh processes; wait for them."""
    rendezvous_file = str(tmp_path / "rendezvous")  # must not exist yet: a fresh FileStore
    torch.multiprocessing.spawn(worker, args=(WORLD_SIZE, rendezvous_file, *args), nprocs=WORLD_SIZE, join=True)


@contextlib.contextmanager
def gloo_world(rank: int, world_size: int, rendezvous_file: str, timeout=TIMEOUT) -> Iterator[World]:
    """Join the gloo group (1 thread per process; collectives time out after `timeout`) for the body,
    then leave it: after every rank is done when the body returns, at once when it raises."""
    faulthandler.enable()
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous_file}", rank=rank, world_size=world_size, timeout=timeout
    )
    world = World(rank, world_size)
    try:
        yield world
    except BaseException:
        shutdown(world, wait_for_all=False)
        raise
    shutdown(world)
