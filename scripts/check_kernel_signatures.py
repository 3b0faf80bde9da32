#!/usr/bin/env python3
"""Checks the host's typed kernel launchers against the compiled kernels.

    python scripts/check_kernel_signatures.py ember_kernels.ptx signatures.txt

`signatures.txt` is what `cargo run -p ember-cuda --example kernel_signatures` prints (one
launcher per line: `symbol kind kind ...`, kinds `ptr`, `i32`, `i64`, `f32`); the PTX comes
from `nvcc -ptx cuda/ember_kernels.cu`. Every launcher must name an `.entry` of the PTX with
the same number of parameters, each of the same width and float-ness. Exits 1 on a mismatch.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# PTX parameter types each launcher kind may be compiled to.
_PTX_TYPES = {
    "ptr": {".u64", ".b64", ".s64"},
    "i64": {".u64", ".b64", ".s64"},
    "i32": {".u32", ".b32", ".s32"},
    "f32": {".f32"},
}
_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)", re.S)
_PARAM = re.compile(r"\.param\s+(\.\w+)\s+\w+")


def ptx_entries(ptx: str) -> dict[str, list[str]]:
    """Every `.entry` of a PTX module with its parameter types, in order."""
    return {name: _PARAM.findall(params) for name, params in _ENTRY.findall(ptx)}


def mismatches(entries: dict[str, list[str]], signatures: list[tuple[str, list[str]]]) -> list[str]:
    """What is wrong with each launcher; empty when every one matches its entry."""
    problems = []
    for symbol, kinds in signatures:
        types = entries.get(symbol)
        if types is None:
            problems.append(f"{symbol}: no such entry in the PTX")
            continue
        if len(types) != len(kinds):
            problems.append(f"{symbol}: the launcher passes {len(kinds)} arguments, the kernel takes {len(types)}")
            continue
        for i, (kind, ptx_type) in enumerate(zip(kinds, types, strict=True)):
            if ptx_type not in _PTX_TYPES.get(kind, set()):
                problems.append(f"{symbol}: argument {i} is {kind} in the launcher but {ptx_type} in the kernel")
    return problems


def parse_signatures(text: str) -> list[tuple[str, list[str]]]:
    """The launcher listing as (symbol, kinds) pairs."""
    return [(line.split()[0], line.split()[1:]) for line in text.splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    entries = ptx_entries(Path(argv[0]).read_text())
    signatures = parse_signatures(Path(argv[1]).read_text())
    problems = mismatches(entries, signatures)
    for problem in problems:
        print(f"MISMATCH {problem}")
    if not signatures:
        problems.append("no launchers listed")
    status = "FAILED" if problems else "ok"
    print(f"kernel signatures: {status} ({len(signatures)} launchers, {len(entries)} PTX entries)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
