#!/usr/bin/env bash
# Downloads the wheels bench/gpu_check.sh installs on the GPU machine, whose image
# (Python 3.12, no network) lacks them, into DIR (default .whl/, kept out of git
# through .git/info/exclude). Run from the repository root on a machine with
# network access, then carry DIR to the GPU machine.
#
#   bash bench/fetch_gpu_wheels.sh [DIR]
set -euo pipefail
DIR=${1:-.whl}
mkdir -p "$DIR"
grep -qxF "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >>.git/info/exclude
# expecttest: imported by torch.library.opcheck (test_lstm_ops.py); pure Python.
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d "$DIR" "expecttest==0.3.0"
ls -l "$DIR"
