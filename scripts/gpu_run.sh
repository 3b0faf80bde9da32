#!/usr/bin/env bash
# Runs the GPU checks on the lent GPU machine and writes everything under $OUT:
# installs a carried wheel with `pip install --no-deps --target`, then the kernel tests
# (tests/gpu, with the fatbin built by build.rs), compute-sanitizer memcheck on them when
# available, the end-to-end device tests, then bench/gpu_kernels.py and bench/gpu_e2e.py.
#
#   scripts/gpu_run.sh <wheel> <ember_kernels.fatbin>
set -uo pipefail
wheel="${1:?usage: gpu_run.sh WHEEL FATBIN}"
fatbin="${2:?usage: gpu_run.sh WHEEL FATBIN}"
OUT="${OUT:-$(pwd)/gpu-out}"
mkdir -p "$OUT"
site="$OUT/site"
pip install --quiet --no-deps --target "$site" "$wheel" >"$OUT/pip.log" 2>&1 || { echo "pip failed"; cat "$OUT/pip.log"; exit 1; }
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export EMBER_FATBIN="$fatbin" EMBER_TEST_HAS_CUDA=1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
status=0
python -m pytest -o norecursedirs= tests/gpu -q --junitxml="$OUT/gpu-kernels.xml" 2>&1 | tee "$OUT/gpu-kernels.log" || status=1
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 3 python -m pytest -o norecursedirs= tests/gpu -q -x \
    -k "decode and bf16 and 128" 2>&1 | tail -n 40 >"$OUT/memcheck.log" || status=1
fi
python -m pytest tests/test_device.py -q 2>&1 | tee "$OUT/device.log" || status=1
# GPU benchmarks, quick modes by default to fit the 10-minute call (EMBER_BENCH_FULL=1: full).
quick="--quick"; [[ "${EMBER_BENCH_FULL:-0}" == 1 ]] && quick=""
python bench/gpu_kernels.py $quick --fatbin "$fatbin" --out "$OUT/bench" 2>&1 | tee "$OUT/gpu_kernels.log" || status=1
python bench/gpu_e2e.py $quick --out "$OUT/bench" --workdir "${TMPDIR:-/tmp}/ember-gpu-e2e" 2>&1 | tee "$OUT/gpu_e2e.log" || status=1
echo "gpu_run: status $status (results in $OUT)"
exit $status
