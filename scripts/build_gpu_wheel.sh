#!/usr/bin/env bash
# Builds the abi3 wheel with the CUDA kernels precompiled (fatbin embedded) into .whl/, copies the
# fatbin beside it (the kernel tests load it) and the `gguf` wheel (the GPU tests write their GGUF
# with it when the GPU machine lacks the package), then prints the sizes: one device call carries
# at most 64 MiB. Works from a clean clone: it needs python3, cargo and the package index for the
# pinned nvcc wheels (scripts/cuda_nvcc.sh) and the build tools (.cache/build-venv), nothing else.
# Carry .whl/ to the GPU machine and run there:
#   OUT=$OUT bash scripts/gpu_run.sh .whl/ember-*.whl .whl/ember_kernels.fatbin
#
#   bash scripts/build_gpu_wheel.sh
#   NVCC=/path/to/nvcc bash scripts/build_gpu_wheel.sh      # this compiler instead of the wheels
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pin() { grep -E "^$1==" requirements/test.txt | head -n1; }
max_bytes=$((48 << 20))  # well under the 64 MiB a call carries

# The release wheel (manylinux_2_28, zig-linked, fatbin embedded: scripts/build_wheels.sh).
EMBER_WHEEL_TARGETS=x86_64 EMBER_WHEEL_ONLY=1 bash scripts/build_wheels.sh .whl
target="${CARGO_TARGET_DIR:-$root/target}"
# The newest fatbin is the one this build embedded (cargo rebuilds it whenever cuda/ changes).
fatbin=$(find "$target" -path '*/ember-cuda-*/out/ember_kernels.fatbin' -printf '%T@ %p\n' |
    sort -rn | head -n1 | cut -d' ' -f2-)
if [[ -z "$fatbin" ]]; then
    echo "no ember_kernels.fatbin was built under $target" >&2
    exit 1
fi
cp "$fatbin" .whl/
"${EMBER_BUILD_VENV:-$root/.cache/build-venv}/bin/python" -m pip download --quiet --no-deps --only-binary :all: -d .whl "$(pin gguf)"

total=0
for file in .whl/*; do
    bytes=$(stat -c %s "$file")
    total=$((total + bytes))
    printf '%10.1f MiB  %s\n' "$(echo "$bytes / 1048576" | bc -l)" "$file"
done
printf '%10.1f MiB  total (limit %d MiB)\n' "$(echo "$total / 1048576" | bc -l)" $((max_bytes >> 20))
if ((total > max_bytes)); then
    echo "the carried files exceed $((max_bytes >> 20)) MiB" >&2
    exit 1
fi
