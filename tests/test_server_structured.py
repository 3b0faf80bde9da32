"""Structured output and tool calling through the OpenAI server on the default model: `response_format`,
vLLM's `structured_outputs` and `guided_*` fields, 400s naming the field, the official client's
`chat.completions.parse` with a pydantic model, and a tool-call round trip (also streamed)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from ember import AsyncEngine
from ember.server.app import ServerConfig

from server_harness import running_server, wait_idle

MODEL = "smollm2-structured"
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "population": {"type": "integer", "minimum": 0, "maximum": 10**8},
    },
    "required": ["city", "population"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 12}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def served(default_gguf: Path) -> Iterator[tuple[str, AsyncEngine]]:
    engine = AsyncEngine(str(default_gguf), kv_cache_memory_bytes=64 << 20, max_model_len=1024)
    with running_server(engine, ServerConfig(model_name=MODEL)) as base_url:
        yield base_url, engine


@pytest.fixture(scope="module")
def client(served: tuple[str, AsyncEngine]) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0], api_key="none", max_retries=0, timeout=120)


def post(served: tuple[str, AsyncEngine], path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{served[0]}{path}", json={"model": MODEL, **body}, timeout=120)


def test_response_format_json_schema_and_json_object(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name a large city and its population as JSON."}]
    schema_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
    for response_format in (schema_format, {"type": "json_object"}):
        out = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=60, temperature=0, response_format=response_format
        )
        choice = out.choices[0]
        assert choice.finish_reason == "stop", choice
        value = json.loads(choice.message.content)
        if response_format is schema_format:
            jsonschema.validate(value, CITY_SCHEMA)
        else:
            assert isinstance(value, dict)


class City(BaseModel):
    name: str
    country: str
    is_capital: bool


def test_openai_parse_returns_a_pydantic_object(client: openai.OpenAI) -> None:
    out = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        max_tokens=80,
        temperature=0,
    )
    parsed = out.choices[0].message.parsed
    assert isinstance(parsed, City), out.choices[0].message.content


@pytest.mark.parametrize("endpoint", ["/completions", "/chat/completions"])
@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2}", t)),
        ({"structured_outputs": {"choice": ["red", "green"]}}, lambda t: t in ("red", "green")),
        ({"guided_choice": ["yes", "no"]}, lambda t: t in ("yes", "no")),
        ({"guided_regex": "(ab){1,3}c"}, lambda t: re.fullmatch("(ab){1,3}c", t)),
        ({"guided_json": CITY_SCHEMA}, lambda t: jsonschema.validate(json.loads(t), CITY_SCHEMA) is None),
        ({"guided_grammar": 'start: "x" /[0-9]/'}, lambda t: re.fullmatch("x[0-9]", t)),
    ],
)
def test_vllm_fields_on_both_endpoints(served: tuple[str, AsyncEngine], endpoint: str, fields: dict, check) -> None:
    prompt = {"prompt": "Answer:"} if endpoint == "/completions" else {"messages": ASK}
    r = post(served, endpoint, {**prompt, **fields, "max_tokens": 40, "temperature": 1.0, "seed": 4, "n": 2})
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        text = choice["text"] if endpoint == "/completions" else choice["message"]["content"]
        assert choice["finish_reason"] == "stop" and check(text), (fields, text)


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
            "response_format",
            "json does not compile",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format", "must be 'text', 'json_object' or 'json_schema'"),
        ({"structured_outputs": {"regex": "a("}}, "structured_outputs", "regex does not compile"),
        ({"structured_outputs": {"grammar": "start: nothing_here"}}, "structured_outputs", "grammar does not compile"),
        ({"structured_outputs": {}}, "structured_outputs", "exactly one of"),
        ({"structured_outputs": {"regex": "a", "other": 1}}, "structured_outputs", "other"),
        ({"guided_regex": "(", "structured_outputs": {"regex": "a"}}, "guided_regex", "at most one"),
        ({"guided_json": "{bad"}, "guided_json", "not valid JSON"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not in tools",
        ),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
            "cannot be combined",
        ),
    ],
)
def test_bad_constraints_are_400s_naming_the_field(
    served: tuple[str, AsyncEngine], fields: dict, param: str, message: str
) -> None:
    r = post(served, "/chat/completions", {"messages": ASK, "max_tokens": 5, **fields})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"], error
    wait_idle(served[1])


def _call_and_answer(client: openai.OpenAI, tool_choice: object, stream: bool) -> None:
    """A full round trip: the model calls get_weather, the tool answers, the model replies in text."""
    kwargs = dict(model=MODEL, messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], max_tokens=60, temperature=0)
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for chunk in client.chat.completions.create(**kwargs, tool_choice=tool_choice, stream=True):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    call["name"] += (delta.function.name or "") if delta.function else ""
                    call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        assert finish == "tool_calls" and calls
        first = calls[0]
        call_id, name, arguments = first["id"], first["name"], first["arguments"]
    else:
        out = client.chat.completions.create(**kwargs, tool_choice=tool_choice)
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        call = choice.message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    assert call_id and call_id.startswith("call_")
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["function"]["parameters"])
    conversation = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=conversation, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=30, temperature=0
    )
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tool_choice", ["named", "required"])
def test_tool_call_round_trip(client: openai.OpenAI, tool_choice: str, stream: bool) -> None:
    choice: object = tool_choice
    if tool_choice == "named":
        choice = {"type": "function", "function": {"name": "get_weather"}}
    if tool_choice == "required":
        # Only one tool, so the required call must be get_weather.
        out = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=80, temperature=0
        )
        assert out.choices[0].finish_reason == "tool_calls"
        (call,) = out.choices[0].message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
        return
    _call_and_answer(client, choice, stream)


def test_required_with_parallel_calls_off_makes_one_call(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=1.0,
        seed=2,
        stream=False,
    )
    assert out.choices[0].finish_reason == "tool_calls"
    (call,) = out.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time")


def test_auto_parses_hermes_calls_and_keeps_plain_text(served: tuple[str, AsyncEngine]) -> None:
    # Force a Hermes-format call through a grammar-free trick: the prompt asks for it and a regex would conflict
    # with tools, so check the parser on the server's own plan instead.
    from ember.server.tools import ToolDefinition, plan_tools

    plan = plan_tools([ToolDefinition(**WEATHER_TOOL)], "auto", True)
    content, calls = plan.parse('Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    assert content == "Sure." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    assert plan.parse("<tool_call>{not json}</tool_call>")[1] == []
    assert plan.parse('<tool_call>{"name": "unknown", "arguments": {}}</tool_call>')[1] == []
    assert plan.parse("just text") == ("just text", [])
    r = post(served, "/chat/completions", {"messages": ASK, "tools": [WEATHER_TOOL], "max_tokens": 12})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
