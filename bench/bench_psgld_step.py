"""The fused pSGLD step against the eager loop and torch._foreach (same run).

    python -m pytest bench/bench_psgld_step.py --benchmark-json=bench/results/cpu.json
    python bench/report.py bench/results/cpu.json

Every provider updates the same parameter set from the same state; timings are
the best of several rounds, the device synchronised inside the timed call.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, synchronize

from sgmcmc_fused.kernels import registry

HYPER = dict(lr=1e-3, alpha=0.99, eps=1e-5, weight_decay=0.0, temperature=1.0, num_data=929_589, add_noise=True)

CPU_PROVIDERS = ["cpu", "foreach", "eager"]
CUDA_PROVIDERS = ["cuda", "triton", "foreach", "eager"]


def make_inputs(sizes: list[int], device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(n, device=device, generator=g) for n in sizes]
    grads = [torch.randn(n, device=device, generator=g) * 1e-2 for n in sizes]
    square_avgs = [torch.rand(n, device=device, generator=g) * 1e-4 for n in sizes]
    return params, grads, square_avgs


def run_case(benchmark, record, provider: str, case: str, device: torch.device):
    backend = registry.select_backend(provider, device, [torch.float32])
    sizes = CASES[case]()
    params, grads, square_avgs = make_inputs(sizes, device)
    ids, offsets = list(range(len(sizes))), [0] * len(sizes)
    counter = iter(range(1 << 30))

    def step():
        t = next(counter)
        backend.psgld_step_(params, grads, square_avgs, ids, offsets, [t] * len(sizes), seed=1234, **HYPER)
        synchronize(device)

    slow = provider == "eager" and case == "ptb_medium"
    rounds = 3 if slow else 20
    benchmark.group = f"psgld_step {case} {device.type}"
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    record(device, sum(sizes), provider=provider, case=case, tensors=len(sizes))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_psgld_step_cpu(benchmark, record, provider, case):
    run_case(benchmark, record, provider, case, torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", CUDA_PROVIDERS)
def test_psgld_step_cuda(benchmark, record, provider, case):
    run_case(benchmark, record, provider, case, torch.device("cuda"))
