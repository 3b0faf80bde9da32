"""Speculative decoding (n-gram drafts verified in one step) never changes outputs: with it on, every request's
tokens, logprobs, text and finish reason equal the same request with it off, over random prompts and sampling
parameters and combined with n > 1, stop strings, preemption, prefix caching, chunked prefill, structured output,
streaming and abort; the KV cache ends empty. On a tiny random model (float32), and on the default model's
quantized path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import AsyncEngine, Engine, InvalidRequestError, SamplingParams, StructuredOutputsParams

from server_harness import wait_idle

TOKENIZER_VOCAB = 268
"""Tokens of the tiny model's tokenizer (its embedding has more rows)."""
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
"""With `_spec`: a fixed draft length (adaptive off) at any batch size, so nearly every decode step verifies
drafts."""
ROOMY_KV_BYTES = 8 << 20
SMALL_KV_BYTES = 20 * 16 * 256
"""20 blocks of 16 tokens of the tiny model (2 layers, 2 KV heads of 16, K and V in float16: 256 bytes a token)."""


def _spec(**extra: Any) -> dict[str, Any]:
    return {**NGRAM, "adaptive": False, "max_num_seqs_to_speculate": 0, **extra}


def _completions(outs) -> list[tuple]:
    """Everything a caller sees of each completion."""
    return [
        (c.index, c.text, c.token_ids, c.cumulative_logprob, c.logprobs, c.finish_reason, c.stop_reason)
        for o in outs
        for c in o.outputs
    ]


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path) -> Engine:
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES)


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path) -> Engine:
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES, speculative_config=_spec())


PROMPTS = st.lists(st.integers(3, 40), min_size=2, max_size=12).flatmap(
    lambda motif: st.integers(1, 4).map(lambda reps: motif * reps)
)
"""Token-id prompts that repeat a motif, so the n-gram proposer finds matches."""


@st.composite
def sampling(draw: st.DrawFn) -> dict[str, Any]:
    """Random SamplingParams keywords: greedy or seeded sampling with every filter, penalties, bias, n, logprobs."""
    kw: dict[str, Any] = {"max_tokens": draw(st.integers(1, 48)), "seed": draw(st.integers(0, 2**32))}
    if draw(st.booleans()):
        kw["temperature"] = draw(st.sampled_from([0.3, 0.8, 1.5]))
        kw["top_k"] = draw(st.sampled_from([0, 1, 5, 40]))
        kw["top_p"] = draw(st.sampled_from([1.0, 0.9, 0.5]))
        kw["min_p"] = draw(st.sampled_from([0.0, 0.05]))
        kw["n"] = draw(st.integers(1, 3))
    else:
        kw["temperature"] = 0.0
    if draw(st.booleans()):
        kw["repetition_penalty"] = draw(st.sampled_from([1.0, 1.2, 0.9]))
        kw["frequency_penalty"] = draw(st.sampled_from([0.0, 0.5, -0.5]))
        kw["presence_penalty"] = draw(st.sampled_from([0.0, 0.7]))
    if draw(st.booleans()):
        kw["logit_bias"] = draw(st.dictionaries(st.integers(0, TOKENIZER_VOCAB - 1), st.floats(-5, 5), max_size=3))
    kw["logprobs"] = draw(st.sampled_from([None, 0, 3]))
    kw["min_tokens"] = draw(st.integers(0, min(4, kw["max_tokens"])))
    kw["ignore_eos"] = draw(st.booleans())
    return kw


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(PROMPTS, min_size=1, max_size=4), kw=sampling(), stop_at=st.integers(0, 30))
def test_outputs_equal_plain_decoding(
    plain: Engine, spec: Engine, prompts: list[list[int]], kw: dict[str, Any], stop_at: int
) -> None:
    params = SamplingParams(**kw)
    expected = plain.generate(prompts, params, use_tqdm=False)
    assert _completions(spec.generate(prompts, params, use_tqdm=False)) == _completions(expected)
    # A stop string cut from the plain output's text: it ends a completion inside a verified run.
    text = expected[0].outputs[0].text
    if len(text) > stop_at + 2:
        stopped = SamplingParams(**kw, stop=[text[stop_at : stop_at + 2]])
        want = _completions(plain.generate(prompts, stopped, use_tqdm=False))
        assert _completions(spec.generate(prompts, stopped, use_tqdm=False)) == want
    assert spec.stats()["kv_cache_usage"] == 0.0
    assert not spec._core.has_unfinished_requests()


def _batch(num_prompts: int = 8) -> tuple[list[list[int]], list[SamplingParams]]:
    prompts = [[7 + i, 8, 9, 10 + i] * (4 + i) for i in range(num_prompts)]
    params = [
        SamplingParams(max_tokens=60, ignore_eos=True, temperature=0.0 if i % 2 else 0.9, seed=i, logprobs=2)
        for i in range(num_prompts)
    ]
    return prompts, params


def test_drafts_are_proposed_and_accepted(plain: Engine, spec: Engine) -> None:
    prompts, params = _batch()
    before = spec.stats()
    assert _completions(spec.generate(prompts, params, use_tqdm=False)) == _completions(
        plain.generate(prompts, params, use_tqdm=False)
    )
    stats = spec.stats()
    proposed = stats["num_spec_proposed_tokens"] - before["num_spec_proposed_tokens"]
    accepted = stats["num_spec_accepted_tokens"] - before["num_spec_accepted_tokens"]
    assert proposed > 0 and 0 < accepted <= proposed, (proposed, accepted)
    assert 0.0 < stats["spec_acceptance_rate"] <= 1.0
    assert stats["spec_mean_accepted_len"] > 0.0
    assert plain.stats()["num_spec_proposed_tokens"] == 0


def test_preemption_prefix_caching_and_chunked_prefill(tiny_model_dir: Path, plain: Engine) -> None:
    prompts, params = _batch()
    want = _completions(plain.generate(prompts, params, use_tqdm=False))
    # 20 blocks of 16 tokens cannot hold eight ~100-token requests: some are preempted and recomputed; a budget of
    # 24 tokens chunks the prompts and cuts drafts short.
    small = Engine(
        str(tiny_model_dir),
        kv_cache_memory_bytes=SMALL_KV_BYTES,
        max_num_batched_tokens=24,
        speculative_config=_spec(),
    )
    assert _completions(small.generate(prompts, params, use_tqdm=False)) == want
    stats = small.stats()
    assert stats["num_preemptions"] > 0 and stats["num_spec_accepted_tokens"] > 0
    assert stats["kv_cache_usage"] == 0.0
    again = small.generate(prompts[:2], params[:2], use_tqdm=False)
    assert _completions(again) == want[:2]


def test_priorities_with_speculation(tiny_model_dir: Path, plain: Engine) -> None:
    prompts, params = _batch()
    want = _completions(plain.generate(prompts, params, use_tqdm=False))
    engine = Engine(
        str(tiny_model_dir),
        kv_cache_memory_bytes=SMALL_KV_BYTES,
        scheduling_policy="priority",
        speculative_config=_spec(),
    )
    got = engine.generate(prompts, params, priority=[5, 0, 3, 1, 4, 2, 7, 6], use_tqdm=False)
    assert _completions(got) == want
    assert engine.stats()["num_spec_accepted_tokens"] > 0


def test_structured_output_alongside_speculation(plain: Engine, spec: Engine) -> None:
    regex = SamplingParams(
        max_tokens=40, temperature=1.0, seed=5, structured_outputs=StructuredOutputsParams(regex="[a-c]{2,9}-[0-9]+")
    )
    prompts, params = _batch(4)
    mixed = [*params, regex]
    inputs = [*prompts, [5, 6, 7]]
    assert _completions(spec.generate(inputs, mixed, use_tqdm=False)) == _completions(
        plain.generate(inputs, mixed, use_tqdm=False)
    )


def test_streaming_and_abort_mid_speculation(tiny_model_dir: Path, plain: Engine) -> None:
    prompts, params = _batch(3)
    want = _completions(plain.generate(prompts, params, use_tqdm=False))

    async def scenario() -> None:
        engine = AsyncEngine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES, speculative_config=_spec())
        try:
            long = SamplingParams(max_tokens=200, ignore_eos=True, temperature=0.0)
            doomed = engine.generate([3, 4, 5, 3, 4, 5, 3, 4, 5], long, request_id="doomed")
            first = await doomed.__anext__()
            outs = []
            for prompt, p in zip(prompts, params, strict=True):
                async for out in engine.generate(prompt, p):
                    final = out
                outs.append(final)
                if len(outs) == 1:
                    assert engine.abort("doomed")
            rest = [out async for out in doomed]
            assert (rest or [first])[-1].outputs[0].finish_reason == "abort"
            assert _completions(outs) == want
            assert engine.stats()["num_spec_accepted_tokens"] > 0
            # Blocks are freed just after the final output is delivered: wait for them off the loop.
            assert (await asyncio.to_thread(wait_idle, engine))["kv_cache_usage"] == 0.0
        finally:
            await engine.shutdown()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def default_spec(default_gguf: Path) -> Engine:
    return Engine(
        str(default_gguf),
        kv_cache_memory_bytes=64 << 20,
        max_model_len=1024,
        speculative_config={"method": "ngram", "num_speculative_tokens": 5, "max_num_seqs_to_speculate": 0},
    )


def test_default_model_quantized_path_is_unchanged(default_spec: Engine, uncached_engine: Engine) -> None:
    """The default model's Q4_1 arithmetic (8-bit activations per row): verifying k + 1 rows in one step gives the
    same tokens and logprobs as decoding them one at a time. Repetitive prompts with a peaked distribution get
    drafts accepted past the first row also when sampling: row i must draw at token index t + i, and penalties
    must see the drafts accepted before it."""
    prompts = [
        "apple banana cherry apple banana cherry apple banana cherry apple banana cherry apple",
        "x = 1\ny = 2\nx = 1\ny = 2\nx = 1\ny = 2\nx = 1\n",
    ]
    for params in [
        SamplingParams(max_tokens=24, temperature=0.0, logprobs=1),
        SamplingParams(max_tokens=32, temperature=0.3, top_p=0.95, seed=11, n=2, logprobs=2),
        SamplingParams(max_tokens=32, temperature=0.3, seed=11),
        SamplingParams(max_tokens=32, temperature=0.3, seed=12, repetition_penalty=1.05, frequency_penalty=0.1),
    ]:
        before = default_spec.stats()["num_spec_accepted_tokens"]
        got = default_spec.generate(prompts, params, use_tqdm=False)
        assert _completions(got) == _completions(uncached_engine.generate(prompts, params, use_tqdm=False))
        assert default_spec.stats()["num_spec_accepted_tokens"] - before > 2


def test_rejected_drafts_never_reach_the_prefix_cache(default_spec: Engine, uncached_engine: Engine) -> None:
    """A prompt that continues an earlier output hits the blocks that output filled during verification; if any
    held a rejected draft's K/V, decoding from there would differ from an engine that computes it all."""
    params = SamplingParams(max_tokens=80, ignore_eos=True, temperature=1.0, seed=3)
    prompt = "one two three, one two three, one two three, one two"
    (first,) = default_spec.generate([prompt], params, use_tqdm=False)
    prompt_ids = default_spec.tokenizer.encode(prompt)
    follow = prompt_ids + first.outputs[0].token_ids[:70]
    greedy = SamplingParams(max_tokens=20, ignore_eos=True, temperature=0.0, logprobs=1)
    (hit,) = default_spec.generate([follow], greedy, use_tqdm=False)
    assert hit.num_cached_tokens > len(prompt_ids)
    assert _completions([hit]) == _completions(uncached_engine.generate([follow], greedy, use_tqdm=False))


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"method": "ngram"}, "num_speculative_tokens is required"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be in [1, 32], got 0"),
        ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 3, "prompt_lookup_max": 2}, "(3)"),
        ({"method": "medusa", "num_speculative_tokens": 2}, "method must be"),
        ({"method": "draft_model", "model": "x", "num_speculative_tokens": 2}, "unknown model"),
        ({"method": "ngram", "num_speculative_tokens": 2, "typo": 1}, "unknown key"),
        ("{not json", "not valid JSON"),
        (42, "must be a dict"),
    ],
)
def test_bad_configs_are_clear_errors(tiny_model_dir: Path, config: Any, needle: str) -> None:
    with pytest.raises(InvalidRequestError, match="speculative_config") as err:
        Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES, speculative_config=config)
    assert needle in str(err.value)


def serve_stats(model_dir: Path, flag: str) -> dict[str, float]:
    """`ember serve MODEL --speculative-config FLAG`'s engine after one greedy 40-token request: its stats."""
    from ember.cli import build_parser
    from ember.server.runner import _load_engine

    args = build_parser().parse_args(
        ["serve", str(model_dir), "--speculative-config", flag, "--kv-cache-memory-bytes", str(ROOMY_KV_BYTES)]
    )
    engine = _load_engine(args)
    assert isinstance(engine, AsyncEngine)

    async def scenario() -> dict[str, float]:
        try:
            prompt = [7, 8, 9, 10] * 6
            async for _ in engine.generate(prompt, SamplingParams(max_tokens=40, ignore_eos=True, temperature=0.0)):
                pass
            return engine.stats()
        finally:
            await engine.shutdown()

    return asyncio.run(scenario())


def test_serve_flag_and_metrics(tiny_model_dir: Path) -> None:
    from ember.metrics import render_prometheus

    stats = serve_stats(
        tiny_model_dir, '{"method": "ngram", "num_speculative_tokens": 3, "max_num_seqs_to_speculate": 0}'
    )
    assert stats["num_spec_proposed_tokens"] > 0
    text = render_prometheus(stats)
    for name in ("ember_spec_proposed_tokens_total", "ember_spec_accepted_tokens_total", "ember_spec_acceptance_rate"):
        assert f"\n{name} " in text
