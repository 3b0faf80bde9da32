#!/usr/bin/env bash
# Prints the path of the nvcc the CUDA scripts use: $NVCC when set, else the pinned CUDA 13.0
# compiler wheels in .cache/cuda-venv (or $EMBER_CUDA_VENV), installed there on first use.
# Progress goes to stderr, the path alone to stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -n "${NVCC:-}" ]]; then
  echo "$NVCC"
  exit 0
fi
# Pin 13.0: the GPU driver of the lent machines is CUDA 13.0 and rejects newer PTX.
wheel_spec='cuda-toolkit[nvcc,nvvm,crt,cudart,cccl,nvrtc]==13.0.2'
venv="${EMBER_CUDA_VENV:-$root/.cache/cuda-venv}"
nvcc="$(ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1 || true)"
if [[ -z "$nvcc" ]]; then
  echo "installing $wheel_spec into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "$wheel_spec" >&2
  nvcc="$(ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -n1)"
fi
echo "$nvcc"
