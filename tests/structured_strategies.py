"""Hypothesis strategies for structured output: random JSON schemas, regexes and choices, each with an upper
bound on the bytes of any output it allows (None when unbounded), so a test knows when a request must finish.

A token is at least one byte, so a request whose constraint allows at most B bytes finishes within B tokens."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

Schema = dict[str, Any]

_KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
_ENUM_VALUES = st.one_of(st.text(alphabet="abcxyz ", max_size=5), st.integers(-99, 99), st.booleans(), st.none())
_PATTERNS = ["^[a-z]{1,4}$", "^[0-9]{2,3}$", "^(yes|no)$", "^x[ab]?y$"]
_PATTERN_BYTES = {"^[a-z]{1,4}$": 6, "^[0-9]{2,3}$": 5, "^(yes|no)$": 5, "^x[ab]?y$": 5}


def max_bytes(schema: Schema | bool, defs: dict[str, Any]) -> int | None:
    """The most bytes of compact JSON (", " and ": " separators) that `schema` allows; None when unbounded."""
    if schema is True or schema == {}:
        return None
    assert isinstance(schema, dict)
    if "$ref" in schema:
        return max_bytes(defs[schema["$ref"].split("/")[-1]], defs)
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    if "const" in schema:
        return len(json.dumps(schema["const"]))
    if "anyOf" in schema:
        bounds = [max_bytes(s, defs) for s in schema["anyOf"]]
        return None if None in bounds else max(b for b in bounds if b is not None)
    kind = schema.get("type")
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind == "number":
        return None
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    if kind == "string":
        if "pattern" in schema:
            return _PATTERN_BYTES[schema["pattern"]]
        # Each character may be a \uXXXX escape (6 bytes) or a 4-byte UTF-8 character.
        return 2 + 6 * schema["maxLength"] if "maxLength" in schema else None
    if kind == "array":
        item = max_bytes(schema["items"], defs)
        return None if item is None or "maxItems" not in schema else 2 + schema["maxItems"] * (item + 2)
    if kind == "object":
        total = 2
        for key, value in schema["properties"].items():
            bound = max_bytes(value, defs)
            if bound is None:
                return None
            total += len(json.dumps(key)) + 2 + bound + 2
        return total
    raise AssertionError(f"unknown schema {schema}")


def _leaf() -> st.SearchStrategy[Schema]:
    integer = st.tuples(st.integers(-500, 500), st.integers(0, 400)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}
    )
    number = st.tuples(st.integers(-50, 50), st.integers(1, 50)).map(
        lambda t: {"type": "number", "minimum": t[0], "maximum": t[0] + t[1]}
    )
    string = st.tuples(st.integers(0, 2), st.integers(0, 4)).map(
        lambda t: {"type": "string", "minLength": t[0], "maxLength": t[0] + t[1]}
    )
    pattern = st.sampled_from(_PATTERNS).map(lambda p: {"type": "string", "pattern": p})
    enum = st.lists(_ENUM_VALUES, min_size=1, max_size=4, unique_by=json.dumps).map(lambda v: {"enum": v})
    simple = st.sampled_from([{"type": "boolean"}, {"type": "null"}])
    return st.one_of(integer, number, string, pattern, enum, simple)


def _extend(children: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    obj = st.dictionaries(_KEYS, children, min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda required: {
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": False,
            }
        )
    )
    array = st.tuples(children, st.integers(0, 1), st.integers(0, 2)).map(
        lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[1] + t[2]}
    )
    any_of = st.lists(children, min_size=2, max_size=2).map(lambda alts: {"anyOf": alts})
    return st.one_of(obj, array, any_of)


@st.composite
def json_schemas(draw: st.DrawFn) -> Schema:
    """A random JSON schema: objects (required and optional keys), nested arrays, enums, integer and number bounds,
    string lengths and patterns, `anyOf`, and sometimes a `$defs` entry used through `$ref`."""
    body = draw(st.recursive(_leaf(), _extend, max_leaves=5))
    if not draw(st.booleans()):
        return body
    shared = draw(_leaf())
    return {
        "$defs": {"shared": shared},
        "type": "object",
        "properties": {"first": {"$ref": "#/$defs/shared"}, "rest": body},
        "required": ["first", "rest"],
        "additionalProperties": False,
    }


_ATOMS = st.one_of(
    st.sampled_from(list("abcxyz019")),
    # No \d or \w: Rust's regex and Python's re know different Unicode versions.
    st.sampled_from(["[abc]", "[a-f]", "[0-9]", "[xyz]", "(ab|cd)", r"\."]),
)


@st.composite
def regexes(draw: st.DrawFn) -> tuple[str, bool]:
    """A random regex over a small alphabet (classes, alternation, groups, ?, *, +, {m,n}) and whether its language
    is finite (no * or +)."""
    parts = []
    finite = True
    for _ in range(draw(st.integers(1, 4))):
        atom = draw(_ATOMS)
        quantifier = draw(st.sampled_from(["", "", "?", "*", "+", "{1,3}", "{2}"]))
        finite = finite and quantifier not in ("*", "+")
        if quantifier and len(atom) > 1 and not atom.startswith(("[", "(", "\\")):
            atom = f"({atom})"
        parts.append(atom + quantifier)
    if draw(st.booleans()):
        other = draw(_ATOMS)
        return f"({''.join(parts)}|{other})", finite
    return "".join(parts), finite


CHOICES = st.lists(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=8)
    | st.sampled_from(['say "hi"', "two\nlines", "back\\slash", "é ü 中"]),
    min_size=1,
    max_size=5,
    unique=True,
)
"""Lists of distinct choices, some with quotes, newlines, backslashes and non-ASCII text."""
