"""Eager reference of the DropConnect LSTM kernels
(docs/spec.md#dropconnect-masks, docs/spec.md#cell-and-gradients): the oracle the C++, CUDA and
Triton kernels are tested against.

Symbols: T time steps, B batch, I input size, H hidden size. Gate order and
weight layout are those of torch.nn.LSTM: rows [0, H) input gate i, [H, 2H)
forget gate f, [2H, 3H) cell candidate g, [3H, 4H) output gate o.

Masks. Each masked weight matrix has an id (`weight_id`), and each training
forward call a counter (`call`). Element e of the flattened weight takes lane
e % 4 of the Philox draw with counter (e // 4 lo, e // 4 hi,
0x80000000 | weight_id, call) under the module's seed:
  Bernoulli: M = 1[u >= p] / (1 - p)   (u the open uniform of docs/spec.md#noise-stream)
  Gaussian:  M = 1 + sqrt(p / (1 - p)) * n   (n the Box-Muller normal)
Both have mean 1. The forward uses W * M, the backward regenerates M and
returns dW = (dL/d(W * M)) * M.

Variable lengths. With `lengths` ([B], int64) a row b is active at time t iff
t < lengths[b]; an inactive step leaves that row's h and c unchanged, so the
forward direction ends at each row's last token and the reverse direction
starts there. Output positions t >= lengths[b] hold the frozen state (callers
that need zeros there mask them; packing drops them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..langevin.reference import (
    philox4x32_10,
    philox_normal,
    uint32_to_open_uniform,
)

#: Bit 31 of the stream word marks DropConnect masks (docs/spec.md#stream-words).
MASK_STREAM_BIT = 0x80000000
#: Mask kinds, as the ops' `kind` argument.
BERNOULLI = 0
GAUSSIAN = 1
MASK_KINDS = {"bernoulli": BERNOULLI, "gaussian": GAUSSIAN}


@dataclass(frozen=True)
class DropConnect:
    """How one layer direction's weights are masked in one forward call.

    Attributes:
        p: drop probability (Bernoulli) or noise level p / (1 - p) (Gaussian), in [0, 1).
        kind: BERNOULLI or GAUSSIAN.
        seed: 63-bit seed of the mask stream (the module's).
        call: forward-call counter, the Philox step word.
        ih_weight_id, hh_weight_id: stream ids of this direction's input and recurrent weights.
        mask_ih, mask_hh: which of the two matrices are masked.
    """

    p: float
    kind: int
    seed: int
    call: int
    ih_weight_id: int
    hh_weight_id: int
    mask_ih: bool = False
    mask_hh: bool = True

    def active(self) -> bool:
        return self.p > 0.0 and (self.mask_ih or self.mask_hh)


def philox_uniform(
    numel: int, seed: int, stream: int, step: int, element_offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Open uniforms (fp32, [numel]) of elements element_offset .. +numel-1: lane e % 4 of counter
    (e // 4, stream, step)."""
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first_quad, last_quad = element_offset // 4, (element_offset + numel - 1) // 4
    q = torch.arange(first_quad, last_quad + 1, dtype=torch.int64, device=device)
    words = philox4x32_10((q & 0xFFFFFFFF, q >> 32, stream, step), seed)
    uniforms = torch.stack([uint32_to_open_uniform(w) for w in words], dim=1).reshape(-1)
    start = element_offset - 4 * first_quad
    return uniforms[start : start + numel]


def dropconnect_mask(
    shape: torch.Size | tuple[int, ...],
    seed: int,
    weight_id: int,
    call: int,
    p: float,
    kind: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The mask M (fp32, `shape`) of weight `weight_id` at forward call `call`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropconnect probability p must be in [0, 1), got {p}")
    numel = math.prod(shape)
    stream = MASK_STREAM_BIT | weight_id
    if kind == BERNOULLI:
        u = philox_uniform(numel, seed, stream, call, 0, device)
        mask = (u >= p).to(torch.float32) * (1.0 / (1.0 - p))
    elif kind == GAUSSIAN:
        n = philox_normal(numel, seed, stream, call, 0, device)
        mask = 1.0 + math.sqrt(p / (1.0 - p)) * n
    else:
        raise ValueError(f"unknown mask kind {kind}; use {BERNOULLI} (Bernoulli) or {GAUSSIAN} (Gaussian)")
    return mask.view(shape)


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """weight * mask in the math dtype (fp64 for fp64, fp32 otherwise), rounded to weight's dtype."""
    opmath = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return (weight.to(opmath) * mask.to(opmath)).to(weight.dtype)


def dropconnect_weight(weight: torch.Tensor, seed: int, weight_id: int, call: int, p: float, kind: int) -> torch.Tensor:
    """weight * M for the mask of (seed, weight_id, call); same arguments as the dropconnect_weight op."""
    return apply_mask(weight, dropconnect_mask(weight.shape, seed, weight_id, call, p, kind, weight.device))


def lstm_cell_forward(
    gates: torch.Tensor, bias: torch.Tensor, c_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM step's pointwise part.

    Args:
        gates: [B, 4H] pre-activations x W_ih^T + h W_hh^T, without bias.
        bias: [4H], b_ih + b_hh.
        c_prev: [B, H].
    Returns:
        h [B, H], c [B, H], and the activations [B, 4H] = (sigmoid i, sigmoid f, tanh g, sigmoid o)
        that the backward needs. All in the input dtype, computed in fp32 (fp64 for fp64).
    """
    opmath = torch.float64 if gates.dtype == torch.float64 else torch.float32
    pre = gates.to(opmath) + bias.to(opmath)
    i, f, g, o = pre.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c_prev.to(opmath) + i * g
    h = o * torch.tanh(c)
    dtype = gates.dtype
    return h.to(dtype), c.to(dtype), torch.cat([i, f, g, o], dim=1).to(dtype)


def lstm_cell_backward(
    grad_h: torch.Tensor, grad_c: torch.Tensor, activations: torch.Tensor, c_prev: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of lstm_cell_forward.

    Args:
        grad_h, grad_c: [B, H] gradients reaching h and c of this step.
        activations: [B, 4H] from the forward; c_prev, c: [B, H].
    Returns:
        grad_gates [B, 4H] (of the pre-activations, hence also of the bias) and grad_c_prev [B, H].
    """
    opmath = torch.float64 if grad_h.dtype == torch.float64 else torch.float32
    i, f, g, o = activations.to(opmath).chunk(4, dim=1)
    dh, dc, c_prev, c = (t.to(opmath) for t in (grad_h, grad_c, c_prev, c))
    tanh_c = torch.tanh(c)
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    di = dc_total * g * i * (1 - i)
    df = dc_total * c_prev * f * (1 - f)
    dg = dc_total * i * (1 - g * g)
    do = dh * tanh_c * o * (1 - o)
    dtype = grad_h.dtype
    return torch.cat([di, df, dg, do], dim=1).to(dtype), (dc_total * f).to(dtype)


def check_lengths(op: str, lengths: torch.Tensor, steps: int) -> None:
    """Raise ValueError unless every length lies in [0, T = steps] (the message of the compiled op,
    csrc/lstm/lstm_layer.cpp): a length past T or below 0 is no sequence, whatever a loop would make of it."""
    if lengths.numel() == 0:
        return
    lo, hi = (int(x) for x in torch.aminmax(lengths))  # one pass, one sync where lengths is on a GPU
    if lo < 0 or hi > steps:
        raise ValueError(f"{op}: lengths must lie in [0, T = {steps}], got values in [{lo}, {hi}]")


def lstm_layer(
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor | None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one LSTM layer, an explicit per-step loop (differentiable by autograd).

    Args:
        input: [T, B, I]; h0, c0: [B, H]; w_ih: [4H, I]; w_hh: [4H, H] (already masked, if at all);
        bias: [4H] = b_ih + b_hh, or None; lengths: [B] int64 or None; reverse: run t = T-1 .. 0.
    Returns:
        output [T, B, H] (frozen state where t >= lengths[b]), h_n [B, H], c_n [B, H].
    """
    steps = input.shape[0]
    hidden = w_hh.shape[1]
    if lengths is not None and not torch.compiler.is_compiling():  # traced, the check would break the graph
        check_lengths("lstm_layer", lengths, steps)
    if bias is None:
        bias = input.new_zeros(4 * hidden)
    xproj = torch.matmul(input, w_ih.t())
    h, c = h0, c0
    outputs: list[torch.Tensor | None] = [None] * steps
    for t in reversed(range(steps)) if reverse else range(steps):
        gates = xproj[t] + h @ w_hh.t()
        h_new, c_new, _ = lstm_cell_forward(gates, bias, c)
        if lengths is not None:
            active = (lengths.to(input.device) > t).unsqueeze(1)
            h_new = torch.where(active, h_new, h)
            c_new = torch.where(active, c_new, c)
        h, c = h_new, c_new
        outputs[t] = h
    output = torch.stack(outputs) if steps else input.new_zeros(0, h0.shape[0], hidden)
    return output, h, c


def dropconnect_lstm_layer(
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor | None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    masks: DropConnect | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lstm_layer on the masked weights, the masks drawn explicitly: the oracle of the
    DropConnect layer, with the arguments of every layer backend (bias = b_ih + b_hh)."""
    if masks is not None and masks.active():
        if masks.mask_ih:
            mask = dropconnect_mask(w_ih.shape, masks.seed, masks.ih_weight_id, masks.call, masks.p, masks.kind,
                                    w_ih.device)  # fmt: skip
            w_ih = apply_mask(w_ih, mask)
        if masks.mask_hh:
            mask = dropconnect_mask(w_hh.shape, masks.seed, masks.hh_weight_id, masks.call, masks.p, masks.kind,
                                    w_hh.device)  # fmt: skip
            w_hh = apply_mask(w_hh, mask)
    return lstm_layer(input, h0, c0, w_ih, w_hh, bias, lengths, reverse)
