"""Multi-process training with torch.distributed (2 CPU processes, gloo).

(a) Data parallel: DDP with PSGLD, the same seed on both ranks and each rank on half of the global
    batch. The noise is counter-based (docs/spec.md#noise-stream), so both ranks draw the same noise without
    communicating: the parameters stay bit-identical across ranks, and equal a single-process run
    on the whole global batch to float rounding (the mean over the global batch is the average of
    the two equal-size half-batch means that DDP's all-reduce computes).
(b) Sharded parameters: each rank holds a contiguous slice of every parameter, declared with
    `set_element_offset`, and steps only its slice; the gathered shards equal, bit for bit, an
    unsharded single-process PSGLD run on the whole parameters.

The workers are started and joined by `gloo_workers` (a file rendezvous in the test's temporary
folder; a failed assertion in a worker fails the test).
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from gloo_workers import gloo_world, spawn

import sgmcmc_fused.optim as sopt

dist = torch.distributed

STEPS = 12


def _gloo_unavailable_reason() -> str | None:
    if not dist.is_available():
        return "torch.distributed is not available in this PyTorch build"
    if not dist.is_gloo_available():
        return "the gloo backend of torch.distributed is not available in this PyTorch build"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
    except OSError as e:
        return f"cannot bind a TCP port on 127.0.0.1 for gloo's connections: {e}"
    return None


pytestmark = pytest.mark.skipif(_gloo_unavailable_reason() is not None, reason=str(_gloo_unavailable_reason()))


def _all_equal_across_ranks(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


# ---------------------------------------------------------------------------------------------------
# (a) DDP

HYPER = dict(lr=3e-3, num_data=2_000, alpha=0.99, eps=1e-5, weight_decay=1e-4, temperature=1.0, seed=20240613)
GLOBAL_BATCH = 32  # rows; each of the 2 ranks takes 16


def _make_mlp() -> torch.nn.Module:
    torch.manual_seed(1234)
    return torch.nn.Sequential(torch.nn.Linear(10, 24), torch.nn.Tanh(), torch.nn.Linear(24, 5))


def _batches():
    """STEPS global batches (x, y), the same in every process."""
    g = torch.Generator().manual_seed(99)
    return [
        (torch.randn(GLOBAL_BATCH, 10, generator=g), torch.randint(0, 5, (GLOBAL_BATCH,), generator=g))
        for _ in range(STEPS)
    ]


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def _ddp_worker(rank: int, world_size: int, rendezvous_file: str, out_path: str) -> None:
    with gloo_world(rank, world_size, rendezvous_file):
        model = torch.nn.parallel.DistributedDataParallel(_make_mlp())
        opt = sopt.PSGLD(model.parameters(), **HYPER)
        assert opt.param_groups[0]["add_noise"]
        half = GLOBAL_BATCH // world_size
        for x, y in _batches():
            xs, ys = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs), ys).backward()  # DDP all-reduces the mean of the half-batch gradients
            opt.step()
        flat = _flat(model.parameters())
        assert _all_equal_across_ranks(flat), f"rank {rank}: parameters differ across ranks after {STEPS} steps"
        for p in model.parameters():
            assert opt.state[p]["step"] == STEPS
        if rank == 0:
            torch.save(flat, out_path)
        # DDP's reducer holds the process group: drop this frame's reference, so that leaving the
        # world frees it while the group is alive, not at interpreter exit.
        del model, opt


def test_ddp_psgld_ranks_bit_identical_and_equal_single_process(tmp_path):
    out = tmp_path / "ddp_rank0.pt"
    spawn(_ddp_worker, tmp_path, str(out))
    ddp_params = torch.load(out, weights_only=True)

    # The single-process run on the whole global batch.
    model = _make_mlp()
    init = _flat(model.parameters())
    opt = sopt.PSGLD(model.parameters(), **HYPER)
    for x, y in _batches():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    single = _flat(model.parameters())
    torch.testing.assert_close(ddp_params, single, rtol=1e-5, atol=1e-5)

    # The comparison has teeth: the noise moved the parameters far more than the tolerance, and a
    # run with another seed ends elsewhere.
    assert (single - init).abs().max() > 1e-2
    model2 = _make_mlp()
    opt2 = sopt.PSGLD(model2.parameters(), **{**HYPER, "seed": HYPER["seed"] + 1})
    for x, y in _batches():
        opt2.zero_grad(set_to_none=True)
        F.cross_entropy(model2(x), y).backward()
        opt2.step()
    assert (_flat(model2.parameters()) - single).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------
# (b) Sharded parameters

# Odd sizes, so the shard boundaries (element offsets) are not multiples of the Philox lane count 4.
SHAPES = [(7, 5), (13,), (3, 4, 6), (1,), (257,)]


def _whole_params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(s, generator=g) * 0.5 for s in SHAPES]


def _grad_data(step: int) -> list[torch.Tensor]:
    """Per-step 'data' terms of the gradients, of the whole parameters (each rank slices its part)."""
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _grad(theta: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """An elementwise gradient that depends on the parameter, so the shards' updates feed back."""
    return torch.tanh(theta) - 0.3 * data + 0.1 * theta**3


def _shard_range(numel: int, rank: int, world_size: int) -> tuple[int, int]:
    per = -(-numel // world_size)  # ceil
    start = min(rank * per, numel)
    return start, min(start + per, numel)


def _shard_worker(rank: int, world_size: int, rendezvous_file: str, out_path: str) -> None:
    with gloo_world(rank, world_size, rendezvous_file):
        ranges = [_shard_range(w.numel(), rank, world_size) for w in _whole_params()]
        shards = [
            torch.nn.Parameter(w.reshape(-1)[a:b].clone()) for w, (a, b) in zip(_whole_params(), ranges, strict=True)
        ]
        opt = sopt.PSGLD(shards, **HYPER)  # same order as the unsharded run: same stream ids
        for shard, (a, _) in zip(shards, ranges, strict=True):
            opt.set_element_offset(shard, a)
        for step in range(STEPS):
            for shard, data, (a, b) in zip(shards, _grad_data(step), ranges, strict=True):
                shard.grad = _grad(shard.detach(), data.reshape(-1)[a:b])
            opt.step()
        gathered = []
        for shard, w in zip(shards, _whole_params(), strict=True):
            # all_gather needs equal sizes: pad each shard to the largest one.
            per = -(-w.numel() // world_size)
            padded = torch.zeros(per)
            padded[: shard.numel()] = shard.detach()
            parts = [torch.empty(per) for _ in range(world_size)]
            dist.all_gather(parts, padded)
            sizes = [b - a for a, b in (_shard_range(w.numel(), r, world_size) for r in range(world_size))]
            pieces = [part[:n] for part, n in zip(parts, sizes, strict=True)]
            gathered.append(torch.cat(pieces).reshape(w.shape))
        if rank == 0:
            torch.save(gathered, out_path)


def test_sharded_psgld_equals_unsharded_exactly(tmp_path):
    out = tmp_path / "sharded.pt"
    spawn(_shard_worker, tmp_path, str(out))
    gathered = torch.load(out, weights_only=True)

    whole = [torch.nn.Parameter(w) for w in _whole_params()]
    init = [w.detach().clone() for w in whole]
    opt = sopt.PSGLD(whole, **HYPER)
    for step in range(STEPS):
        for p, data in zip(whole, _grad_data(step), strict=True):
            p.grad = _grad(p.detach(), data)
        opt.step()
    for i, (p, got) in enumerate(zip(whole, gathered, strict=True)):
        assert torch.equal(got, p.detach()), (
            f"parameter {i} (shape {tuple(p.shape)}): sharded and unsharded differ, max abs "
            f"{(got - p.detach()).abs().max().item():.3g}"
        )
    # The noise was on: with noise off the run ends elsewhere.
    assert any((p.detach() - w).abs().max() > 1e-3 for p, w in zip(whole, init, strict=True))
    quiet = [torch.nn.Parameter(w) for w in _whole_params()]
    opt_q = sopt.PSGLD(quiet, **{**HYPER, "add_noise": False})
    for step in range(STEPS):
        for p, data in zip(quiet, _grad_data(step), strict=True):
            p.grad = _grad(p.detach(), data)
        opt_q.step()
    assert any(not torch.equal(q.detach(), p.detach()) for q, p in zip(quiet, whole, strict=True))


class _Interrupted:
    """A trainer's InterruptFlag after Ctrl-C."""

    status, name = 130, "SIGINT"

    def __bool__(self) -> bool:
        return True


def _wait_worker(rank: int, world_size: int, rendezvous_file: str, case: str) -> None:
    import datetime
    import time

    from sgmcmc_fused.train.distributed import announce_stop, wait_for_ranks
    from sgmcmc_fused.train.run_control import Stop

    with gloo_world(rank, world_size, rendezvous_file, timeout=datetime.timedelta(seconds=2)) as world:
        if case == "late":  # rank 1 comes 4 s after rank 0, twice the group's timeout
            if rank == 1:
                time.sleep(4)
            wait_for_ranks(world, "the late rank", interrupted=False, poll_seconds=0.05)
            return
        if case == "stops" and rank == 1:  # rank 1 stops early (--stop-after-steps) instead of coming
            announce_stop(world, 0)
            return
        interrupted = _Interrupted() if (case == "interrupted" and rank == 0) else False
        if case == "interrupted" and rank == 1:
            time.sleep(0.5)  # rank 0 is interrupted while rank 1 has not come yet
        status = None
        try:
            wait_for_ranks(world, "a rank that will not come", interrupted=interrupted, poll_seconds=0.05)
        except Stop as stop:
            status = stop.status
        assert status == (0 if case == "stops" else 130), (case, rank, status)


@pytest.mark.parametrize("case", ["late", "stops", "interrupted"])
def test_ranks_wait_for_each_other_past_the_group_timeout_and_leave_together_when_one_stops(tmp_path, case):
    """Chains of one rank can take hours longer than another's (--chains 3 on 2 processes): the wait for
    them outlasts the process group's timeout (2 s here; 30 min in the trainers), and a rank that stops
    (or is interrupted while waiting) makes the waiting ranks stop with its exit status instead of
    waiting for chains that will not come."""
    spawn(_wait_worker, tmp_path, case)
