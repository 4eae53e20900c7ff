"""Compiles emulated_kernels.cpp, the CUDA kernels of csrc/cuda/ as host C++ under
host_emulation.h, into shared libraries of test-only ops, with AddressSanitizer and
UBSan (no recovery) and without FMA contraction.

Two variants, each its own op namespace:

- ``product``: the work-split constants the CUDA build uses.
- ``small``: the same kernels with the constants shrunk (-D), so that small inputs
  overflow the multi-tensor-apply table, continue a tensor across tables, loop
  within a block and reach the LSTM cell's row loop.

Builds are cached under ``build/emulated/`` by a digest of the sources, flags,
compiler and torch, so only a change recompiles (about 30 s per variant on 2 cores).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
SOURCES = (HERE / "emulated_kernels.cpp", CSRC / "langevin" / "step_inputs.cpp")
BUILD_DIR = ROOT / "build" / "emulated"

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
CXXFLAGS = [
    "-std=c++20",
    "-O1",
    "-g",
    "-fPIC",
    "-fvisibility=hidden",  # the two variants define the same inline names; keep each to itself
    "-ffp-contract=off",  # round a * b + c twice, like the eager oracle
    "-Wall",
    "-Wno-unknown-pragmas",  # `#pragma unroll` is nvcc's
    *SANITIZE,
]


@dataclass(frozen=True)
class Variant:
    namespace: str
    defines: dict[str, int]


VARIANTS = {
    "product": Variant("sgmcmc_emulated", {}),
    "small": Variant(
        "sgmcmc_emulated_small",
        {
            "SGMCMC_FUSED_STEP_BLOCK_THREADS": 2,  # a thread loops within its chunk
            "SGMCMC_FUSED_CHUNK_QUADS": 3,
            "SGMCMC_FUSED_MAX_ROWS": 4,  # a table fills after 4 tensors ...
            "SGMCMC_FUSED_MAX_BLOCKS": 5,  # ... or 5 chunks
            "SGMCMC_FUSED_LSTM_BLOCK_THREADS": 8,
            "SGMCMC_FUSED_LSTM_MAX_GRID_ROWS": 2,  # rows beyond 2 blocks take the row loop
        },
    ),
}


class EmulationBuildError(RuntimeError):
    """The emulated kernels did not compile or link; the message holds the compiler's output."""


def compiler() -> str | None:
    """The C++ compiler to use (CXX, else g++), or None where there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def sanitizer_runtime(cxx: str) -> list[str]:
    """Libraries to LD_PRELOAD into the Python process that loads the built ops: the
    ASan runtime must come first, and libstdc++ must be loaded before it starts so
    that its __cxa_throw interceptor finds the real one (torch errors are exceptions)."""
    libs = []
    for name in ("libasan.so", "libstdc++.so.6"):
        path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            raise EmulationBuildError(f"{cxx} has no {name} (needed to run the sanitised emulation)")
        libs.append(path)
    return libs


def _command(cxx: str, variant: Variant, output: Path) -> list[str]:
    defines = [f"-DSGMCMC_EMULATED_NS={variant.namespace}"] + [f"-D{k}={v}" for k, v in variant.defines.items()]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    includes = [f"-I{CSRC / 'include'}", f"-I{CSRC / 'cuda'}"] + [f"-I{p}" for p in cpp_extension.include_paths()]
    libdirs = cpp_extension.library_paths()
    links = [f"-L{d}" for d in libdirs] + [f"-Wl,-rpath,{d}" for d in libdirs] + ["-lc10", "-ltorch_cpu"]
    return [cxx, *CXXFLAGS, abi, *defines, *includes, "-shared", *map(str, SOURCES), *links, "-o", str(output)]


def _digest(command: list[str], cxx: str) -> str:
    h = hashlib.sha256()
    h.update("\0".join(command[1:]).encode())
    h.update(subprocess.run([cxx, "--version"], capture_output=True).stdout)
    h.update(torch.__version__.encode())
    headers = sorted(CSRC.glob("cuda/*.h")) + sorted(CSRC.glob("cuda/*.cuh")) + sorted(CSRC.glob("include/**/*.h"))
    for f in [*SOURCES, *headers]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build(names: tuple[str, ...] = tuple(VARIANTS)) -> dict[str, Path]:
    """Builds (or finds cached) the variants in parallel; returns {name: library path}.

    Raises EmulationBuildError with the compiler's output if any fails.
    """
    cxx = compiler()
    if cxx is None:
        raise EmulationBuildError("no C++ compiler (set CXX or install g++)")
    pending, libraries = {}, {}
    for name in names:
        probe = _command(cxx, VARIANTS[name], Path("OUT"))
        library = BUILD_DIR / f"{name}-{_digest(probe, cxx)}" / "libsgmcmc_emulated.so"
        libraries[name] = library
        if library.exists():
            continue
        library.parent.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".so.partial{os.getpid()}")
        command = _command(cxx, VARIANTS[name], partial)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pending[name] = (process, partial, library, command)
    errors = []
    for name, (process, partial, library, command) in pending.items():
        output, _ = process.communicate()
        if process.returncode != 0:
            errors.append(f"variant {name}: exit {process.returncode}\n$ {' '.join(command)}\n{output}")
            partial.unlink(missing_ok=True)
        else:
            os.replace(partial, library)  # a finished build appears whole or not at all
    if errors:
        raise EmulationBuildError("\n\n".join(errors))
    return libraries


if __name__ == "__main__":
    for variant, path in build(tuple(sys.argv[1:]) or tuple(VARIANTS)).items():
        print(variant, path)
