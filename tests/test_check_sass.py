"""scripts/check_sass.py on small SASS listings: a wide-load kernel without LDG.E.128 in any
architecture fails, and a listing without those kernels fails too (nothing was checked)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import check_sass


def listing(arch_functions: dict[str, dict[str, str]]) -> str:
    lines = []
    for arch, funcs in arch_functions.items():
        lines += [f"arch = {arch}", f"\tcode for {arch}"]
        for name, body in funcs.items():
            lines += [f"\t\tFunction : {name}", f"        /*0010*/   {body} ;"]
    return "\n".join(lines)


def test_wide_loads_pass_and_narrow_ones_fail():
    wide = "LDG.E.128.CONSTANT R4, desc[UR4][R2.64]"
    narrow = "LDG.E.U16.CONSTANT R4, desc[UR4][R2.64]"
    good = listing({"sm_90a": {"ember_paged_decode_attention_bf16_h128_b16": wide, "ember_silu_mul_bf16": wide}})
    assert check_sass.problems(good) == []
    bad = listing(
        {
            "sm_90a": {"ember_paged_decode_attention_bf16_h128_b16": wide, "ember_rope_bf16": narrow},
            "sm_80": {"ember_paged_decode_attention_bf16_h128_b16": narrow},
        }
    )
    assert check_sass.problems(bad) == ["sm_80 ember_paged_decode_attention_bf16_h128_b16: no LDG.E.128"]
    assert check_sass.problems(listing({"sm_90a": {"ember_rope_bf16": wide}}))[0].startswith("no function named")
