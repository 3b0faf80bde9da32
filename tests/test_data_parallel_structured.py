"""Structured outputs behind data-parallel replicas (`mp`): requests constrained by a JSON schema, a regex and a
choice list, greedy and seeded, give what one engine gives; a grammar that does not compile fails its own request
with an InvalidRequestError naming structured_outputs while the others finish. A replica's worker compiles each
grammar on a thread of its own (`AsyncEngine`'s caller-side compile), not on the loop that steps its engine.
Tiny model, 2 replicas."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember import Engine, InvalidRequestError, SamplingParams, StructuredOutputsParams
from ember.data_parallel import DataParallelConfig, ReplicaRouter
from ember.data_parallel.worker import ReplicaRequest, ReplicaWorker

from dp_harness import HEARTBEAT

ENGINE_ARGS: dict[str, Any] = {"kv_cache_memory_bytes": 8 << 20}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
CONSTRAINTS = [
    StructuredOutputsParams(json=SCHEMA),
    StructuredOutputsParams(regex=r"[a-z]{2,6}-\d{1,3}"),
    StructuredOutputsParams(choice=["alpha", "beta", "gamma", "delta"]),
]


def requests() -> tuple[list[list[int]], list[SamplingParams]]:
    """Six prompts, each constraint once greedy and once seeded."""
    prompts = [[3 + i, 11, 17 + 2 * i, 8] for i in range(6)]
    params = [
        SamplingParams(
            temperature=0.0 if i < 3 else 0.8, seed=None if i < 3 else 40 + i, max_tokens=24, structured_outputs=c
        )
        for i, c in enumerate(CONSTRAINTS * 2)
    ]
    return prompts, params


@pytest.fixture(scope="module")
def router(tiny_model_dir: Path) -> Iterator[ReplicaRouter]:
    config = DataParallelConfig(data_parallel_size=2, backend="mp", **HEARTBEAT)  # type: ignore[arg-type]
    router = ReplicaRouter(str(tiny_model_dir), config, num_threads=2, **ENGINE_ARGS)
    try:
        yield router
    finally:
        asyncio.run(router.shutdown())


async def _last(stream: Any) -> Any:
    last = None
    async for out in stream:
        last = out
    return last


def test_constrained_requests_under_two_replicas_equal_one_engine(tiny_model_dir: Path, router: ReplicaRouter) -> None:
    prompts, params = requests()
    want = Engine(str(tiny_model_dir), **ENGINE_ARGS).generate(prompts, params, use_tqdm=False)
    bad = SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(regex="a("))

    async def run() -> tuple[list[Any], BaseException | Any]:
        good = [_last(router.generate(p, sp)) for p, sp in zip(prompts, params, strict=True)]
        *outs, failed = await asyncio.gather(*good, _last(router.generate(prompts[0], bad)), return_exceptions=True)
        return outs, failed

    outs, failed = asyncio.run(run())
    assert isinstance(failed, InvalidRequestError) and "structured_outputs" in str(failed), failed
    assert [o.outputs[0].token_ids for o in outs] == [w.outputs[0].token_ids for w in want]
    assert [o.outputs[0].text for o in outs] == [w.outputs[0].text for w in want]


def test_a_replica_compiles_grammars_off_its_loop(tiny_model_dir: Path) -> None:
    prompts, params = requests()
    want = Engine(str(tiny_model_dir), **ENGINE_ARGS).generate(prompts[:3], params[:3], use_tqdm=False)

    async def run() -> tuple[list[Any], set[str], str]:
        worker = ReplicaWorker(str(tiny_model_dir), ENGINE_ARGS)
        compile_threads: set[str] = set()
        compile_structured = worker.engine._compile_structured

        def recording(sampling_params: SamplingParams) -> None:
            compile_threads.add(threading.current_thread().name)
            compile_structured(sampling_params)

        worker.engine._compile_structured = recording
        try:
            outs = [
                await _last(worker.generate(f"r{i}", ReplicaRequest(prompts[i], params[i], 0, False))) for i in range(3)
            ]
        finally:
            await worker.shutdown()
        return outs, compile_threads, threading.current_thread().name

    outs, compile_threads, loop_thread = asyncio.run(run())
    assert [o.outputs[0].token_ids for o in outs] == [w.outputs[0].token_ids for w in want]
    assert compile_threads and loop_thread not in compile_threads, (compile_threads, loop_thread)
