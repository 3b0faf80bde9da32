"""Structured-output constraints compile off the engine loop: the caller's thread compiles a request's grammar
(`Engine.compile_structured`) into the engine's cache and the loop only takes the compiled matcher, so a running
request keeps stepping while a large grammar compiles; a grammar that does not compile fails its own caller with
an InvalidRequestError naming structured_outputs, and the running request goes on untouched."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from ember import AsyncEngine, Engine, InvalidRequestError, SamplingParams, StructuredOutputsParams

ENGINE_ARGS = {"kv_cache_memory_bytes": 8 << 20}
PROMPT = [1, 2, 3, 4]
LONG = SamplingParams(temperature=0.0, max_tokens=120, ignore_eos=True)
NUM_STEPS_DURING_COMPILE = 3
"""Steps the running request must take while the new request's grammar compiles."""
WAIT_S = 60.0
"""Failure guard only: how long the compile waits for those steps before the test fails."""


def words(num_words: int) -> list[str]:
    """`num_words` distinct words."""
    return [f"w{i:05d}x" for i in range(num_words)]


def test_a_grammar_compiles_while_a_running_request_steps(tiny_model_dir: Path) -> None:
    constrained = SamplingParams(
        temperature=0.0, max_tokens=16, structured_outputs=StructuredOutputsParams(choice=words(1000))
    )
    expected_base = Engine(str(tiny_model_dir), **ENGINE_ARGS).generate(PROMPT, LONG, use_tqdm=False)
    expected_base_ids = expected_base[0].outputs[0].token_ids

    async def run() -> tuple[list[int], str, str, set[str], list[int]]:
        async with AsyncEngine(str(tiny_model_dir), **ENGINE_ARGS) as engine:
            progress = {"num_tokens": 0}
            advanced = threading.Condition()
            compile_threads: set[str] = set()
            steps_during_compile: list[int] = []
            compile_structured = engine._compile_structured

            def compile_while_counting(params: Any) -> None:
                # The running request must step while the first grammar compiles: on the loop it never would.
                compile_threads.add(threading.current_thread().name)
                if steps_during_compile:
                    compile_structured(params)
                    return
                with advanced:
                    start = progress["num_tokens"]
                    target = start + NUM_STEPS_DURING_COMPILE
                    stepped = advanced.wait_for(lambda: progress["num_tokens"] >= target, timeout=WAIT_S)
                    steps_during_compile.append(progress["num_tokens"] - start if stepped else 0)
                compile_structured(params)

            engine._compile_structured = compile_while_counting
            running = engine.generate(PROMPT, LONG, request_id="base", delta=False)

            async def consume() -> list[int]:
                token_ids: list[int] = []
                async for out in running:
                    token_ids = out.outputs[0].token_ids
                    with advanced:
                        progress["num_tokens"] = len(token_ids)
                        advanced.notify_all()
                return token_ids

            consumer = asyncio.create_task(consume())
            texts = [out async for out in engine.generate(PROMPT, constrained)]
            with pytest.raises(InvalidRequestError) as info:
                bad = SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(regex="a("))
                async for _ in engine.generate(PROMPT, bad):
                    pass
            base_ids = await consumer
            return base_ids, texts[-1].outputs[0].text, str(info.value), compile_threads, steps_during_compile

    base_ids, text, message, compile_threads, steps_during_compile = asyncio.run(run())
    assert steps_during_compile and all(n >= NUM_STEPS_DURING_COMPILE for n in steps_during_compile), (
        steps_during_compile
    )
    assert compile_threads and "ember-engine-loop" not in compile_threads
    assert text in words(1000), text
    assert "structured_outputs" in message and "regex does not compile" in message, message
    assert base_ids == expected_base_ids, "the running request was disturbed"


def test_the_sync_engine_compiles_before_adding(tiny_model_dir: Path) -> None:
    engine = Engine(str(tiny_model_dir), **ENGINE_ARGS)
    ok = SamplingParams(temperature=0.0, max_tokens=16, structured_outputs=StructuredOutputsParams(choice=words(50)))
    bad = SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(regex="a("))
    with pytest.raises(InvalidRequestError, match="regex does not compile"):
        engine.generate([PROMPT, PROMPT], [ok, bad], use_tqdm=False)
    assert engine.stats()["num_running"] + engine.stats()["num_waiting"] == 0, "nothing was left queued"
    (out,) = engine.generate(PROMPT, ok, use_tqdm=False)
    assert out.outputs[0].text in words(50)
