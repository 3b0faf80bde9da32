"""Schema-driven fuzzing of the server (schemathesis): requests generated from its own OpenAPI schema, valid
(positive) and invalid (negative), sent over loopback to a server on the tiny random model. No response may be a
5xx, and every 4xx is in OpenAI's error shape. (Cases are drawn with hypothesis from schemathesis's strategies
rather than through its pytest plugin, which does not run under pytest 9.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from ember import AsyncEngine
from ember.server.app import ServerConfig

from server_harness import running_server, wait_idle

MODEL = "tiny"
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
CASES = [
    ("/v1/completions", "POST", POSITIVE),
    ("/v1/completions", "POST", NEGATIVE),
    ("/v1/chat/completions", "POST", POSITIVE),
    ("/v1/chat/completions", "POST", NEGATIVE),
    # The GET endpoints take no input, so only valid requests exist for them.
    ("/v1/models", "GET", POSITIVE),
    ("/health", "GET", POSITIVE),
    ("/metrics", "GET", POSITIVE),
]


@pytest.fixture(scope="module")
def schema_server(tiny_model_dir: Path) -> Iterator[tuple[str, AsyncEngine]]:
    engine = AsyncEngine(str(tiny_model_dir), kv_cache_memory_bytes=8 << 20, max_model_len=128)
    with running_server(engine, ServerConfig(model_name=MODEL, max_pending_requests=256)) as base_url:
        yield base_url.removesuffix("/v1"), engine


def check_response(case: Any, base_url: str) -> None:
    response = case.call(base_url=base_url, timeout=60)
    status = response.status_code
    assert status < 500, f"{case.method} {case.path} {case.body!r} -> {status}: {response.text[:500]}"
    if 400 <= status < 500:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"] and error["code"] == status
        assert error["param"] is None or isinstance(error["param"], str)


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_no_5xx_and_openai_shaped_4xx(
    schema_server: tuple[str, AsyncEngine], path: str, method: str, mode: GenerationMode
) -> None:
    base_url = schema_server[0]
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    strategy = schema[path][method].as_strategy(generation_mode=mode)
    num_examples = 40 if method == "POST" else 5

    @settings(max_examples=num_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        check_response(case, base_url)

    run()
    assert wait_idle(schema_server[1])["kv_cache_usage"] == 0.0
