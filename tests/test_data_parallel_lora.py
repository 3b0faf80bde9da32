"""LoRA adapters behind data-parallel replicas (`mp`, and Ray actors for the first three checks): a batch mixing
three adapters and the base model gives what one engine gives (greedy and seeded), each replica loads the adapters
of the requests routed to it, prefixes are matched per adapter and cache salt (the router's block hashes carry the
adapter id and the salt, as the engine's do: a request goes to the replica that cached its adapter's and salt's
prefix, and the router's predicted hits equal the engine's), adapters compose with streaming deltas, n > 1 and an
abort mid-stream (every replica's KV cache back to empty), unloading reaches every replica, and the OpenAI server
picks, loads and unloads adapters in front of two replicas. Tiny model, 2 replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember import Engine, LoRARequest, SamplingParams, _core
from ember.data_parallel import DataParallelConfig, ReplicaRouter
from ember.server.app import ServerConfig

from dp_harness import HEARTBEAT, wait_replica_stats
from lora_adapters import ALL_LINEAR, ATTENTION, SMALL_LORA_ENGINE, write_model_with_adapters
from references import require
from server_harness import running_server
from tiny_models import VARIANTS

ENGINE_ARGS: dict[str, Any] = {**SMALL_LORA_ENGINE, "max_loras": 3}
ADAPTERS = {
    "a": {"rank": 4, "alpha": 8.0, "targets": ALL_LINEAR, "seed": 1},
    "b": {"rank": 8, "alpha": 4.0, "targets": ["q_proj", "down_proj"], "seed": 2},
    "c": {"rank": 2, "alpha": 2.0, "targets": ATTENTION, "seed": 3},
}
KEY = "dp-lora-key"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dp-lora")
    write_model_with_adapters(VARIANTS[0], root, ADAPTERS)
    return root


@pytest.fixture(scope="module")
def router(folders: Path) -> Iterator[ReplicaRouter]:
    config = DataParallelConfig(data_parallel_size=2, backend="mp", **HEARTBEAT)  # type: ignore[arg-type]
    router = ReplicaRouter(str(folders / "model"), config, num_threads=2, **ENGINE_ARGS)
    try:
        yield router
    finally:
        asyncio.run(router.shutdown())


def loras(folders: Path) -> list[LoRARequest | None]:
    """The three adapters and the base model, cycled over eight requests."""
    adapters = [LoRARequest(name, i + 1, str(folders / name)) for i, name in enumerate(ADAPTERS)]
    return [[*adapters, None][i % 4] for i in range(8)]


async def _collect(
    router: ReplicaRouter, prompt: list[int], params: SamplingParams, lora: Any, cache_salt: str | None = None
) -> Any:
    last = None
    async for out in router.generate(prompt, params, lora_request=lora, cache_salt=cache_salt):
        last = out
    return last


def test_mixed_adapters_under_two_replicas_equal_one_engine(folders: Path, router: ReplicaRouter) -> None:
    check_mixed_batch_equals_one_engine(folders, router)


def test_adapters_under_ray_replicas(folders: Path) -> None:
    """The mixed batch, prefixes per adapter and salt, and streaming, n > 1 and abort checks with the replicas as
    Ray actors, on a local Ray started here (no cluster)."""
    ray: Any = require("ray")
    start = time.monotonic()
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
    try:
        config = DataParallelConfig(data_parallel_size=2, backend="ray", **HEARTBEAT)  # type: ignore[arg-type]
        ray_router = ReplicaRouter(str(folders / "model"), config, num_threads=1, **ENGINE_ARGS)
        try:
            check_mixed_batch_equals_one_engine(folders, ray_router)
            check_prefixes_match_per_adapter_and_salt(folders, ray_router)
            check_streaming_n_and_abort(folders, ray_router)
        finally:
            asyncio.run(ray_router.shutdown())
    finally:
        ray.shutdown()
    print(f"\nRay: start, three checks and shutdown in {time.monotonic() - start:.1f} s")


def check_mixed_batch_equals_one_engine(folders: Path, router: ReplicaRouter) -> None:
    """Three adapters and the base over eight requests through `router` give one engine's tokens, greedy and
    seeded, and each replica loaded the adapters routed to it."""
    prompts = [[5 + i, 9, 14 + 2 * i, 20, 33, 7] for i in range(8)]
    requests = loras(folders)
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    seeded = [SamplingParams(temperature=0.9, seed=100 + i, max_tokens=10, ignore_eos=True) for i in range(8)]
    engine = Engine(str(folders / "model"), **ENGINE_ARGS)
    want_greedy = engine.generate(prompts, greedy, lora_request=requests, use_tqdm=False)
    for params in ([greedy] * 8, seeded):
        want = engine.generate(prompts, params, lora_request=requests, use_tqdm=False)

        async def run(params: list[SamplingParams] = params) -> list[Any]:
            return await asyncio.gather(
                *(_collect(router, p, sp, lora) for p, sp, lora in zip(prompts, params, requests, strict=True))
            )

        got = asyncio.run(run())
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]
    # The adapters change the tokens (the comparison above is not of base-model outputs only).
    base = engine.generate(prompts[:3], greedy, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in base] != [o.outputs[0].token_ids for o in want_greedy[:3]]
    # Each replica loaded what was routed to it; the router sums the counters.
    stats = wait_replica_stats(router)
    loads = [s["num_adapter_loads"] for s in stats]
    assert sum(loads) >= 3 and all(n >= 1 for n in loads), loads
    assert router.stats()["num_adapter_loads"] >= sum(loads)


def test_prefixes_are_matched_per_adapter_and_salt(folders: Path, router: ReplicaRouter) -> None:
    ids = list(range(3, 3 + 48))
    base, a1, a2 = (_core.prefix_block_hashes(ids, 16, lora_id) for lora_id in (None, 1, 2))
    salted, salted_a1 = (_core.prefix_block_hashes(ids, 16, lora_id, "s") for lora_id in (None, 1))
    assert len(base) == len(a1) == 3 and len({*base, *a1, *a2, *salted, *salted_a1}) == 15
    assert _core.prefix_block_hashes(ids, 16, 1) == a1
    assert _core.prefix_block_hashes(ids, 16, 1, "s") == salted_a1
    with pytest.raises(_core.InvalidRequestError, match="lora_int_id"):
        _core.prefix_block_hashes(ids, 16, 0)
    check_prefixes_match_per_adapter_and_salt(folders, router)


def check_prefixes_match_per_adapter_and_salt(folders: Path, router: ReplicaRouter) -> None:
    """The same long prompt under adapters and salts, one request after another: a request whose adapter and salt
    cached the prompt before lands on the replica that holds it (48 tokens hit), any other combination hits
    nothing, and every time the router predicted exactly the hit the engine found."""
    prompt = [(7 * i) % 200 + 3 for i in range(50)]
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    c, b = loras(folders)[2], loras(folders)[1]
    cases: list[tuple[Any, str | None, int]] = [
        (c, None, 0), (c, None, 48), (b, None, 0), (c, "s1", 0), (c, "s1", 48), (c, "s2", 0), (b, "s1", 0),
        (None, "s1", 0), (None, "s1", 48), (None, None, 0), (None, "s2", 0), (c, "s2", 48),
    ]  # fmt: skip

    async def run() -> list[tuple[int, int]]:
        got = []
        for lora, salt, _ in cases:
            before = sum(r.num_matched_tokens for r in router.replicas)
            out = await _collect(router, prompt, params, lora, salt)
            got.append((sum(r.num_matched_tokens for r in router.replicas) - before, out.num_cached_tokens))
        return got

    assert asyncio.run(run()) == [(hit, hit) for _, _, hit in cases]


def test_adapters_compose_with_streaming_n_and_abort(folders: Path, router: ReplicaRouter) -> None:
    check_streaming_n_and_abort(folders, router)


def check_streaming_n_and_abort(folders: Path, router: ReplicaRouter) -> None:
    """Streamed deltas and n = 2 seeded samples under adapters equal one engine; an adapter request aborted
    mid-stream ends with "abort" while the others finish, and every replica's KV cache returns to empty."""
    prompts = [[5 + i, 9, 14 + 2 * i, 20, 33, 7] for i in range(4)]
    requests = loras(folders)[:4]
    forked = SamplingParams(temperature=0.9, seed=31, n=2, max_tokens=8, ignore_eos=True)
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engine = Engine(str(folders / "model"), **ENGINE_ARGS)
    want_forked = [
        [c.token_ids for c in o.outputs]
        for o in engine.generate(prompts, forked, lora_request=requests, use_tqdm=False)
    ]
    want_greedy = [
        o.outputs[0].token_ids for o in engine.generate(prompts, greedy, lora_request=requests, use_tqdm=False)
    ]
    assert len({tuple(t) for t in want_greedy}) > 1 and all(len(set(map(tuple, f))) == 2 for f in want_forked)

    async def streamed(prompt: list[int], lora: Any) -> list[int]:
        tokens: list[int] = []
        async for out in router.generate(prompt, greedy, delta=True, lora_request=lora):
            tokens += out.outputs[0].token_ids
        return tokens

    async def doomed(lora: Any) -> list[Any]:
        params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
        stream = router.generate([8, 9, 10, 11], params, request_id="doomed", delta=True, lora_request=lora)
        first = await stream.__anext__()
        assert router.abort("doomed")
        return [first, *[out async for out in stream]]

    async def run() -> tuple[list[Any], list[list[int]], list[Any]]:
        forks = asyncio.gather(*(_collect(router, p, forked, lora) for p, lora in zip(prompts, requests, strict=True)))
        streams = asyncio.gather(*(streamed(p, lora) for p, lora in zip(prompts, requests, strict=True)))
        aborted = doomed(requests[1])
        return await asyncio.gather(forks, streams, aborted)

    got_forked, got_streamed, aborted = asyncio.run(run())
    assert [[c.token_ids for c in o.outputs] for o in got_forked] == want_forked
    assert got_streamed == want_greedy
    assert aborted[-1].outputs[0].finish_reason == "abort"
    assert sum(len(o.outputs[0].token_ids) for o in aborted) < 200
    stats = wait_replica_stats(router)
    assert all(s["kv_cache_usage"] == 0 and s["num_running"] == 0 for s in stats), stats


def test_unload_reaches_every_replica(folders: Path, router: ReplicaRouter) -> None:
    lora = LoRARequest("a", 1, str(folders / "a"))
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)

    async def run() -> tuple[bool, bool]:
        await asyncio.gather(*(_collect(router, [5, 6 + i, 7], params, lora) for i in range(4)))
        return await router.unload_lora(1), await router.unload_lora(1)

    assert asyncio.run(run()) == (True, False)
    with pytest.raises(_core.InvalidRequestError, match="lora_request"):
        asyncio.run(_collect(router, [5, 6], params, "a"))


def test_server_picks_loads_and_unloads_adapters_in_front_of_replicas(folders: Path, router: ReplicaRouter) -> None:
    prompt = [5, 9, 14, 20, 33]
    engine = Engine(str(folders / "model"), **ENGINE_ARGS)
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = {
        name: engine.generate(prompt, greedy, lora_request=lora, use_tqdm=False)[0].outputs[0].text
        for name, lora in [
            ("a", LoRARequest("a", 1, str(folders / "a"))),
            ("b", LoRARequest("b", 2, str(folders / "b"))),
        ]
    }
    config = ServerConfig(model_name="tiny", api_key=KEY, enable_lora=True, lora_modules={"a": str(folders / "a")})
    with running_server(router, config) as url:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

        def complete(name: str) -> httpx.Response:
            body = {"model": name, "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
            return client.post("/completions", json=body)

        assert [complete("a").json()["choices"][0]["text"] for _ in range(2)] == [expected["a"]] * 2
        assert complete("b").status_code == 404
        load = {"lora_name": "b", "lora_path": str(folders / "b")}
        assert client.post("/load_lora_adapter", json=load).status_code == 200
        assert complete("b").json()["choices"][0]["text"] == expected["b"]
        assert [m["id"] for m in client.get("/models").json()["data"]] == ["tiny", "a", "b"]
        assert client.post("/unload_lora_adapter", json={"lora_name": "b"}).status_code == 200
        assert complete("b").status_code == 404
        assert complete("a").json()["choices"][0]["text"] == expected["a"]


def test_ember_serve_options_build_replicas_with_adapters(folders: Path) -> None:
    """`ember serve --enable-lora --data-parallel-size 2` (was refused) builds a router whose replicas take adapters."""
    import argparse

    from ember.server.cli import add_arguments
    from ember.server.runner import _load_engine

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = ["--enable-lora", "--max-lora-rank", "8", "--data-parallel-size", "2", "--threads", "2"]
    sizes = ["--dtype", "float32", "--max-model-len", "256", "--kv-cache-memory-bytes", str(8 << 20)]
    router = _load_engine(parser.parse_args([str(folders / "model"), *options, *sizes]))
    assert isinstance(router, ReplicaRouter)
    lora = LoRARequest("b", 2, str(folders / "b"))
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    want = Engine(str(folders / "model"), **ENGINE_ARGS).generate([5, 9, 14], params, lora_request=lora, use_tqdm=False)
    try:
        got = asyncio.run(_collect(router, [5, 9, 14], params, lora))
    finally:
        asyncio.run(router.shutdown())
    assert got.outputs[0].token_ids == want[0].outputs[0].token_ids
