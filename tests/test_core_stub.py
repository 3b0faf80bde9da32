"""python/ember/_core.pyi against the built extension: every name the extension exports is in the stub and
every stubbed name exists, class by class; where the extension carries a text signature, the stub's
parameter names and order are the same. Type checkers and editors read the stub, so drift is a bug."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from ember import _core

STUB = Path(__file__).resolve().parents[1] / "python" / "ember" / "_core.pyi"


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def _defined_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names a stub body defines (functions, classes, annotated attributes), with their nodes."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _public(names: list[str]) -> set[str]:
    return {n for n in names if not n.startswith("__") or n == "__version__"}


def _own_attributes(cls: type) -> set[str]:
    """What a class adds over its bases (PyO3 methods, getters and class attributes)."""
    inherited = set().union(*(dir(base) for base in cls.__mro__[1:]))
    return {n for n in dir(cls) if not n.startswith("__") and n not in inherited}


def _stub_parameters(node: ast.FunctionDef) -> list[str]:
    args = node.args
    return [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs] if a.arg != "self"]


def test_module_names_match() -> None:
    stubbed = _public(list(_defined_names(_stub_tree().body)))
    exported = _public(dir(_core))
    assert exported - stubbed == set(), "exported by the extension but missing from _core.pyi"
    assert stubbed - exported == set(), "in _core.pyi but not exported by the extension"


@pytest.mark.parametrize("class_name", sorted(n for n in dir(_core) if isinstance(getattr(_core, n), type)))
def test_class_members_match(class_name: str) -> None:
    node = _defined_names(_stub_tree().body)[class_name]
    assert isinstance(node, ast.ClassDef)
    stubbed = {n for n in _defined_names(node.body) if not n.startswith("__")}
    exported = _own_attributes(getattr(_core, class_name))
    # Exceptions declare their extra attributes (e.g. `request_ids`) on instances, not on the class.
    if issubclass(getattr(_core, class_name), BaseException):
        exported |= stubbed
    assert exported - stubbed == set(), f"{class_name}: members missing from _core.pyi"
    assert stubbed - exported == set(), f"{class_name}: stubbed members the extension lacks"


def _signature_pairs() -> list[tuple[str, object, ast.FunctionDef]]:
    """(qualified name, runtime object, stub node) of every stubbed function and method (properties aside)."""
    pairs = []
    for name, node in _defined_names(_stub_tree().body).items():
        if isinstance(node, ast.FunctionDef):
            pairs.append((name, getattr(_core, name), node))
        elif isinstance(node, ast.ClassDef):
            cls = getattr(_core, name)
            for member, sub in _defined_names(node.body).items():
                is_property = isinstance(sub, ast.FunctionDef) and any(
                    isinstance(d, ast.Name) and d.id in ("property", "staticmethod") for d in sub.decorator_list
                )
                if isinstance(sub, ast.FunctionDef) and not is_property:
                    target = cls if member == "__init__" else getattr(cls, member, None)
                    if target is not None:
                        pairs.append((f"{name}.{member}", target, sub))
    return pairs


@pytest.mark.parametrize("qualified, runtime, node", _signature_pairs(), ids=lambda v: v if isinstance(v, str) else "")
def test_signatures_match(qualified: str, runtime: object, node: ast.FunctionDef) -> None:
    signature = inspect.signature(runtime)  # type: ignore[arg-type]
    runtime_names = [p for p in signature.parameters if p != "self"]
    assert runtime_names == _stub_parameters(node), qualified
