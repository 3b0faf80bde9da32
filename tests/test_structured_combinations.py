"""Structured output combined with the engine's other features on a tiny random model: n > 1 forks, seeds alone
vs batched, prefix caching, chunked prefill, preemption, priorities, streaming and abort. Every output must satisfy
its constraint, and features that must not change tokens (caching, chunking, preemption, batching) must not."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import jsonschema
import pytest

from ember import AsyncEngine, Engine, SamplingParams, StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "name": {"type": "string", "maxLength": 6},
    },
    "required": ["id", "tags", "name"],
    "additionalProperties": False,
}
JSON = StructuredOutputsParams(json=SCHEMA)
REGEX = StructuredOutputsParams(regex="[a-c]{2,5}-[0-9]{1,3}")
LONG_PROMPT = "A long shared prefix that fills more than two blocks of sixteen tokens each, then: "
SMALL_KV_BYTES = 20 * 16 * 256
"""20 blocks of 16 tokens of the tiny model (2 layers, 2 KV heads of 16, K and V in float16: 256 bytes a token)."""
PROMPTS = [LONG_PROMPT + s for s in ("one", "two", "three", "four", "five", "six")]


def _valid(text: str, constraint: StructuredOutputsParams) -> bool:
    if constraint is REGEX:
        return re.fullmatch("[a-c]{2,5}-[0-9]{1,3}", text) is not None
    jsonschema.validate(json.loads(text), SCHEMA)
    return True


def _params(constraint: StructuredOutputsParams, temperature: float = 1.0, seed: int = 7, **kw) -> SamplingParams:
    return SamplingParams(temperature=temperature, seed=seed, max_tokens=120, structured_outputs=constraint, **kw)


def _texts(engine: Engine, prompts: list[str], params) -> list[str]:
    outs = engine.generate(prompts, params, use_tqdm=False)
    for o in outs:
        for c in o.outputs:
            assert c.finish_reason == "stop", (c.text, c.finish_reason)
    return [c.text for o in outs for c in o.outputs]


@pytest.fixture(scope="module")
def roomy(tiny_model_dir: Path) -> Engine:
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=8 << 20, enable_prefix_caching=False)


@pytest.fixture(scope="module")
def reference(roomy: Engine) -> list[str]:
    """Each prompt alone, seeded, on a roomy engine without prefix caching: what every combination must give."""
    return [_texts(roomy, [p], _params(JSON, seed=i))[0] for i, p in enumerate(PROMPTS)]


def _batch_params() -> list[SamplingParams]:
    return [_params(JSON, seed=i) for i in range(len(PROMPTS))]


def test_seeded_outputs_are_the_same_alone_and_batched(roomy: Engine, reference: list[str]) -> None:
    assert all(_valid(t, JSON) for t in reference)
    # Batched together with unconstrained and regex-constrained neighbours.
    prompts = [*PROMPTS, "noise", "more noise"]
    params = [*_batch_params(), SamplingParams(max_tokens=30, seed=1), _params(REGEX, seed=3)]
    outs = roomy.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].text for o in outs[: len(PROMPTS)]] == reference
    assert _valid(outs[-1].outputs[0].text, REGEX)


def test_prefix_caching_and_chunked_prefill_keep_outputs(tiny_model_dir: Path, reference: list[str]) -> None:
    cached = Engine(str(tiny_model_dir), kv_cache_memory_bytes=8 << 20, max_num_batched_tokens=24)
    first = _texts(cached, PROMPTS, _batch_params())
    again = [cached.generate(p, _params(JSON, seed=i), use_tqdm=False)[0] for i, p in enumerate(PROMPTS)]
    assert sum(o.num_cached_tokens for o in again) > 0
    assert first == [o.outputs[0].text for o in again] == reference


def test_preemption_keeps_the_grammar_state(tiny_model_dir: Path, reference: list[str]) -> None:
    # 20 blocks of 16 tokens cannot hold six ~150-token requests: some are preempted and recomputed.
    small = Engine(str(tiny_model_dir), kv_cache_memory_bytes=SMALL_KV_BYTES, block_size=16)
    assert small._core.num_blocks == 20
    assert _texts(small, PROMPTS, _batch_params()) == reference
    assert small.stats()["num_preemptions"] > 0
    assert small.stats()["kv_cache_usage"] == 0.0


def test_priorities_with_constraints(tiny_model_dir: Path, reference: list[str]) -> None:
    engine = Engine(
        str(tiny_model_dir),
        kv_cache_memory_bytes=SMALL_KV_BYTES,
        scheduling_policy="priority",
    )
    outs = engine.generate(PROMPTS, _batch_params(), priority=[5, 0, 3, 1, 4, 2], use_tqdm=False)
    assert [o.outputs[0].text for o in outs] == reference


def test_n_forks_each_satisfy_the_constraint(roomy: Engine) -> None:
    for constraint in (JSON, REGEX):
        (out,) = roomy.generate(PROMPTS[0], _params(constraint, n=6), use_tqdm=False)
        texts = [c.text for c in out.outputs]
        assert len(texts) == 6 and all(_valid(t, constraint) for t in texts)
        assert len(set(texts)) > 1, "forks draw their own tokens"
    # A fork's seed is the parent seed plus its index: completion i equals the same request seeded seed+i.
    (forked,) = roomy.generate(PROMPTS[1], _params(REGEX, seed=40, n=3), use_tqdm=False)
    alone = [_texts(roomy, [PROMPTS[1]], _params(REGEX, seed=40 + i))[0] for i in range(3)]
    assert [c.text for c in forked.outputs] == alone


def test_streaming_and_abort(tiny_model_dir: Path, reference: list[str]) -> None:
    async def scenario() -> None:
        engine = AsyncEngine(str(tiny_model_dir), kv_cache_memory_bytes=8 << 20)
        try:
            text = ""
            async for delta in engine.generate(PROMPTS[0], _params(JSON, seed=0), delta=True):
                text += delta.outputs[0].text if delta.outputs else ""
            assert text == reference[0]
            # Abort a constrained request mid-way: it ends with "abort", and the engine serves the next one. The
            # grammar accepts only at 250 characters, so the request cannot stop on its own before the abort lands.
            params = SamplingParams(max_tokens=250, structured_outputs=StructuredOutputsParams(regex="[ab]{250,}"))
            stream = engine.generate("x", params, request_id="to-abort")
            first = await stream.__anext__()
            assert engine.abort("to-abort")
            outputs = [first] + [out async for out in stream]
            last = outputs[-1]
            assert last.outputs[0].finish_reason == "abort"
            assert re.fullmatch("[ab]*", last.outputs[0].text)
            async for out in engine.generate(PROMPTS[0], _params(JSON, seed=0)):
                final = out
            assert final.outputs[0].text == reference[0]
        finally:
            await engine.shutdown()

    asyncio.run(scenario())
