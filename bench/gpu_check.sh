#!/usr/bin/env bash
# GPU check: build the extension with its CUDA kernels, run the CUDA tests and
# the CUDA benchmarks, and leave every log in OUTDIR.
#
#   bash bench/gpu_check.sh OUTDIR        (from the repository root)
#
# Every step runs under `timeout`, and a failing step does not stop the later
# ones: a build failure still leaves the device description and the logs.
# OUTDIR/summary.txt gets one line per step as it finishes (so a run killed from
# outside still reports the steps it completed):
#   <step> rc=<exit status> seconds=<wall time> [note]
# rc 124 means the step hit its time limit; for the pytest steps rc 5 means no
# test was collected. The script exits 0 when no step failed, 1 otherwise.
#
# Files written to OUTDIR:
#   env.txt             versions (python, torch, triton, nvcc, git revision)
#   nvidia-smi.txt      nvidia-smi and a CSV line of the device's properties
#   build.log           setup.py build_ext output
#   build_info.py       sgmcmc_fused/_build_info.py of this build
#   registration.txt    whether each op has a CUDA kernel
#   pytest_cuda.log     python -m pytest python_tests -m cuda -q
#   junit_cuda.xml      the same as JUnit XML
#   bench_gpu.log       python -m pytest bench -m cuda
#   bench_gpu.json      its pytest-benchmark results
#   summary.txt         the per-step exit statuses
#
# Time limits in seconds (environment; the defaults sum to under 10 minutes):
#   GPU_CHECK_BUILD_TIMEOUT (200), GPU_CHECK_TEST_TIMEOUT (220),
#   GPU_CHECK_BENCH_TIMEOUT (150).
set -u

if [ "$#" -ne 1 ]; then
  echo "usage: bash bench/gpu_check.sh OUTDIR   (run from the repository root)" >&2
  exit 2
fi
if [ ! -f setup.py ] || [ ! -d csrc ]; then
  echo "gpu_check.sh: run it from the repository root (no setup.py/csrc in $(pwd))" >&2
  exit 2
fi

OUTDIR=$1
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY=$OUTDIR/summary.txt
PYTHON=${PYTHON:-python}
BUILD_TIMEOUT=${GPU_CHECK_BUILD_TIMEOUT:-200}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-220}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-150}
FAILED=0

: >"$SUMMARY"

# run_step NAME LIMIT LOG COMMAND...: runs COMMAND under `timeout`, output to
# LOG, and appends its exit status and wall time to the summary.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS rc
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local note=""
  [ "$rc" -eq 124 ] && note="timed out after ${limit}s"
  [ "$rc" -eq 137 ] && note="killed after ${limit}s"
  case "$name:$rc" in tests:5 | bench:5) note="pytest collected no tests" ;; esac
  echo "$name rc=$rc seconds=$((SECONDS - start)) $note" | tee -a "$SUMMARY"
  [ "$rc" -ne 0 ] && FAILED=1
  return "$rc"
}

# record_skip NAME WHY: a step that could not run is not a failure.
record_skip() {
  echo "$1 rc=skipped $2" | tee -a "$SUMMARY"
}

# -- the machine --------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  timeout 60 "$PYTHON" - <<'EOF' 2>&1
import platform
print("python:", platform.python_version())
try:
    import torch
    print("torch:", torch.__version__, "cuda:", torch.version.cuda, "available:", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("device:", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
              round(p.total_memory / 2**30, 1), "GiB")
except Exception as e:
    print("torch: import failed:", e)
try:
    import triton
    print("triton:", triton.__version__)
except Exception as e:
    print("triton: import failed:", e)
EOF
  echo "nvcc: $(command -v nvcc || echo 'not on PATH')"
  nvcc --version 2>&1 | tail -n 2
  echo "cores: $(nproc)"
} >"$OUTDIR/env.txt" 2>&1

if command -v nvidia-smi >/dev/null 2>&1; then
  run_step nvidia-smi 60 "$OUTDIR/nvidia-smi.txt" nvidia-smi
  run_step nvidia-smi-query 60 "$OUTDIR/nvidia-smi.txt" nvidia-smi --format=csv \
    --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,mig.mode.current
else
  record_skip nvidia-smi "(not on PATH)"
fi

# -- build --------------------------------------------------------------------
# SGMCMC_FUSED_CUDA=1: fail loudly rather than silently build CPU kernels only.
run_step build "$BUILD_TIMEOUT" "$OUTDIR/build.log" \
  env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 SGMCMC_FUSED_CUDA=1 "$PYTHON" setup.py build_ext --inplace
cp sgmcmc_fused/_build_info.py "$OUTDIR/build_info.py" 2>/dev/null

run_step registration 120 "$OUTDIR/registration.txt" "$PYTHON" -c '
import sys, torch, sgmcmc_fused._C
missing = []
for op in ("psgld_step_", "sgld_step_", "philox_normal_", "dropconnect_weight", "lstm_cell_forward",
           "lstm_cell_backward", "dropconnect_lstm_layer", "dropconnect_lstm_layer_backward"):
    ok = torch._C._dispatch_has_kernel_for_dispatch_key("sgmcmc_fused::" + op, "CUDA")
    print(op, "CUDA kernel:", ok)
    missing += [] if ok else [op]
sys.exit(1 if missing else 0)
'

# -- tests --------------------------------------------------------------------
run_step tests "$TEST_TIMEOUT" "$OUTDIR/pytest_cuda.log" \
  "$PYTHON" -m pytest python_tests -m cuda -q --junitxml="$OUTDIR/junit_cuda.xml"

# -- benchmarks ---------------------------------------------------------------
if [ -z "$(find bench -name '*.py' 2>/dev/null | head -n 1)" ]; then
  record_skip bench "(no Python files under bench/ yet)"
elif ! "$PYTHON" -c 'import pytest_benchmark' >/dev/null 2>&1; then
  record_skip bench "(pytest-benchmark is not installed)"
else
  run_step bench "$BENCH_TIMEOUT" "$OUTDIR/bench_gpu.log" \
    "$PYTHON" -m pytest bench -m cuda --benchmark-json="$OUTDIR/bench_gpu.json"
fi

echo "---"
cat "$SUMMARY"
exit "$FAILED"
