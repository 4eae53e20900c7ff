"""Builds sgmcmc_fused._C: the C++ CPU kernels always, the CUDA kernels whenever
a CUDA toolkit and a CUDA build of torch are present (a GPU is not needed).

Environment switches:
  SGMCMC_FUSED_CUDA=1|0     force the CUDA kernels on or off (default: auto).
  TORCH_CUDA_ARCH_LIST      GPU architectures; default DEFAULT_CUDA_ARCHS when no
                            GPU is visible (torch picks the visible GPU's otherwise).
  CUDA_HOME                 toolkit folder; default: the folder of a working nvcc.
  MAX_JOBS                  parallel compile jobs (ninja).

Install with `pip install --no-build-isolation .` after installing torch, so the
extension is compiled against the torch it will run with.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _locate_cuda_home() -> str | None:
    """The CUDA toolkit folder, before torch.utils.cpp_extension guesses it.

    torch derives it from the `nvcc` on PATH, which is wrong when that nvcc is a
    wrapper script; so ask nvcc itself, then try the standard install folder.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "-v", "--dryrun", "-c", "x.cu"], capture_output=True, text=True).stderr
            for line in out.splitlines():
                if line.startswith("#$ TOP="):
                    candidates.append(line.split("=", 1)[1].strip())
        except OSError:
            pass
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isdir(os.path.join(home, "include")):
            return os.path.realpath(home)
    return None


_cuda_home = _locate_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402  (CUDA_HOME must be set before cpp_extension is imported)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> tuple[bool, str]:
    switch = os.environ.get("SGMCMC_FUSED_CUDA", "auto").lower()
    have_toolkit = CUDA_HOME is not None and os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc"))
    have_torch_cuda = torch.version.cuda is not None
    if switch in ("0", "off", "false", "no"):
        return False, "SGMCMC_FUSED_CUDA=0"
    if switch in ("1", "on", "true", "yes"):
        if not (have_toolkit and have_torch_cuda):
            sys.exit(
                f"SGMCMC_FUSED_CUDA=1 but CUDA_HOME={CUDA_HOME!r} has no nvcc or torch {torch.__version__} "
                "is not a CUDA build"
            )
        return True, "SGMCMC_FUSED_CUDA=1"
    if not have_torch_cuda:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if not have_toolkit:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    return True, f"CUDA toolkit at {CUDA_HOME}, torch CUDA {torch.version.cuda}"


def _cuda_include_dirs() -> list[str]:
    """Headers torch includes (cusparse.h, ...) that pip's nvidia packages ship
    instead of the toolkit (e.g. site-packages/nvidia/cu13/include)."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isfile(os.path.join(d, "cusparse.h"))})


def _sources_digest(files: list[str]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(Path(f).read_bytes())
    return digest.hexdigest()[:16]


def _extensions():
    with_cuda, why = _want_cuda()
    print(f"sgmcmc_fused: CUDA kernels {'ON' if with_cuda else 'OFF'} ({why})")
    cpp_sources = sorted(glob.glob(str(CSRC / "**" / "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(str(CSRC / "**" / "*.cu"), recursive=True))
    sources = cpp_sources + (cuda_sources if with_cuda else [])
    # -fopenmp: at::parallel_for is an inline `#pragma omp parallel` in torch's
    # OpenMP builds, so without it the CPU kernels silently run on one thread
    # (libgomp is the one torch already loaded). -ffp-contract=off: no FMA
    # contraction, so every ISA variant of the CPU kernel rounds like the eager
    # reference. -fno-math-errno lets sqrt vectorise.
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]
    include_dirs = [str(CSRC / "include")]
    kwargs = dict(
        name="sgmcmc_fused._C",
        sources=[os.path.relpath(s, ROOT) for s in sources],
        include_dirs=include_dirs,
        py_limited_api=False,
        extra_link_args=["-fopenmp"],
    )
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    headers = glob.glob(str(CSRC / "**" / "*.h"), recursive=True) + glob.glob(
        str(CSRC / "**" / "*.cuh"), recursive=True
    )
    _write_build_info(with_cuda, why, cpp_sources + cuda_sources + headers)
    if not with_cuda:
        return [CppExtension(extra_compile_args={"cxx": cxx_flags}, **kwargs)]
    kwargs["include_dirs"] = include_dirs + _cuda_include_dirs()
    nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    return [CUDAExtension(extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, **kwargs)]


def _write_build_info(with_cuda: bool, why: str, files: list[str]) -> None:
    """Records what _C was built against, so the package can tell a stale build."""
    (ROOT / "sgmcmc_fused" / "_build_info.py").write_text(
        '"""Written by setup.py at build time."""\n'
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
        f"CUDA_REASON = {why!r}\n"
        f"CUDA_ARCH_LIST = {os.environ.get('TORCH_CUDA_ARCH_LIST', '') if with_cuda else ''!r}\n"
        f"CSRC_DIGEST = {_sources_digest(files)!r}\n"
    )


setup(
    packages=find_packages(include=["sgmcmc_fused", "sgmcmc_fused.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
