#!/usr/bin/env bash
# Installs a built wheel into a fresh venv and runs it with no Rust toolchain on PATH: checks that
# `ember --version` and `ember.__version__` carry the workspace version (Cargo.toml), that
# `ember generate` answers on the default model, and prints the install time and the warm
# `import ember` time (which must stay under 0.5 s). Dependencies come from the package index
# (pip's cache makes a second run fast); EMBER_CACHE points at the default model.
#
#   bash scripts/check_wheel_install.sh dist/ember-*-manylinux_2_28_x86_64.whl
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=$(realpath "$1")
version=$(sed -nE '/^\[workspace.package\]/,/^\[/ s/^version = "(.*)"/\1/p' Cargo.toml)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
start=$(date +%s.%N)
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
install_s=$(echo "$(date +%s.%N) - $start" | bc)

# Only the venv and the system directories: no ~/.cargo/bin, no pyenv shims.
export PATH="$work/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
unset CARGO_HOME RUSTUP_HOME VIRTUAL_ENV PYTHONPATH
for tool in cargo rustc; do
    if command -v "$tool" >/dev/null; then
        echo "$tool is still on PATH ($(command -v "$tool")): the check would not prove the wheel needs no Rust" >&2
        exit 1
    fi
done
cd "$work"  # away from the source tree, so `import ember` finds the installed package only

got=$(ember --version)
[[ $got == "ember $version" ]] || { echo "ember --version printed '$got', expected 'ember $version'" >&2; exit 1; }
python -c "
import ember, sys
assert ember.__version__ == '$version', ember.__version__
assert ember._core.__file__.startswith('$work/venv/'), ember._core.__file__
print('import ember:', ember.__version__, 'from', ember._core.__file__)
"
import_s=$(python -c "
import time
t = time.perf_counter()
import ember
print(f'{time.perf_counter() - t:.3f}')
")
if (($(echo "$import_s >= 0.5" | bc))); then
    echo "warm 'import ember' took $import_s s (limit 0.5 s)" >&2
    exit 1
fi
text=$(ember generate "The capital of France is" --max-tokens 8 --threads 2)
echo "ember generate: '$text'"
[[ -n ${text//[[:space:]]/} ]] || { echo "ember generate printed nothing" >&2; exit 1; }
printf 'wheel %s: %.1f MiB, install %.1f s, warm import %.3f s\n' "$(basename "$wheel")" \
    "$(echo "$(stat -c %s "$wheel") / 1048576" | bc -l)" "$install_s" "$import_s"
