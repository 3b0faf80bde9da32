"""Data parallelism with local processes (`mp`): two replicas of the default model behind one endpoint.

Prefix-aware routing against blind routing on the same shared-prefix workload, balance on uniform traffic, a
replica killed under load, /health and /metrics, `ember serve --data-parallel-size 2` and its SIGTERM, and the app
mounted inside another ASGI app. One thread per replica, short generations.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from ember.data_parallel import ReplicaRouter
from ember.server.app import ServerConfig, build_app

from dp_harness import (
    NUM_BLOCKS_PER_REPLICA,
    NUM_PREFIXES,
    PREFIX_BLOCKS,
    check_killed_replica_recovers,
    check_uniform_traffic_is_balanced,
    health,
    run_shared_prefix_workload,
    start_router,
    wait_replica_stats,
)
from server_harness import check_sigterm_ends_streams, free_port, running_server, wait_healthy

KEY = "dp-key"


def test_prefix_routing_caches_shared_prompts_where_blind_routing_cannot(default_gguf: Path) -> None:
    """The same 64 requests over 8 interleaved shared prefixes, with a KV budget per replica that holds about half of
    them: routed by prefix, each replica keeps its half cached; routed blind (least loaded), both thrash."""
    results = {}
    for routing in ("prefix", "load"):
        router = start_router(str(default_gguf), "mp", routing=routing)
        assert [r.info.num_blocks for r in router.replicas if r.info] == [NUM_BLOCKS_PER_REPLICA] * 2
        with running_server(router, ServerConfig(model_name="m")) as base_url:
            result = run_shared_prefix_workload(base_url)
            stats = wait_replica_stats(router)
        # The responses' cached_tokens are the engines' own prefix-cache hits.
        assert result.cached_tokens == sum(s["prefix_cache_hits"] for s in stats)
        results[routing] = result
    print("\nprompt tokens cached, 64 requests over 8 shared prefixes, 2 replicas (mp):")
    for routing, r in results.items():
        print(f"  {routing:>6}: {r.cached_tokens}/{r.prompt_tokens} = {r.cached_fraction:.2f} in {r.duration_s:.1f} s")
    # At most the prefixes of the 56 requests after each prefix's first can be cached.
    most = (64 - NUM_PREFIXES) * PREFIX_BLOCKS * 16
    assert results["prefix"].cached_tokens >= 0.85 * most
    assert results["load"].cached_tokens <= 0.65 * most
    assert results["prefix"].cached_tokens - results["load"].cached_tokens >= 0.3 * most


@pytest.fixture(scope="module")
def dp_served(default_gguf: Path) -> Iterator[tuple[str, ReplicaRouter]]:
    router = start_router(str(default_gguf), "mp", kv_cache_memory_bytes=64 << 20)
    with running_server(router, ServerConfig(model_name="m")) as base_url:
        yield base_url, router


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_uniform_traffic_uses_both_replicas(dp_served: tuple[str, ReplicaRouter]) -> None:
    counts = check_uniform_traffic_is_balanced(dp_served[0])
    print(f"\nuniform traffic, requests per replica: {counts}")


def test_health_and_metrics_report_each_replica(dp_served: tuple[str, ReplicaRouter]) -> None:
    base_url, router = dp_served
    body = health(base_url)
    assert body["status"] == "ok" and body["backend"] == "mp" and body["data_parallel_size"] == 2
    pids = [r["pid"] for r in body["replicas"]]
    assert len(set(pids)) == 2 and os.getpid() not in pids and all(r["state"] == "ready" for r in body["replicas"])
    stats = wait_replica_stats(router)
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    total = sum(s["num_generation_tokens"] for s in stats)
    assert f"ember_generation_tokens_total {int(total)}\n" in text
    for i, s in enumerate(stats):
        assert f'ember_generation_tokens_total{{replica="{i}"}} {int(s["num_generation_tokens"])}\n' in text
        assert f'ember_replica_up{{replica="{i}"}} 1\n' in text
        assert f'ember_router_requests_total{{replica="{i}"}} ' in text
    assert "ember_router_retries_total " in text and "ember_time_to_first_token_seconds_bucket" in text


def test_a_killed_replica_is_replaced_and_nothing_else_is_lost(dp_served: tuple[str, ReplicaRouter]) -> None:
    base_url, router = dp_served
    outcome = check_killed_replica_recovers(base_url)
    print(f"\nkill replica 1 under load (mp): {outcome}, retries {router.num_retries}")
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    assert 'ember_replica_restarts_total{replica="1"} 1\n' in text
    stats = wait_replica_stats(router)
    assert all(s["kv_cache_usage"] == 0.0 for s in stats)


def test_the_app_mounts_inside_another_asgi_app(dp_served: tuple[str, ReplicaRouter]) -> None:
    """The documented embedding: `build_app(router, config)` mounted under a prefix of a host application."""
    _, router = dp_served
    host = Starlette(routes=[Mount("/llm", app=build_app(router, ServerConfig(model_name="m", api_key=KEY)))])
    client = TestClient(host)  # not entered: its lifespan would shut the shared router down
    assert client.get("/llm/health").status_code == 200
    body = {"model": "m", "prompt": "Hello", "max_tokens": 3}
    assert client.post("/llm/v1/completions", json=body).status_code == 401
    response = client.post("/llm/v1/completions", json=body, headers=auth())
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3
    assert 'endpoint="/v1/completions",status="200"' in client.get("/llm/metrics", headers=auth()).text


def test_ember_serve_with_two_replicas_stops_them_on_sigterm(default_gguf: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "ember.cli", "serve", str(default_gguf), "--port", str(port), "--threads", "2"]
    command += ["--data-parallel-size", "2", "--kv-cache-memory-bytes", str(32 << 20), "--shutdown-timeout", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120)
        pids = [r["pid"] for r in health(f"http://127.0.0.1:{port}/v1")["replicas"]]
        check_sigterm_ends_streams(proc, port, max_tokens=600)
        for pid in pids:  # the replicas are gone too
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert "2 replicas on mp" in log, log
