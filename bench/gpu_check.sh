#!/usr/bin/env bash
# GPU check: build the extension with its CUDA kernels for the visible GPU, run the
# CUDA tests, compute-sanitizer (memcheck, racecheck) on a short subset, and the CUDA
# benchmarks, leaving every log in OUTDIR.
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
# Python packages the tests need and the GPU machine may lack (its image has no
# expecttest, which torch.library.opcheck imports) are installed from the wheels in
# GPU_CHECK_WHEELS (default .whl/) when that folder exists; fetch them on a machine
# with network access with `bash bench/fetch_gpu_wheels.sh` and carry the folder.
# A package still missing fails the `packages` step instead of skipping tests.
#
# Files written to OUTDIR:
#   env.txt             versions (python, torch, triton, nvcc, git revision)
#   nvidia-smi.txt      nvidia-smi and a CSV line of the device's properties
#   packages.log        wheel installation and the import check
#   build.log           setup.py build_ext output
#   build_info.py       sgmcmc_fused/_build_info.py of this build
#   registration.txt    whether each op has a CUDA kernel
#   pytest_cuda.log     python -m pytest python_tests -m cuda -q
#   junit_cuda.xml      the same as JUnit XML
#   memcheck.log        compute-sanitizer --tool memcheck over SANITIZER_TESTS
#   racecheck.log       compute-sanitizer --tool racecheck over SANITIZER_TESTS
#   device.txt          the CUDA device torch sees (none fails the check)
#   bench_NAME.log      python -m pytest bench/bench_NAME.py -m cuda, for NAME in
#                       psgld_step, lstm, caption_decode (25/40/15 of the 80 s)
#   bench_NAME.json     its pytest-benchmark results
#   summary.txt         the per-step exit statuses and times
#
# Time limits in seconds (environment). On an H100 the steps take, estimated on
# paper: build 60-90 (two .cu files for one arch, 16 jobs), tests 90-120 (mostly
# Triton compiles), each sanitizer 30-50 (small tensors; with lazy module loading
# the tools instrument only the kernels that run), benchmarks 50-70. The defaults
# sum to 470 s, inside 8 minutes:
#   GPU_CHECK_BUILD_TIMEOUT (120), GPU_CHECK_TEST_TIMEOUT (150),
#   GPU_CHECK_SANITIZER_TIMEOUT (60 each), GPU_CHECK_BENCH_TIMEOUT (80).
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
BUILD_TIMEOUT=${GPU_CHECK_BUILD_TIMEOUT:-120}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-150}
SANITIZER_TIMEOUT=${GPU_CHECK_SANITIZER_TIMEOUT:-60}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-80}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
# Small, CUDA-only cases of every CUDA kernel (step, noise, mask, cell) for the sanitizers.
SANITIZER_TESTS=(
  "python_tests/test_step_backends.py::test_many_tensors_in_one_call"
  "python_tests/test_step_backends.py::test_sharded_parameter_equals_whole"
  "python_tests/test_noise.py::test_backend_noise_equals_reference"
  "python_tests/test_lstm_ops.py::test_masked_weight_equals_reference"
  "python_tests/test_lstm_ops.py::test_cell_forward_and_backward_equal_reference"
)
SCRIPT_START=$SECONDS
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
  case "$name:$rc" in tests:5 | bench_*:5 | memcheck:5 | racecheck:5) note="pytest collected no tests" ;; esac
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

# No visible GPU fails the check: every CUDA test and benchmark would skip, and a
# run with nothing executed must not read as a pass.
run_step device 60 "$OUTDIR/device.txt" "$PYTHON" -c '
import sys, torch
ok = torch.cuda.is_available()
print("CUDA device:", torch.cuda.get_device_name(0) if ok else "none visible to torch")
sys.exit(0 if ok else 1)
'

if command -v nvidia-smi >/dev/null 2>&1; then
  run_step nvidia-smi 60 "$OUTDIR/nvidia-smi.txt" nvidia-smi
  run_step nvidia-smi-query 60 "$OUTDIR/nvidia-smi.txt" nvidia-smi --format=csv \
    --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,mig.mode.current
else
  record_skip nvidia-smi "(not on PATH)"
fi

# -- packages -----------------------------------------------------------------
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  run_step wheels 60 "$OUTDIR/packages.log" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/gpu_check_site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
else
  record_skip wheels "(no $WHEELS/*.whl)"
fi
run_step packages 60 "$OUTDIR/packages.log" "$PYTHON" -c '
import importlib, sys
need = ["pytest", "pytest_benchmark", "expecttest", "scipy", "numpy", "tqdm", "safetensors", "matplotlib", "triton"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
print("missing:", missing or "none")
# The caption benchmark skips without these (its CUDA cases then do not run): noted, not failed.
optional = [m for m in ("torchvision", "pycocoevalcap") if importlib.util.find_spec(m) is None]
print("missing, caption benchmark skipped:", optional or "none")
sys.exit(1 if missing else 0)
'

# -- build --------------------------------------------------------------------
# For the visible GPU only (its compute capability), which halves the device
# compile time; SGMCMC_FUSED_CUDA=1: fail loudly rather than silently build CPU
# kernels only.
ARCH=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)
run_step build "$BUILD_TIMEOUT" "$OUTDIR/build.log" \
  env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="$ARCH" SGMCMC_FUSED_CUDA=1 "$PYTHON" setup.py build_ext --inplace
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

# -- compute-sanitizer ----------------------------------------------------------
# Without the caching allocator every tensor is its own allocation, so memcheck
# sees the bounds of each one. racecheck checks shared-memory hazards: the kernels
# use no shared memory today, so it guards the kernels to come.
if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    run_step "$tool" "$SANITIZER_TIMEOUT" "$OUTDIR/$tool.log" \
      env PYTORCH_NO_CUDA_MEMORY_CACHING=1 CUDA_MODULE_LOADING=LAZY compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$PYTHON" -m pytest "${SANITIZER_TESTS[@]}" -m cuda -q -x -p no:cacheprovider
  done
else
  record_skip memcheck "(compute-sanitizer is not on PATH)"
  record_skip racecheck "(compute-sanitizer is not on PATH)"
fi

# -- benchmarks ---------------------------------------------------------------
if [ -z "$(find bench -name '*.py' 2>/dev/null | head -n 1)" ]; then
  record_skip bench "(no Python files under bench/ yet)"
elif ! "$PYTHON" -c 'import pytest_benchmark' >/dev/null 2>&1; then
  record_skip bench "(pytest-benchmark is not installed)"
else
  # One run per file, each with its share of the limit and its own JSON: pytest-benchmark
  # writes the JSON at the end of a session, so a run cut short loses only its own file's.
  for spec in psgld_step:25 lstm:40 caption_decode:15; do
    name=${spec%%:*} share=${spec##*:}
    run_step "bench_$name" $((BENCH_TIMEOUT * share / 80)) "$OUTDIR/bench_$name.log" \
      "$PYTHON" -m pytest "bench/bench_$name.py" -m cuda --benchmark-json="$OUTDIR/bench_$name.json"
  done
fi

echo "total seconds=$((SECONDS - SCRIPT_START))" | tee -a "$SUMMARY"
echo "---"
cat "$SUMMARY"
exit "$FAILED"
