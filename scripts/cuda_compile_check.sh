#!/usr/bin/env bash
# Compiles every CUDA kernel file for sm_90a and sm_80 (+ compute_80 PTX) with the pinned
# CUDA 13.0 compiler from PyPI, then the whole module exactly as crates/ember-cuda/build.rs
# does. No GPU needed. Warnings are errors (flags in cuda/nvcc_flags.txt, shared with build.rs).
# Then the host's typed launchers (crates/ember-cuda/src/kernels.rs) are checked against the
# entries of the module's PTX: names, argument counts and widths; last, the module's SASS
# (cuobjdump + nvdisasm from their pinned wheels, in .cache/cuda-sass-venv; the toolkit wheels
# carry no disassembler) must show 16-byte loads in decode attention and silu_mul
# (scripts/check_sass.py).
#
#   scripts/cuda_compile_check.sh            # uses/creates .cache/cuda-venv (scripts/cuda_nvcc.sh)
#   EMBER_CUDA_VENV=/path scripts/cuda_compile_check.sh
#   NVCC=/path/to/nvcc scripts/cuda_compile_check.sh   # skip the venv
#   EMBER_FATBIN_OUT=.cache/ember_kernels.fatbin scripts/cuda_compile_check.sh  # keep the module
#     (the test command embeds it in the wheel through EMBER_FATBIN instead of compiling it again)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
NVCC="$(bash scripts/cuda_nvcc.sh)"
echo "nvcc: $NVCC ($("$NVCC" --version | tail -n1))"
# A disassembler reads older code, so these need not match the compiler's 13.0 pin.
sass_spec=(nvidia-cuda-cuobjdump==13.4.92 nvidia-cuda-nvdisasm==13.4.92)
sass_venv="${EMBER_CUDA_SASS_VENV:-$root/.cache/cuda-sass-venv}"
sass_bin="$(ls -d "$sass_venv"/lib/python3*/site-packages/nvidia/cu13/bin 2>/dev/null | head -n1 || true)"
if [[ -z "$sass_bin" || ! -x "$sass_bin/cuobjdump" || ! -x "$sass_bin/nvdisasm" ]]; then
  echo "installing ${sass_spec[*]} into $sass_venv"
  python3 -m venv "$sass_venv"
  "$sass_venv/bin/pip" install --quiet "${sass_spec[@]}"
  sass_bin="$(ls -d "$sass_venv"/lib/python3*/site-packages/nvidia/cu13/bin | head -n1)"
fi
mapfile -t flags < cuda/nvcc_flags.txt
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
jobs="${EMBER_CUDA_JOBS:-$(nproc)}"

compile() {  # file -> prints one status line; the log goes to $out/<name>.log
  local file="$1" name start status
  name="$(basename "$file" .cu)"
  start=$(date +%s.%N)
  if "$NVCC" "${flags[@]}" "$file" -o "$out/$name.fatbin" >"$out/$name.log" 2>&1; then
    status=ok
  else
    status=FAIL
  fi
  printf '%-4s %-28s %6.1fs\n' "$status" "$file" "$(echo "$(date +%s.%N) - $start" | bc)"
  [[ $status == ok ]] || { sed 's/^/     /' "$out/$name.log"; return 1; }
}
export -f compile
export NVCC out
export flags_str="${flags[*]}"

files=(cuda/*.cu)
start=$(date +%s)
failed=0
# Each op family alone (catches a file that only compiles inside the module), then the module.
printf '%s\n' "${files[@]}" | grep -v 'ember_kernels.cu$' |
  xargs -P "$jobs" -I{} bash -c 'flags=($flags_str); compile "$@"' _ {} || failed=1
bash -c 'flags=($flags_str); compile "$@"' _ cuda/ember_kernels.cu || failed=1
if [[ $failed == 0 ]]; then
  "$NVCC" -ptx -O3 -std=c++17 -arch=compute_80 cuda/ember_kernels.cu -o "$out/ember_kernels.ptx"
  cargo run -q -p ember-cuda --example kernel_signatures >"$out/signatures.txt"
  python3 scripts/check_kernel_signatures.py "$out/ember_kernels.ptx" "$out/signatures.txt" || failed=1
  PATH="$sass_bin:$PATH" "$sass_bin/cuobjdump" -sass "$out/ember_kernels.fatbin" >"$out/ember_kernels.sass"
  python3 scripts/check_sass.py "$out/ember_kernels.sass" || failed=1
  if [[ $failed == 0 && -n "${EMBER_FATBIN_OUT:-}" ]]; then
    cmp -s "$out/ember_kernels.fatbin" "$EMBER_FATBIN_OUT" || cp "$out/ember_kernels.fatbin" "$EMBER_FATBIN_OUT"
  fi
fi
elapsed=$(( $(date +%s) - start ))
if [[ $failed == 0 ]]; then
  echo "summary: all ${#files[@]} files compiled for sm_90a + sm_80, typed launchers match the PTX, 16-byte loads in the SASS, in ${elapsed}s"
else
  echo "summary: FAILED (see above) after ${elapsed}s"
  exit 1
fi
