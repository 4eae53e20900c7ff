"""The fused pSGLD step against the loops a user would write: a per-tensor eager loop and
torch._foreach over the whole list (same run).

    python -m pytest bench/bench_psgld_step.py --benchmark-json=bench/results/cpu.json
    python bench/report.py bench/results/cpu.json

Every provider updates the same parameter set from the same state, with the same
update and its noise on; timings are the best of several rounds, the device
synchronised inside the timed call. The fused providers ("cpu", "cuda", "triton")
are the package's backends as the optimizer calls them, input checks included.
The baselines draw their noise with torch.randn_like and run no input checks.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CASES, synchronize

from sgmcmc_fused.kernels import registry
from sgmcmc_fused.kernels.langevin import foreach

HYPER = dict(lr=1e-3, alpha=0.99, eps=1e-5, weight_decay=0.0, temperature=1.0, num_data=929_589, add_noise=True)

CPU_PROVIDERS = ["cpu", "foreach", "eager"]
CUDA_PROVIDERS = ["cuda", "triton", "foreach", "eager"]


def make_inputs(sizes: list[int], device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(n, device=device, generator=g) for n in sizes]
    grads = [torch.randn(n, device=device, generator=g) * 1e-2 for n in sizes]
    square_avgs = [torch.rand(n, device=device, generator=g) * 1e-4 for n in sizes]
    return params, grads, square_avgs


def eager_loop_psgld_step_(params, grads, square_avgs, stream_ids, element_offsets, steps, *, lr, alpha, eps,
                           weight_decay, temperature, num_data, add_noise, seed) -> None:  # fmt: skip
    """The pSGLD step of docs/spec.md#langevin-step, one tensor at a time, as a user would write it
    (noise from torch.randn_like; the stream arguments are not used)."""
    noise_scale = math.sqrt(2 * lr * temperature / num_data) if add_noise else 0.0
    for p, g, v in zip(params, grads, square_avgs, strict=True):
        if weight_decay:
            g = g + weight_decay * p
        v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        precond = (v.sqrt() + eps).reciprocal_()
        p.addcmul_(precond, g, value=-lr)
        if noise_scale:
            p.addcmul_(precond.sqrt_(), torch.randn_like(p), value=noise_scale)


BASELINES = {"eager": eager_loop_psgld_step_, "foreach": foreach.psgld_step_unchecked}


def run_case(benchmark, record, provider: str, case: str, device: torch.device):
    if provider in BASELINES:
        step_ = BASELINES[provider]
    else:
        step_ = registry.select_backend(provider, device, [torch.float32]).psgld_step_
    sizes = CASES[case]()
    params, grads, square_avgs = make_inputs(sizes, device)
    ids, offsets = list(range(len(sizes))), [0] * len(sizes)
    counter = iter(range(1 << 30))

    def step():
        t = next(counter)
        step_(params, grads, square_avgs, ids, offsets, [t] * len(sizes), seed=1234, **HYPER)
        synchronize(device)

    rounds = 20
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


@pytest.mark.parametrize("provider", list(BASELINES))
def test_baselines_take_the_fused_step_without_noise(provider):
    """The baselines time the same update: with the noise off they give the fused step's result."""
    sizes = [7, 300, 5000]
    ours, theirs = make_inputs(sizes, torch.device("cpu")), make_inputs(sizes, torch.device("cpu"))
    args = ([0, 1, 2], [0] * 3, [5] * 3)
    hyper = {**HYPER, "weight_decay": 1e-3, "add_noise": False}
    registry.select_backend("auto", torch.device("cpu"), [torch.float32]).psgld_step_(*ours, *args, seed=1, **hyper)
    BASELINES[provider](*theirs, *args, seed=1, **hyper)
    for a, b in zip(ours[0] + ours[2], theirs[0] + theirs[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
