"""DropConnectLSTM (docs/spec.md#dropconnect-lstm) against torch.nn.LSTM (dropconnect = 0 or eval) and against an
independent stack of lstm_reference layers with explicit masks (dropconnect > 0)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tolerances import assert_close
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from sgmcmc_fused.kernels.lstm import reference as lstm_reference
from sgmcmc_fused.nn import DropConnectLSTM, functional

#: (impl, device) pairs; compiled impls skip (with the reason) where their kernels are not built.
#: Triton on CPU (the interpreter) is covered kernel by kernel in test_lstm_ops.py.
IMPL_DEVICE = [
    pytest.param("eager", "cpu", id="eager-cpu"),
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("eager", "cuda", id="eager-cuda", marks=pytest.mark.cuda),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.cuda),
    pytest.param("triton", "cuda", id="triton-cuda", marks=pytest.mark.cuda),
]
#: fp32 / fp64 agreement with nn.LSTM (different GEMM and accumulation orders).
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
I, H = 5, 6  # noqa: E741  (input and hidden sizes, as in the docs; odd on purpose)


def require_impl(impl: str, device: str, dtype: torch.dtype) -> None:
    why = functional.not_supported_reasons(impl, torch.device(device), dtype)
    if why:
        pytest.skip(f"impl {impl} on {device}: {'; '.join(why)}")


def close(actual, expected, dtype, what):
    tol = TOL[dtype]
    assert_close(actual, expected, rtol=tol, atol=tol, what=what)


def make_pair(num_layers, bidirectional, batch_first=False, bias=True, dtype=torch.float32, device="cpu", **kw):
    """A DropConnectLSTM and an nn.LSTM with the same parameters."""
    lstm = nn.LSTM(I, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                   device=device, dtype=dtype)  # fmt: skip
    module = DropConnectLSTM(I, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                             device=device, dtype=dtype, **kw)  # fmt: skip
    module.load_state_dict(lstm.state_dict(), strict=True)
    return module, lstm


def make_hx(num_layers, directions, batch, dtype, device, unbatched=False):
    shape = (num_layers * directions, H) if unbatched else (num_layers * directions, batch, H)
    return tuple(torch.randn(shape, dtype=dtype, device=device, requires_grad=True) for _ in range(2))


def run_and_grad(model, x, hx, weights):
    """Forward, then backward of a loss touching output, h_n and c_n; returns values and grads."""
    for p in model.parameters():
        p.grad = None
    leaves = ([x] if isinstance(x, torch.Tensor) else []) + (list(hx) if hx is not None else [])
    for t in leaves:
        t.grad = None
    out, (h_n, c_n) = model(x, hx) if hx is not None else model(x)
    out_tensor = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
    w_out, w_h, w_c = weights(out_tensor.shape, h_n.shape)
    loss = (out_tensor * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads.update({f"leaf{i}": t.grad.clone() for i, t in enumerate(leaves)})
    return out, h_n.detach(), c_n.detach(), grads


def loss_weights(dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def make(out_shape, h_shape):
        return tuple(torch.randn(s, generator=gen, dtype=dtype).to(device) for s in (out_shape, h_shape, h_shape))

    return make


def assert_same_run(mine, theirs, dtype):
    out, h_n, c_n, grads = mine
    out_ref, h_ref, c_ref, grads_ref = theirs
    if isinstance(out_ref, nn.utils.rnn.PackedSequence):
        assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
        assert torch.equal(out.sorted_indices, out_ref.sorted_indices)
        assert torch.equal(out.unsorted_indices, out_ref.unsorted_indices)
        out, out_ref = out.data, out_ref.data
    close(out, out_ref, dtype, "output")
    close(h_n, h_ref, dtype, "h_n")
    close(c_n, c_ref, dtype, "c_n")
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        close(grads[name], grads_ref[name], dtype, f"grad {name}")


# ---- dropconnect = 0: nn.LSTM, forward and backward -------------------------------------------

CONFIGS = [  # (num_layers, bidirectional, batch_first, bias, with_hx)
    (1, False, False, True, False),
    (1, True, True, True, True),
    (2, False, False, False, True),
    (2, True, True, True, False),
    (3, True, False, True, True),
]


@pytest.mark.parametrize("impl, device", IMPL_DEVICE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("num_layers, bidirectional, batch_first, bias, with_hx", CONFIGS)
def test_padded_matches_nn_lstm(impl, device, dtype, num_layers, bidirectional, batch_first, bias, with_hx):
    require_impl(impl, device, dtype)
    torch.manual_seed(0)
    module, lstm = make_pair(num_layers, bidirectional, batch_first, bias, dtype, device, impl=impl)
    steps, batch = 7, 3
    shape = (batch, steps, I) if batch_first else (steps, batch, I)
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    hx = make_hx(num_layers, 1 + bidirectional, batch, dtype, device) if with_hx else None
    mine = run_and_grad(module, x, hx, loss_weights(dtype, device))
    theirs = run_and_grad(lstm, x, hx, loss_weights(dtype, device))
    assert_same_run(mine, theirs, dtype)
    assert module.calls == 1  # one training forward


PACKED_CASES = [  # (num_layers, bidirectional, with_hx, lengths, dtype); lengths unsorted, with and without ties
    pytest.param(1, True, True, [5, 2, 7, 1], torch.float32, id="1-bi-hx-distinct-fp32"),
    pytest.param(2, True, False, [3, 6, 3, 3], torch.float32, id="2-bi-ties-fp32"),
    pytest.param(2, False, True, [3, 6, 3, 3], torch.float32, id="2-uni-hx-ties-fp32"),
    pytest.param(2, True, True, [5, 2, 7, 1], torch.float64, id="2-bi-hx-distinct-fp64"),
]


@pytest.mark.parametrize("impl, device", IMPL_DEVICE)
@pytest.mark.parametrize("num_layers, bidirectional, with_hx, lengths, dtype", PACKED_CASES)
def test_packed_matches_nn_lstm(impl, device, num_layers, bidirectional, with_hx, lengths, dtype):
    require_impl(impl, device, dtype)
    torch.manual_seed(1)
    module, lstm = make_pair(num_layers, bidirectional, dtype=dtype, device=device, impl=impl)
    padded = torch.randn(max(lengths), len(lengths), I, dtype=dtype, device=device)
    packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
    data = packed.data.detach().requires_grad_()
    packed = nn.utils.rnn.PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    hx = make_hx(num_layers, 1 + bidirectional, len(lengths), dtype, device) if with_hx else None

    def run(model):
        data.grad = None
        result = run_and_grad(model, packed, hx, loss_weights(dtype, device))
        result[3]["data"] = data.grad.clone()
        return result

    assert_same_run(run(module), run(lstm), dtype)


@pytest.mark.parametrize("impl, device", IMPL_DEVICE)
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_matches_nn_lstm(impl, device, with_hx, batch_first):
    dtype = torch.float32
    require_impl(impl, device, dtype)
    torch.manual_seed(2)
    module, lstm = make_pair(2, True, batch_first=batch_first, dtype=dtype, device=device, impl=impl)
    x = torch.randn(6, I, dtype=dtype, device=device, requires_grad=True)
    hx = make_hx(2, 2, 1, dtype, device, unbatched=True) if with_hx else None
    mine = run_and_grad(module, x, hx, loss_weights(dtype, device))
    theirs = run_and_grad(lstm, x, hx, loss_weights(dtype, device))
    assert mine[0].shape == (6, 2 * H) and mine[1].shape == (4, H)
    assert_same_run(mine, theirs, dtype)


def test_construction_matches_nn_lstm_init_and_seed_from_default_generator():
    for kw in ({}, {"num_layers": 2, "bidirectional": True, "bias": False}):
        torch.manual_seed(3)
        lstm = nn.LSTM(I, H, **kw)
        torch.manual_seed(3)
        module = DropConnectLSTM(I, H, dropconnect=0.2, **kw)
        assert list(module.state_dict()) == list(lstm.state_dict())  # seed, calls are not state
        for (name, a), b in zip(module.state_dict().items(), lstm.state_dict().values(), strict=False):
            assert torch.equal(a, b), name
    torch.manual_seed(4)
    a = DropConnectLSTM(I, H).seed
    torch.manual_seed(4)
    b = DropConnectLSTM(I, H).seed
    torch.manual_seed(5)
    c = DropConnectLSTM(I, H).seed
    assert a == b != c and 0 <= a < 2**63
    assert DropConnectLSTM(I, H, seed=42).seed == 42


# ---- dropconnect > 0: explicit masks ------------------------------------------------------------


def reference_stack(module, x, h0, c0, call, masked, dropout_seed=None):
    """Time-major forward of `module`'s parameters through lstm_reference.lstm_layer with the masks
    of docs/spec.md#dropconnect-masks applied explicitly (weight id (layer * D + d) * 2 + {0 ih, 1 hh})."""
    directions = 2 if module.bidirectional else 1
    kind = lstm_reference.MASK_KINDS[module.mask]
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
    h_n, c_n = [], []
    for layer in range(module.num_layers):
        outs = []
        for d in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(module, "weight_ih" + suffix), getattr(module, "weight_hh" + suffix)
            index = layer * directions + d
            if masked in ("ih", "both"):
                w_ih = lstm_reference.dropconnect_weight(w_ih, module.seed, 2 * index, call, module.dropconnect, kind)
            if masked in ("hh", "both"):
                w_hh = lstm_reference.dropconnect_weight(w_hh, module.seed, 2 * index + 1, call, module.dropconnect,
                                                         kind)  # fmt: skip
            bias = getattr(module, "bias_ih" + suffix) + getattr(module, "bias_hh" + suffix)
            out, h, c = lstm_reference.lstm_layer(x, h0[index], c0[index], w_ih, w_hh, bias, reverse=d == 1)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outs, dim=2)
        if dropout_seed is not None and layer < module.num_layers - 1:
            x = torch.nn.functional.dropout(x, module.dropout, training=True)
    return x, torch.stack(h_n), torch.stack(c_n)


@pytest.mark.parametrize("impl, device", IMPL_DEVICE)
@pytest.mark.parametrize("mask", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("masked", ["hh", "ih", "both"])
def test_training_forward_and_backward_use_the_documented_masks(impl, device, mask, masked):
    dtype = torch.float32
    require_impl(impl, device, dtype)
    torch.manual_seed(6)
    module = DropConnectLSTM(I, H, 2, bidirectional=True, dropconnect=0.4, mask=mask, masked=masked, impl=impl,
                             seed=0x1234_5678_9ABC, device=device)  # fmt: skip
    module.calls = 11
    x = torch.randn(5, 3, I, device=device, requires_grad=True)
    h0, c0 = make_hx(2, 2, 3, dtype, device)
    weights = loss_weights(dtype, device)

    out, (h_n, c_n) = module(x, (h0, c0))
    assert module.calls == 12
    w = weights(out.shape, h_n.shape)
    loss = (out * w[0]).sum() + (h_n * w[1]).sum() + (c_n * w[2]).sum()
    grads = torch.autograd.grad(loss, [x, h0, c0, *module.parameters()])

    ref_out, ref_h, ref_c = reference_stack(module, x, h0, c0, call=11, masked=masked)
    ref_loss = (ref_out * w[0]).sum() + (ref_h * w[1]).sum() + (ref_c * w[2]).sum()
    ref_grads = torch.autograd.grad(ref_loss, [x, h0, c0, *module.parameters()])
    close(out, ref_out, dtype, "output")
    close(h_n, ref_h, dtype, "h_n")
    close(c_n, ref_c, dtype, "c_n")
    names = ["input", "h0", "c0", *(n for n, _ in module.named_parameters())]
    for name, g, g_ref in zip(names, grads, ref_grads, strict=False):
        close(g, g_ref, dtype, f"grad {name}")
    # The masks did something: the unmasked model gives another output.
    plain, _, _ = reference_stack(module, x, h0, c0, call=11, masked="none")
    assert (out - plain).abs().max() > 1e-3


@pytest.mark.parametrize("masked", ["hh", "ih", "both"])
def test_masked_selects_the_matrices(masked):
    """Bernoulli masks zero exactly the dropped weights' gradients, and only in the masked matrices."""
    torch.manual_seed(7)
    module = DropConnectLSTM(I, H, bidirectional=True, dropconnect=0.5, masked=masked, impl="eager", seed=99)
    out, (h_n, _) = module(torch.randn(6, 4, I))
    (out.square().sum() + h_n.sum()).backward()
    kind = lstm_reference.BERNOULLI
    for d, suffix in enumerate(["_l0", "_l0_reverse"]):
        for which, name in enumerate(["weight_ih", "weight_hh"]):
            grad = getattr(module, name + suffix).grad
            weight_id = 2 * d + which
            is_masked = masked == "both" or (masked == "ih") == (which == 0)
            if is_masked:
                dropped = lstm_reference.dropconnect_mask(grad.shape, 99, weight_id, 0, 0.5, kind) == 0
                assert 0.3 < dropped.float().mean() < 0.7
                assert torch.equal(grad == 0, dropped), f"{name}{suffix}"
            else:
                assert (grad != 0).all(), f"{name}{suffix} should be unmasked"


def test_consecutive_calls_draw_new_masks_and_replay_from_the_counter():
    torch.manual_seed(8)
    module = DropConnectLSTM(I, H, 2, dropconnect=0.3, mask="gaussian", masked="both", impl="eager")
    x = torch.randn(5, 2, I)
    with torch.no_grad():
        first = module(x)[0]
        second = module(x)[0]
        assert module.calls == 2
        assert (first - second).abs().max() > 1e-3
        module.calls = 0
        assert torch.equal(module(x)[0], first)
        assert torch.equal(module(x)[0], second)
        other_seed = DropConnectLSTM.from_lstm(module.to_lstm(), dropconnect=0.3, mask="gaussian", masked="both",
                                               impl="eager", seed=module.seed + 1)  # fmt: skip
        assert (other_seed(x)[0] - first).abs().max() > 1e-3


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("impl, device", IMPL_DEVICE)
def test_activation_checkpointing_recomputes_with_the_forwards_masks(impl, device, use_reentrant):
    """torch.utils.checkpoint runs each forward again inside backward: the gradients equal those
    without checkpointing, for two windows of truncated BPTT through the same module in one step
    and over two steps, and the call counter counts the forwards only."""
    from torch.utils.checkpoint import checkpoint

    require_impl(impl, device, torch.float32)
    torch.manual_seed(12)
    plain = DropConnectLSTM(I, H, 2, dropconnect=0.5, masked="both", impl=impl, device=device, seed=5)
    checkpointed = copy.deepcopy(plain)
    # [step, window, T, B, I]; requiring grad, as reentrant checkpointing needs of an input
    xs = torch.randn(2, 2, 4, 3, I, device=device, requires_grad=True)

    def step(module, x, wrap):
        module.zero_grad()
        y1, h, c = wrap(lambda x: flat(module(x)), x[0])
        y2, _, _ = wrap(lambda x, h, c: flat(module(x, (h, c))), x[1], h, c)
        (y1.pow(2).sum() + y2.sin().sum()).backward()
        return {n: p.grad.clone() for n, p in module.named_parameters()}

    def flat(outputs):  # reentrant checkpointing tracks tensors, not tuples of them
        y, (h, c) = outputs
        return y, h, c

    def direct(function, *args):
        return function(*args)

    def through_checkpoint(function, *args):
        return checkpoint(function, *args, use_reentrant=use_reentrant)

    for x in xs:
        expected, got = step(plain, x, direct), step(checkpointed, x, through_checkpoint)
        for name in expected:
            close(got[name], expected[name], torch.float32, name)
    assert checkpointed.calls == plain.calls == 4


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_a_static_input_buffer_and_a_second_backward(use_reentrant):
    """One input buffer refilled with copy_ every step (a new version each time), and a second
    backward through the same graph (retain_graph): every re-run takes its forward's masks."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(13)
    plain = DropConnectLSTM(I, H, dropconnect=0.5, impl="eager", seed=6)
    checkpointed = copy.deepcopy(plain)
    buffers = [torch.zeros(4, 3, I, requires_grad=False) for _ in range(2)]
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        batch = torch.randn(4, 3, I, generator=g)
        grads = []
        for module, buffer, wrap in ((plain, buffers[0], False), (checkpointed, buffers[1], True)):
            module.zero_grad()
            with torch.no_grad():
                buffer.copy_(batch)
            x = buffer.requires_grad_(use_reentrant)  # reentrant checkpointing needs an input that requires grad
            y = checkpoint(lambda t, m=module: m(t)[0], x, use_reentrant=use_reentrant) if wrap else module(x)[0]
            y.pow(2).sum().backward(retain_graph=True)
            y.sin().sum().backward()
            x.requires_grad_(False)
            grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
        for name in grads[0]:
            close(grads[1][name], grads[0][name], torch.float32, name)


def test_a_checkpoint_re_run_that_cannot_know_its_masks_raises():
    """An LSTM input made inside the checkpointed function is made again elsewhere, and an input that
    went through the module twice in training is ambiguous: both raise rather than guess the masks.
    Pickling a module after training forwards keeps none of this bookkeeping."""
    import pickle

    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(14)
    module = DropConnectLSTM(I, H, dropconnect=0.5, impl="eager", seed=7)
    linear = nn.Linear(I, I)
    x = torch.randn(4, 3, I)
    y = checkpoint(lambda t: module(linear(t))[0], x, use_reentrant=False)
    with pytest.raises(RuntimeError, match="input no recent forward saw"):
        y.sum().backward()
    y = checkpoint(lambda t: module(t)[0], x, use_reentrant=False)
    with torch.no_grad():
        module(x)  # the same input again, in training mode
    with pytest.raises(RuntimeError, match="went through the module more than once in training mode"):
        y.sum().backward()
    again = pickle.loads(pickle.dumps(module))
    assert again.calls == module.calls == 3 and again.seed == module.seed  # the re-runs count no call


@pytest.mark.parametrize("impl, device", IMPL_DEVICE)
def test_eval_is_deterministic_and_equals_nn_lstm(impl, device):
    require_impl(impl, device, torch.float32)
    torch.manual_seed(9)
    module, lstm = make_pair(2, True, device=device, impl=impl, dropconnect=0.5, masked="both", dropout=0.5)
    module.eval()
    lstm.eval()
    x = torch.randn(6, 3, I, device=device)
    with torch.no_grad():
        out1, (h1, c1) = module(x)
        out2, _ = module(x)
        ref, (h_ref, c_ref) = lstm(x)
    assert torch.equal(out1, out2)
    assert module.calls == 0
    close(out1, ref, torch.float32, "output")
    close(h1, h_ref, torch.float32, "h_n")
    close(c1, c_ref, torch.float32, "c_n")


def test_dropout_between_layers_in_training_only():
    torch.manual_seed(10)
    module = DropConnectLSTM(I, H, 3, bidirectional=True, dropout=0.5, dropconnect=0.2, impl="eager")
    x = torch.randn(4, 2, I)
    h0 = c0 = torch.zeros(6, 2, H)
    with torch.no_grad():
        torch.manual_seed(123)
        out, (h_n, c_n) = module(x)
        ref_out, ref_h, ref_c = reference_stack(module, x, h0, c0, call=0, masked="hh", dropout_seed=123)
        no_dropout, _, _ = reference_stack(module, x, h0, c0, call=0, masked="hh")
    close(out, ref_out, torch.float32, "output")
    close(h_n, ref_h, torch.float32, "h_n")
    close(c_n, ref_c, torch.float32, "c_n")
    assert (out - no_dropout).abs().max() > 1e-3


# ---- interchange with nn.LSTM ---------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_loads_both_ways_strictly(bias):
    torch.manual_seed(11)
    lstm = nn.LSTM(I, H, 2, bias=bias, bidirectional=True)
    module = DropConnectLSTM(I, H, 2, bias=bias, bidirectional=True, dropconnect=0.1)
    assert module.state_dict().keys() == lstm.state_dict().keys()
    module.load_state_dict(lstm.state_dict(), strict=True)
    for name, value in lstm.state_dict().items():
        assert torch.equal(module.state_dict()[name], value)
    fresh = nn.LSTM(I, H, 2, bias=bias, bidirectional=True)
    fresh.load_state_dict(module.state_dict(), strict=True)
    for name, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)


def test_from_lstm_and_to_lstm_round_trip():
    torch.manual_seed(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lstm = nn.LSTM(I, H, 3, batch_first=True, dropout=0.25, bidirectional=True, dtype=torch.float64)
    module = DropConnectLSTM.from_lstm(lstm, dropconnect=0.3, mask="gaussian", masked="ih", impl="eager", seed=5)
    assert (module.num_layers, module.batch_first, module.dropout, module.bidirectional) == (3, True, 0.25, True)
    assert (module.dropconnect, module.mask, module.masked, module.impl, module.seed) == (0.3, "gaussian", "ih",
                                                                                           "eager", 5)  # fmt: skip
    assert module.weight_ih_l0.dtype == torch.float64
    for name, p in lstm.named_parameters():
        assert torch.equal(getattr(module, name), p) and getattr(module, name) is not p
    back = module.to_lstm()
    assert isinstance(back, nn.LSTM) and back.state_dict().keys() == lstm.state_dict().keys()
    assert (back.num_layers, back.batch_first, back.dropout, back.bidirectional) == (3, True, 0.25, True)
    for name, value in lstm.state_dict().items():
        assert torch.equal(back.state_dict()[name], value)
    x = torch.randn(2, 4, I, dtype=torch.float64)
    module.eval()
    back.eval()
    close(module(x)[0], back(x)[0], torch.float64, "output")
    assert DropConnectLSTM.from_lstm(lstm, batch_first=False).batch_first is False
    with pytest.raises(TypeError, match="hidden_size"):
        DropConnectLSTM.from_lstm(lstm, hidden_size=7)
    with pytest.raises(ValueError, match="proj_size"):
        DropConnectLSTM.from_lstm(nn.LSTM(I, H, proj_size=2))


# ---- errors ----------------------------------------------------------------------------------------


def test_bad_input_errors():
    module = DropConnectLSTM(200, H, 2, impl="eager")
    with pytest.raises(ValueError, match="expected input size 200, got 199"):
        module(torch.randn(3, 2, 199))
    with pytest.raises(ValueError, match="2-D .* or 3-D input, got 4-D"):
        module(torch.randn(3, 2, 1, 200))
    with pytest.raises(TypeError, match="input dtype torch.float64 does not match the parameters' dtype torch.float32"):
        module(torch.randn(3, 2, 200, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        module(torch.zeros(3, 2, 200, dtype=torch.int64))
    with pytest.raises(ValueError, match="input is on meta but the parameters are on cpu"):
        module(torch.empty(3, 2, 200, device="meta"))
    x = torch.randn(3, 2, 200)
    good = torch.zeros(2, 2, H)
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 2, 6\), got \(2, 3, 6\)"):
        module(x, (torch.zeros(2, 3, H), good))
    with pytest.raises(ValueError, match=r"expected c_0 of shape \(2, 2, 6\), got \(1, 2, 6\)"):
        module(x, (good, torch.zeros(1, 2, H)))
    with pytest.raises(ValueError, match="batched 3-D input, h_0 and c_0 must be 3-D"):
        module(x, (torch.zeros(2, H), torch.zeros(2, H)))
    with pytest.raises(ValueError, match="unbatched 2-D input, h_0 and c_0 must be 2-D"):
        module(torch.randn(3, 200), (good, good))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 6\), got \(3, 6\)"):
        module(torch.randn(3, 200), (torch.zeros(3, H), torch.zeros(2, H)))
    with pytest.raises(ValueError, match="h_0 .*float64.* must match the input"):
        module(x, (good.double(), good))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        module(x, good)
    packed = pack_padded_sequence(torch.randn(4, 2, 200), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 2, 6\), got \(2, 3, 6\)"):
        module(packed, (torch.zeros(2, 3, H), good))
    with pytest.raises(ValueError, match="impl='cuda' cannot run"):
        DropConnectLSTM(4, H, impl="cuda")(torch.randn(3, 2, 4))
    assert module.calls == 0  # failed calls do not advance the mask counter


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dropconnect": 1.0}, ValueError, r"dropconnect must be a number in \[0, 1\), got 1.0"),
        ({"dropconnect": -0.1}, ValueError, r"dropconnect must be a number in \[0, 1\)"),
        ({"mask": "uniform"}, ValueError, "unknown mask 'uniform'"),
        ({"masked": "hi"}, ValueError, "unknown masked 'hi'"),
        ({"impl": "fast"}, ValueError, "unknown impl 'fast'"),
        ({"seed": -1}, ValueError, r"seed must be an int in \[0, 2\^63\)"),
        ({"dropout": 1.5}, ValueError, r"dropout must be a number in \[0, 1\]"),
        ({"num_layers": 0}, ValueError, "num_layers must be an int > 0"),
        ({"hidden_size": 0}, ValueError, "hidden_size must be an int > 0"),
        ({"proj_size": 3}, ValueError, r"does not support proj_size; got proj_size=3 \(0 is none\)"),
    ],
)
def test_bad_construction_errors(kwargs, error, match):
    args = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(error, match=match):
        DropConnectLSTM(**args)


def test_the_layer_takes_both_biases_or_neither():
    x, h0, c0 = torch.randn(3, 2, I), torch.zeros(2, H), torch.zeros(2, H)
    w_ih, w_hh, b = torch.randn(4 * H, I), torch.randn(4 * H, H), torch.randn(4 * H)
    for b_ih, b_hh in ((None, b), (b, None)):
        with pytest.raises(ValueError, match="give both biases b_ih and b_hh, or neither"):
            functional.dropconnect_lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh)


def test_attributes_changed_after_construction_are_checked():
    module = DropConnectLSTM(I, H, impl="eager")
    module.mask = "binary"
    with pytest.raises(ValueError, match="unknown mask 'binary'"):
        module(torch.randn(2, 1, I))


def test_auto_impl_matches_eager_in_training():
    """The default impl ("auto": compiled kernels when built, else eager) draws the same masks."""
    torch.manual_seed(13)
    auto = DropConnectLSTM(I, H, 2, bidirectional=True, dropconnect=0.3, masked="both", seed=3)
    eager = DropConnectLSTM.from_lstm(auto.to_lstm(), dropconnect=0.3, masked="both", impl="eager", seed=3)
    x = torch.randn(4, 3, I)
    with torch.no_grad():
        for _ in range(2):
            out, (h_n, c_n) = auto(x)
            ref, (h_ref, c_ref) = eager(x)
            close(out, ref, torch.float32, "output")
            close(h_n, h_ref, torch.float32, "h_n")
            close(c_n, c_ref, torch.float32, "c_n")


# ---- autograd beyond backward, torch.compile, nn.LSTM attributes -----------------------------------


def _pair(impl="auto", **kwargs):
    """nn.LSTM and a DropConnectLSTM with its weights (fp64, DropConnect off)."""
    torch.manual_seed(21)
    lstm = nn.LSTM(I, H, 2, bidirectional=True, dtype=torch.float64, **kwargs)
    return lstm, DropConnectLSTM.from_lstm(lstm, impl=impl)


def test_torch_func_forward_mode_transforms_match_nn_lstm():
    """jvp and jacfwd see the layer as torch ops (the kernels have backward rules only)."""
    lstm, module = _pair()
    x = torch.randn(4, 3, I, dtype=torch.float64)
    tangent = torch.randn_like(x)
    _, want = torch.func.jvp(lambda a: lstm(a)[0], (x,), (tangent,))
    _, got = torch.func.jvp(lambda a: module(a)[0], (x,), (tangent,))
    assert want.abs().sum() > 0
    close(got, want, torch.float64, "jvp tangent")
    close(torch.func.jacfwd(lambda a: module(a)[0])(x), torch.func.jacfwd(lambda a: lstm(a)[0])(x),
          torch.float64, "jacfwd")  # fmt: skip
    named = DropConnectLSTM.from_lstm(lstm, impl="cpu")
    if not functional.not_supported_reasons("cpu", torch.device("cpu"), torch.float64):
        with pytest.raises(ValueError, match=r"impl='cpu' cannot run under a torch.func transform"):
            torch.func.jvp(lambda a: named(a)[0], (x,), (tangent,))


def test_double_backward_is_refused_by_the_kernels_and_works_with_eager():
    x = torch.randn(4, 3, I, dtype=torch.float64, requires_grad=True)

    def gradient_penalty(model):
        (g,) = torch.autograd.grad(model(x)[0].pow(2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        return gg

    lstm, eager = _pair(impl="eager")
    close(gradient_penalty(eager), gradient_penalty(lstm), torch.float64, "double backward")
    _, compiled = _pair(impl="cpu")
    if not functional.not_supported_reasons("cpu", torch.device("cpu"), torch.float64):
        with pytest.raises(RuntimeError, match=r"no double backward .* build the module with impl='eager'"):
            gradient_penalty(compiled)


def test_torch_compile_traces_the_whole_module():
    lstm, module = _pair()
    x = torch.randn(4, 3, I, dtype=torch.float64)
    compiled = torch.compile(module, fullgraph=True, backend="eager")  # Dynamo's tracing alone
    out, (h, c) = compiled(x)
    want, (h_want, c_want) = lstm(x)
    close(out, want, torch.float64, "output")
    close(h, h_want, torch.float64, "h_n")
    close(c, c_want, torch.float64, "c_n")


def test_a_compiled_training_forward_has_the_eager_gradients():
    """fullgraph through AOTAutograd: the layer op's backward rule runs in the joint graph (grad mode
    off there: the double-backward refusal stays out of the way)."""
    torch.manual_seed(22)
    module = DropConnectLSTM(I, H, 2, dropconnect=0.3, seed=3).train()
    twin = copy.deepcopy(module)
    x = torch.randn(4, 3, I)

    def loss(m):
        return m(x)[0].pow(2).sum()

    loss(module).backward()
    torch.compile(loss, fullgraph=True, backend="aot_eager")(twin).backward()
    for (name, p), q in zip(module.named_parameters(), twin.parameters(), strict=True):
        assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-6, what=name)


def test_compiled_training_calls_beyond_the_recompile_limit_equal_eager():
    """Each training call with DropConnect recompiles (the mask counter is a constant of the graph);
    past torch's recompile limit the module compiled without fullgraph runs eagerly, with the masks of
    the eager twin, call after call."""
    torch.manual_seed(23)
    module = DropConnectLSTM(I, H, dropconnect=0.3, seed=5).train()
    twin = copy.deepcopy(module)
    compiled = torch.compile(twin, backend="eager")
    limit = torch._dynamo.config.recompile_limit
    for call in range(limit + 3):
        x = torch.randn(4, 3, I)
        want, (h_want, _) = module(x)
        out, (h, _) = compiled(x)
        assert torch.equal(out, want) and torch.equal(h, h_want), f"call {call}"
    assert twin.calls == module.calls == limit + 3


def test_nn_lstm_attributes():
    lstm, module = _pair(bias=False)
    assert (module.proj_size, module.mode) == (lstm.proj_size, lstm.mode) == (0, "LSTM")
    assert [[tuple(w.shape) for w in ws] for ws in module.all_weights] == [
        [tuple(w.shape) for w in ws] for ws in lstm.all_weights
    ]
    assert all(torch.equal(a, b) for ws, vs in zip(module.all_weights, lstm.all_weights, strict=True)
               for a, b in zip(ws, vs, strict=True))  # fmt: skip
    assert DropConnectLSTM(I, H, proj_size=0).proj_size == 0
