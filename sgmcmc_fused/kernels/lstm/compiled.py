"""The compiled DropConnect LSTM ops (torch.ops.sgmcmc_fused.dropconnect_lstm_layer and the
cell and mask ops; schemas in csrc/ops.cpp): the layer's Python entry, and the autograd and
fake kernels registered for them, so that the layer is differentiable and traceable by
torch.compile."""

from __future__ import annotations

import torch

from .. import _library
from .autograd import first_order_only
from .reference import BERNOULLI, DropConnect


def not_supported_reasons(device: torch.device) -> list[str]:
    """Why the compiled layer op cannot run on `device` (empty if it can)."""
    if not _library.LOADED:
        return [_library.LOAD_ERROR]
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    if not _library.has_kernel("dropconnect_lstm_layer", key):
        return [f"sgmcmc_fused._C has no {key} DropConnect LSTM kernel"]
    return []


def dropconnect_lstm_layer(
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor | None,
    lengths: torch.Tensor | None,
    reverse: bool,
    masks: DropConnect | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one layer through the compiled op (arguments as in
    sgmcmc_fused.nn.functional.dropconnect_lstm_layer, bias = b_ih + b_hh, masks active or None)."""
    m = masks or DropConnect(0.0, BERNOULLI, 0, 0, 0, 0, False, False)
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


@first_order_only("compiled")
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


if _library.LOADED and _library.has_kernel("dropconnect_lstm_layer", "CPU"):
    torch.library.register_autograd("sgmcmc_fused::dropconnect_lstm_layer", _backward, setup_context=_setup_context)
    torch.library.register_fake("sgmcmc_fused::dropconnect_lstm_layer")(_layer_fake)
    torch.library.register_fake("sgmcmc_fused::dropconnect_lstm_layer_backward")(_layer_backward_fake)
    torch.library.register_fake("sgmcmc_fused::lstm_cell_forward")(_cell_forward_fake)
    torch.library.register_fake("sgmcmc_fused::lstm_cell_backward")(_cell_backward_fake)
    torch.library.register_fake("sgmcmc_fused::dropconnect_weight")(
        lambda weight, seed, weight_id, call, p, kind: _empty_contiguous(weight)
    )
