"""DropConnectLSTM under torch.autocast, as nn.LSTM: outputs in the autocast dtype, errors against
fp32 of nn.LSTM's own size (measured here, on the same weights; nn.LSTM in bf16 where torch cannot
run it under CPU autocast), the same DropConnect masks as in fp32, gradients in the fp32 master
weights; a compiled autocast step as eager; GradScaler with PSGLD and SGLD, including a skipped step."""

import copy
import functools

import pytest
import torch
from conftest import HAS_CUDA

from sgmcmc_fused.nn import DropConnectLSTM
from sgmcmc_fused.optim import PSGLD, SGLD

_gpu = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
CASES = [
    pytest.param("eager", "cpu", torch.bfloat16, id="eager-cpu-bf16"),
    pytest.param("cpu", "cpu", torch.bfloat16, id="cpu-cpu-bf16"),
    pytest.param("triton", "cpu", torch.bfloat16, id="triton-cpu-bf16"),  # the Triton interpreter
    *[
        pytest.param(impl, "cuda", dtype, id=f"{impl}-cuda-{str(dtype)[6:]}", marks=_gpu)
        for impl in ("eager", "cuda", "triton")
        for dtype in (torch.float16, torch.bfloat16)
    ],
]
T, B, I, H, L = 7, 4, 5, 16, 2  # noqa: E741
#: How far beyond nn.LSTM's own autocast error ours may go (different GEMM blockings and
#: accumulation orders in a reduced precision), and a floor for an error of ~0.
ERROR_FACTOR, ERROR_FLOOR = 4.0, 1e-3


def _module(impl: str, device: str, dropconnect: float = 0.0) -> DropConnectLSTM:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, L, device=device)
    return DropConnectLSTM.from_lstm(lstm, dropconnect=dropconnect, masked="both", impl=impl, seed=11)


def _run(module, x, device, dtype=None):
    """Outputs (y, h, c) and the gradients of every parameter for a fixed projection of y, h and c."""
    module.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        y, (h, c) = module(x)
    g = torch.Generator().manual_seed(1)
    loss = sum((t.float() * torch.randn(t.shape, generator=g).to(device)).sum() for t in (y, h, c))
    loss.backward()
    return (y, h, c), {n: p.grad for n, p in module.named_parameters()}


def _max_error(outputs, grads, ref_outputs, ref_grads):
    out = max(float((a.detach().float() - b.detach()).abs().max()) for a, b in zip(outputs, ref_outputs, strict=True))
    grad = max(float((grads[n] - ref_grads[n]).abs().max() / ref_grads[n].abs().max()) for n in grads)
    return out, grad


@functools.cache
def _nn_lstm_runs_under_autocast(device: str, dtype: torch.dtype) -> bool:
    """Whether torch's own nn.LSTM runs under autocast here. On CPU autocast sends it to oneDNN, which
    has no reduced-precision LSTM on CPUs without AVX-512 ("could not create a primitive descriptor")."""
    lstm = torch.nn.LSTM(2, 2, device=device)
    try:
        with torch.autocast(device, dtype=dtype), torch.no_grad():
            lstm(torch.zeros(1, 1, 2, device=device))
    except RuntimeError:
        return False
    return True


def _nn_lstm_in_reduced_precision(lstm, device, dtype):
    """(module, cast of the fp32 input, autocast dtype or None) with which `lstm` computes in `dtype`:
    itself under autocast where torch runs it so; else a copy of its weights in `dtype`, on the input
    cast to `dtype`: the same reduced-precision GEMMs without the fp32 master weights."""
    if _nn_lstm_runs_under_autocast(device, dtype):
        return lstm, (lambda x: x), dtype
    return copy.deepcopy(lstm).to(dtype), (lambda x: x.to(dtype)), None


def _skip_unavailable(impl, device):
    from sgmcmc_fused.kernels.registry import LSTM_BACKENDS

    why = LSTM_BACKENDS[impl].not_supported_reasons(torch.device(device), [torch.float32])
    if why:
        pytest.skip("; ".join(why))


@pytest.mark.parametrize("impl, device, dtype", CASES)
def test_outputs_errors_and_gradients_as_nn_lstm_under_autocast(impl, device, dtype):
    _skip_unavailable(impl, device)
    module = _module(impl, device).eval()
    lstm = module.to_lstm()
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(2)).to(device)
    ours_fp32 = _run(module, x, device)
    ours = _run(module, x, device, dtype)
    theirs_fp32 = _run(lstm, x, device)
    reference, cast, autocast_dtype = _nn_lstm_in_reduced_precision(lstm, device, dtype)
    outputs, grads = _run(reference, cast(x), device, autocast_dtype)
    theirs = outputs, {n: g.float() for n, g in grads.items()}
    assert [t.dtype for t in ours[0]] == [t.dtype for t in theirs[0]] == [dtype] * 3
    assert all(g.dtype == torch.float32 for g in ours[1].values())  # the fp32 master weights' gradients
    ours_out, ours_grad = _max_error(*ours, *ours_fp32)
    theirs_out, theirs_grad = _max_error(*theirs, *theirs_fp32)
    assert ours_out <= ERROR_FACTOR * theirs_out + ERROR_FLOOR, (ours_out, theirs_out)
    assert ours_grad <= ERROR_FACTOR * theirs_grad + ERROR_FLOOR, (ours_grad, theirs_grad)
    assert ours_out > 0  # it did compute in the lower precision


@pytest.mark.parametrize("impl, device, dtype", CASES)
def test_autocast_draws_the_fp32_masks(impl, device, dtype):
    """Training with DropConnect p = 0.5: the autocast output is within the reduced-precision error of
    the fp32 output of the same call, so both used the same masks (another call's masks differ by
    O(1)); the call counter advances the same."""
    _skip_unavailable(impl, device)
    fp32 = _module(impl, device, dropconnect=0.5).train()
    low = copy.deepcopy(fp32)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(3)).to(device)
    outputs, grads = _run(fp32, x, device)
    low_outputs, low_grads = _run(low, x, device, dtype)
    error, grad_error = _max_error(low_outputs, low_grads, outputs, grads)
    next_call, _ = _run(fp32, x, device)  # the next call: other masks
    other = max(float((a - b).detach().abs().max()) for a, b in zip(next_call, outputs, strict=True))
    assert error < 0.1 * other and grad_error < 0.1, (error, grad_error, other)
    assert low.calls == 1 and fp32.calls == 2


@pytest.mark.parametrize("impl, device, dtype", CASES)
def test_a_state_carried_from_an_autocast_call_is_accepted(impl, device, dtype):
    """Truncated BPTT under autocast: the (h, c) of one call, in the autocast dtype, enters the next
    with an fp32 input, as nn.LSTM accepts it."""
    _skip_unavailable(impl, device)
    module = _module(impl, device).eval()
    lstm = module.to_lstm()
    x = torch.randn(2, T, B, I, generator=torch.Generator().manual_seed(5)).to(device)
    reference, cast, autocast_dtype = _nn_lstm_in_reduced_precision(lstm, device, dtype)
    outputs = []
    for m, m_cast, m_dtype in ((module, lambda x: x, dtype), (reference, cast, autocast_dtype)):
        with torch.autocast(device, dtype=dtype, enabled=m_dtype is not None), torch.no_grad():
            _, state = m(m_cast(x[0]))
            y, _ = m(m_cast(x[1]), state)
        outputs.append(y)
    assert outputs[0].dtype == outputs[1].dtype == dtype
    assert float((outputs[0].float() - outputs[1].float()).abs().max()) < 0.05


@pytest.mark.parametrize("impl, device, dtype", CASES)
def test_an_input_in_the_autocast_dtype_is_accepted(impl, device, dtype):
    """Under autocast a Linear before the LSTM hands it a bf16/fp16 input; nn.LSTM takes it, and so
    does DropConnectLSTM, with the output it gives the fp32 input (which autocast casts alike)."""
    _skip_unavailable(impl, device)
    module = _module(impl, device).eval()
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(6)).to(device)
    with torch.autocast(device, dtype=dtype), torch.no_grad():
        from_low, _ = module(x.to(dtype))
        from_fp32, _ = module(x.to(dtype).float())  # the same values, cast by autocast
    assert from_low.dtype == dtype and torch.equal(from_low, from_fp32)


def test_a_compiled_autocast_step_matches_eager():
    """torch.compile traces the compiled layer op through its Autocast kernel and fake kernel."""
    module = _module("cpu", "cpu", dropconnect=0.3).train()
    compiled = copy.deepcopy(module)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(4))

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = m(x)
        return y

    eager = step(module)
    traced = torch.compile(step, backend="aot_eager", fullgraph=False)(compiled)
    assert traced.dtype == torch.bfloat16
    assert torch.equal(traced, eager)


@pytest.mark.parametrize("optimizer", ["psgld", "sgld"])
def test_grad_scaler_steps_and_skips_with_the_langevin_optimizers(optimizer):
    """GradScaler (fp16 autocast on CPU) with PSGLD/SGLD: a step with an infinite gradient is skipped
    (parameters, state and noise counters unchanged, the scale halved); a finite step equals the
    optimizer's own step on the gradients the scaler unscaled."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    twin = copy.deepcopy(model)
    make = {
        "psgld": lambda ps: PSGLD(ps, lr=1e-2, num_data=100, seed=5),
        "sgld": lambda ps: SGLD(ps, lr=1e-2, num_data=100, seed=5),
    }[optimizer]
    opt, twin_opt = make(model.parameters()), make(twin.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = torch.randn(8, 6), torch.randn(8, 3)

    def backward(m):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(m(x).float(), y)
        return loss

    before = copy.deepcopy(model.state_dict())
    scaler.scale(backward(model)).backward()
    model.weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert scaler.get_scale() == 2.0**9 and all(not s or s["step"] == 0 for s in opt.state.values())

    opt.zero_grad()
    scaler.scale(backward(model)).backward()
    scaler.unscale_(opt)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()  # the unscaled gradients, for the optimizer's own step
    scaler.step(opt)
    scaler.update()
    twin_opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert [s["step"] for s in opt.state.values()] == [1, 1]
