"""Functional DropConnect LSTM layer with backend selection (docs/spec.md#dropconnect-lstm).

`dropconnect_lstm_layer` runs one direction of one layer. The backends:

| impl     | what runs                                                          |
|----------|--------------------------------------------------------------------|
| "cpu"    | the C++ layer op: time loop in C++, oneDNN/MKL GEMMs, fused SIMD cell |
| "cuda"   | the same loop with cuBLAS GEMMs and fused CUDA cell kernels         |
| "triton" | Triton mask and cell kernels, time loop in Python                   |
| "eager"  | the reference layer with explicit masks (the oracle)                |

The backends and the choice among them are those of `sgmcmc_fused.kernels.registry`
(`LSTM_BACKENDS`): "auto" takes "cuda" for CUDA tensors and "cpu" for CPU tensors when
the extension has the kernels, else "eager".
"""

from __future__ import annotations

import torch

from ..kernels.lstm.reference import DropConnect
from ..kernels.registry import LSTM_BACKENDS, select_lstm_backend


def not_supported_reasons(impl: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why `impl` cannot run a layer on `device` with `dtype` (empty if it can)."""
    if impl not in LSTM_BACKENDS:
        raise ValueError(f"unknown impl {impl!r}; choose 'auto' or one of {sorted(LSTM_BACKENDS)}")
    return LSTM_BACKENDS[impl].not_supported_reasons(torch.device(device), [dtype])


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
    if (b_ih is None) != (b_hh is None):
        raise ValueError("dropconnect_lstm_layer: give both biases b_ih and b_hh, or neither")
    bias = None if b_ih is None else b_ih + b_hh
    masks = dropconnect if dropconnect is not None and dropconnect.active() else None
    # The kernels have backward rules only, so torch.func's forward-mode transforms (jvp, jacfwd,
    # hessian) would see zero tangents through them: under any torch.func transform the layer runs
    # as torch ops (the eager reference), which every transform differentiates.
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        if impl not in ("auto", "eager"):
            raise ValueError(
                f"impl={impl!r} cannot run under a torch.func transform (jvp, jacfwd, grad, vmap): its kernels "
                "have no forward-mode rule; use impl='auto' or 'eager'"
            )
        impl = "eager"
    backend = select_lstm_backend(impl, input.device, [input.dtype])
    return backend.layer(input, h0, c0, w_ih, w_hh, bias, lengths, reverse, masks)
