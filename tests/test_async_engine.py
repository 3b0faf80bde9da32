"""AsyncEngine: streaming, cancellation, concurrency, errors and shutdown on the default model."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember import AsyncEngine, Engine, InvalidRequestError, RequestOutput, SamplingParams

from conftest import KV_CACHE_MEMORY_BYTES, MAX_MODEL_LEN
from server_harness import wait_idle

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
TOPICS = ["a cat", "the sea", "a robot", "winter", "a city", "music", "a garden", "the moon"]
PROMPTS = [f"Story {i}: once upon a time, {TOPICS[i % len(TOPICS)]}" for i in range(24)]


@pytest.fixture(scope="module")
def async_engine(default_gguf: Path) -> Iterator[AsyncEngine]:
    """One AsyncEngine for the module (its own KV cache, same size as the sync engine's)."""
    engine = AsyncEngine(str(default_gguf), kv_cache_memory_bytes=KV_CACHE_MEMORY_BYTES, max_model_len=MAX_MODEL_LEN)
    yield engine
    asyncio.run(engine.shutdown())


async def collect(stream: object) -> list[RequestOutput]:
    """Every output of one async stream."""
    return [out async for out in stream]  # type: ignore[attr-defined]


async def wait_until_idle(engine: AsyncEngine) -> dict[str, float]:
    """Waits (off the event loop) until no request runs and the KV cache is empty."""
    return await asyncio.to_thread(wait_idle, engine)


def test_stream_matches_the_sync_engine(async_engine: AsyncEngine, engine: Engine) -> None:
    expected = engine.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].outputs[0]
    outs = asyncio.run(collect(async_engine.generate(PROMPTS[0], GREEDY, request_id="first")))
    assert len(outs) >= 2, "a stream yields as tokens arrive, not once at the end"
    assert all(o.request_id == "first" for o in outs)
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    final = outs[-1].outputs[0]
    assert final.token_ids == expected.token_ids
    assert final.text == expected.text
    assert final.finish_reason == expected.finish_reason
    # Cumulative outputs only grow.
    texts = [o.outputs[0].text for o in outs]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))


def test_delta_mode_concatenates_to_the_full_text(async_engine: AsyncEngine) -> None:
    params = SamplingParams(max_tokens=20, temperature=0.8, seed=7, n=2)

    async def run() -> tuple[list[RequestOutput], list[RequestOutput]]:
        deltas = await collect(async_engine.generate("Once upon a time", params, delta=True))
        full = await collect(async_engine.generate("Once upon a time", params))
        return deltas, full

    deltas, full = asyncio.run(run())
    final = full[-1]
    for completion in final.outputs:
        parts = [c for d in deltas for c in d.outputs if c.index == completion.index]
        assert "".join(c.text for c in parts) == completion.text
        assert [t for c in parts for t in c.token_ids] == completion.token_ids


def test_many_concurrent_streams_all_complete(async_engine: AsyncEngine, engine: Engine) -> None:
    expected = [o.outputs[0].token_ids for o in engine.generate(PROMPTS, GREEDY, use_tqdm=False)]
    num_streams = 200

    async def run() -> list[list[RequestOutput]]:
        streams = [async_engine.generate(PROMPTS[i % len(PROMPTS)], GREEDY) for i in range(num_streams)]
        return await asyncio.gather(*(collect(s) for s in streams))

    results = asyncio.run(run())
    assert len(results) == num_streams
    for i, outs in enumerate(results):
        assert outs[-1].finished
        assert outs[-1].outputs[0].token_ids == expected[i % len(PROMPTS)], f"stream {i}"
    asyncio.run(wait_until_idle(async_engine))


def test_cancelling_a_consumer_aborts_and_frees_blocks(async_engine: AsyncEngine) -> None:
    long = SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)

    async def run() -> tuple[float, dict[str, float]]:
        seen = asyncio.Event()
        usage: list[float] = []

        async def consume() -> None:
            async for _ in async_engine.generate("Tell me a very long story.", long):
                usage.append(async_engine.stats()["kv_cache_usage"])
                if len(usage) >= 5:
                    seen.set()

        task = asyncio.create_task(consume())
        await seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return max(usage), await wait_until_idle(async_engine)

    peak, stats = asyncio.run(run())
    assert peak > 0.0
    assert stats["kv_cache_usage"] == 0.0
    assert async_engine.num_unfinished_requests == 0


def test_closing_the_generator_aborts(async_engine: AsyncEngine) -> None:
    long = SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)

    async def run() -> dict[str, float]:
        stream = async_engine.generate("Count to a thousand:", long)
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        return await wait_until_idle(async_engine)

    assert asyncio.run(run())["num_running"] == 0


def test_abort_by_request_id_ends_the_stream(async_engine: AsyncEngine) -> None:
    long = SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)

    async def run() -> RequestOutput:
        last = None
        async for out in async_engine.generate("Write an essay.", long, request_id="to-abort"):
            last = out
            if len(out.outputs[0].token_ids) >= 3:
                assert async_engine.abort("to-abort")
        assert last is not None
        return last

    last = asyncio.run(run())
    assert last.finished
    assert last.outputs[0].finish_reason == "abort"
    assert not async_engine.abort("to-abort")


def test_a_bad_request_does_not_disturb_the_others(async_engine: AsyncEngine, engine: Engine) -> None:
    expected = engine.generate(PROMPTS[1], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    too_long = SamplingParams(max_tokens=MAX_MODEL_LEN, temperature=0.0)

    async def run() -> tuple[list[object], list[RequestOutput]]:
        good = [collect(async_engine.generate(PROMPTS[1], GREEDY)) for _ in range(8)]
        bad = [
            collect(async_engine.generate(PROMPTS[1], too_long)),
            collect(async_engine.generate([10**9], GREEDY)),
        ]
        results = await asyncio.gather(*bad, *good, return_exceptions=True)
        return results[:2], results[2:]  # type: ignore[return-value]

    bad, good = asyncio.run(run())
    for err in bad:
        assert isinstance(err, InvalidRequestError), err
    assert "max_model_len" in str(bad[0])
    assert "vocab_size" in str(bad[1])
    for outs in good:
        assert outs[-1].outputs[0].token_ids == expected


def test_duplicate_live_request_id_is_rejected(async_engine: AsyncEngine) -> None:
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def run() -> None:
        first = async_engine.generate("Hello", long, request_id="dup")
        await first.__anext__()  # type: ignore[attr-defined]
        with pytest.raises(InvalidRequestError, match="request_id 'dup'"):
            await collect(async_engine.generate("Hello", long, request_id="dup"))
        await first.aclose()  # type: ignore[attr-defined]
        await wait_until_idle(async_engine)

    asyncio.run(run())


def test_callers_on_several_threads(async_engine: AsyncEngine, engine: Engine) -> None:
    expected = [o.outputs[0].token_ids for o in engine.generate(PROMPTS[:4], GREEDY, use_tqdm=False)]
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        outs = asyncio.run(collect(async_engine.generate(PROMPTS[i], GREEDY)))
        results[i] = outs[-1].outputs[0].token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == dict(enumerate(expected))


def test_shutdown_aborts_in_flight_requests(default_gguf: Path) -> None:
    long = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)

    async def run() -> RequestOutput:
        async with AsyncEngine(str(default_gguf), kv_cache_memory_bytes=64 << 20, max_model_len=1024) as engine:
            stream = engine.generate("A long story:", long)
            first = await stream.__anext__()  # type: ignore[attr-defined]
            assert not first.finished
            task = asyncio.create_task(collect(stream))
            await engine.shutdown()
            outs = await task
        with pytest.raises(Exception, match="shut down"):
            await collect(engine.generate("Hi", long))
        return outs[-1]

    last = asyncio.run(run())
    assert last.finished
    assert last.outputs[0].finish_reason == "abort"
