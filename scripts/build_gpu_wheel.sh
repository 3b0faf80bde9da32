#!/usr/bin/env bash
# Builds the abi3 wheel with the CUDA kernels precompiled (fatbin embedded) into .whl/, and copies
# the fatbin beside it for the kernel tests. Carry .whl/ to the GPU machine and run there:
#   bash scripts/gpu_run.sh .whl/ember-*.whl .whl/ember_kernels.fatbin
# Needs the pinned nvcc wheels (scripts/cuda_compile_check.sh installs them) and .venv (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=$(ls .cache/cuda-venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1 || true)
if [[ -z $nvcc ]]; then
    bash scripts/cuda_compile_check.sh >/dev/null
    nvcc=$(ls .cache/cuda-venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -n1)
fi
rm -rf .whl && mkdir -p .whl
NVCC=$PWD/$nvcc EMBER_REQUIRE_FATBIN=1 .venv/bin/maturin build --release -o .whl
fatbin=$(ls -t target/release/build/ember-cuda-*/out/ember_kernels.fatbin | head -n1)
cp "$fatbin" .whl/
ls -l .whl
