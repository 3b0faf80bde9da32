"""OpenAI tool calling on the chat endpoint: `tools` and `tool_choice` into a prompt and an output constraint, and
the generated text back into `message.tool_calls`.

- `tool_choice="required"`: the output is constrained to a JSON list of one or more calls
  (`[{"name": ..., "arguments": {...}}]`, one call when `parallel_tool_calls` is false), each a valid call of one
  of the given functions (its `parameters` schema).
- a named function: the output is constrained to that function's arguments (its `parameters` schema).
- `"auto"` (the default with tools): the output is free; calls written in the Hermes format
  (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, used by Qwen2.5 and Hermes templates) whose name is
  one of the tools and whose arguments are a JSON object become `tool_calls`; other text stays `content`.
- `"none"`: no constraint, no parsing.

A chat template that reads `tools` renders the tools and the conversation's tool calls itself. For a template
without a tool format (SmolLM2's ChatML, for one), Ember describes the tools and the Hermes call format in the
system message and writes earlier assistant tool calls into their content in that format, so `auto` works the same
way on any model (how well depends on the model: a 135M model rarely calls a tool unprompted)."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ember.server.errors import ApiError
from ember.server.structured import Constraint, constraint_error

_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class FunctionDefinition(BaseModel):
    """One function a model may call."""

    model_config = ConfigDict(extra="allow")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    """An entry of `tools`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: FunctionDefinition


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: an OpenAI-style id, the function name and its arguments as JSON text."""

    id: str
    name: str
    arguments: str

    @staticmethod
    def new_id() -> str:
        """A fresh call id, OpenAI-style."""
        return f"call_{secrets.token_hex(12)}"

    def as_dict(self) -> dict[str, Any]:
        """`message.tool_calls[i]`."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _parameters(function: FunctionDefinition) -> dict[str, Any]:
    return function.parameters if function.parameters is not None else {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools do: the mode, the functions, the constraint (required / named)."""

    mode: Literal["none", "auto", "required", "named"]
    functions: dict[str, FunctionDefinition]
    constraint: Constraint | None
    named: str | None = None

    @property
    def parses_calls(self) -> bool:
        """True when the output may hold tool calls."""
        return self.mode != "none" and bool(self.functions)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of a finished output; calls are empty when the text holds none."""
        if self.mode == "named":
            return None, [ToolCall(ToolCall.new_id(), self.named or "", text)]
        if self.mode == "required":
            try:
                calls = json.loads(text)
            except ValueError:
                return text, []
            return None, [ToolCall(ToolCall.new_id(), c["name"], json.dumps(c["arguments"])) for c in calls]
        if self.mode == "auto":
            return self._parse_hermes(text)
        return text, []

    def _parse_hermes(self, text: str) -> tuple[str | None, list[ToolCall]]:
        calls = []
        for block in _CALL_BLOCK.findall(text):
            try:
                call = json.loads(block)
            except ValueError:
                return text, []
            if not (isinstance(call, dict) and call.get("name") in self.functions):
                return text, []
            arguments = call.get("arguments", {})
            if not isinstance(arguments, dict):
                return text, []
            calls.append(ToolCall(ToolCall.new_id(), call["name"], json.dumps(arguments)))
        if not calls:
            return text, []
        content = _CALL_BLOCK.sub("", text).strip()
        return content or None, calls


def plan_tools(
    tools: list[ToolDefinition] | None, tool_choice: str | dict[str, Any] | None, parallel_tool_calls: bool
) -> ToolPlan:
    """The plan of a request; a 400 naming `tool_choice` / `tools` for a choice that cannot be met."""
    functions = {t.function.name: t.function for t in tools or []}
    if len(functions) != len(tools or []):
        raise ApiError(400, "tools: function names must be unique", "tools")
    if tool_choice is None:
        tool_choice = "auto" if functions else "none"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise ApiError(
                400, "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', ...}", "tool_choice"
            )
        if name not in functions:
            raise ApiError(400, f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
        constraint = _json_constraint(_parameters(functions[name]), "tools")
        return ToolPlan("named", functions, constraint, name)
    if tool_choice not in ("none", "auto", "required"):
        raise ApiError(
            400,
            f"tool_choice must be 'none', 'auto', 'required' or a named function, got {tool_choice!r}",
            "tool_choice",
        )
    if tool_choice != "none" and not functions:
        raise ApiError(400, f"tool_choice {tool_choice!r} needs tools", "tool_choice")
    if tool_choice == "required":
        alternatives = [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": _parameters(f)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, f in functions.items()
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": alternatives}}
        if not parallel_tool_calls:
            schema["maxItems"] = 1
        return ToolPlan("required", functions, _json_constraint(schema, "tools"))
    return ToolPlan(tool_choice, functions, None)  # type: ignore[arg-type]


def _json_constraint(schema: dict[str, Any], param: str) -> Constraint:
    from ember._core import InvalidRequestError
    from ember.sampling_params import StructuredOutputsParams

    try:
        return Constraint(StructuredOutputsParams(json=schema), param)
    except InvalidRequestError as exc:
        raise constraint_error(param, exc) from None


def template_messages(messages: list[dict[str, Any]], plan: ToolPlan, renders_tools: bool) -> list[dict[str, Any]]:
    """The conversation as the chat template gets it: tool-call arguments as objects (as Hugging Face templates
    expect); for a template without a tool format, the tools described in the system message and earlier calls
    written into the assistant's content."""
    out = []
    for message in messages:
        message = dict(message)
        calls = message.get("tool_calls")
        if calls:
            message["tool_calls"] = [_with_argument_object(c) for c in calls]
            if not renders_tools:
                blocks = "".join(
                    "<tool_call>"
                    + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
                    + "</tool_call>"
                    for c in message["tool_calls"]
                )
                message["content"] = (message.get("content") or "") + blocks
        out.append(message)
    if renders_tools or plan.mode == "none" or not plan.functions:
        return out
    preamble = _tools_preamble(plan)
    if out and out[0]["role"] in ("system", "developer"):
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{preamble}"}
    else:
        out.insert(0, {"role": "system", "content": preamble})
    return out


def _with_argument_object(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments)
        except ValueError:
            raise ApiError(400, "messages: tool_calls arguments must be a JSON object string", "messages") from None
    return {**call, "function": function}


def _tools_preamble(plan: ToolPlan) -> str:
    described = [
        {"name": f.name, "description": f.description or "", "parameters": _parameters(f)}
        for f in plan.functions.values()
    ]
    return (
        "You can call these functions:\n"
        + "\n".join(json.dumps(d) for d in described)
        + '\nTo call one, reply with <tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>.'
    )
