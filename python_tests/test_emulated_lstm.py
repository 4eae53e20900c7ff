"""The CUDA DropConnect LSTM kernels (csrc/cuda/lstm_cell_kernels.cuh) executed on the
host under emulation with sanitizers, against lstm_reference
(docs/spec.md#dropconnect-masks, docs/spec.md#cell-and-gradients): the
mask-and-multiply, and the fused cell forward and backward, for every dtype, with H
not a multiple of the block and, in the ``small`` variant, rows beyond the grid (the
row loop). See test_emulated_step.py for what emulation does not cover."""

from __future__ import annotations

import pytest
import torch
from emulated.client import FORWARD, REVERSE
from tolerances import assert_close, assert_low_precision_close

from sgmcmc_fused.kernels.lstm import reference as ref

pytestmark = pytest.mark.emulated

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LOW_PRECISION = (torch.float16, torch.bfloat16)
KINDS = {"bernoulli": ref.BERNOULLI, "gaussian": ref.GAUSSIAN}
# (B, H): one unit; H below, at and above a power of two; H = 300 spans two 256-thread blocks.
CELL_SHAPES = [(1, 1), (3, 13), (37, 5), (2, 300), (70, 64)]


def check(actual, expected, expected_fp32, what):
    """fp32/fp64: the oracle to 1e-6; fp16/bf16: the low-precision rule of docs/spec.md#agreement-between-backends."""
    if actual.dtype in LOW_PRECISION:
        assert_low_precision_close(actual, expected, expected_fp32, what=what)
    else:
        assert_close(actual, expected, what=what)


# ---- dropconnect_weight -----------------------------------------------------------------


def emulated_dropconnect(kernels, weight, args, *, max_blocks=2, order=FORWARD, variant="product"):
    out = torch.full_like(weight, float("nan"))
    kernels.call(variant, "dropconnect_weight_out", weight, out, *args, max_blocks=max_blocks, order=order)
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropconnect_weight_matches_reference(emulated_kernels, dtype, kind):
    g = torch.Generator().manual_seed(1)
    for shape in [(4 * 13, 7), (4 * 300, 300), (3,), (1,)]:
        weight = torch.randn(shape, generator=g).to(dtype)
        for p in (0.0, 0.3, 0.75):
            args = (20240601, 3, 17, p, KINDS[kind])
            forward = emulated_dropconnect(emulated_kernels, weight, args)
            reverse = emulated_dropconnect(emulated_kernels, weight, args, order=REVERSE, variant="small")
            assert torch.equal(forward, reverse), f"{shape} p={p}: order or work split changed the result"
            expected = ref.dropconnect_weight(weight, *args)
            expected_fp32 = ref.dropconnect_weight(weight.float(), *args)
            check(forward, expected, expected_fp32, f"{kind} {dtype} {shape} p={p}")


@pytest.mark.parametrize("kind", KINDS)
def test_dropconnect_misaligned_weight(emulated_kernels, kind):
    """A contiguous weight at an odd storage offset takes the scalar path; same numbers."""
    weight = torch.randn(4 * 37 * 11 + 1)[1:].view(4 * 37, 11)
    args = (5, 1, 2, 0.4, KINDS[kind])
    assert torch.equal(
        emulated_dropconnect(emulated_kernels, weight, args),
        emulated_dropconnect(emulated_kernels, weight.clone(), args),
    )
    assert_close(emulated_dropconnect(emulated_kernels, weight, args), ref.dropconnect_weight(weight, *args))


def test_bernoulli_mask_keeps_the_right_fraction(emulated_kernels):
    """The realised keep rate of a 1M-element mask is 1 - p within 5 standard errors."""
    p = 0.3
    kept = emulated_dropconnect(emulated_kernels, torch.ones(1 << 20), (77, 0, 0, p, ref.BERNOULLI)) != 0
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) < 5 * (p * (1 - p) / kept.numel()) ** 0.5


# ---- the cell ---------------------------------------------------------------------------


def cell_inputs(batch, hidden, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    gates = (2 * torch.randn(batch, 4 * hidden, generator=g)).to(dtype)
    bias = torch.randn(4 * hidden, generator=g).to(dtype)
    c_prev = torch.randn(batch, hidden, generator=g).to(dtype)
    return gates, bias, c_prev


def emulated_forward(kernels, gates, bias, c_prev, *, variant, order, alias=False):
    """h is written through a strided view (a step of a [B, 2, H] output); with
    `alias` the activations overwrite the gates buffer, as the layer does."""
    batch, hidden = c_prev.shape
    h_buffer = torch.full((batch, 2, hidden), float("nan"), dtype=c_prev.dtype)
    h = h_buffer[:, 1]
    c = torch.full_like(c_prev, float("nan"))
    gates = gates.clone()
    activations = gates if alias else torch.full_like(gates, float("nan"))
    kernels.call(variant, "lstm_cell_forward_out", gates, bias, c_prev, h, c, activations, order=order)
    assert h_buffer[:, 0].isnan().all(), "the kernel wrote outside the strided h"
    return h.clone(), c, activations


@pytest.mark.parametrize("variant", ["product", "small"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cell_forward_matches_reference(emulated_kernels, dtype, variant):
    if variant == "small":
        assert emulated_kernels.call("small", "work_split")[4:] == [8, 2]  # 8 threads a block, grid.y <= 2
    for batch, hidden in CELL_SHAPES:
        gates, bias, c_prev = cell_inputs(batch, hidden, dtype)
        h, c, act = emulated_forward(emulated_kernels, gates, bias, c_prev, variant=variant, order=FORWARD)
        h_rev, c_rev, act_rev = emulated_forward(
            emulated_kernels, gates, bias, c_prev, variant=variant, order=REVERSE, alias=True
        )
        for a, b in ((h, h_rev), (c, c_rev), (act, act_rev)):
            assert torch.equal(a, b), f"({batch}, {hidden}): order or aliasing changed the result"
        expected = ref.lstm_cell_forward(gates, bias, c_prev)
        expected_fp32 = ref.lstm_cell_forward(gates.float(), bias.float(), c_prev.float())
        for name, a, e, e32 in zip(("h", "c", "activations"), (h, c, act), expected, expected_fp32, strict=True):
            check(a, e, e32, f"{variant} {dtype} ({batch}, {hidden}) {name}")


@pytest.mark.parametrize("variant", ["product", "small"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cell_backward_matches_reference(emulated_kernels, dtype, variant):
    for batch, hidden in CELL_SHAPES:
        gates, bias, c_prev = cell_inputs(batch, hidden, dtype, seed=2)
        _, c, act = ref.lstm_cell_forward(gates, bias, c_prev)
        g = torch.Generator().manual_seed(3)
        grad_h = torch.randn(batch, hidden, generator=g).to(dtype)
        grad_c = torch.randn(batch, hidden, generator=g).to(dtype)
        results = []
        for order in (FORWARD, REVERSE):
            grad_gates = torch.full_like(act, float("nan"))
            grad_c_prev = torch.full_like(c, float("nan"))
            emulated_kernels.call(
                variant, "lstm_cell_backward_out", grad_h, grad_c, act, c_prev, c, grad_gates, grad_c_prev, order=order
            )
            results.append((grad_gates, grad_c_prev))
        assert all(torch.equal(a, b) for a, b in zip(*results, strict=True)), f"({batch}, {hidden}): order matters"
        expected = ref.lstm_cell_backward(grad_h, grad_c, act, c_prev, c)
        expected_fp32 = ref.lstm_cell_backward(*(t.float() for t in (grad_h, grad_c, act, c_prev, c)))
        for name, a, e, e32 in zip(("grad_gates", "grad_c_prev"), results[0], expected, expected_fp32, strict=True):
            check(a, e, e32, f"{variant} {dtype} ({batch}, {hidden}) {name}")


def test_cell_forward_then_backward_gives_the_gradient(emulated_kernels):
    """fp64 end to end: the emulated forward and backward agree with autograd of the
    eager cell (an oracle independent of lstm_cell_backward)."""
    gates, bias, c_prev = cell_inputs(5, 9, torch.float64, seed=4)
    h, c, act = emulated_forward(emulated_kernels, gates, bias, c_prev, variant="product", order=FORWARD)
    leaves = [t.clone().requires_grad_() for t in (gates, bias, c_prev)]
    h_ref, c_ref, _ = ref.lstm_cell_forward(*leaves)
    g = torch.Generator().manual_seed(5)
    grad_h, grad_c = (
        torch.randn(5, 9, generator=g, dtype=torch.float64),
        torch.randn(5, 9, generator=g, dtype=torch.float64),
    )
    torch.autograd.backward([h_ref, c_ref], [grad_h, grad_c])
    grad_gates, grad_c_prev = torch.empty_like(act), torch.empty_like(c)
    emulated_kernels.call(
        "product", "lstm_cell_backward_out", grad_h, grad_c, act, c_prev, c, grad_gates, grad_c_prev, order=FORWARD
    )
    assert_close(grad_gates, leaves[0].grad, rtol=1e-12, atol=1e-12, what="d gates")
    assert_close(grad_gates.sum(0), leaves[1].grad, rtol=1e-12, atol=1e-12, what="d bias")
    assert_close(grad_c_prev, leaves[2].grad, rtol=1e-12, atol=1e-12, what="d c_prev")
