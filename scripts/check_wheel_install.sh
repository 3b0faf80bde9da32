#!/usr/bin/env bash
# Installs a built wheel into a fresh venv and runs it with no Rust toolchain on PATH: checks that
# `ember --version` and `ember.__version__` carry the workspace version (Cargo.toml), that
# `ember generate` answers on the default model, and prints the install time and the warm
# `import ember` time (natively it must stay under 0.5 s), and that the core install leaves out
# the web stack (the `serve` extra). An aarch64 wheel runs under qemu-aarch64 -cpu max (NEON with
# dotprod) with Debian's aarch64 CPython (scripts/aarch64_toolchain.sh), and also greedy-decodes
# the default model with EMBER_CPU_ISA=scalar, neon and neon-dotprod: the token ids must be
# identical. Each step's time is printed (emulated: no speed figure for real ARM hardware).
# Dependencies come from the package index (pip's cache makes a second run fast); EMBER_CACHE
# points at the model.
#
#   bash scripts/check_wheel_install.sh dist/ember-*-manylinux_2_28_x86_64.whl
#   bash scripts/check_wheel_install.sh dist/ember-*-manylinux_2_28_aarch64.whl
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=$(realpath "$1")
version=$(sed -nE '/^\[workspace.package\]/,/^\[/ s/^version = "(.*)"/\1/p' Cargo.toml)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ $wheel == *_aarch64.whl ]]; then
    toolchain=$(bash scripts/aarch64_toolchain.sh)
    qemu=$toolchain/qemu/usr/bin/qemu-aarch64-static
    run() { "$qemu" -L "$toolchain/sysroot" -cpu max "$@"; }
    base_python=$toolchain/sysroot/usr/bin/python3.13
    import_limit_s=0  # emulated: reported, not judged
else
    run() { "$@"; }
    base_python=$(command -v python3)
    import_limit_s=0.5
fi
py=$work/venv/bin/python
if [[ $wheel == *_aarch64.whl ]]; then
    # Without binfmt_misc an emulated process cannot start another aarch64 one (ensurepip does),
    # so pip runs from Debian's pip wheel (pip supports running from its wheel file).
    run "$base_python" -m venv --without-pip "$work/venv"
    pip=("$py" "$(ls "$toolchain"/sysroot/usr/share/python-wheels/pip-*.whl | head -n1)/pip")
else
    "$base_python" -m venv "$work/venv"
    pip=("$py" -m pip)
fi
ember() { run "$py" "$work/venv/bin/ember" "$@"; }
start=$(date +%s.%N)
run "${pip[@]}" install --quiet --disable-pip-version-check "$wheel"
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
run "$py" -c "
import ember, platform
assert ember.__version__ == '$version', ember.__version__
assert ember._core.__file__.startswith('$work/venv/'), ember._core.__file__
print('import ember:', ember.__version__, 'on', platform.machine(), 'from', ember._core.__file__)
"
import_s=$(run "$py" -c "
import time
t = time.perf_counter()
import ember
print(f'{time.perf_counter() - t:.3f}')
")
if [[ $import_limit_s != 0 ]] && (($(echo "$import_s >= $import_limit_s" | bc))); then
    echo "warm 'import ember' took $import_s s (limit $import_limit_s s)" >&2
    exit 1
fi
start=$(date +%s)
text=$(ember generate "The capital of France is" --max-tokens 8 --threads 2)
echo "ember generate: '$text' ($(($(date +%s) - start)) s)"
[[ -n ${text//[[:space:]]/} ]] || { echo "ember generate printed nothing" >&2; exit 1; }
# The core install is lean: the web stack is the `serve` extra, and `ember serve` says so.
if serve_err=$(ember serve model.gguf 2>&1) || [[ $serve_err != *"pip install 'ember[serve]'"* ]]; then
    echo "ember serve without the serve extra: expected a failure naming the extra, got: $serve_err" >&2
    exit 1
fi
if [[ $wheel == *_aarch64.whl ]]; then
    # The NEON kernel families against the scalar reference on the real model: same token ids.
    run "$py" -c "
import os, time
from ember import Engine, SamplingParams
ids = {}
for isa in ('scalar', 'neon', 'neon-dotprod'):
    os.environ['EMBER_CPU_ISA'] = isa
    start = time.perf_counter()
    engine = Engine(num_threads=2, kv_cache_memory_bytes=16 << 20, max_model_len=64)
    (out,) = engine.generate(['The capital of France is'], SamplingParams(max_tokens=8, temperature=0.0))
    ids[isa] = list(out.outputs[0].token_ids)
    del engine
    print(f'EMBER_CPU_ISA={isa}: token ids {ids[isa]} ({time.perf_counter() - start:.0f} s, emulated)')
assert len(ids['scalar']) == 8, ids
assert ids['neon'] == ids['scalar'] and ids['neon-dotprod'] == ids['scalar'], ids
print('NEON and NEON dotprod kernels: the scalar reference\'s token ids')
"
fi
printf 'wheel %s: %.1f MiB, install %.1f s, warm import %.3f s\n' "$(basename "$wheel")" \
    "$(echo "$(stat -c %s "$wheel") / 1048576" | bc -l)" "$install_s" "$import_s"
