"""The data-parallel checks shared by the `mp` and `ray` tests: the shared-prefix workload, uniform traffic, and a
replica killed under load. Each talks to a running server over HTTP, as a client would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ember.benchmark.serve import make_prompts, shared_prefix_prompts
from ember.data_parallel import DataParallelConfig, ReplicaRouter

SMOLLM2_KV_BYTES_PER_BLOCK = 16 * 30 * 3 * 64 * 2 * 2
"""KV-cache bytes of one 16-token block of the default model (30 layers, 3 KV heads of 64, K and V, float16: the CPU's
default `kv_cache_dtype`)."""
NUM_PREFIXES = 8
PREFIX_LEN = 96
"""Tokens of each shared prefix: 6 full blocks."""
PREFIX_BLOCKS = 6
NUM_BLOCKS_PER_REPLICA = NUM_PREFIXES // 2 * PREFIX_BLOCKS + 8
"""Half of the prefixes' blocks, plus room for the requests running."""
HEARTBEAT = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 5.0}


def start_router(model: str, backend: str, routing: str = "prefix", **engine_args: Any) -> ReplicaRouter:
    """Two replicas with one thread each and a KV budget of `NUM_BLOCKS_PER_REPLICA` blocks (unless overridden)."""
    config = DataParallelConfig(data_parallel_size=2, backend=backend, routing=routing, **HEARTBEAT)  # type: ignore[arg-type]
    args = {"kv_cache_memory_bytes": NUM_BLOCKS_PER_REPLICA * SMOLLM2_KV_BYTES_PER_BLOCK, "max_model_len": 256}
    router = ReplicaRouter(model, config, num_threads=2, **{**args, **engine_args})
    return router


def health(base_url: str) -> dict[str, Any]:
    """GET /health's body."""
    return dict(httpx.get(base_url.removesuffix("/v1") + "/health", timeout=10).json())


def routed_counts(base_url: str) -> list[int]:
    """Requests routed to each replica so far."""
    return [r["num_routed_requests"] for r in health(base_url)["replicas"]]


@dataclass
class WorkloadResult:
    """Prompt tokens sent, those the responses report cached, and the wall time."""

    prompt_tokens: int
    cached_tokens: int
    duration_s: float

    @property
    def cached_fraction(self) -> float:
        return self.cached_tokens / self.prompt_tokens


def run_shared_prefix_workload(base_url: str, concurrency: int = 4) -> WorkloadResult:
    """64 completions over 8 shared ~96-token prefixes, interleaved, `concurrency` at a time, 2 tokens each."""
    prompts = shared_prefix_prompts(64, 8, PREFIX_LEN, NUM_PREFIXES, seed=0)

    async def run() -> list[dict[str, Any]]:
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=300) as client:

            async def one(prompt: str) -> dict[str, Any]:
                async with semaphore:
                    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0}
                    response = await client.post(f"{base_url}/completions", json=body)
                    assert response.status_code == 200, response.text
                    return dict(response.json()["usage"])

            return list(await asyncio.gather(*(one(p) for p in prompts)))

    start = time.monotonic()
    usages = asyncio.run(run())
    duration_s = time.monotonic() - start
    prompt_tokens = sum(u["prompt_tokens"] for u in usages)
    cached_tokens = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    return WorkloadResult(prompt_tokens, cached_tokens, duration_s)


def wait_replica_stats(router: ReplicaRouter, timeout_s: float = 30.0) -> list[dict[str, float]]:
    """Each replica's engine stats once every replica is idle with an empty KV cache (heartbeats lag a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = router.replica_stats()
        idle = all(s and s["num_running"] == 0 and s["num_waiting"] == 0 and s["kv_cache_usage"] == 0 for s in stats)
        if idle and router.num_unfinished_requests == 0:
            time.sleep(3 * router.config.heartbeat_interval_s)  # one more heartbeat: the last counters
            return router.replica_stats()
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas still busy after {timeout_s}s: {stats}")
        time.sleep(0.05)


def send_distinct_prompts(base_url: str, num_requests: int, seed: int, concurrency: int = 8) -> list[int]:
    """Distinct prompts (no block in common), `concurrency` at a time, 4 tokens each; returns how many went to each
    replica."""
    before = routed_counts(base_url)
    prompts = make_prompts(num_requests, 24, seed=seed)

    async def run() -> None:
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=300) as client:

            async def one(prompt: str) -> None:
                async with semaphore:
                    body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
                    response = await client.post(f"{base_url}/completions", json=body)
                    assert response.status_code == 200, response.text

            await asyncio.gather(*(one(p) for p in prompts))

    asyncio.run(run())
    counts = [after - b for after, b in zip(routed_counts(base_url), before, strict=True)]
    assert sum(counts) == num_requests, counts
    return counts


def check_uniform_traffic_is_balanced(base_url: str, num_requests: int = 32) -> list[int]:
    """Uniform traffic, sent at once: both replicas get within 20% as many requests. Returns the counts. (Sent a
    few at a time instead, a replica that happens to run faster on a shared machine rightly gets more.)"""
    counts = send_distinct_prompts(base_url, num_requests, seed=1, concurrency=num_requests)
    assert abs(counts[0] - counts[1]) <= 0.2 * max(counts), counts
    return counts


@dataclass
class StreamOutcome:
    """How one streamed request ended."""

    num_chunks: int = 0
    finish_reason: str | None = None
    error: str | None = None
    done: bool = False
    events: list[str] = field(default_factory=list)


async def _stream(client: httpx.AsyncClient, base_url: str, prompt: str, outcome: StreamOutcome) -> None:
    body = {"prompt": prompt, "max_tokens": 40, "temperature": 0, "ignore_eos": True, "stream": True}
    async with client.stream("POST", f"{base_url}/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            outcome.events.append(data)
            if data == "[DONE]":
                outcome.done = True
                return
            event = json.loads(data)
            if "error" in event:
                outcome.error = event["error"]["message"]
                continue
            outcome.num_chunks += 1
            outcome.finish_reason = event["choices"][0].get("finish_reason") or outcome.finish_reason


def check_killed_replica_recovers(base_url: str, replica_index: int = 1, num_each: int = 12) -> dict[str, Any]:
    """Kills one replica while `num_each` streams run, then sends `num_each` more: every request sent after the kill
    succeeds, each one in flight either completes (it ran elsewhere, or was retried) or ends with a clean error event
    and [DONE]; the replica comes back (a new process) and serves again. Returns what happened."""
    before = health(base_url)
    victim = before["replicas"][replica_index]
    prompts = make_prompts(2 * num_each, 16, seed=2)

    async def wait_back(client: httpx.AsyncClient) -> dict[str, Any]:
        """The replica's /health entry once it is ready again, as a new process."""
        while True:
            response = await client.get(base_url.removesuffix("/v1") + "/health")
            replica: dict[str, Any] = response.json()["replicas"][replica_index]
            if replica["state"] == "ready" and replica["num_restarts"] == victim["num_restarts"] + 1:
                return replica
            await asyncio.sleep(0.05)

    async def run() -> tuple[list[StreamOutcome], list[StreamOutcome], dict[str, Any], float]:
        async with httpx.AsyncClient(timeout=120) as client:
            in_flight = [StreamOutcome() for _ in range(num_each)]
            tasks = [
                asyncio.create_task(_stream(client, base_url, p, o)) for p, o in zip(prompts, in_flight, strict=False)
            ]
            deadline = time.monotonic() + 60
            while sum(o.num_chunks >= 2 for o in in_flight) < num_each // 2:
                assert time.monotonic() < deadline, "the streams did not start"
                await asyncio.sleep(0.02)
            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = time.monotonic()
            after = [StreamOutcome() for _ in range(num_each)]
            tasks += [
                asyncio.create_task(_stream(client, base_url, p, o))
                for p, o in zip(prompts[num_each:], after, strict=True)
            ]
            replica = await asyncio.wait_for(wait_back(client), 120)
            back_after_s = time.monotonic() - killed_at
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            return in_flight, after, replica, back_after_s

    in_flight, after, replica, back_after_s = asyncio.run(run())
    for outcome in after:
        assert outcome.done and outcome.error is None and outcome.finish_reason == "length", outcome
    for outcome in in_flight:
        assert outcome.done, outcome
        if outcome.error is not None:
            assert f"replica {replica_index} stopped" in outcome.error, outcome.error
            assert outcome.events[-1] == "[DONE]"
        else:
            assert outcome.finish_reason == "length", outcome
    num_errors = sum(o.error is not None for o in in_flight)
    assert num_errors < num_each, "every in-flight request failed: none ran on the other replica"
    assert replica["pid"] != victim["pid"]
    # The new replica serves: distinct prompts spread by load until some land on it.
    counts = [0, 0]
    for attempt in range(8):
        counts = send_distinct_prompts(base_url, 8, seed=3 + attempt)
        if counts[replica_index]:
            break
    assert counts[replica_index] > 0, counts
    return {"in_flight_errors": num_errors, "in_flight_completed": num_each - num_errors, "back_after_s": back_after_s}
