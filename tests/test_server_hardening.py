"""The server under hostile or careless clients: size and time limits, auth, error shapes, admission, engine
failures and disconnects before the first token. Runs on the tiny random model (fast) unless a slow prefill is
the point."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from ember import AsyncEngine
from ember.server.app import OpenAiServer, ServerConfig, build_app
from ember.server.errors import ApiError
from ember.server.request_limits import RequestLimits

from server_harness import running_server, wait_idle

KEY = "k3y"
MODEL = "tiny"
LIMITS = RequestLimits(max_body_bytes=2 << 20, header_timeout_s=0.5, body_timeout_s=0.5)
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[tuple[str, AsyncEngine]]:
    engine = AsyncEngine(str(tiny_model_dir), kv_cache_memory_bytes=8 << 20)
    config = ServerConfig(model_name=MODEL, api_key=KEY, max_pending_requests=8, limits=LIMITS)
    with running_server(engine, config) as base_url:
        yield base_url, engine


def post(base: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return httpx.post(f"{base}{path}", json=body, headers=headers, timeout=60, **kwargs)


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error
    assert error["code"] == status
    if param is not None:
        assert error["param"] == param, error
    return error


def raw_exchange(base: str, payload: bytes, wait_s: float = 5.0) -> bytes:
    """Sends `payload` on a raw connection and returns what the server sends until it closes (or `wait_s`)."""
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(payload)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
    return received


def test_a_body_over_the_limit_gets_413(served: tuple[str, AsyncEngine]) -> None:
    base, _ = served
    big = {"model": MODEL, "prompt": "a" * (16 << 20), "max_tokens": 1}  # more than socket buffers hold
    assert_openai_error(post(base, "/completions", big), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(48):
            yield b"a" * (64 << 10)
        yield b'"}'

    r = httpx.post(f"{base}/completions", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(r, 413)
    assert httpx.get(base.removesuffix("/v1") + "/health").status_code == 200


def test_slow_headers_and_slow_bodies_are_cut_off(served: tuple[str, AsyncEngine]) -> None:
    base, _ = served
    started = time.monotonic()
    answer = raw_exchange(base, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    assert answer == b"" and time.monotonic() - started < 4.5  # closed by the header timeout, not by us
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    answer = raw_exchange(base, head.encode() + b'{"model": ')
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"timeout_error"' in answer


def test_auth_scheme_is_case_insensitive_and_covers_openapi(served: tuple[str, AsyncEngine]) -> None:
    base, _ = served
    root = base.removesuffix("/v1")
    assert httpx.get(f"{base}/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{base}/models", headers={"Authorization": f"BEARER  {KEY}"}).status_code == 200
    assert_openai_error(httpx.get(f"{root}/openapi.json"), 401)
    assert httpx.get(f"{root}/openapi.json", headers=AUTH).status_code == 200
    assert httpx.get(f"{root}/health").status_code == 200
    assert httpx.get(f"{root}/metrics").status_code == 200


def test_metrics_can_require_the_key(served: tuple[str, AsyncEngine]) -> None:
    app = build_app(served[1], ServerConfig(model_name=MODEL, api_key=KEY, metrics_need_key=True))
    client = TestClient(app)  # not entered: its lifespan would shut the shared engine down
    assert_openai_error(client.get("/metrics"), 401)
    assert client.get("/metrics", headers=AUTH).status_code == 200
    assert client.get("/health").status_code == 200


def test_admission_counts_sequences(served: tuple[str, AsyncEngine]) -> None:
    base, _ = served
    error = assert_openai_error(post(base, "/completions", {"model": MODEL, "prompt": "a", "n": 1000}), 400, "n")
    assert "128" in error["message"]
    body = {"model": MODEL, "prompt": ["a", "b", "c"], "n": 3, "max_tokens": 1}
    assert "9 sequences" in assert_openai_error(post(base, "/completions", body), 400, "n")["message"]
    server = OpenAiServer(SimpleNamespace(num_unfinished_sequences=6), ServerConfig(MODEL, max_pending_requests=8))
    server._check_capacity(2)
    with pytest.raises(ApiError) as info:
        server._check_capacity(3)
    assert info.value.status == 503 and "6 sequences in flight (limit 8)" in info.value.message


@pytest.mark.parametrize(
    ("path", "body", "param", "needle"),
    [
        ("/completions", {"prompt": "a", "stop": ["ab"] * 100_000}, "stop", "at most 64"),
        ("/completions", {"prompt": "a", "stop": ["x" * 2000]}, "stop", "1024 bytes"),
        ("/completions", {"prompt": "a", "priority": 2**70}, "priority", "2147483647"),
        ("/completions", {"prompt": [1, -5]}, "prompt", "prompt_token_ids[1]"),
        ("/completions", {"prompt": [1, 2**40]}, "prompt", "prompt_token_ids[1]"),
        ("/completions", {"prompt": [1, 299]}, "prompt", "out of range"),
        ("/completions", {"prompt": "a", "seed": 2**64}, "seed", "18446744073709551616"),
        ("/completions", {"prompt": "a", "max_tokens": -1}, "max_tokens", "at least 1, got -1"),
        ("/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens", "at least 1, got 0"),
        ("/completions", {"prompt": "a", "n": -1}, "n", "at least 1, got -1"),
        ("/completions", {"prompt": "a", "temperature": -1}, "temperature", ">= 0"),
        ("/completions", {"prompt": "a", "top_p": 2}, "top_p", "(0, 1]"),
        ("/completions", {"prompt": "a", "logprobs": 50}, "logprobs", "at most 20"),
        ("/completions", {"prompt": "a", "logit_bias": {" 5": 1}}, "logit_bias", "decimal digits"),
        ("/completions", {"prompt": "a", "logit_bias": {"1_0": 1}}, "logit_bias", "decimal digits"),
        ("/completions", {"prompt": "a", "logit_bias": {"5": 500}}, "logit_bias", "[-100, 100]"),
        ("/completions", {"prompt": "a", "stop_token_ids": [5, 10**6]}, "stop_token_ids", "out of range"),
        ("/completions", {"prompt": "a b " * 300}, "prompt", "maximum context length"),
        ("/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages", "role"),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 50, "logprobs": True},
            "top_logprobs",
            "at most 20",
        ),
        ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 0}, "n", "got 0"),
    ],
)
def test_bad_values_get_400_naming_the_field(
    served: tuple[str, AsyncEngine], path: str, body: dict[str, Any], param: str, needle: str
) -> None:
    error = assert_openai_error(post(served[0], path, {"model": MODEL, **body}), 400, param)
    assert needle in error["message"], error


def test_malformed_json_has_no_param_and_a_clear_message(served: tuple[str, AsyncEngine]) -> None:
    r = post(served[0], "/completions", content=b'{"prompt": [', headers={"Content-Type": "application/json"})
    error = assert_openai_error(r, 400)
    assert error["param"] is None and "not valid JSON" in error["message"]


def test_an_unhandled_error_is_an_openai_shaped_500(served: tuple[str, AsyncEngine], monkeypatch: Any) -> None:
    app = build_app(served[1], ServerConfig(model_name=MODEL))

    def broken(_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.server, "completion_job", broken)
    r = TestClient(app).post("/v1/completions", json={"model": MODEL, "prompt": "a"})
    error = assert_openai_error(r, 500)  # type: ignore[arg-type]
    assert error["type"] == "server_error" and "a bug" not in error["message"]


@pytest.fixture(scope="module")
def slow_served(default_gguf: Path) -> Iterator[tuple[str, AsyncEngine]]:
    """The default model, prefilling 32 tokens a step: slow enough to act while a request runs."""
    engine = AsyncEngine(str(default_gguf), kv_cache_memory_bytes=64 << 20, max_num_batched_tokens=32)
    with running_server(engine, ServerConfig(model_name=MODEL)) as base_url:
        yield base_url, engine


def test_a_failed_engine_step_is_reported_and_the_server_keeps_serving(
    slow_served: tuple[str, AsyncEngine],
) -> None:
    base, engine = slow_served
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4}
    asyncio.run(engine.call(lambda core: core._inject_step_faults("error", 1)))
    error = assert_openai_error(post(base, "/completions", body), 500)
    assert "injected step fault" in error["message"]
    streamed = {**body, "stream": True, "max_tokens": 64, "ignore_eos": True}
    with httpx.stream("POST", f"{base}/completions", json=streamed, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: {")  # the stream has started
        asyncio.run(engine.call(lambda core: core._inject_step_faults("panic", 1)))
        rest = [line for line in lines if line]
    assert json.loads(rest[-2].removeprefix("data: "))["error"]["code"] == 500 and rest[-1] == "data: [DONE]"
    assert httpx.get(base.removesuffix("/v1") + "/health").status_code == 200
    assert post(base, "/completions", body).status_code == 200
    assert wait_idle(engine)["kv_cache_usage"] == 0.0


def test_a_client_leaving_before_its_first_token_stops_the_prefill(slow_served: tuple[str, AsyncEngine]) -> None:
    """A long prompt prefilled 32 tokens a step: the client hangs up early, and the prefill stops with it."""
    base, engine = slow_served
    prompt_ids = [28] * 960
    for stream in (False, True):
        before = engine.stats()["num_prompt_tokens"]
        body = json.dumps({"model": MODEL, "prompt": prompt_ids, "max_tokens": 4, "stream": stream}).encode()
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        raw_exchange(base, head.encode() + body, wait_s=0.3)  # leaves while the prompt is prefilled
        stats = wait_idle(engine, timeout=30)
        assert stats["num_prompt_tokens"] - before < len(prompt_ids), (stream, stats)


def test_tokenization_runs_off_the_event_loop(served: tuple[str, AsyncEngine], monkeypatch: Any) -> None:
    """While one request's prompt is being tokenized (held here on purpose), the server still answers others."""
    base, engine = served
    entered, release = threading.Event(), threading.Event()

    class SlowTokenizer:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            entered.set()
            release.wait(30)
            return real.encode(text, add_special_tokens)

    real = engine.tokenizer
    monkeypatch.setattr(engine, "tokenizer", SlowTokenizer())
    sender = threading.Thread(
        target=post, args=(base, "/completions", {"model": MODEL, "prompt": "a", "max_tokens": 1})
    )
    sender.start()
    try:
        assert entered.wait(30)
        assert httpx.get(base.removesuffix("/v1") + "/health", timeout=10).status_code == 200
    finally:
        release.set()
        sender.join()
