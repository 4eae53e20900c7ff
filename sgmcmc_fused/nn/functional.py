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

import torch

from ..kernels.lstm import compiled as lstm_compiled
from ..kernels.lstm import reference as lstm_reference
from ..kernels.lstm.reference import DropConnect

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def not_supported_reasons(impl: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why `impl` cannot run a layer on `device` with `dtype` (empty if it can)."""
    device = torch.device(device)
    reasons = [] if dtype in SUPPORTED_DTYPES else [f"unsupported dtype {dtype}"]
    if impl == "cpu":
        reasons += [] if device.type == "cpu" else [f"the CPU kernel needs cpu tensors, got {device.type}"]
        reasons += lstm_compiled.not_supported_reasons(device)
    elif impl == "cuda":
        reasons += [] if device.type == "cuda" else [f"the CUDA kernel needs cuda tensors, got {device.type}"]
        reasons += lstm_compiled.not_supported_reasons(device)
    elif impl == "triton":
        from ..kernels.lstm import triton as lstm_triton

        reasons += lstm_triton.not_supported_reasons(device)
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
        from ..kernels.lstm import triton as lstm_triton

        return lstm_triton.dropconnect_lstm_layer(input, h0, c0, w_ih, w_hh, bias, lengths, reverse, masks)
    return lstm_compiled.dropconnect_lstm_layer(input, h0, c0, w_ih, w_hh, bias, lengths, reverse, masks)
