"""scripts/check_kernel_signatures.py: the PTX entry parser and the launcher comparison find
missing kernels, wrong argument counts and wrong widths (the real module is checked by
scripts/cuda_compile_check.sh)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "check_kernel_signatures", ROOT / "scripts" / "check_kernel_signatures.py"
)
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
sys.modules["check_kernel_signatures"] = check
_spec.loader.exec_module(check)

PTX = """
.version 9.0
.target sm_80
.visible .entry ember_scale_bf16(
\t.param .u64 ember_scale_bf16_param_0,
\t.param .u64 ember_scale_bf16_param_1,
\t.param .f32 ember_scale_bf16_param_2,
\t.param .u32 ember_scale_bf16_param_3
)
{
\tret;
}
.visible .entry ember_copy_bf16(
\t.param .u64 ember_copy_bf16_param_0,
\t.param .u64 ember_copy_bf16_param_1
)
{
\tret;
}
"""


def test_entries_are_parsed_with_their_parameter_types() -> None:
    entries = check.ptx_entries(PTX)
    assert entries == {
        "ember_scale_bf16": [".u64", ".u64", ".f32", ".u32"],
        "ember_copy_bf16": [".u64", ".u64"],
    }


def test_matching_launchers_pass_and_every_kind_of_mismatch_is_reported() -> None:
    entries = check.ptx_entries(PTX)
    good = check.parse_signatures("ember_scale_bf16 ptr ptr f32 i32\nember_copy_bf16 ptr i64\n")
    assert check.mismatches(entries, good) == []
    bad = check.parse_signatures(
        "ember_scale_bf16 ptr ptr i32 i32\n"
        "ember_copy_bf16 ptr\n"
        "ember_missing_bf16 ptr\n"
        "ember_scale_bf16 ptr i32 f32 i32\n"
    )
    assert check.mismatches(entries, bad) == [
        "ember_scale_bf16: argument 2 is i32 in the launcher but .f32 in the kernel",
        "ember_copy_bf16: the launcher passes 1 arguments, the kernel takes 2",
        "ember_missing_bf16: no such entry in the PTX",
        "ember_scale_bf16: argument 1 is i32 in the launcher but .u64 in the kernel",
    ]


def test_the_command_fails_on_a_mismatch(tmp_path: Path) -> None:
    (tmp_path / "k.ptx").write_text(PTX)
    (tmp_path / "ok.txt").write_text("ember_copy_bf16 ptr ptr\n")
    (tmp_path / "bad.txt").write_text("ember_copy_bf16 ptr f32\n")
    assert check.main([str(tmp_path / "k.ptx"), str(tmp_path / "ok.txt")]) == 0
    assert check.main([str(tmp_path / "k.ptx"), str(tmp_path / "bad.txt")]) == 1
