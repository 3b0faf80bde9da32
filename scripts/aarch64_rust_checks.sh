#!/usr/bin/env bash
# Lints ember-core and ember-cpu for aarch64-unknown-linux-gnu (clippy -D warnings, sid's
# clippy-driver), then runs ember-cpu's Rust unit tests for that target under qemu-aarch64, once per emulated
# CPU: `max` (NEON with the dotprod extension: the NeonDotprod, Neon and Scalar kernel families)
# and `cortex-a53` (NEON without dotprod: Neon and Scalar). The kernel tests compare every family
# the CPU runs with the scalar reference bit for bit; this script also checks, from the line the
# large-matmul test prints, that each CPU exercised exactly the families expected of it.
# Compiled by Debian sid's rustc (scripts/aarch64_toolchain.sh), linked by zig (the `ziglang`
# wheel pinned in requirements/test.txt, taken from $EMBER_BUILD_VENV, default .venv).
# Emulated timings say nothing about speed on real ARM hardware.
#
#   bash scripts/aarch64_rust_checks.sh [extra cargo test arguments, e.g. a test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv="${EMBER_BUILD_VENV:-$root/.venv}"
toolchain=$(bash scripts/aarch64_toolchain.sh)
qemu=$toolchain/qemu/usr/bin/qemu-aarch64-static
"$venv/bin/python" -m ziglang version >/dev/null ||
    { echo "no ziglang in $venv: pip install $(grep -E '^ziglang==' requirements/test.txt)" >&2; exit 1; }

# zig as the C linker, for glibc 2.28 like the wheels; rustc's `-lgcc_s` is zig's libunwind.
mkdir -p "$toolchain/bin"
cat >"$toolchain/bin/aarch64-zig-cc" <<WRAP
#!/bin/sh
for arg; do
    shift
    case "\$arg" in
        -lgcc_s) set -- "\$@" -lunwind ;;
        *) set -- "\$@" "\$arg" ;;
    esac
done
exec "$venv/bin/python" -m ziglang cc -target aarch64-linux-gnu.2.28 "\$@"
WRAP
chmod +x "$toolchain/bin/aarch64-zig-cc"

export RUSTC=$toolchain/bin/rustc
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}/aarch64
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$toolchain/bin/aarch64-zig-cc
start=$(date +%s)
# As `cargo clippy` runs it, with sid's clippy-driver (the host's belongs to another rustc).
RUSTC_WORKSPACE_WRAPPER=$toolchain/bin/clippy-driver CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" \
    cargo check -p ember-core -p ember-cpu --all-targets --target aarch64-unknown-linux-gnu
echo "aarch64 clippy -D warnings (ember-core, ember-cpu): clean ($(($(date +%s) - start)) s)"
start=$(date +%s)
cargo test -p ember-cpu --lib --target aarch64-unknown-linux-gnu --no-run
echo "aarch64 test build: $(($(date +%s) - start)) s"

for cpu in max cortex-a53; do
    case $cpu in
        max) want="[Scalar, Neon, NeonDotprod]" ;;
        cortex-a53) want="[Scalar, Neon]" ;;
    esac
    start=$(date +%s)
    log=$CARGO_TARGET_DIR/cargo-test-$cpu.log
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$qemu -L $toolchain/sysroot -cpu $cpu" \
        cargo test -p ember-cpu --lib --target aarch64-unknown-linux-gnu "$@" 2>&1 | tee "$log"
    got=$(grep -oE 'instruction sets exercised \[[^]]*\]' "$log" | head -n1 || true)
    if [[ $got != "instruction sets exercised $want" ]]; then
        echo "qemu -cpu $cpu: expected the kernel families $want, the tests printed '${got:-nothing}'" >&2
        exit 1
    fi
    echo "qemu -cpu $cpu: $got; $(grep -E '^test result:' "$log" | tail -n1) ($(($(date +%s) - start)) s)"
done
