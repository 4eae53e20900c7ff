"""The host SIMT emulator itself (csrc/cuda/host_emulation.h): every thread runs once,
in forward or reverse order; launches a GPU would refuse are refused before anything
runs; and the sanitizers are live, so an out-of-bounds write or a misaligned vector
load stops the worker with a report naming the source line."""

from __future__ import annotations

import pytest
import torch
from emulated.client import FORWARD, REVERSE, EmulatedKernelCrash

pytestmark = pytest.mark.emulated

TRACE_BOUND = 512  # trace_kernel's __launch_bounds__


@pytest.mark.parametrize("grid,block", [([1, 1, 1], [1, 1, 1]), ([3, 2, 2], [4, 3, 2]), ([5, 1, 1], [512, 1, 1])])
def test_every_thread_runs_once_in_order(emulated_kernels, grid, block):
    n = grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2]
    for order, expected in ((FORWARD, torch.arange(n)), (REVERSE, torch.arange(n).flip(0))):
        visit = torch.full((n,), -1, dtype=torch.long)
        emulated_kernels.call("product", "launch_trace", visit, grid, block, order=order)
        assert torch.equal(visit, expected)


@pytest.mark.parametrize(
    "grid,block,reason",
    [
        ([0, 1, 1], [32, 1, 1], "dimension is 0"),
        ([1, 1, 1], [32, 0, 1], "dimension is 0"),
        ([1, 1, 1], [1025, 1, 1], "exceeds the device limit of 1024"),
        ([1, 1, 1], [32, 32, 2], "exceeds the device limit of 1024"),
        ([1, 1, 1], [513, 1, 1], r"__launch_bounds__\(512\)"),
        ([1, 1, 1], [1, 1, 65], "block.z = 65 exceeds 64"),
        ([1, 65536, 1], [1, 1, 1], "exceeds 65535"),
        ([1, 1, 65536], [1, 1, 1], "exceeds 65535"),
        ([2**31, 1, 1], [1, 1, 1], "exceeds 2\\^31 - 1"),
    ],
)
def test_refused_launches_run_nothing(emulated_kernels, grid, block, reason):
    visit = torch.full((4,), -1, dtype=torch.long)
    with pytest.raises(RuntimeError, match=reason):
        emulated_kernels.call("product", "launch_trace", visit, grid, block, order=FORWARD)
    assert (visit == -1).all()


def test_kernel_parameters_over_4_kib_are_refused(emulated_kernels):
    assert emulated_kernels.call("product", "launch_param_probe", False) == 5  # exactly 4096 bytes runs
    with pytest.raises(RuntimeError, match="4097 bytes, over the 4096-byte limit"):
        emulated_kernels.call("product", "launch_param_probe", True)


def test_out_of_bounds_write_stops_at_the_kernel_line(emulated_kernels):
    """A grid larger than its output: AddressSanitizer reports the write in trace_kernel."""
    visit = torch.zeros(7, dtype=torch.long)
    with pytest.raises(EmulatedKernelCrash, match=r"(?s)heap-buffer-overflow.*trace_kernel.*emulated_kernels\.cpp:\d+"):
        emulated_kernels.call("product", "launch_trace", visit, [1, 1, 1], [8, 1, 1], order=FORWARD)
    # the next call gets a fresh worker
    emulated_kernels.call("product", "launch_trace", torch.zeros(8, dtype=torch.long), [1, 1, 1], [8, 1, 1], order=0)


def test_misaligned_vector_load_stops_at_the_line(emulated_kernels):
    with pytest.raises(EmulatedKernelCrash, match=r"(?s)misaligned address.*emulated_kernels\.cpp:\d+"):
        emulated_kernels.call("product", "misaligned_load_probe", torch.zeros(16))
