"""One LSTM training step (forward + backward) of the DropConnect LSTM against torch's LSTM.

    python -m pytest bench/bench_lstm.py --benchmark-json=bench/results/lstm_cpu.json
    python bench/report.py bench/results/lstm_cpu.json

A step is ``output.sum().backward()`` on a fixed random input [T, B, I] (requires_grad, as the
output of an embedding would be), zero initial state, parameter gradients reset to None first.
Every provider of a case gets the same weights (one seeded nn.LSTM, copied) and the same input:

| provider                | what runs                                                               |
|-------------------------|-------------------------------------------------------------------------|
| nn_lstm                 | torch.nn.LSTM, no mask (oneDNN on CPU, cuDNN on GPU): the baseline      |
| weight_drop             | AWD-LSTM: F.dropout on each weight_hh once per step, then torch's fused |
|                         | LSTM (torch._VF.lstm) with those weights                                |
| python_loop             | lstm_reference.lstm_layer per layer and direction (eager per-step loop),|
|                         | weight_hh * explicit Bernoulli mask drawn with torch's RNG              |
| dropconnect_<impl>      | DropConnectLSTM(dropconnect=0.5, mask="bernoulli", masked="hh",         |
|                         | impl=<impl>), train mode; impl in cpu / cuda / triton                   |
| dropconnect_<impl>_p0   | the same with dropconnect=0: the kernels without masks                  |

The autocast cases (test_lstm_step_*_autocast: bf16 on CPU, fp16 and bf16 on CUDA) run the forward
under torch.autocast for nn_lstm and the DropConnect providers, each against nn_lstm under the same
autocast (the benchmark group names the dtype).

The python_loop masks come from torch's RNG, not from the eager Philox reference
(lstm_reference.dropconnect_mask), which alone takes ~1.8 s per 650x2600 matrix on CPU and would
measure the reference RNG instead of the loop.

Memory, in extra_info (one extra step, outside the timing):
  CPU:  memory_metric "saved_bytes": bytes of the distinct storages saved for backward during one
        step (torch.autograd.graph.saved_tensors_hooks); memory_step_bytes excludes the storages
        of the parameters and the input ("saved_bytes_excl_params_input").
  CUDA: memory_metric "peak_bytes": torch.cuda.max_memory_allocated over one step (peak stats
        reset before, gradients None); memory_step_bytes = peak minus the bytes allocated before
        the step ("peak_minus_allocated_before").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import device_name, synchronize
from torch import nn

from sgmcmc_fused.kernels.lstm import reference as lstm_reference
from sgmcmc_fused.nn import DropConnectLSTM
from sgmcmc_fused.nn.functional import not_supported_reasons

P = 0.5  # DropConnect probability of the masked providers


@dataclass(frozen=True)
class Case:
    layers: int
    hidden: int
    input: int
    batch: int
    steps: int
    bidirectional: bool = False


CASES = {
    "ptb_small": Case(layers=2, hidden=200, input=200, batch=20, steps=35),
    "ptb_medium": Case(layers=2, hidden=650, input=650, batch=20, steps=35),
    "classifier": Case(layers=1, hidden=200, input=300, batch=50, steps=40, bidirectional=True),
}

#: Both devices run every provider; those that cannot run on one are skipped with the reason.
PROVIDERS = ["nn_lstm", "weight_drop", "python_loop"] + [
    f"dropconnect_{impl}{suffix}" for impl in ("cpu", "cuda", "triton") for suffix in ("", "_p0")
]


def rounds_for(provider: str, case: str, device: torch.device) -> int:
    """Best-of rounds, after two untimed steps (warm-up, memory).

    On 2 idle CPU cores a step takes ~20-110 ms (ptb_small, classifier) and ~150-380 ms
    (ptb_medium), and the CPU suite runs in ~40 s. On a loaded machine the 2 OpenMP threads of each
    op wait for each other at every barrier and a step can take 5-7x longer (the suite ~5 minutes).
    """
    if device.type == "cuda":
        return 10 if provider.startswith("dropconnect_triton") or provider == "python_loop" else 30
    if case == "ptb_medium":
        return 4 if provider == "python_loop" else 8
    return 12 if provider == "python_loop" else 25


def skip_reason(provider: str, device: torch.device) -> str | None:
    if not provider.startswith("dropconnect_"):
        return None
    impl = provider.removeprefix("dropconnect_").removesuffix("_p0")
    if impl == "triton" and device.type == "cpu":
        return "triton on CPU runs only under the interpreter, far too slow to benchmark"
    why = not_supported_reasons(impl, device, torch.float32)
    return "; ".join(why) if why else None


def make_lstm(case: Case, device: torch.device) -> nn.LSTM:
    torch.manual_seed(0)
    return nn.LSTM(case.input, case.hidden, case.layers, bidirectional=case.bidirectional, device=device)


def make_input(case: Case, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(case.steps, case.batch, case.input, device=device, generator=g)
    return x.requires_grad_()


def make_forward(provider: str, lstm: nn.LSTM, case: Case):
    """(forward: x -> output [T, B, D * H], parameters) of `provider`, weights copied from `lstm`."""
    directions = 2 if case.bidirectional else 1
    if provider == "nn_lstm":
        lstm.train()
        return (lambda x: lstm(x)[0]), list(lstm.parameters())

    if provider == "weight_drop":
        names = lstm._flat_weights_names
        params = [getattr(lstm, n) for n in names]

        def forward(x):
            weights = [F.dropout(w, P, training=True) if n.startswith("weight_hh") else w
                       for n, w in zip(names, params, strict=False)]  # fmt: skip
            zeros = x.new_zeros(case.layers * directions, x.shape[1], case.hidden)
            # (input, hx, flat weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
            out, _, _ = torch._VF.lstm(x, (zeros, zeros), weights, True, case.layers, 0.0, True,
                                       case.bidirectional, False)  # fmt: skip
            return out

        return forward, params

    if provider == "python_loop":

        def forward(x):
            zeros = x.new_zeros(x.shape[1], case.hidden)
            for layer in range(case.layers):
                outs = []
                for direction in range(directions):
                    sfx = f"_l{layer}" + ("_reverse" if direction else "")
                    w_hh = getattr(lstm, "weight_hh" + sfx)
                    mask = torch.empty_like(w_hh).bernoulli_(1.0 - P).div_(1.0 - P)
                    bias = getattr(lstm, "bias_ih" + sfx) + getattr(lstm, "bias_hh" + sfx)
                    out, _, _ = lstm_reference.lstm_layer(
                        x, zeros, zeros, getattr(lstm, "weight_ih" + sfx), lstm_reference.apply_mask(w_hh, mask),
                        bias, None, reverse=direction == 1,
                    )  # fmt: skip
                    outs.append(out)
                x = outs[0] if directions == 1 else torch.cat(outs, dim=2)
            return x

        return forward, list(lstm.parameters())

    impl = provider.removeprefix("dropconnect_").removesuffix("_p0")
    p = 0.0 if provider.endswith("_p0") else P
    module = DropConnectLSTM.from_lstm(lstm, dropconnect=p, mask="bernoulli", masked="hh", impl=impl, seed=1234)
    module.train()
    return (lambda x: module(x)[0]), list(module.parameters())


def saved_bytes(step, exclude: list[torch.Tensor]) -> tuple[int, int]:
    """(all, excluding `exclude`'s storages): bytes of distinct storages saved for backward by `step`."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # opaque tensors (e.g. mkldnn layout) have no storage
            storages[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    total = sum(storages.values())
    return total, total - sum(n for ptr, n in storages.items() if ptr in excluded)


def peak_bytes(step, tensors: list[torch.Tensor], device: torch.device) -> tuple[int, int]:
    """(peak allocated during `step`, that peak minus what was allocated before it), with the
    gradients of `tensors` freed first."""
    for t in tensors:
        t.grad = None
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak, peak - before


def run_case(
    benchmark, provider: str, case_name: str, device: torch.device, autocast: torch.dtype | None = None
) -> None:
    why = skip_reason(provider, device)
    if why:
        pytest.skip(why)
    case = CASES[case_name]
    lstm = make_lstm(case, device)
    x = make_input(case, device)
    forward, params = make_forward(provider, lstm, case)

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            out = forward(x)
        out.float().sum().backward()
        synchronize(device)

    precision = "fp32" if autocast is None else f"autocast {str(autocast).removeprefix('torch.')}"
    benchmark.group = f"lstm_step {case_name} {device.type}" + ("" if autocast is None else f" {precision}")
    with warnings.catch_warnings():
        # cuDNN copies weights that are not one flat buffer (weight_drop) and warns each call.
        warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
        step()  # warm-up: Triton compilation, oneDNN primitive creation, allocator caches
        if device.type == "cuda":
            memory_metric, step_metric = "peak_bytes", "peak_minus_allocated_before"
            memory, step_memory = peak_bytes(step, [*params, x], device)
        else:
            memory_metric, step_metric = "saved_bytes", "saved_bytes_excl_params_input"
            memory, step_memory = saved_bytes(step, [*params, x])
        benchmark.pedantic(step, rounds=rounds_for(provider, case_name, device), iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        kind="lstm_step",
        provider=provider,
        case=case_name,
        device=device_name(device),
        shape=f"L{case.layers} H{case.hidden} I{case.input} B{case.batch} T{case.steps}"
        + (" bi" if case.bidirectional else ""),
        dropconnect=0.0 if provider in ("nn_lstm",) or provider.endswith("_p0") else P,
        precision=precision,
        memory_metric=memory_metric,
        memory_bytes=memory,
        memory_step_metric=step_metric,
        memory_step_bytes=step_memory,
    )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_lstm_step_cpu(benchmark, provider, case):
    run_case(benchmark, provider, case, torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_lstm_step_cuda(benchmark, provider, case):
    run_case(benchmark, provider, case, torch.device("cuda"))


#: The providers of the autocast cases: the baseline and the DropConnect LSTM.
AUTOCAST_PROVIDERS = ["nn_lstm"] + [p for p in PROVIDERS if p.startswith("dropconnect_")]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", AUTOCAST_PROVIDERS)
def test_lstm_step_cpu_autocast(benchmark, provider, case):
    run_case(benchmark, provider, case, torch.device("cpu"), torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", AUTOCAST_PROVIDERS)
def test_lstm_step_cuda_autocast(benchmark, provider, case, dtype):
    run_case(benchmark, provider, case, torch.device("cuda"), dtype)
