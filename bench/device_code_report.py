"""Device code report: every CUDA kernel (csrc/**/*.cu, nvcc) and every Triton kernel
(ahead of time, triton.compile) compiled for sm_80 and sm_90 without a GPU, with the
resources each uses on each target.

    python bench/device_code_report.py [--markdown FILE] [--archs 80 90]

Prints one table: kernel, source, target, registers, spill bytes, stack bytes, kernel
parameter bytes, launch bound. Exits 1 if any kernel fails to compile, spills, uses
more registers than its launch bound allows, or (CUDA) declares no launch bound; stack
alone is no failure (sincosf's slow path keeps a small frame without spilling).
Needs the CUDA toolkit (CUDA_HOME, else /usr/local/cuda*), a CUDA build of torch and
Triton; `.ci/run` runs it and docs/benchmarks.md keeps its table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The Triton kernels must be defined for the GPU, not for the interpreter.
os.environ.pop("TRITON_INTERPRET", None)
# Runs from a source tree too (CI runs it before installing the package); the
# Triton kernels need no compiled extension, so its absence is no news here.
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]
warnings.filterwarnings("ignore", message="sgmcmc_fused: ", category=RuntimeWarning)

from device_code import cuda, triton_aot  # noqa: E402
from device_code.resources import KernelResources  # noqa: E402

HEADER = ("kernel", "source", "target", "registers", "spill bytes", "stack bytes", "param bytes", "launch bound")


def table(rows: list[KernelResources]) -> str:
    """A Markdown table, one row per kernel and target, failures marked."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] + ["---"] * 2 + ["---:"] * 5) + "|"]
    for r in rows:
        bound = f"{r.max_threads} (≤ {r.register_budget} regs)" if r.max_threads else "none"
        cells = [f"`{r.kernel}`", r.source, r.target, r.registers, r.spill_bytes, r.stack_bytes, r.param_bytes, bound]
        problems = r.problems()
        if problems:
            cells[0] += " **FAIL: " + "; ".join(problems) + "**"
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    # nvcc runs in subprocesses while Triton compiles here: two cores kept busy.
    with ThreadPoolExecutor(1) as pool:
        cuda_job = pool.submit(cuda.compile_all, args.archs)
        triton_rows, triton_errors = triton_aot.compile_all(args.archs)
        cuda_rows, cuda_errors = cuda_job.result()
    rows, errors = cuda_rows + triton_rows, cuda_errors + triton_errors

    report = table(rows)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    failing = [r for r in rows if r.problems()]
    kernels = len({(r.source, r.kernel) for r in rows})
    print(
        f"\n{kernels} kernels x {len(args.archs)} targets in {time.perf_counter() - start:.0f} s: "
        f"{len(failing)} failing, {len(errors)} failed to compile"
    )
    for error in errors:
        print(f"\nCOMPILE FAILURE: {error}", file=sys.stderr)
    return 1 if failing or errors or not cuda_rows or not triton_rows else 0


if __name__ == "__main__":
    sys.exit(main())
