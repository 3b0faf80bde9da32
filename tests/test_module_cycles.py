"""scripts/module_cycles.py: the module graphs of ember-model and ember-cuda have no circle, and
the checker finds circles (and only circles) in small crates written here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("module_cycles", ROOT / "scripts" / "module_cycles.py")
assert _spec is not None and _spec.loader is not None
module_cycles = importlib.util.module_from_spec(_spec)
sys.modules["module_cycles"] = module_cycles
_spec.loader.exec_module(module_cycles)


def _crate(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("crate", ["ember-model", "ember-cuda"])
def test_the_crates_have_no_module_circle(crate: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert module_cycles.main([str(ROOT / "crates" / crate)]) == 0
    out = capsys.readouterr().out
    assert "module circles: none" in out
    # The listing names real edges (so the parser saw the files).
    edge = {"ember-model": "engine::runner -> models", "ember-cuda": "backend -> step"}[crate]
    assert any(line.strip().startswith(edge) for line in out.splitlines()), out


def test_a_circle_between_sibling_folders_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crate = _crate(
        tmp_path,
        {
            "lib.rs": "pub mod formats;\npub mod text;\nmod util;\n",
            "formats/mod.rs": "pub mod gguf;\n",
            "formats/gguf.rs": "use crate::util::helper;\n// use crate::text::x; (a comment is no edge)\n",
            "text/mod.rs": "pub mod tokenizer;\n",
            "text/tokenizer.rs": "use crate::{formats::gguf::GgufFile, util};\n",
            "util.rs": "pub fn helper() { let _ = crate::text::tokenizer::Tokenizer::new(); }\n",
        },
    )
    assert module_cycles.main([str(crate), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "CIRCLE among the modules of crate" in out
    for hop in (
        "text::tokenizer uses formats::gguf at src/text/tokenizer.rs:1",
        "formats::gguf uses util at src/formats/gguf.rs:1",
        "util uses text::tokenizer at src/util.rs:1",
    ):
        assert hop in out, out


def test_children_using_their_parent_is_no_circle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crate = _crate(
        tmp_path,
        {
            "lib.rs": "pub mod tokenizer;\n",
            "tokenizer/mod.rs": "mod bpe;\nmod vocab;\nuse bpe::Bpe;\npub struct Tokenizer;\n",
            "tokenizer/bpe.rs": "use super::vocab::Vocab;\nuse super::Tokenizer;\npub struct Bpe;\n",
            "tokenizer/vocab.rs": "pub struct Vocab;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        },
    )
    assert module_cycles.main([str(crate)]) == 0
    out = capsys.readouterr().out
    assert "tokenizer::bpe -> tokenizer::vocab" in out
    assert "tokenizer -> tokenizer::bpe" in out


def test_path_attributes_and_grouped_uses_resolve(tmp_path: Path) -> None:
    crate = _crate(
        tmp_path,
        {
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": '#[cfg(test)]\n#[path = "a_tests.rs"]\nmod tests;\n',
            "a_tests.rs": "use crate::b::{c::{Deep, Other as O}, Shallow};\n",
            "b/mod.rs": "pub mod c;\n",
            "b/c.rs": "",
        },
    )
    modules = module_cycles.module_files(crate / "src")
    assert modules[crate / "src" / "a_tests.rs"] == ("a", "tests")
    edges = {(e.source, e.target) for e in module_cycles.edges_of(modules, crate)}
    assert (("a", "tests"), ("b", "c")) in edges
    assert (("a", "tests"), ("b",)) in edges
