#!/usr/bin/env bash
# Prints the path of the wheel for TARGET (x86_64 or aarch64) built from the current sources,
# building it with scripts/build_wheels.sh only when .cache/wheels/ has none for this source state
# (keyed by a hash of every tracked or new file under crates/, cuda/, python/ and the build files).
# Progress goes to stderr, the path alone to stdout. EMBER_FATBIN and EMBER_BUILD_VENV pass through.
#
#   bash scripts/cached_wheel.sh x86_64
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1
src_hash=$(git ls-files -co --exclude-standard -z crates cuda python Cargo.toml Cargo.lock pyproject.toml README.md |
    sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
dir=$PWD/.cache/wheels/$target-$src_hash
if ! compgen -G "$dir/*.whl" >/dev/null; then
    EMBER_WHEEL_TARGETS=$target EMBER_WHEEL_ONLY=1 bash scripts/build_wheels.sh "$dir.partial" >&2
    rm -rf "$dir" && mv "$dir.partial" "$dir"
else
    echo "cached: $(ls "$dir"/*.whl)" >&2
fi
ls "$dir"/*.whl
