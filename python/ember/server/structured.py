"""The constraint of an OpenAI request body: `response_format` (json_object, json_schema), vLLM's
`structured_outputs` object, or the older `guided_*` fields, as one `StructuredOutputsParams` and the body
field it came from (errors, including grammars that do not compile, are 400s naming that field)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ember._core import InvalidRequestError
from ember.sampling_params import StructuredOutputsParams
from ember.server.errors import ApiError

GUIDED_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
"""vLLM's older per-constraint fields and the StructuredOutputsParams field each one sets."""


@dataclass(frozen=True)
class Constraint:
    """A request's output constraint and the body field that set it."""

    params: StructuredOutputsParams
    param: str


def constraint_error(param: str, exc: InvalidRequestError) -> ApiError:
    """A 400 naming the body field `param` for a constraint the engine refused."""
    message = str(exc).removeprefix("structured_outputs ")
    return ApiError(400, f"{param}: {message}", param)


def _make(param: str, **fields: Any) -> Constraint:
    try:
        return Constraint(StructuredOutputsParams(**fields), param)
    except InvalidRequestError as exc:
        raise constraint_error(param, exc) from None


def from_response_format(response_format: dict[str, Any]) -> Constraint | None:
    """OpenAI's `response_format`: text (no constraint), json_object, or json_schema with its `schema`."""
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return _make("response_format", json_object=True)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ApiError(
                400, "response_format.json_schema must be an object with a 'schema' object", "response_format"
            )
        # OpenAI allows the schema to be left out: any JSON object then.
        schema = spec.get("schema")
        if schema is None:
            return _make("response_format", json_object=True)
        return _make("response_format", json=schema)
    raise ApiError(
        400, f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}", "response_format"
    )


def body_constraint(
    response_format: dict[str, Any] | None,
    structured_outputs: dict[str, Any] | None,
    guided: dict[str, Any],
    guided_whitespace_pattern: str | None,
) -> Constraint | None:
    """The one constraint of a body; setting more than one of `response_format`, `structured_outputs` and the
    `guided_*` fields is a 400 naming them."""
    found: list[Constraint] = []
    if response_format is not None:
        constraint = from_response_format(response_format)
        if constraint is not None:
            found.append(constraint)
    if structured_outputs is not None:
        found.append(_make("structured_outputs", **structured_outputs))
    set_guided = {name: value for name, value in guided.items() if value is not None}
    if set_guided:
        fields = {GUIDED_FIELDS[name]: value for name, value in set_guided.items()}
        if guided_whitespace_pattern is not None:
            fields["whitespace_pattern"] = guided_whitespace_pattern
        found.append(_make(next(iter(set_guided)) if len(set_guided) == 1 else "guided_json", **fields))
    if len(found) > 1:
        names = ", ".join(c.param for c in found)
        raise ApiError(400, f"set at most one output constraint; got {names}", found[1].param)
    return found[0] if found else None
