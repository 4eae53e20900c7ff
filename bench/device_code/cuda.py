"""Compiles every csrc/**/*.cu for real GPU targets with nvcc, as setup.py does but
with ptxas's resource log (-Xptxas -v,-warn-spills), and reads the kernels' resources
from the object files. Needs the CUDA toolkit and a CUDA build of torch, no GPU."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils import cpp_extension

from .resources import KernelResources, combine, read_binary, spills_from_ptxas_log

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
#: The project's own nvcc flags (setup.py's); torch's COMMON_NVCC_FLAGS are added to them.
PROJECT_NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-std=c++20"]


def cuda_home() -> Path:
    """The toolkit: CUDA_HOME, else /usr/local/cuda, else the newest /usr/local/cuda-*
    (not the folder of the nvcc on PATH, which may be a wrapper script)."""
    candidates = [os.environ.get("CUDA_HOME"), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for home in filter(None, candidates):
        if (Path(home) / "bin" / "nvcc").is_file():
            return Path(home).resolve()
    raise FileNotFoundError("no CUDA toolkit found: set CUDA_HOME")


def _include_dirs(home: Path) -> list[str]:
    # Headers torch includes (cusparse.h, ...) that pip's nvidia packages ship, as in setup.py.
    pip_cuda = {d for p in sys.path for d in glob.glob(os.path.join(p, "nvidia", "*", "include"))}
    pip_cuda = sorted(d for d in pip_cuda if os.path.isfile(os.path.join(d, "cusparse.h")))
    return [str(CSRC / "include"), str(CSRC / "cuda"), *cpp_extension.include_paths(), *pip_cuda, str(home / "include")]


def nvcc_command(source: Path, output: Path, archs: list[int]) -> list[str]:
    home = cuda_home()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return [
        str(home / "bin" / "nvcc"),
        "-c",
        str(source),
        "-o",
        str(output),
        *PROJECT_NVCC_FLAGS,
        *cpp_extension.COMMON_NVCC_FLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *gencode,
        "-Xptxas=-v,-warn-spills",
        *[f"-I{d}" for d in _include_dirs(home)],
    ]


def _compile_one(source: Path, workdir: Path, archs: list[int]) -> tuple[list[KernelResources], str | None]:
    output = workdir / (source.stem + ".o")
    command = nvcc_command(source, output, archs)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return [], f"{source.relative_to(ROOT)}: nvcc exit {result.returncode}\n{result.stderr[-6000:]}"
    return combine(read_binary(output), spills_from_ptxas_log(result.stderr), "cuda"), None


def compile_all(archs: list[int], jobs: int = 2) -> tuple[list[KernelResources], list[str]]:
    """Resources of every kernel of every .cu for each arch, and the compile errors."""
    sources = sorted(CSRC.rglob("*.cu"))
    with tempfile.TemporaryDirectory(prefix="device_code_") as tmp, ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda s: _compile_one(s, Path(tmp), archs), sources))
    rows = [row for found, _ in results for row in found]
    errors = [error for _, error in results if error]
    return rows, errors
