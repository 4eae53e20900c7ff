"""Shared benchmark machinery: parameter sets, a timer that synchronises the
device inside the timed call, and the copy bandwidth of the same run.

Results go to pytest-benchmark's JSON (`--benchmark-json`); `bench/report.py`
turns it into a table (ratios against eager and foreach) and a plot.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

#: Bytes moved per fp32 element by a pSGLD step: read theta, g, V; write theta, V.
BYTES_PER_ELEMENT = 20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ptb_medium_sizes() -> list[int]:
    """The tensors of a 2x650 PTB language model (10k vocabulary): ~19.8M params in 11 tensors."""
    vocab, hidden = 10_000, 650
    lstm = [4 * hidden * hidden, 4 * hidden * hidden, 4 * hidden, 4 * hidden]  # w_ih, w_hh, b_ih, b_hh
    return [vocab * hidden, *lstm, *lstm, hidden * vocab, vocab]


def many_small_sizes(count: int = 1000) -> list[int]:
    """`count` small tensors of 64..8192 elements (seeded)."""
    g = torch.Generator().manual_seed(0)
    return [int(n) for n in torch.randint(64, 8193, (count,), generator=g)]


CASES = {"ptb_medium": ptb_medium_sizes, "1000_small": many_small_sizes}

_copy_bandwidth_cache: dict[str, float] = {}


def copy_bandwidth(device: torch.device, numel: int = 50_000_000) -> float:
    """Bytes/s of a large fp32 device copy (read + write bytes), measured once per run and device."""
    key = str(device)
    if key not in _copy_bandwidth_cache:
        import time

        src = torch.randn(numel, device=device)
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(5):
            synchronize(device)
            t0 = time.perf_counter()
            dst.copy_(src)
            synchronize(device)
            best = min(best, time.perf_counter() - t0)
        _copy_bandwidth_cache[key] = 2 * numel * 4 / best
        del src, dst
    return _copy_bandwidth_cache[key]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


@pytest.fixture
def record(benchmark):
    """Stores the derived figures of one benchmark in its extra_info."""

    def _record(device: torch.device, numel: int, bytes_per_element: int = BYTES_PER_ELEMENT, **info):
        stats = benchmark.stats.stats
        seconds = stats.min
        bw = copy_bandwidth(device)
        benchmark.extra_info.update(
            device=device_name(device),
            numel=numel,
            elements_per_s=numel / seconds,
            gbytes_per_s=numel * bytes_per_element / seconds / 1e9,
            copy_gbytes_per_s=bw / 1e9,
            fraction_of_copy_bandwidth=numel * bytes_per_element / seconds / bw,
            **info,
        )

    return _record
