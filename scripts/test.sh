#!/usr/bin/env bash
# Sets up everything the tests need (idempotent, cached under .venv/ and .cache/), then runs
# cargo fmt, clippy, the Rust tests and the Python tests. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LLAMA_CPP_PYTHON=llama-cpp-python==0.3.36

stage() { printf '\n==> %s\n' "$*"; }

if [[ ${CI:-} == true ]]; then
    echo "CI=true: a missing reference (package, model file, tokenizer vectors) fails its tests"
else
    echo "CI is not 'true': a missing reference skips its tests (set CI=true to make that a failure)"
fi

stage "python venv (.venv)"
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
PY=$ROOT/.venv/bin/python
"$PY" --version

stage "test dependencies (requirements/test.txt)"
# llama.cpp (the reference) is built for this CPU (GGML_NATIVE) but without its AMX matmuls: on
# Sapphire Rapids machines llama-cpp-python 0.3.36's AMX path segfaults in the first eval
# (ggml_backend_amx_mul_mat). Explicit -mno-amx-* win over -march=native in GCC whatever their order.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMA_CMAKE_ARGS="-DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
stamp=.venv/.requirements-test.sha256
want=$( (cat requirements/test.txt; echo "$LLAMA_CMAKE_ARGS") | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    # llama-cpp-python builds llama.cpp from source (minutes), first and without pip's wheel
    # cache, so a wheel cached with other flags is never reused; then the rest.
    CMAKE_ARGS=$LLAMA_CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=2 "$PY" -m pip install --disable-pip-version-check \
        --no-cache-dir --no-deps --force-reinstall "$LLAMA_CPP_PYTHON"
    "$PY" -m pip install --disable-pip-version-check -r requirements/test.txt
    echo "$want" >"$stamp"
else
    echo "up to date"
fi

stage "tokenizer conformance vocabularies (.cache/vocab from the $LLAMA_CPP_PYTHON sdist)"
if [[ ! -d .cache/vocab ]]; then
    rm -rf .cache/vocab.partial && mkdir -p .cache/sdist .cache/vocab.partial
    # --no-binary for this package only: build dependencies may still come as wheels.
    "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        "$LLAMA_CPP_PYTHON" -d .cache/sdist
    "$PY" - <<'PYEOF'
import fnmatch, glob, os, tarfile
(sdist,) = glob.glob(".cache/sdist/llama_cpp_python-0.3.36.tar.gz")
with tarfile.open(sdist) as tar:
    for member in tar:
        if member.isfile() and fnmatch.fnmatch(member.name, "*/vendor/llama.cpp/models/ggml-vocab-*"):
            with tar.extractfile(member) as src, open(f".cache/vocab.partial/{os.path.basename(member.name)}", "wb") as dst:
                dst.write(src.read())
PYEOF
    mv .cache/vocab.partial .cache/vocab
fi
export EMBER_VOCAB_DIR=$ROOT/.cache/vocab
echo "EMBER_VOCAB_DIR=$EMBER_VOCAB_DIR ($(ls .cache/vocab | wc -l) files)"

stage "cargo fmt --all --check; ruff format --check; ruff check"
cargo fmt --all --check
"$ROOT/.venv/bin/ruff" format --check python tests bench scripts
"$ROOT/.venv/bin/ruff" check python tests bench scripts

stage "module circles in ember-model and ember-cuda (scripts/module_cycles.py)"
"$PY" scripts/module_cycles.py crates/ember-model crates/ember-cuda --quiet

stage "CUDA kernels: compile for sm_90a and sm_80 with the pinned nvcc 13.0.2 wheels, check the typed launchers (no GPU needed)"
EMBER_FATBIN_OUT=$ROOT/.cache/ember_kernels.fatbin bash scripts/cuda_compile_check.sh

# The release artifact itself is what the tests run: built once per source state (maturin + zig,
# the fatbin just compiled), installed into .venv, and checked by auditwheel, twine and a fresh
# venv without Rust. Cached under .cache/wheels/ by a hash of the sources.
stage "wheel: manylinux_2_28 abi3 x86-64 with the CUDA fatbin (scripts/build_wheels.sh), cached by source hash"
wheel=$(EMBER_BUILD_VENV=$ROOT/.venv EMBER_FATBIN=$ROOT/.cache/ember_kernels.fatbin bash scripts/cached_wheel.sh x86_64)
stamp=.venv/.ember-wheel.sha256
want=$(sha256sum "$wheel" | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    "$PY" -m pip install --disable-pip-version-check --no-deps --force-reinstall "$wheel"
    echo "$want" >"$stamp"
else
    echo "installed in .venv: $(basename "$wheel")"
fi

stage "default model"
export EMBER_CACHE=${EMBER_CACHE:-$ROOT/.cache/models}
EMBER_SMOLLM2_GGUF=$("$PY" -c "from ember.models import ensure_default_model; print(ensure_default_model())")
export EMBER_SMOLLM2_GGUF
echo "EMBER_SMOLLM2_GGUF=$EMBER_SMOLLM2_GGUF"

check_wheel_once() {  # wheel -> scripts/check_wheel_install.sh, once per built wheel
    local dir
    dir=$(dirname "$1")
    if [[ ! -f $dir/install-checked ]]; then
        bash scripts/check_wheel_install.sh "$1" | tee "$dir/install-check.log"
        touch "$dir/install-checked"
    else
        echo "cached: $(tail -n 1 "$dir/install-check.log")"
    fi
}
stage "the wheel in a fresh venv with no Rust on PATH: ember --version, import, ember generate (scripts/check_wheel_install.sh)"
check_wheel_once "$wheel"

# Fresh on the shared 2 cores: the toolchain fetch ~3 min, the Rust checks ~16 min, the wheel's
# cross build ~15 min and its qemu run ~10 min (README, "Building wheels"); hence a flag.
if [[ ${EMBER_TEST_AARCH64:-} == 1 ]]; then
    stage "aarch64 Rust: clippy -D warnings, ember-cpu's tests under qemu -cpu max and cortex-a53 (scripts/aarch64_rust_checks.sh)"
    bash scripts/aarch64_rust_checks.sh
    stage "aarch64 wheel: build (Debian sid's rustc, cached by source hash), then under qemu-aarch64: scalar vs NEON token ids (scripts/check_wheel_install.sh)"
    aarch64_wheel=$(EMBER_BUILD_VENV=$ROOT/.venv EMBER_FATBIN=$ROOT/.cache/ember_kernels.fatbin bash scripts/cached_wheel.sh aarch64)
    check_wheel_once "$aarch64_wheel"
fi

# Both with the `cuda` feature (the wheel's build: ember-model links ember-cuda) and without it.
stage "cargo clippy --workspace --all-targets [--all-features] -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --all-features -- -D warnings

stage "cargo test --workspace (without, then with the cuda feature)"
cargo test --workspace 2>&1 | tee .cache/cargo-test.log
cargo test --workspace --all-features 2>&1 | tee .cache/cargo-test-cuda.log

stage "pytest tests -q -ra"
set +e
"$PY" -m pytest tests -q -ra 2>&1 | tee .cache/pytest.log
pytest_status=${PIPESTATUS[0]}
set -e

stage "summary"
for log in .cache/cargo-test.log .cache/cargo-test-cuda.log; do
    awk -v name="$log" '/^test result:/ { n++; passed += $4; failed += $6; ignored += $8 }
         END { printf "cargo test (%s): %d passed; %d failed; %d ignored (%d test binaries)\n", name, passed, failed, ignored, n }' \
        "$log"
done
echo "pytest: $(tail -n 1 .cache/pytest.log)"
exit "$pytest_status"
