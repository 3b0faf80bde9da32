#!/usr/bin/env bash
# Runs the GPU checks on the lent GPU machine and writes everything under $OUT:
# installs a carried wheel with `pip install --no-deps --target`, then the kernel tests
# (tests/gpu, with the fatbin built by build.rs), compute-sanitizer memcheck on them when
# available, the end-to-end device tests, and the benchmarks when present.
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
if [[ -d bench ]] && ls bench/*.py >/dev/null 2>&1; then
  for b in bench/*.py; do python "$b" --out "$OUT/$(basename "$b" .py).json" >"$OUT/$(basename "$b" .py).log" 2>&1 || status=1; done
fi
echo "gpu_run: status $status (results in $OUT)"
exit $status
