"""Checks the SASS of the kernel module (`cuobjdump -sass` output) for 16-byte global loads where
the kernels mean to make them: every function whose name starts with one of `WIDE_LOAD_KERNELS`
must hold an `LDG.E.128` in every architecture's code. A 16-byte vector read through a reference
into global memory compiles to 2-byte loads instead (the slow spot cuda/common.cuh's `unpack16`
had), which no numerical test notices.

    python3 scripts/check_sass.py module.sass"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: Kernels whose inner loops read 16-byte vectors from global memory.
WIDE_LOAD_KERNELS = ("ember_paged_decode_attention_", "ember_silu_mul_")
WIDE_LOAD = re.compile(r"\bLDG\.E\.128\b")
FUNCTION = re.compile(r"^\s*Function : (\S+)")
ARCH = re.compile(r"^\s*code for (sm_\w+)")


def functions(sass: str) -> dict[tuple[str, str], str]:
    """(arch, function name) -> that function's SASS text."""
    out: dict[tuple[str, str], list[str]] = {}
    arch, current = "?", None
    for line in sass.splitlines():
        if m := ARCH.match(line):
            arch, current = m[1], None
        elif m := FUNCTION.match(line):
            current = (arch, m[1])
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {key: "\n".join(lines) for key, lines in out.items()}


def problems(sass: str) -> list[str]:
    """Every wide-load kernel without a 16-byte load, or a note that none was found at all."""
    found = {key: text for key, text in functions(sass).items() if key[1].startswith(WIDE_LOAD_KERNELS)}
    if not found:
        return [f"no function named {' or '.join(p + '*' for p in WIDE_LOAD_KERNELS)} in the SASS"]
    return [
        f"{arch} {name}: no LDG.E.128" for (arch, name), text in sorted(found.items()) if not WIDE_LOAD.search(text)
    ]


def main() -> int:
    sass = Path(sys.argv[1]).read_text()
    bad = problems(sass)
    for line in bad:
        print(f"FAIL {line}")
    checked = sum(1 for _, name in functions(sass) if name.startswith(WIDE_LOAD_KERNELS))
    if not bad:
        print(f"ok   SASS: {checked} decode-attention and silu_mul functions use 16-byte loads (LDG.E.128)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
