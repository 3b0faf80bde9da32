"""The OpenAI-compatible server, driven by the official `openai` client and by raw HTTP for bad input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ember import AsyncEngine, Engine, SamplingParams
from ember.server.app import ServerConfig

from server_harness import running_server, wait_idle

API_KEY = "test-key"
MODEL = "smollm2-test"
MAX_MODEL_LEN = 1024
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served(default_gguf: Path) -> Iterator[tuple[str, AsyncEngine]]:
    """A server on the default model with an API key; yields (base URL, engine)."""
    engine = AsyncEngine(str(default_gguf), kv_cache_memory_bytes=128 << 20, max_model_len=MAX_MODEL_LEN)
    with running_server(engine, ServerConfig(model_name=MODEL, api_key=API_KEY)) as base_url:
        yield base_url, engine


@pytest.fixture(scope="module")
def client(served: tuple[str, AsyncEngine]) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0], api_key=API_KEY, max_retries=0, timeout=120)


def post(served: tuple[str, AsyncEngine], path: str, **kwargs: object) -> httpx.Response:
    """A raw POST with the API key (for bodies the openai client would refuse to send)."""
    headers = {"Authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.post(f"{served[0]}{path}", headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_streamed_text_equals_non_streamed(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage is not None
    assert whole.usage.completion_tokens >= 1
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [choice.finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_streamed_and_not(client: openai.OpenAI) -> None:
    prompt = "The three primary colors are"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert whole.usage is not None and whole.usage.completion_tokens == 16
    assert whole.choices[0].finish_reason == "length"
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == whole.choices[0].text


def test_n_and_seed(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 5}
    first = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    again = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in first.choices}) > 1


def test_stop_string(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0].text
    stop = free.strip().split(",")[0].strip() or free[:2]
    out = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop])
    assert out.choices[0].finish_reason == "stop"
    assert stop not in out.choices[0].text
    assert free.startswith(out.choices[0].text)


def test_logprobs(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == chat.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.logprob <= 0.0
    text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    lp = text.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == 4
    assert all(len(top) == 2 for top in lp.top_logprobs or [])
    assert "".join(lp.tokens or []) == text.choices[0].text


REPETITIVE = "red green blue red green blue red green blue red green blue"
PENALTIES = [
    {"presence_penalty": 1.5},
    {"frequency_penalty": 1.5},
    {"repetition_penalty": 1.5},
    {"logit_bias": {42: 100.0}},
]


@pytest.mark.parametrize("penalty", PENALTIES, ids=lambda p: next(iter(p)))
def test_penalties_change_greedy_output_as_in_the_engine(
    client: openai.OpenAI, engine: Engine, penalty: dict[str, Any]
) -> None:
    kwargs = {"model": MODEL, "prompt": REPETITIVE, "max_tokens": 16, "temperature": 0}
    plain = client.completions.create(**kwargs).choices[0].text  # type: ignore[call-overload]
    # repetition_penalty is vLLM's extension and logit_bias keys are strings in OpenAI's JSON.
    body = {k: ({str(t): b for t, b in v.items()} if k == "logit_bias" else v) for k, v in penalty.items()}
    penalized = client.completions.create(**kwargs, extra_body=body).choices[0].text  # type: ignore[call-overload]
    assert penalized != plain
    # The sync engine on the same file computes the same greedy tokens (batch invariance).
    for text, extra in ((plain, {}), (penalized, penalty)):
        params = SamplingParams(temperature=0.0, max_tokens=16, **extra)
        assert text == engine.generate(REPETITIVE, params, use_tqdm=False)[0].outputs[0].text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": -1}, "max_tokens"),
        ({"model": MODEL, "messages": QUESTION, "temperature": -0.5}, "temperature"),
        ({"model": MODEL, "messages": QUESTION, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": QUESTION, "n": 0}, "n"),
        ({"model": MODEL, "messages": QUESTION, "top_p": 1.5}, "top_p"),
        ({"model": MODEL, "messages": QUESTION, "top_logprobs": 50, "logprobs": True}, "logprobs"),
        ({"model": MODEL, "messages": QUESTION, "bogus_field": 1}, "bogus_field"),
        ({"model": MODEL, "messages": QUESTION, "seed": -1}, "seed"),
        # The server runs the default "fcfs" scheduling policy, which takes only priority 0.
        ({"model": MODEL, "messages": QUESTION, "priority": 2}, "priority"),
    ],
)
def test_bad_parameters_get_400_naming_the_field(served: tuple[str, AsyncEngine], body: dict, param: str) -> None:
    r = post(served, "/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param in error["message"] or param == error["param"], error


def test_malformed_json_and_unknown_model_and_long_prompt(served: tuple[str, AsyncEngine]) -> None:
    truncated = b'{"model": "x", "messages": ['
    r = post(served, "/chat/completions", content=truncated, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = post(served, "/chat/completions", json={"model": "gpt-9", "messages": QUESTION})
    assert r.status_code == 404 and "gpt-9" in r.json()["error"]["message"]
    r = post(served, "/completions", json={"model": MODEL, "prompt": "word " * 5000, "max_tokens": 10})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert str(MAX_MODEL_LEN) in message and "prompt" in message
    r = post(served, "/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": MAX_MODEL_LEN})
    assert r.status_code == 400 and str(MAX_MODEL_LEN) in r.json()["error"]["message"]


def test_api_key_is_required(served: tuple[str, AsyncEngine]) -> None:
    r = httpx.post(f"{served[0]}/chat/completions", json={"model": MODEL, "messages": QUESTION}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = post(served, "/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code in (401, 405)
    assert httpx.get(f"{served[0]}/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    root = served[0].removesuffix("/v1")
    assert httpx.get(f"{root}/health").status_code == 200


def test_disconnect_mid_stream_frees_blocks(served: tuple[str, AsyncEngine]) -> None:
    body = {"model": MODEL, "prompt": "Count:", "max_tokens": 900, "temperature": 0, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{served[0]}/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in received)
    stats = wait_idle(served[1])
    assert stats["kv_cache_usage"] == 0.0


def test_metrics_endpoint(served: tuple[str, AsyncEngine], client: openai.OpenAI) -> None:
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, temperature=0)
    text = httpx.get(f"{served[0].removesuffix('/v1')}/metrics").text
    for name in (
        "ember_time_to_first_token_seconds_bucket",
        "ember_inter_token_latency_seconds_count",
        "ember_e2e_request_latency_seconds_sum",
        "ember_kv_cache_usage_ratio",
        "ember_prefix_cache_hit_rate",
        "ember_num_preemptions_total",
        "ember_generation_tokens_total",
        'ember_http_requests_total{endpoint="/v1/completions",status="200"}',
    ):
        assert name in text, name


def test_echo_prefixes_every_choice_streamed_and_not(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "prompt": "Roses are red,", "max_tokens": 8, "temperature": 1.0, "n": 2, "seed": 3}
    whole = client.completions.create(echo=True, **kwargs)  # type: ignore[call-overload]
    streamed = ["", ""]
    for chunk in client.completions.create(echo=True, stream=True, **kwargs):  # type: ignore[call-overload]
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert [c.text for c in sorted(whole.choices, key=lambda c: c.index)] == streamed
    assert all(text.startswith("Roses are red,") and len(text) > len("Roses are red,") for text in streamed)


def test_usage_reports_cached_prompt_tokens(client: openai.OpenAI) -> None:
    """`usage.prompt_tokens_details.cached_tokens`: none for a new prompt; its full blocks (all but the last token)
    when it comes again, streamed or not, counted once for n=2."""
    system = f"You are assistant {uuid.uuid4()}. Answer in one careful sentence. " * 4
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Name a color."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, temperature=0)  # type: ignore[arg-type]
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    full_blocks = (first.usage.prompt_tokens - 1) // 16 * 16
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, temperature=0, n=2)  # type: ignore[arg-type]
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    assert again.usage.prompt_tokens_details.cached_tokens == full_blocks > 0
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == full_blocks
