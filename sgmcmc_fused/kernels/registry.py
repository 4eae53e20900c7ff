"""The step backends and how one is chosen.

Every backend implements the same three functions with the arguments of
`reference.psgld_step_`, `reference.sgld_step_` and `reference.philox_normal`,
and says which inputs it cannot serve (`not_supported_reasons`, after
xformers). `select_backend("auto", ...)` takes the first that fits: the CUDA
kernel for CUDA tensors, the C++ kernel for CPU tensors, then Triton (CUDA
tensors), then the eager reference. Asking for a backend by name that cannot
serve the input raises with every reason.

| name      | devices                            | dtypes                 | noise                     |
|-----------|------------------------------------|------------------------|---------------------------|
| "cuda"    | CUDA                               | fp32, fp64, fp16, bf16 | docs/spec.md#noise-stream |
| "cpu"     | CPU                                | fp32, fp64, fp16, bf16 | docs/spec.md#noise-stream |
| "triton"  | CUDA; CPU under TRITON_INTERPRET=1 | fp32, fp64, fp16, bf16 | docs/spec.md#noise-stream |
| "eager"   | any                                | fp32, fp64, fp16, bf16 | docs/spec.md#noise-stream |
| "foreach" | any                                | fp32, fp64             | torch.randn               |
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import _library
from .langevin import compiled, foreach, reference

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Backend:
    """One implementation of the step ops."""

    name: str
    psgld_step_: Callable[..., None]
    sgld_step_: Callable[..., None]
    philox_normal: Callable[..., torch.Tensor] | None
    reasons: Callable[[torch.device, Sequence[torch.dtype]], list[str]]
    draws_spec_stream: bool = True

    def not_supported_reasons(self, device: torch.device, dtypes: Sequence[torch.dtype]) -> list[str]:
        """Why this backend cannot update tensors of `device` with these dtypes (empty if it can)."""
        device = torch.device(device)
        reasons = self.reasons(device, dtypes)
        if device.type == "cuda" and not torch.cuda.is_available():
            reasons.append("no CUDA device is available")
        return reasons


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
        draws_spec_stream=False,
    ),
}

_AUTO_ORDER = ("cuda", "cpu", "triton", "eager")


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
    """The device a backend would serve here: CUDA for "cuda", and for "triton" unless only
    the interpreter can run it; the CPU otherwise."""
    interpreter_only = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
    if name == "cuda" or (name == "triton" and not interpreter_only):
        return torch.device("cuda")
    return torch.device("cpu")


def availability() -> dict[str, str]:
    """Each backend's status on this machine ("available" or why not), for users and bug reports."""
    status = {}
    for name, backend in BACKENDS.items():
        why = backend.not_supported_reasons(_probe_device(name), [torch.float32])
        status[name] = "available" if not why else "; ".join(why)
    if _library.STALE_REASON:
        status["cpu"] += f" (warning: {_library.STALE_REASON})"
    return status
