#!/usr/bin/env bash
# Builds Ember's release artifacts into dist/ (or OUT_DIR) and checks them:
#   ember-<version>.tar.gz                                   the sdist
#   ember-<version>-cp310-abi3-manylinux_2_28_x86_64.whl     CPU kernels chosen at run time, CUDA
#                                                            kernels precompiled (fatbin embedded)
#   ember-<version>-cp310-abi3-manylinux_2_28_aarch64.whl    the same, for ARM64 (scalar CPU kernels;
#                                                            the same fatbin: GPU code does not
#                                                            depend on the host's architecture)
# Wheels are linked by zig (the `ziglang` wheel) against glibc 2.28's symbols whatever the host's
# glibc, so no manylinux container is needed. The aarch64 wheel is compiled by Debian sid's rustc
# with its aarch64 standard library (scripts/aarch64_toolchain.sh: rustup cannot download here).
# Checks: `auditwheel show` must report a manylinux tag no newer than 2_28 and no external shared
# library; `twine check --strict` on every artifact.
# Needs python3, cargo and the package index (pinned maturin, ziglang, auditwheel, twine from
# requirements/test.txt into $EMBER_BUILD_VENV, and the pinned nvcc wheels: scripts/cuda_nvcc.sh),
# and Debian's archive for the aarch64 toolchain.
#
#   bash scripts/build_wheels.sh [OUT_DIR]
#   EMBER_WHEEL_TARGETS=x86_64 EMBER_WHEEL_ONLY=1 bash scripts/build_wheels.sh OUT_DIR  # the test command
#   EMBER_FATBIN=.cache/ember_kernels.fatbin bash scripts/build_wheels.sh   # embed this fatbin
#       (compiled from cuda/ by scripts/cuda_compile_check.sh) instead of compiling the kernels
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$(realpath -m "${1:-dist}")
pin() { grep -E "^$1==" requirements/test.txt | head -n1; }
tools=(maturin ziglang auditwheel twine)

venv="${EMBER_BUILD_VENV:-$root/.cache/build-venv}"
missing=()
for tool in "${tools[@]}"; do
    "$venv/bin/python" -m pip show --quiet "$tool" >/dev/null 2>&1 || missing+=("$(pin "$tool")")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]} into $venv"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
fi
# maturin finds zig as `python -m ziglang` of the first python on PATH.
export PATH="$venv/bin:$PATH"

if [[ -z "${EMBER_FATBIN:-}" ]]; then
    NVCC="$(bash scripts/cuda_nvcc.sh)"
    export NVCC
    echo "nvcc: $NVCC ($("$NVCC" --version | tail -n1))"
fi
export EMBER_REQUIRE_FATBIN=1

rm -rf "$out" && mkdir -p "$out"
build() {  # rust target triple -> the wheel in $out
    local start
    start=$(date +%s)
    maturin build --release --zig --compatibility manylinux_2_28 --target "$1" --interpreter python3 -o "$out"
    echo "$1 wheel built in $(($(date +%s) - start)) s"
}
targets=${EMBER_WHEEL_TARGETS:-x86_64 aarch64}
if [[ " $targets " == *" x86_64 "* ]]; then
    build x86_64-unknown-linux-gnu
fi
if [[ " $targets " == *" aarch64 "* ]]; then
    if [[ -z "${EMBER_FATBIN:-}" ]]; then
        # The fatbin the x86-64 build just compiled (GPU code, the same for either host).
        EMBER_FATBIN=$(find "${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/release/build" \
            -path '*/ember-cuda-*/out/ember_kernels.fatbin' -printf '%T@ %p\n' | sort -rn | head -n1 | cut -d' ' -f2-)
        [[ -n "$EMBER_FATBIN" ]] || { echo "no fatbin: build the x86_64 wheel first or set EMBER_FATBIN" >&2; exit 1; }
        export EMBER_FATBIN
    fi
    toolchain=$(bash scripts/aarch64_toolchain.sh)
    # Its own target folder: another compiler's artifacts.
    RUSTC="$toolchain/bin/rustc" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}/aarch64" \
        build aarch64-unknown-linux-gnu
fi
if [[ ${EMBER_WHEEL_ONLY:-} != 1 ]]; then
    maturin sdist -o "$out"
fi

for wheel in "$out"/*.whl; do
    report=$(auditwheel show "$wheel")
    echo "$report"
    tag=$(grep -oE 'manylinux_2_[0-9]+_(x86_64|aarch64)' <<<"$report" | head -n1)
    minor=$(sed -E 's/manylinux_2_([0-9]+)_.*/\1/' <<<"$tag")
    if [[ -z "$tag" ]] || ((minor > 28)); then
        echo "auditwheel: $wheel is not manylinux_2_28 or older (reported: ${tag:-none})" >&2
        exit 1
    fi
    if grep -q 'external shared libraries are required' <<<"$report"; then
        echo "auditwheel: $wheel needs shared libraries outside the manylinux set" >&2
        exit 1
    fi
done
twine check --strict "$out"/*
for file in "$out"/*; do
    printf '%8.1f MiB  %s\n' "$(echo "$(stat -c %s "$file") / 1048576" | bc -l)" "$file"
done
