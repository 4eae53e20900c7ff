"""Loads the compiled extension `sgmcmc_fused._C` and says why it is unusable if
it is not: missing (never built), failing to load (built against another
torch), or stale (the C++/CUDA sources changed since it was built).

Nothing is compiled at import time; `pip install --no-build-isolation .` (or
`python setup.py build_ext --inplace` in a checkout) builds the extension.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch

#: csrc/ of a source checkout (absent in an installed package).
_CSRC_DIR = Path(__file__).resolve().parents[2] / "csrc"


def _load() -> tuple[bool, str | None]:
    try:
        importlib.import_module("sgmcmc_fused._C")
    except ImportError as exc:  # missing, or an ABI mismatch with this torch
        return False, f"the compiled extension sgmcmc_fused._C could not be loaded ({exc}); rebuild it"
    return True, None


def _stale_reason() -> str | None:
    try:
        info = importlib.import_module("sgmcmc_fused._build_info")
    except ImportError:
        return None
    if info.TORCH_VERSION != torch.__version__:
        return f"sgmcmc_fused._C was built against torch {info.TORCH_VERSION} but torch {torch.__version__} is running"
    if _CSRC_DIR.is_dir():  # a source checkout: compare the sources it was built from
        files = [p for p in _CSRC_DIR.rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh")]
        digest = hashlib.sha256()
        for p in sorted(files, key=str):
            digest.update(p.read_bytes())
        if digest.hexdigest()[:16] != info.CSRC_DIGEST:
            return "csrc/ changed since sgmcmc_fused._C was built; rebuild it (python setup.py build_ext --inplace)"
    return None


LOADED, LOAD_ERROR = _load()
#: Non-None when the extension loaded but may not match the sources or torch.
STALE_REASON = _stale_reason() if LOADED else None


def _query_kernel(op: str, dispatch_key: str) -> bool:
    if not LOADED:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"sgmcmc_fused::{op}", dispatch_key)
    except RuntimeError:  # the op does not exist: _C is older than the sources that define it
        return False


#: has_kernel's answers. The registrations do not change once _C is loaded, and a dict lookup is
#: what torch.compile can trace (the dispatcher query is not): the backend choice of every layer call
#: inside a compiled model reads this table, so the queries the registries make are answered here
#: at import time.
_HAS_KERNEL: dict[tuple[str, str], bool] = {
    (op, key): _query_kernel(op, key) for op in ("psgld_step_", "dropconnect_lstm_layer") for key in ("CPU", "CUDA")
}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether sgmcmc_fused::<op> has a kernel registered for dispatch_key ("CPU", "CUDA")."""
    if (op, dispatch_key) not in _HAS_KERNEL:
        _HAS_KERNEL[op, dispatch_key] = _query_kernel(op, dispatch_key)
    return _HAS_KERNEL[op, dispatch_key]


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA kernels of _C cannot run here, or None."""
    if not LOADED:
        return LOAD_ERROR
    if not has_kernel("psgld_step_", "CUDA"):
        try:
            info = importlib.import_module("sgmcmc_fused._build_info")
            why = info.CUDA_REASON
        except ImportError:
            why = "unknown build configuration"
        return f"sgmcmc_fused._C was built without CUDA kernels ({why})"
    return None
