"""The OpenAI server's tests (tests/test_server.py) again, with two local replicas behind the router instead of one
engine: endpoints, streaming, n and seeds, stop strings, logprobs, echo, errors, the API key, disconnects, metrics
and cached-token usage behave the same. Plus what only a router can get wrong: engine errors raised in a replica
process reach the client with their field, and a client hanging up stops the prefill in the replica."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.data_parallel import DataParallelConfig, ReplicaRouter
from ember.server.app import ServerConfig

from dp_harness import HEARTBEAT, routed_counts, wait_replica_stats
from server_harness import running_server
from test_server import (  # noqa: F401 (pytest collects the imported tests and the client fixture)
    API_KEY,
    MAX_MODEL_LEN,
    MODEL,
    client,
    post,
    test_api_key_is_required,
    test_bad_parameters_get_400_naming_the_field,
    test_chat_streamed_text_equals_non_streamed,
    test_completions_streamed_and_not,
    test_disconnect_mid_stream_frees_blocks,
    test_echo_prefixes_every_choice_streamed_and_not,
    test_logprobs,
    test_malformed_json_and_unknown_model_and_long_prompt,
    test_metrics_endpoint,
    test_models_lists_the_served_model,
    test_n_and_seed,
    test_penalties_change_greedy_output_as_in_the_engine,
    test_stop_string,
    test_usage_reports_cached_prompt_tokens,
)
from test_server_hardening import raw_exchange


@pytest.fixture(scope="module")
def served(default_gguf: Path) -> Iterator[tuple[str, ReplicaRouter]]:
    """Two replicas (one thread each), prefilling 64 tokens a step, behind a server with an API key."""
    config = DataParallelConfig(data_parallel_size=2, **HEARTBEAT)  # type: ignore[arg-type]
    router = ReplicaRouter(
        str(default_gguf),
        config,
        kv_cache_memory_bytes=64 << 20,
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=64,
        num_threads=2,
    )
    with running_server(router, ServerConfig(model_name=MODEL, api_key=API_KEY)) as base_url:
        yield base_url, router


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"prompt": [1, 10**6]}, "prompt", "out of range"),
        ({"prompt": "a", "stop_token_ids": [5, 10**6]}, "stop_token_ids", "out of range"),
        ({"prompt": "a", "logit_bias": {"999999": 1}}, "logit_bias", "out of range"),
    ],
)
def test_engine_errors_cross_the_replica_process(
    served: tuple[str, ReplicaRouter], body: dict[str, object], param: str, needle: str
) -> None:
    r = post(served, "/completions", json={"model": MODEL, "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and needle in error["message"], error


def test_a_client_leaving_before_its_first_token_stops_the_prefill_in_the_replica(
    served: tuple[str, ReplicaRouter],
) -> None:
    base_url, router = served
    prompt_ids = [28] * 960  # 15 steps of 64 tokens
    for stream in (False, True):
        before = sum(s["num_prompt_tokens"] for s in wait_replica_stats(router))
        routed = sum(routed_counts(base_url))
        body = json.dumps({"model": MODEL, "prompt": prompt_ids, "max_tokens": 4, "stream": stream}).encode()
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
        raw_exchange(base_url, head.encode() + body, wait_s=0.5)  # leaves while the prompt is prefilled
        time.sleep(0.5)
        computed = sum(s["num_prompt_tokens"] for s in wait_replica_stats(router)) - before
        assert sum(routed_counts(base_url)) == routed + 1
        assert computed < len(prompt_ids), (stream, computed)
