"""Data parallelism on Ray: two replicas of the default model as Ray actors, on a local Ray started by this test
(no cluster). The same checks as with local processes; a killed actor is re-created by Ray itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.data_parallel import ReplicaRouter
from ember.server.app import ServerConfig

from dp_harness import (
    NUM_PREFIXES,
    PREFIX_BLOCKS,
    check_killed_replica_recovers,
    check_uniform_traffic_is_balanced,
    health,
    run_shared_prefix_workload,
    start_router,
    wait_replica_stats,
)
from references import require
from server_harness import running_server


@pytest.fixture(scope="module")
def ray_served(default_gguf: Path) -> Iterator[tuple[str, ReplicaRouter]]:
    ray: Any = require("ray")
    start = time.monotonic()
    # A small local Ray: no dashboard, a small object store, logical CPUs enough for two 1-thread replicas.
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
    try:
        router = start_router(str(default_gguf), "ray")
        print(f"\nlocal Ray and two replica actors ready in {time.monotonic() - start:.1f} s")
        with running_server(router, ServerConfig(model_name="m")) as base_url:
            yield base_url, router
    finally:
        ray.shutdown()


def test_replicas_are_ray_actors_routed_by_prefix(ray_served: tuple[str, ReplicaRouter]) -> None:
    base_url, router = ray_served
    body = health(base_url)
    assert body["backend"] == "ray" and [r["state"] for r in body["replicas"]] == ["ready", "ready"]
    result = run_shared_prefix_workload(base_url)
    stats = wait_replica_stats(router)
    assert result.cached_tokens == sum(s["prefix_cache_hits"] for s in stats)
    print(
        f"\nprompt tokens cached on Ray, routed by prefix: {result.cached_tokens}/{result.prompt_tokens} = "
        f"{result.cached_fraction:.2f} in {result.duration_s:.1f} s"
    )
    assert result.cached_tokens >= 0.85 * (64 - NUM_PREFIXES) * PREFIX_BLOCKS * 16


def test_uniform_traffic_uses_both_actors(ray_served: tuple[str, ReplicaRouter]) -> None:
    print(f"\nuniform traffic on Ray, requests per replica: {check_uniform_traffic_is_balanced(ray_served[0])}")


def test_a_killed_actor_is_recreated_by_ray(ray_served: tuple[str, ReplicaRouter]) -> None:
    base_url, router = ray_served
    outcome = check_killed_replica_recovers(base_url)
    print(f"\nkill replica 1 under load (Ray): {outcome}, retries {router.num_retries}")
    assert all(s["kv_cache_usage"] == 0.0 for s in wait_replica_stats(router))
