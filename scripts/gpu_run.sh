#!/usr/bin/env bash
# The GPU checks of a lent GPU machine as one prepared command (at most 8 minutes): installs the
# carried wheel into /tmp/site, points LD_LIBRARY_PATH at the pip CUDA 13 libraries, runs the
# kernel tests (8 workers), each end-to-end test in its own process, compute-sanitizer memcheck
# and the quick GPU benchmarks, every stage under `timeout`; a skipped GPU test is a failure.
# Writes at most 7 files under $OUT (logs and summary.json). Stages: scripts/gpu_run.py.
#
#   OUT=$OUT bash scripts/gpu_run.sh .whl/ember-*.whl .whl/ember_kernels.fatbin
#   bash scripts/gpu_run.sh --dry-run WHEEL FATBIN     # print the plan, run nothing
set -uo pipefail
cd "$(dirname "$0")/.."
export EMBER_OFFLINE=1 PYTHONUNBUFFERED=1
if [[ " $* " == *" --dry-run "* ]]; then
    exec python3 scripts/gpu_run.py "$@"
fi
: "${OUT:?set OUT to the folder the device call brings back}"
mkdir -p "$OUT"
python3 scripts/gpu_run.py "$@" 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
