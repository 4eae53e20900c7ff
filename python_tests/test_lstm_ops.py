"""The DropConnect LSTM kernels (docs/spec.md#dropconnect-masks, docs/spec.md#cell-and-gradients)
on every backend against
the eager reference: mask, fused cell forward/backward, whole layer with its
gradients; mask statistics; gradcheck; opcheck; input errors."""

import math

import pytest
import torch
from conftest import TRITON_INTERPRET_MAX_ELEMENTS, _needs_gpu
from tolerances import assert_close, assert_low_precision_close

from sgmcmc_fused.kernels.lstm import reference as ref
from sgmcmc_fused.nn import functional as F_lstm
from sgmcmc_fused.nn.functional import DropConnect

#: (impl, device) of the fused LSTM backends; "cpu"/"cuda" are the C++ layer op.
LSTM_BACKENDS = [
    ("cpu", "cpu"),
    ("triton", "cpu"),
    pytest.param("cuda", "cuda", marks=_needs_gpu),
    pytest.param("triton", "cuda", marks=_needs_gpu),
]
DTYPES = [torch.float32, torch.float64]


def require(impl, device, dtype=torch.float32):
    why = F_lstm.not_supported_reasons(impl, torch.device(device), dtype)
    if why:
        pytest.skip(f"{impl} on {device}: {'; '.join(why)}")


def mask_op(impl):
    ops = torch.ops.sgmcmc_fused
    return ops.triton_dropconnect_weight if impl == "triton" else ops.dropconnect_weight


def cell_ops(impl):
    ops = torch.ops.sgmcmc_fused
    if impl == "triton":
        return ops.triton_lstm_cell_forward, ops.triton_lstm_cell_backward
    return ops.lstm_cell_forward, ops.lstm_cell_backward


# ---- the mask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [ref.BERNOULLI, ref.GAUSSIAN])
@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (28, 7), (803, 201)])
@pytest.mark.parametrize("impl,device", LSTM_BACKENDS)
def test_masked_weight_equals_reference(impl, device, shape, kind):
    require(impl, device)
    if impl == "triton" and device == "cpu" and math.prod(shape) > TRITON_INTERPRET_MAX_ELEMENTS:
        pytest.skip("too large for the Triton interpreter")
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    got = mask_op(impl)(w, 987654321, 6, 11, 0.4, kind)
    want = ref.dropconnect_weight(w, 987654321, 6, 11, 0.4, kind)
    # Bernoulli masks are exact; Gaussian ones carry the last-bit differences of
    # log/cos in the normal draw (|n| < 6, so |mask| < 7).
    assert_close(got, want, rtol=0.0, atol=0.0 if kind == ref.BERNOULLI else 8e-6 * w.abs().max().item())
    assert torch.equal(got, mask_op(impl)(w, 987654321, 6, 11, 0.4, kind)), "the same mask twice"


@pytest.mark.parametrize("impl,device", LSTM_BACKENDS)
def test_bernoulli_keep_rate_and_scale(impl, device):
    require(impl, device)
    p, n = 0.3, 60_000
    masked = mask_op(impl)(torch.ones(n, device=device), 5, 1, 3, p, ref.BERNOULLI).double().cpu()
    kept = masked != 0
    assert torch.all(masked[kept] == torch.tensor(1 / (1 - p), dtype=torch.float32).double())
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(masked.mean().item() - 1) < 5 * math.sqrt(p / (1 - p) / n)


@pytest.mark.parametrize("impl,device", LSTM_BACKENDS)
def test_gaussian_mask_mean_and_variance(impl, device):
    require(impl, device)
    p, n = 0.5, 60_000
    mask = mask_op(impl)(torch.ones(n, device=device), 5, 2, 3, p, ref.GAUSSIAN).double().cpu()
    var = p / (1 - p)
    assert abs(mask.mean().item() - 1) < 5 * math.sqrt(var / n)
    assert abs(mask.var().item() - var) < 5 * var * math.sqrt(2 / n)


def test_masks_of_other_weights_and_calls_are_independent():
    w = torch.ones(50_000)
    base = torch.ops.sgmcmc_fused.dropconnect_weight(w, 5, 0, 0, 0.5, ref.BERNOULLI)
    for other in ((5, 1, 0), (5, 0, 1), (6, 0, 0)):
        m = torch.ops.sgmcmc_fused.dropconnect_weight(w, *other, 0.5, ref.BERNOULLI)
        assert abs(torch.corrcoef(torch.stack([base, m]))[0, 1].item()) < 5 / math.sqrt(50_000)


# ---- the cell -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl,device", LSTM_BACKENDS)
def test_cell_forward_and_backward_equal_reference(impl, device, dtype):
    require(impl, device, dtype)
    g = torch.Generator().manual_seed(2)
    batch, hidden = 5, 37
    gates, bias = torch.randn(batch, 4 * hidden, generator=g) * 2, torch.randn(4 * hidden, generator=g)
    c_prev, dh, dc = (torch.randn(batch, hidden, generator=g) for _ in range(3))
    args = [t.to(device=device, dtype=dtype) for t in (gates, bias, c_prev)]
    forward, backward = cell_ops(impl)
    got = forward(*args)
    want = ref.lstm_cell_forward(*args)
    # fp32/fp64: docs/spec.md#agreement-between-backends; half types: one rounding of the fp32 result.
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, 1e-6)
    for name, a, b in zip(("h", "c", "activations"), got, want, strict=False):
        assert_close(a, b, rtol=tol, atol=tol, what=f"{impl} {name}")
    act, c = want[2], want[1]
    bargs = [t.to(device=device, dtype=dtype) for t in (dh, dc)] + [act, args[2], c]
    for name, a, b in zip(
        ("grad_gates", "grad_c_prev"), backward(*bargs), ref.lstm_cell_backward(*bargs), strict=False
    ):
        assert_close(a, b, rtol=tol, atol=tol, what=f"{impl} {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl,device", LSTM_BACKENDS)
def test_low_precision_cell_updates_the_state_from_unrounded_gates(impl, device, dtype):
    # docs/spec.md#cell-and-gradients: the state update is computed in fp32 from the gates, and only
    # rounded once. Where f c_prev and i g nearly cancel, rounding the gates first costs c its
    # precision: in this hand case c = -0.0102 in fp32, and bf16 gates gave -0.0137.
    if impl == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter truncates low-precision casts")
    require(impl, device, dtype)
    forward = cell_ops(impl)[0]
    g = torch.Generator().manual_seed(4)
    random = (
        torch.randn(64, 4 * 301, generator=g) * 2,
        torch.randn(4 * 301, generator=g),
        torch.randn(64, 301, generator=g),
    )
    cancelling = (torch.tensor([[2.6875, 2.1875, -2.265625, 1.5625]]), torch.zeros(4), torch.tensor([[1.0078125]]))
    for case in (random, cancelling):
        low = [t.to(device=device, dtype=dtype) for t in case]
        fused, eager, exact = (
            forward(*low),
            ref.lstm_cell_forward(*low),
            ref.lstm_cell_forward(*(t.float() for t in low)),
        )
        for name, f, e, r in zip(("h", "c", "activations"), fused, eager, exact, strict=True):
            assert_low_precision_close(f, e, r, what=f"{impl} {dtype} {name}")


def test_cell_backward_is_the_gradient_of_the_forward():
    g = torch.Generator().manual_seed(3)
    gates = torch.randn(3, 20, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(20, generator=g, dtype=torch.float64)
    c_prev = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    h, c, act = ref.lstm_cell_forward(gates, bias, c_prev)
    dh, dc = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    want = torch.autograd.grad((h * dh).sum() + (c * dc).sum(), [gates, c_prev])
    got = torch.ops.sgmcmc_fused.lstm_cell_backward(dh, dc, act.detach(), c_prev.detach(), c.detach())
    for a, b in zip(got, want, strict=False):
        assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---- the layer ----------------------------------------------------------------------------------


def layer_inputs(dtype, device, steps=6, batch=4, input_size=5, hidden=7, seed=0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()

    return dict(
        input=leaf(steps, batch, input_size),
        h0=leaf(batch, hidden),
        c0=leaf(batch, hidden),
        w_ih=leaf(4 * hidden, input_size, scale=0.4),
        w_hh=leaf(4 * hidden, hidden, scale=0.4),
        b_ih=leaf(4 * hidden),
        b_hh=leaf(4 * hidden),
    )


def run_layer(impl, inputs, lengths, reverse, dropconnect):
    out, h_n, c_n = F_lstm.dropconnect_lstm_layer(
        inputs["input"], inputs["h0"], inputs["c0"], inputs["w_ih"], inputs["w_hh"], inputs["b_ih"], inputs["b_hh"],
        lengths, reverse, dropconnect, impl,
    )  # fmt: skip
    g = torch.Generator().manual_seed(9)
    weights = [torch.randn(t.shape, generator=g).to(t) for t in (out, h_n, c_n)]
    loss = sum((t * w).sum() for t, w in zip((out, h_n, c_n), weights, strict=False))
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return dict(output=out, h_n=h_n, c_n=c_n, **{f"grad_{k}": v for k, v in zip(inputs, grads, strict=False)})


MASKINGS = {
    "none": None,
    "bernoulli_hh": DropConnect(0.5, ref.BERNOULLI, 1234, 3, 2, 3, mask_ih=False, mask_hh=True),
    "gaussian_both": DropConnect(0.3, ref.GAUSSIAN, 1234, 7, 0, 1, mask_ih=True, mask_hh=True),
    "bernoulli_ih": DropConnect(0.2, ref.BERNOULLI, 99, 0, 4, 5, mask_ih=True, mask_hh=False),
}


@pytest.mark.parametrize("masking", list(MASKINGS))
@pytest.mark.parametrize("lengths", [None, [6, 3, 1, 5]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl,device", LSTM_BACKENDS)
def test_layer_and_gradients_equal_reference(impl, device, dtype, reverse, lengths, masking):
    require(impl, device, dtype)
    inputs = layer_inputs(dtype, device)
    lens = None if lengths is None else torch.tensor(lengths)
    got = run_layer(impl, inputs, lens, reverse, MASKINGS[masking])
    want = run_layer("eager", inputs, lens, reverse, MASKINGS[masking])
    gaussian = masking == "gaussian_both"
    # fp64 is exact up to the fp32 Gaussian mask draw (its log/cos last bits).
    tol = (1e-5 if gaussian else 1e-10) if dtype == torch.float64 else 2e-5
    for key in want:
        assert_close(got[key], want[key], rtol=tol, atol=tol, what=f"{impl} {key}")


@pytest.mark.parametrize("impl,device", LSTM_BACKENDS)
def test_a_double_backward_is_refused_naming_the_eager_layer(impl, device):
    require(impl, device)
    inputs = layer_inputs(torch.float32, device, steps=3, batch=2, input_size=2, hidden=3)
    out, _, _ = F_lstm.dropconnect_lstm_layer(*inputs.values(), None, False, None, impl)
    backend = "compiled" if impl in ("cpu", "cuda") else impl
    message = rf"the {backend} DropConnect LSTM layer has no double backward.*impl='eager'"
    with pytest.raises(RuntimeError, match=message):  # create_graph=True is where a double backward starts
        torch.autograd.grad(out.pow(2).sum(), inputs["input"], create_graph=True)
    eager_out, _, _ = F_lstm.dropconnect_lstm_layer(*inputs.values(), None, False, None, "eager")
    (g,) = torch.autograd.grad(eager_out.pow(2).sum(), inputs["input"], create_graph=True)
    assert torch.autograd.grad(g.pow(2).sum(), inputs["input"])[0].abs().sum() > 0  # eager has one


@pytest.mark.parametrize("reverse", [False, True])
def test_layer_gradcheck_fp64(reverse):
    require("cpu", "cpu", torch.float64)
    inputs = layer_inputs(torch.float64, "cpu", steps=3, batch=2, input_size=2, hidden=3, seed=4)
    lengths = torch.tensor([3, 2])
    masks = DropConnect(0.5, ref.BERNOULLI, 77, 1, 0, 1, mask_ih=True, mask_hh=True)

    def layer(*tensors):
        return F_lstm.dropconnect_lstm_layer(*tensors, lengths, reverse, masks, "cpu")

    assert torch.autograd.gradcheck(layer, tuple(inputs.values()), eps=1e-6, atol=1e-7)


def test_mask_is_regenerated_not_stored():
    """Backward regenerates M from (seed, id, call): the weight gradient is (dL/dW') * M
    with the forward's mask, even though nothing of the mask was saved."""
    require("cpu", "cpu")
    inputs = layer_inputs(torch.float64, "cpu")
    masks = DropConnect(0.5, ref.BERNOULLI, 5, 8, 0, 1, mask_ih=False, mask_hh=True)
    out, _, _ = F_lstm.dropconnect_lstm_layer(*inputs.values(), None, False, masks, "cpu")
    (grad_w_hh,) = torch.autograd.grad(out.sum(), [inputs["w_hh"]])
    mask = ref.dropconnect_mask(inputs["w_hh"].shape, 5, 1, 8, 0.5, ref.BERNOULLI).double()
    assert torch.all(grad_w_hh[mask == 0] == 0) and (grad_w_hh[mask != 0] != 0).any()


# ---- registration and input errors --------------------------------------------------------------


def test_opcheck_lstm_ops():
    require("cpu", "cpu")
    ops = torch.ops.sgmcmc_fused
    w = torch.randn(12, 5)
    torch.library.opcheck(ops.dropconnect_weight.default, (w, 3, 1, 2, 0.5, ref.GAUSSIAN))
    gates, bias, c_prev = torch.randn(2, 12), torch.randn(12), torch.randn(2, 3)
    torch.library.opcheck(ops.lstm_cell_forward.default, (gates, bias, c_prev))
    h, c, act = ops.lstm_cell_forward(gates, bias, c_prev)
    torch.library.opcheck(ops.lstm_cell_backward.default, (torch.randn(2, 3), torch.randn(2, 3), act, c_prev, c))
    t = layer_inputs(torch.float32, "cpu", steps=3, batch=2, input_size=4, hidden=3)
    args = (t["input"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], (t["b_ih"] + t["b_hh"]).detach().requires_grad_(),
            torch.tensor([3, 2]), False, 7, 0, 1, 2, 0.5, ref.BERNOULLI, True, True)  # fmt: skip
    torch.library.opcheck(ops.dropconnect_lstm_layer.default, args)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(input=torch.randn(6, 4, 4)), r"w_ih must be \[4H, I\] = \[28, 4\], got \[28, 5\]"),
        (dict(h0=torch.randn(3, 7)), r"h0 must be \[B, H\] = \[4, 7\], got \[3, 7\]"),
        (dict(w_hh=torch.randn(27, 7)), r"w_hh must be \[4H, H\]"),
        (dict(c0=torch.randn(4, 7, dtype=torch.float64)), "c0 has dtype Double but input has dtype Float"),
        (dict(lengths=torch.tensor([7, 1, 1, 1])), r"lengths must lie in \[0, T = 6\], got values in \[1, 7\]"),
        (dict(lengths=torch.tensor([1, 1, 1])), r"lengths must be \[B\] = \[4\]"),
        (dict(p=1.0), r"p must be in \[0, 1\), got 1"),
        (dict(kind=2), "kind must be 0 .Bernoulli. or 1 .Gaussian., got 2"),
    ],
)
def test_layer_bad_input_is_named(change, match):
    require("cpu", "cpu")
    t = {k: v.detach() for k, v in layer_inputs(torch.float32, "cpu").items()}
    args = dict(input=t["input"], h0=t["h0"], c0=t["c0"], w_ih=t["w_ih"], w_hh=t["w_hh"], bias=t["b_ih"],
                lengths=None, reverse=False, seed=1, ih_weight_id=0, hh_weight_id=1, call=0, p=0.5, kind=0,
                mask_ih=False, mask_hh=True)  # fmt: skip
    args.update(change)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.sgmcmc_fused.dropconnect_lstm_layer(*args.values())


@pytest.mark.parametrize("impl,device", [("eager", "cpu"), *LSTM_BACKENDS])
@pytest.mark.parametrize("lengths,values", [([7, 1, 1, 1], r"\[1, 7\]"), ([2, -1, 3, 6], r"\[-1, 6\]")])
def test_every_layer_backend_refuses_lengths_outside_0_to_t(impl, device, lengths, values):
    """A length past T or below 0 is no sequence: each backend names it as the compiled op does (the
    eager and Triton layers used to run it as "always" or "never" active)."""
    if impl != "eager":
        require(impl, device)
    t = {k: v.detach() for k, v in layer_inputs(torch.float32, device).items()}
    with pytest.raises((ValueError, RuntimeError), match=r"lengths must lie in \[0, T = 6\], got values in " + values):
        F_lstm.dropconnect_lstm_layer(t["input"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                      torch.tensor(lengths), impl=impl)  # fmt: skip


def _layer_backward_args(dtype=torch.float32):
    """Arguments of dropconnect_lstm_layer_backward from a real forward (T 6, B 4, I 5, H 7)."""
    t = {k: v.detach() for k, v in layer_inputs(dtype, "cpu").items()}
    fixed = dict(reverse=False, seed=1, ih_weight_id=0, hh_weight_id=1, call=0, p=0.5, kind=0, mask_ih=False,
                 mask_hh=True)  # fmt: skip
    output, h_n, c_n, activations, cells = torch.ops.sgmcmc_fused.dropconnect_lstm_layer(
        t["input"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], None, *fixed.values()
    )
    g = torch.Generator().manual_seed(8)
    grads = {name: torch.randn(x.shape, generator=g).to(dtype) for name, x in
             (("grad_output", output), ("grad_h_n", h_n), ("grad_c_n", c_n))}  # fmt: skip
    return dict(**grads, input=t["input"], h0=t["h0"], c0=t["c0"], w_ih=t["w_ih"], w_hh=t["w_hh"], output=output,
                activations=activations, cells=cells, lengths=None, **fixed)  # fmt: skip


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(grad_c_n=torch.randn(1, 7)), r"grad_c_n must be \[B, H\] = \[4, 7\], got \[1, 7\]"),
        (dict(grad_h_n=torch.randn(4, 8)), r"grad_h_n must be \[B, H\] = \[4, 7\], got \[4, 8\]"),
        (
            lambda a: dict(activations=a["activations"].double()),
            "activations has dtype Double but input has dtype Float",
        ),
        (lambda a: dict(cells=a["cells"].half()), "cells has dtype Half but input has dtype Float"),
        (
            lambda a: dict(grad_output=a["grad_output"].double()),
            "grad_output has dtype Double but input has dtype Float",
        ),
    ],
)
def test_layer_backward_bad_input_is_named(change, match):
    # Saved tensors of another dtype or shape used to be read and written through pointers of the
    # wrong type: garbage, then a corrupted heap.
    require("cpu", "cpu")
    args = _layer_backward_args()
    args.update(change(args) if callable(change) else change)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.sgmcmc_fused.dropconnect_lstm_layer_backward(*args.values())


def test_layer_backward_of_non_contiguous_saved_tensors_equals_the_contiguous():
    require("cpu", "cpu")
    args = _layer_backward_args()
    want = torch.ops.sgmcmc_fused.dropconnect_lstm_layer_backward(*args.values())
    # The same values in a transposed layout ([B, T, *] storage seen as [T, B, *]).
    strided = {k: args[k].transpose(0, 1).contiguous().transpose(0, 1) for k in ("activations", "cells")}
    assert not any(t.is_contiguous() for t in strided.values())
    got = torch.ops.sgmcmc_fused.dropconnect_lstm_layer_backward(*{**args, **strided}.values())
    for name, a, b in zip(("input", "h0", "c0", "w_ih", "w_hh", "bias"), got, want, strict=True):
        assert torch.equal(a, b), name


def test_cell_bad_shapes_are_named():
    require("cpu", "cpu")
    with pytest.raises(RuntimeError, match=r"gates must be \[B, 4H\] = \[3, 28\], got \[3, 27\]"):
        torch.ops.sgmcmc_fused.lstm_cell_forward(torch.randn(3, 27), torch.randn(28), torch.randn(3, 7))


@pytest.mark.parametrize("gemm", ["always", "never"])
@pytest.mark.parametrize("reverse", [False, True])
def test_cpu_recurrent_gemm_paths_equal_reference(monkeypatch, gemm, reverse):
    """Both CPU recurrent-GEMM paths (oneDNN with a packed weight, ATen addmm/mm)
    give the reference's layer and gradients (csrc/lstm/recurrent_gemm.h)."""
    require("cpu", "cpu")
    monkeypatch.setenv("SGMCMC_FUSED_ONEDNN_GEMM", gemm)
    inputs = layer_inputs(torch.float32, "cpu", steps=5, batch=3, input_size=4, hidden=9)
    masks = MASKINGS["bernoulli_hh"]
    got = run_layer("cpu", inputs, torch.tensor([5, 2, 4]), reverse, masks)
    want = run_layer("eager", inputs, torch.tensor([5, 2, 4]), reverse, masks)
    for key in want:
        assert_close(got[key], want[key], rtol=2e-5, atol=2e-5, what=f"{gemm} {key}")
