"""Functional DropConnect LSTM layer with backend selection (docs/spec.md#dropconnect-lstm).

`dropconnect_lstm_layer` runs one direction of one layer. The backends:

| impl     | what runs                                                          |
|----------|--------------------------------------------------------------------|
| "cpu"    | the C++ layer op: time loop in C++, oneDNN/MKL GEMMs, fused SIMD cell |
| "cuda"   | the same loop with cuBLAS GEMMs and fused CUDA cell kernels         |
| "triton" | Triton mask and cell kernels, time loop in Python                   |
| "eager"  | lstm_reference.lstm_layer with explicit masks (the oracle)          |

"auto" takes "cuda" for CUDA tensors and "cpu" for CPU tensors when the
extension has the kernels, else "eager".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _extension, lstm_reference

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class DropConnect:
    """How one layer direction's weights are masked in one forward call.

    Attributes:
        p: drop probability (Bernoulli) or noise level p / (1 - p) (Gaussian), in [0, 1).
        kind: lstm_reference.BERNOULLI or lstm_reference.GAUSSIAN.
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


def _compiled_reasons(device: torch.device) -> list[str]:
    if not _extension.LOADED:
        return [_extension.LOAD_ERROR]
    key = "CUDA" if device.type == "cuda" else "CPU"
    if not _extension.has_kernel("dropconnect_lstm_layer", key):
        return [f"sgmcmc_fused._C has no {key} DropConnect LSTM kernel"]
    return []


def not_supported_reasons(impl: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why `impl` cannot run a layer on `device` with `dtype` (empty if it can)."""
    device = torch.device(device)
    reasons = [] if dtype in SUPPORTED_DTYPES else [f"unsupported dtype {dtype}"]
    if impl == "cpu":
        reasons += [] if device.type == "cpu" else [f"the CPU kernel needs cpu tensors, got {device.type}"]
        reasons += _compiled_reasons(device)
    elif impl == "cuda":
        reasons += [] if device.type == "cuda" else [f"the CUDA kernel needs cuda tensors, got {device.type}"]
        reasons += _compiled_reasons(device)
    elif impl == "triton":
        from .. import triton_lstm

        reasons += triton_lstm.not_supported_reasons(device)
    elif impl != "eager":
        raise ValueError(f"unknown impl {impl!r}; choose 'auto', 'cpu', 'cuda', 'triton' or 'eager'")
    if device.type == "cuda" and not torch.cuda.is_available():
        reasons.append("no CUDA device is available")
    return reasons


def select_impl(impl: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend name for `impl` ("auto" or a name); raises ValueError listing every reason."""
    device = torch.device(device)
    if impl == "auto":
        candidate = "cuda" if device.type == "cuda" else "cpu"
        return candidate if not not_supported_reasons(candidate, device, dtype) else "eager"
    why = not_supported_reasons(impl, device, dtype)
    if why:
        raise ValueError(f"impl={impl!r} cannot run this LSTM layer: " + "; ".join(why))
    return impl


def dropconnect_lstm_layer(
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    dropconnect: DropConnect | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one DropConnect LSTM layer, differentiable.

    Args:
        input: [T, B, I]. h0, c0: [B, H]. w_ih: [4H, I]. w_hh: [4H, H]. b_ih, b_hh: [4H] or None
            (both or neither). lengths: [B] int64 (any device) or None. reverse: run t = T-1 .. 0.
        dropconnect: the masks of this call, or None for none.
        impl: "auto", "cpu", "cuda", "triton" or "eager".
    Returns:
        output [T, B, H] (positions t >= lengths[b] hold the frozen state), h_n [B, H], c_n [B, H].
    """
    bias = None if b_ih is None else b_ih + b_hh
    masks = dropconnect if dropconnect is not None and dropconnect.active() else None
    backend = select_impl(impl, input.device, input.dtype)
    if backend == "eager":
        if masks is not None:
            if masks.mask_ih:
                w_ih = lstm_reference.apply_mask(
                    w_ih, lstm_reference.dropconnect_mask(w_ih.shape, masks.seed, masks.ih_weight_id, masks.call,
                                                          masks.p, masks.kind, w_ih.device))  # fmt: skip
            if masks.mask_hh:
                w_hh = lstm_reference.apply_mask(
                    w_hh, lstm_reference.dropconnect_mask(w_hh.shape, masks.seed, masks.hh_weight_id, masks.call,
                                                          masks.p, masks.kind, w_hh.device))  # fmt: skip
        return lstm_reference.lstm_layer(input, h0, c0, w_ih, w_hh, bias, lengths, reverse)
    if backend == "triton":
        from .. import triton_lstm

        return triton_lstm.dropconnect_lstm_layer(input, h0, c0, w_ih, w_hh, bias, lengths, reverse, masks)
    m = masks or DropConnect(0.0, lstm_reference.BERNOULLI, 0, 0, 0, 0, False, False)
    if lengths is not None:
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    output, h_n, c_n, _, _ = torch.ops.sgmcmc_fused.dropconnect_lstm_layer(
        input, h0, c0, w_ih, w_hh, bias, lengths, reverse,
        m.seed, m.ih_weight_id, m.hh_weight_id, m.call, m.p, m.kind, m.mask_ih, m.mask_hh,
    )  # fmt: skip
    return output, h_n, c_n


# ---- autograd and fake kernels of the compiled layer op ---------------------------------------

_MASK_ARGS = ("reverse", "seed", "ih_weight_id", "hh_weight_id", "call", "p", "kind", "mask_ih", "mask_hh")


def _setup_context(ctx, inputs, output) -> None:
    input, h0, c0, w_ih, w_hh, bias, lengths, *mask_args = inputs
    out, _, _, activations, cells = output
    ctx.save_for_backward(input, h0, c0, w_ih, w_hh, out, activations, cells, lengths)
    ctx.mask_args = mask_args
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(activations, cells)


def _backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_activations, _grad_cells):
    input, h0, c0, w_ih, w_hh, out, activations, cells, lengths = ctx.saved_tensors

    def zeros_if_none(grad, like):
        return torch.zeros_like(like) if grad is None else grad.contiguous()

    grads = torch.ops.sgmcmc_fused.dropconnect_lstm_layer_backward(
        zeros_if_none(grad_output, out), zeros_if_none(grad_h_n, h0), zeros_if_none(grad_c_n, c0),
        input, h0, c0, w_ih, w_hh, out, activations, cells, lengths, *ctx.mask_args,
    )  # fmt: skip
    grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = grads
    return (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias if ctx.has_bias else None,
            None, *([None] * len(_MASK_ARGS)))  # fmt: skip


def _layer_fake(input, h0, c0, w_ih, w_hh, bias, lengths, *mask_args):
    steps, batch = input.shape[0], input.shape[1]
    hidden = w_hh.shape[1]
    return (
        input.new_empty(steps, batch, hidden),
        h0.new_empty(batch, hidden),
        c0.new_empty(batch, hidden),
        input.new_empty(steps, batch, 4 * hidden),
        input.new_empty(steps, batch, hidden),
    )


def _empty_contiguous(t: torch.Tensor) -> torch.Tensor:
    """What the real kernels return for `t`: same shape, dtype and device, contiguous."""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _layer_backward_fake(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, *rest):
    hidden = w_hh.shape[1]
    grads = (input, grad_h_n, grad_c_n, w_ih, w_hh)
    return (*(_empty_contiguous(t) for t in grads), w_hh.new_empty(4 * hidden))


def _cell_forward_fake(gates, bias, c_prev):
    return _empty_contiguous(c_prev), _empty_contiguous(c_prev), _empty_contiguous(gates)


def _cell_backward_fake(grad_h, grad_c, activations, c_prev, c):
    return _empty_contiguous(activations), _empty_contiguous(c)


if _extension.LOADED and _extension.has_kernel("dropconnect_lstm_layer", "CPU"):
    torch.library.register_autograd("sgmcmc_fused::dropconnect_lstm_layer", _backward, setup_context=_setup_context)
    torch.library.register_fake("sgmcmc_fused::dropconnect_lstm_layer")(_layer_fake)
    torch.library.register_fake("sgmcmc_fused::dropconnect_lstm_layer_backward")(_layer_backward_fake)
    torch.library.register_fake("sgmcmc_fused::lstm_cell_forward")(_cell_forward_fake)
    torch.library.register_fake("sgmcmc_fused::lstm_cell_backward")(_cell_backward_fake)
    torch.library.register_fake("sgmcmc_fused::dropconnect_weight")(
        lambda weight, seed, weight_id, call, p, kind: _empty_contiguous(weight)
    )
