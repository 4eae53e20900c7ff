"""The backends of both op families and how one is chosen.

Every backend says which inputs it cannot serve (`not_supported_reasons`, after
xformers); asking for one by name that cannot serve the input raises with every
reason.

Step backends (`BACKENDS`, `select_backend`) implement the same three functions with
the arguments of `reference.psgld_step_`, `reference.sgld_step_` and
`reference.philox_normal` (langevin/contract.py). "auto" takes the first that fits:
the CUDA kernel for CUDA tensors, the C++ kernel for CPU tensors, then Triton (CUDA
tensors), then the eager reference.

| name      | devices                            | dtypes                 | noise                     |
|-----------|------------------------------------|------------------------|---------------------------|
| "cuda"    | CUDA                               | fp32, fp64, fp16, bf16 | docs/spec.md#noise-stream |
| "cpu"     | CPU                                | fp32, fp64, fp16, bf16 | docs/spec.md#noise-stream |
| "triton"  | CUDA; CPU under TRITON_INTERPRET=1 | fp32, fp64, fp16, bf16 | docs/spec.md#noise-stream |
| "eager"   | any                                | fp32, fp64, fp16, bf16 | docs/spec.md#noise-stream |
| "foreach" | any                                | fp32, fp64             | torch.randn               |

DropConnect LSTM layer backends (`LSTM_BACKENDS`, `select_lstm_backend`) implement
`dropconnect_lstm_layer(input, h0, c0, w_ih, w_hh, bias, lengths, reverse, masks)` of
lstm/reference.py: "cpu" and "cuda" (the compiled layer op), "triton" and "eager".
"auto" takes the compiled op of the tensors' device, else the eager reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import _library
from .langevin import compiled, foreach, reference
from .lstm import compiled as lstm_compiled
from .lstm import reference as lstm_reference

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class _Serves:
    """What both kinds of backend share: `reasons`, and the no-GPU check on top of it."""

    reasons: Callable[[torch.device, Sequence[torch.dtype]], list[str]]

    def not_supported_reasons(self, device: torch.device, dtypes: Sequence[torch.dtype]) -> list[str]:
        """Why this backend cannot update tensors of `device` with these dtypes (empty if it can)."""
        device = torch.device(device)
        reasons = self.reasons(device, dtypes)
        if device.type == "cuda" and not torch.cuda.is_available():
            reasons.append("no CUDA device is available")
        return reasons


@dataclass(frozen=True)
class Backend(_Serves):
    """One implementation of the step ops."""

    name: str
    psgld_step_: Callable[..., None]
    sgld_step_: Callable[..., None]
    #: The noise stream alone (docs/spec.md#noise-stream); None for a backend that draws its noise
    #: from torch's generator instead (foreach, the baseline).
    philox_normal: Callable[..., torch.Tensor] | None
    reasons: Callable[[torch.device, Sequence[torch.dtype]], list[str]]


@dataclass(frozen=True)
class LstmBackend(_Serves):
    """One implementation of the DropConnect LSTM layer (one direction)."""

    name: str
    layer: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    reasons: Callable[[torch.device, Sequence[torch.dtype]], list[str]]


def _compiled_reasons(
    dispatch_key: str, device_type: str
) -> Callable[[torch.device, Sequence[torch.dtype]], list[str]]:
    def reasons(device: torch.device, dtypes: Sequence[torch.dtype]) -> list[str]:
        out = []
        if device.type != device_type:
            out.append(f"the {dispatch_key} kernel needs {device_type} tensors, got {device.type}")
        if not _library.LOADED:
            out.append(_library.LOAD_ERROR)
        elif dispatch_key == "CUDA" and (why := _library.cuda_unavailable_reason()):
            out.append(why)
        elif not _library.has_kernel("psgld_step_", dispatch_key):
            out.append(f"sgmcmc_fused._C has no {dispatch_key} kernel")
        out += _dtype_reasons(dtypes, SUPPORTED_DTYPES)
        return out

    return reasons


def _dtype_reasons(dtypes: Sequence[torch.dtype], allowed: Sequence[torch.dtype]) -> list[str]:
    bad = sorted({str(d) for d in dtypes if d not in allowed})
    return [f"unsupported dtype(s) {', '.join(bad)}"] if bad else []


def _triton_reasons(device: torch.device, dtypes: Sequence[torch.dtype]) -> list[str]:
    from .langevin import triton as langevin_triton

    return langevin_triton.not_supported_reasons(device) + _dtype_reasons(dtypes, SUPPORTED_DTYPES)


def _triton_op(name: str) -> Callable[..., object]:
    def call(*args, **kwargs):
        from .langevin import triton as langevin_triton

        return getattr(langevin_triton, name)(*args, **kwargs)

    call.__name__ = name
    return call


BACKENDS: dict[str, Backend] = {
    **{
        name: Backend(
            name, compiled.psgld_step_, compiled.sgld_step_, compiled.philox_normal, _compiled_reasons(key, name)
        )
        for name, key in (("cuda", "CUDA"), ("cpu", "CPU"))
    },
    "triton": Backend(
        "triton", _triton_op("psgld_step_"), _triton_op("sgld_step_"), _triton_op("philox_normal"), _triton_reasons
    ),
    "eager": Backend(
        "eager",
        reference.psgld_step_,
        reference.sgld_step_,
        reference.philox_normal,
        lambda device, dtypes: _dtype_reasons(dtypes, SUPPORTED_DTYPES),
    ),
    "foreach": Backend(
        "foreach",
        foreach.psgld_step_,
        foreach.sgld_step_,
        None,
        lambda device, dtypes: _dtype_reasons(dtypes, (torch.float32, torch.float64)),
    ),
}

_AUTO_ORDER = ("cuda", "cpu", "triton", "eager")


def _device_reasons(name: str, device_type: str) -> Callable[[torch.device], list[str]]:
    def reasons(device: torch.device) -> list[str]:
        return (
            [] if device.type == device_type else [f"the {name} kernel needs {device_type} tensors, got {device.type}"]
        )

    return reasons


def _lstm_compiled_reasons(device_type: str) -> Callable[[torch.device, Sequence[torch.dtype]], list[str]]:
    on_device = _device_reasons(device_type.upper(), device_type)

    def reasons(device: torch.device, dtypes: Sequence[torch.dtype]) -> list[str]:
        return (
            _dtype_reasons(dtypes, SUPPORTED_DTYPES) + on_device(device) + lstm_compiled.not_supported_reasons(device)
        )

    return reasons


def _lstm_triton_layer(*args, **kwargs):
    from .lstm import triton as lstm_triton

    return lstm_triton.dropconnect_lstm_layer(*args, **kwargs)


def _lstm_triton_reasons(device: torch.device, dtypes: Sequence[torch.dtype]) -> list[str]:
    from .lstm import triton as lstm_triton

    return _dtype_reasons(dtypes, SUPPORTED_DTYPES) + lstm_triton.not_supported_reasons(device)


LSTM_BACKENDS: dict[str, LstmBackend] = {
    "cpu": LstmBackend("cpu", lstm_compiled.dropconnect_lstm_layer, _lstm_compiled_reasons("cpu")),
    "cuda": LstmBackend("cuda", lstm_compiled.dropconnect_lstm_layer, _lstm_compiled_reasons("cuda")),
    "triton": LstmBackend("triton", _lstm_triton_layer, _lstm_triton_reasons),
    "eager": LstmBackend(
        "eager", lstm_reference.dropconnect_lstm_layer, lambda device, dtypes: _dtype_reasons(dtypes, SUPPORTED_DTYPES)
    ),
}


def select_lstm_backend(impl: str, device: torch.device, dtypes: Sequence[torch.dtype]) -> LstmBackend:
    """The LSTM layer backend `impl` ("auto" or a name of LSTM_BACKENDS) for tensors of `device`.

    Raises:
        ValueError: `impl` is unknown, or names a backend that cannot run the layer (the
            message lists every reason).
    """
    device = torch.device(device)
    if impl == "auto":
        candidate = LSTM_BACKENDS["cuda" if device.type == "cuda" else "cpu"]
        return candidate if not candidate.not_supported_reasons(device, dtypes) else LSTM_BACKENDS["eager"]
    if impl not in LSTM_BACKENDS:
        raise ValueError(f"unknown impl {impl!r}; choose 'auto' or one of {sorted(LSTM_BACKENDS)}")
    why = LSTM_BACKENDS[impl].not_supported_reasons(device, dtypes)
    if why:
        raise ValueError(f"impl={impl!r} cannot run this LSTM layer: " + "; ".join(why))
    return LSTM_BACKENDS[impl]


def select_backend(impl: str, device: torch.device, dtypes: Sequence[torch.dtype]) -> Backend:
    """The backend `impl` ("auto" or a name of BACKENDS) for tensors of `device` and `dtypes`.

    Raises:
        ValueError: `impl` is unknown, or names a backend that cannot serve these
            tensors (the message lists every reason), or no backend fits.
    """
    device = torch.device(device)
    if impl == "auto":
        all_reasons = []
        for name in _AUTO_ORDER:
            if name == "triton" and device.type != "cuda":
                continue  # the Triton interpreter is a test tool, never an automatic choice
            why = BACKENDS[name].not_supported_reasons(device, dtypes)
            if not why:
                return BACKENDS[name]
            all_reasons.append(f"{name}: {'; '.join(why)}")
        raise ValueError("no step backend can serve these tensors:\n  " + "\n  ".join(all_reasons))
    if impl not in BACKENDS:
        raise ValueError(f"unknown impl {impl!r}; choose 'auto' or one of {sorted(BACKENDS)}")
    why = BACKENDS[impl].not_supported_reasons(device, dtypes)
    if why:
        raise ValueError(f"impl={impl!r} cannot serve {device.type} tensors: " + "; ".join(why))
    return BACKENDS[impl]


def _probe_device(name: str) -> torch.device:
    """The device a backend would serve here: CUDA for "cuda", the CPU otherwise."""
    return torch.device("cuda" if name == "cuda" else "cpu")


def availability() -> dict[str, str]:
    """Each backend's status on this machine ("available" or why not), for users and bug reports."""
    from .triton_common import unavailable_reason as triton_unavailable_reason

    status = {}
    for name, backend in BACKENDS.items():
        if name == "triton":  # a GPU or the interpreter serves it: say both are missing, not just the GPU
            status[name] = triton_unavailable_reason() or "available"
            continue
        why = backend.not_supported_reasons(_probe_device(name), [torch.float32])
        status[name] = "available" if not why else "; ".join(why)
    if _library.STALE_REASON:
        status["cpu"] += f" (warning: {_library.STALE_REASON})"
    return status
