#!/usr/bin/env bash
# The GPU check of issue 17, in one device call (under 8 minutes on one H200):
#   here:  bash bench/device_wheels.sh            (the wheels the GPU machine lacks, into .whl/)
#   there: run(command="bash bench/device.sh", carry=[".whl"], timeout_s=600)
# It prints one table; put it in the README (Benchmarks: the GPU path) with its date.
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 bench/device.py "$@" 2>&1 | tee "${OUT:-/tmp}/device_table.md"
