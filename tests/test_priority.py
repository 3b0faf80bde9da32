"""Priority scheduling (vLLM's `scheduling_policy`): "priority" admits the lowest `priority` value
first, "fcfs" (the default) takes only priority 0; and the `priority=` arguments' validation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ember import AsyncEngine, Engine, InvalidRequestError, SamplingParams
from ember.cli import build_parser

GREEDY = SamplingParams(temperature=0.0, max_tokens=4)
PROMPTS = ["The capital of France is", "Once upon a time"]
QUEUE = ["Rivers flow to", "Mountains are", "The ocean is", "Deserts are dry because"]


@pytest.fixture(scope="module")
def priority_engine(default_gguf: Path) -> Engine:
    """One request at a time (max_num_seqs=1), so admission order is completion order."""
    return Engine(str(default_gguf), scheduling_policy="priority", max_num_seqs=1,
                  kv_cache_memory_bytes=32 << 20, max_model_len=512)  # fmt: skip


def _first_token_order(outputs: list) -> list[int]:
    """Indices of the outputs by the time of their first token."""
    return sorted(range(len(outputs)), key=lambda i: outputs[i].metrics.first_token_time)


def test_fcfs_engine_takes_only_priority_zero(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match='scheduling_policy="priority"'):
        engine.generate(PROMPTS, GREEDY, use_tqdm=False, priority=[0, 3])
    assert engine.stats()["num_waiting"] == 0 and engine.stats()["num_running"] == 0
    assert all(o.finished for o in engine.generate(PROMPTS, GREEDY, use_tqdm=False, priority=0))


def test_unknown_policy_is_named(default_gguf: Path) -> None:
    with pytest.raises(InvalidRequestError, match='scheduling_policy must be "fcfs" or "priority", got "lifo"'):
        Engine(str(default_gguf), scheduling_policy="lifo", kv_cache_memory_bytes=16 << 20)


def test_lower_priority_values_are_admitted_first(priority_engine: Engine, uncached_engine: Engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    outs = priority_engine.generate(QUEUE, params, use_tqdm=False, priority=[3, 1, 2, -1])
    assert _first_token_order(outs) == [3, 1, 2, 0]
    # Order changes, tokens do not.
    reference = uncached_engine.generate(QUEUE, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in reference]


def test_equal_priorities_keep_arrival_order(priority_engine: Engine) -> None:
    outs = priority_engine.chat([[{"role": "user", "content": q}] for q in QUEUE], GREEDY, use_tqdm=False, priority=7)
    assert _first_token_order(outs) == [0, 1, 2, 3]


def _num_admitted(engine: AsyncEngine) -> int:
    """Requests the engine holds, running or waiting."""
    stats = engine.stats()
    return int(stats["num_running"] + stats["num_waiting"])


def test_a_preferred_request_overtakes_the_queue(default_gguf: Path) -> None:
    """While one long request runs, three queue up; the last to arrive has the lowest priority
    value and runs next, streamed, with n=2 (its two completions share the preference)."""
    engine = AsyncEngine(str(default_gguf), scheduling_policy="priority", max_num_seqs=1,
                         kv_cache_memory_bytes=32 << 20, max_model_len=512)  # fmt: skip
    finished: list[str] = []

    async def run(name: str, prompt: str, params: SamplingParams, priority: int) -> None:
        async for out in engine.generate(prompt, params, request_id=name, priority=priority):
            if out.finished:
                finished.append(name)

    async def scenario() -> None:
        long = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
        short = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
        running = asyncio.create_task(run("running", "Count to fifty:", long, 5))
        while engine.stats()["num_running"] == 0:
            await asyncio.sleep(0.005)
        # One at a time: prompts are tokenized in worker threads, so requests started together may
        # reach the engine in either order, and arrival order is what breaks the priority tie.
        queued = []
        for i in range(2):
            queued.append(asyncio.create_task(run(f"queued-{i}", QUEUE[i], short, 0)))
            while _num_admitted(engine) + len(finished) < i + 2:
                await asyncio.sleep(0.005)
        preferred = SamplingParams(temperature=0.8, seed=3, n=2, max_tokens=4, ignore_eos=True)
        late = asyncio.create_task(run("preferred", QUEUE[3], preferred, -1))
        await asyncio.gather(running, *queued, late)
        await engine.shutdown()

    asyncio.run(scenario())
    assert finished == ["running", "preferred", "queued-0", "queued-1"], finished


def test_serve_takes_the_scheduling_policy(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["serve"]).scheduling_policy == "fcfs"
    assert parser.parse_args(["serve", "--scheduling-policy", "priority"]).scheduling_policy == "priority"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--scheduling-policy", "lifo"])
    assert "invalid choice: 'lifo'" in capsys.readouterr().err


def test_priority_int_and_list_are_accepted(priority_engine: Engine) -> None:
    plain = priority_engine.generate(PROMPTS, GREEDY, use_tqdm=False)
    shared = priority_engine.generate(PROMPTS, GREEDY, use_tqdm=False, priority=5)
    listed = priority_engine.generate(PROMPTS, GREEDY, use_tqdm=False, priority=[1, -2])
    for a, b, c in zip(plain, shared, listed, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids == c.outputs[0].token_ids


@pytest.mark.parametrize("priority", [[0], [0, 1, 2], "1", [0, 1.5], [True, 0]])
def test_bad_priority_raises(priority_engine: Engine, priority: object) -> None:
    with pytest.raises(InvalidRequestError, match="priority"):
        priority_engine.generate(PROMPTS, GREEDY, use_tqdm=False, priority=priority)  # type: ignore[arg-type]
    assert priority_engine.stats()["num_waiting"] == 0 and priority_engine.stats()["num_running"] == 0


def test_chat_takes_priority_too(priority_engine: Engine) -> None:
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    plain = priority_engine.chat(conversations, GREEDY, use_tqdm=False)
    ranked = priority_engine.chat(conversations, GREEDY, use_tqdm=False, priority=[3, -1])
    assert [o.outputs[0].token_ids for o in plain] == [o.outputs[0].token_ids for o in ranked]
    with pytest.raises(InvalidRequestError, match="priority"):
        priority_engine.chat(conversations, GREEDY, use_tqdm=False, priority=[1])
