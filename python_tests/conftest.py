"""Shared fixtures. Without a GPU the Triton kernels run under the Triton
interpreter on CPU tensors; TRITON_INTERPRET must be set before triton.jit runs,
so it is set here, before the package (and triton) is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from sgmcmc_fused.kernels import _library, registry  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
#: The largest tensor a Triton-interpreter test should touch (the interpreter is slow).
TRITON_INTERPRET_MAX_ELEMENTS = 1 << 16


def require_backend(name: str, device: str, dtypes=(torch.float32,)) -> registry.Backend:
    why = registry.BACKENDS[name].not_supported_reasons(torch.device(device), list(dtypes))
    if why:
        pytest.skip(f"backend {name} on {device}: {'; '.join(why)}")
    return registry.BACKENDS[name]


_needs_gpu = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
#: Devices to run device-generic tests on; the CUDA entries are marked `cuda`
#: (bench/gpu_check.sh selects them with -m cuda) and skip without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=_needs_gpu)]
#: (backend, device) pairs of the fused backends.
BACKEND_DEVICE_PAIRS = [
    ("cpu", "cpu"),
    ("triton", "cpu"),
    pytest.param("cuda", "cuda", marks=_needs_gpu),
    pytest.param("triton", "cuda", marks=_needs_gpu),
]


def max_numel_for(backend: str, device: str) -> int:
    return TRITON_INTERPRET_MAX_ELEMENTS if (backend == "triton" and device == "cpu") else 1 << 62


@pytest.fixture
def extension_loaded():
    if not _library.LOADED:
        pytest.skip(_library.LOAD_ERROR)


@pytest.fixture(scope="session")
def emulated_kernels():
    """The CUDA kernels run on the host (python_tests/emulated/), built on first use.

    Skips only where there is no C++ compiler; a failed build is an error.
    """
    from emulated import build, client

    cxx = build.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler to build the emulated CUDA kernels")
    kernels = client.EmulatedKernels(build.build(), build.sanitizer_runtime(cxx))
    yield kernels
    kernels.close()
