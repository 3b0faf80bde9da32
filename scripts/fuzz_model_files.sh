#!/usr/bin/env bash
# The long run of the model-file mutation fuzzer (crates/ember-model/tests/fuzz_model_files.rs): every
# single-field corruption of a tiny GGUF file and Hugging Face folder, their truncations, then NUM_CASES
# random byte-flip cases (default 1,000,000), each loaded by a real engine that then generates.
# Optimized, but with overflow checks and debug assertions on, and under `ulimit -v` (ADDRESS_SPACE_KIB,
# default 4 GiB) with a per-case watchdog. Prints progress every 10,000 cases; exits non-zero on any panic,
# abort or hang.
#
#   bash scripts/fuzz_model_files.sh [NUM_CASES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_CASES=${1:-1000000}
SEED=${2:-1}
ADDRESS_SPACE_KIB=${ADDRESS_SPACE_KIB:-4194304}
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
binary=$(cargo test --release -p ember-model --test fuzz_model_files --no-run 2>&1 | tee /dev/stderr |
    sed -n 's/.*Executable .*(\(.*fuzz_model_files-[0-9a-f]*\)).*/\1/p' | tail -n 1)
(
    ulimit -v "$ADDRESS_SPACE_KIB"
    EMBER_FUZZ_RANDOM_CASES=$NUM_CASES EMBER_FUZZ_SEED=$SEED EMBER_FUZZ_ADDRESS_SPACE_BYTES=$((ADDRESS_SPACE_KIB * 1024)) \
        "$binary" --nocapture
)
