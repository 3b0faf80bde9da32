"""End to end on the default model: preemption under a tiny KV cache, prefix caching, and freed blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import Engine, SamplingParams

# SmolLM2-135M: 30 layers * (K and V) * 3 KV heads * 64 dims * 2 bytes (f16, the default
# kv_cache_dtype) per token.
BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 2
BLOCK_SIZE = 16
TINY_NUM_BLOCKS = 24
MAX_MODEL_LEN = 256
GREEDY_48 = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
GREEDY_12 = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "1, 2, 3, 4,",
    "The best way to learn a language is",
    "Water boils at",
    "My favourite colour is",
    "In the beginning",
]
SYSTEM = (
    "You are a careful assistant for a small library. You answer questions about opening hours, "
    "borrowing rules, late fees, the reading room, printing, the children's corner and events. "
    "Keep every answer short, polite and factual. If you do not know something, say so and suggest "
    "asking the front desk. Never invent book titles, prices or dates. The library opens at nine "
    "and closes at six on weekdays."
)
QUESTIONS = ["When does the library open?", "Can I print documents there?"]


def _engine(gguf: Path, num_blocks: int, **kwargs: object) -> Engine:
    """An engine with exactly `num_blocks` KV-cache blocks of BLOCK_SIZE tokens."""
    return Engine(
        str(gguf),
        kv_cache_memory_bytes=num_blocks * BLOCK_SIZE * BYTES_PER_TOKEN,
        max_model_len=MAX_MODEL_LEN,
        block_size=BLOCK_SIZE,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def roomy(default_gguf: Path) -> Engine:
    """An engine whose KV cache holds every request of these tests at once."""
    return _engine(default_gguf, num_blocks=256)


def _tokens(engine: Engine, prompts: list[str] | str, params: SamplingParams) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in engine.generate(prompts, params, use_tqdm=False)]


def test_preemption_keeps_greedy_outputs(default_gguf: Path, roomy: Engine) -> None:
    tiny = _engine(default_gguf, num_blocks=TINY_NUM_BLOCKS)
    assert tiny._core.num_blocks == TINY_NUM_BLOCKS
    got = _tokens(tiny, PROMPTS, GREEDY_48)
    assert tiny.stats()["num_preemptions"] > 0
    assert got == _tokens(roomy, PROMPTS, GREEDY_48)
    assert all(len(t) == 48 for t in got)
    assert tiny.stats()["kv_cache_usage"] == 0.0


def test_prefix_cache_reuses_a_shared_system_prompt(default_gguf: Path) -> None:
    cached = _engine(default_gguf, num_blocks=64)
    uncached = _engine(default_gguf, num_blocks=64, enable_prefix_caching=False)
    prompts = [f"{SYSTEM}\nQuestion: {q}\nAnswer:" for q in QUESTIONS]
    assert len(cached.tokenizer.encode(SYSTEM)) >= 80
    first, second = (cached.generate(p, GREEDY_12, use_tqdm=False)[0] for p in prompts)
    assert second.num_cached_tokens >= 64
    assert cached.stats()["prefix_cache_hits"] > 0
    expected = [_tokens(uncached, p, GREEDY_12)[0] for p in prompts]
    assert [first.outputs[0].token_ids, second.outputs[0].token_ids] == expected
    assert uncached.stats()["prefix_cache_hits"] == 0
    assert cached.stats()["kv_cache_usage"] == uncached.stats()["kv_cache_usage"] == 0.0


def test_kv_cache_is_empty_after_generate(roomy: Engine) -> None:
    _tokens(roomy, PROMPTS[:3], GREEDY_12)
    stats = roomy.stats()
    assert stats["kv_cache_usage"] == 0.0
    assert stats["num_running"] == stats["num_waiting"] == 0


def test_preemption_keeps_penalized_outputs_and_prompt_logprobs(default_gguf: Path, roomy: Engine) -> None:
    params = SamplingParams(
        temperature=0.8,
        seed=5,
        max_tokens=48,
        ignore_eos=True,
        repetition_penalty=1.3,
        frequency_penalty=0.4,
        presence_penalty=0.2,
        prompt_logprobs=1,
    )
    tiny = _engine(default_gguf, num_blocks=TINY_NUM_BLOCKS)
    got = tiny.generate(PROMPTS, params, use_tqdm=False)
    assert tiny.stats()["num_preemptions"] > 0
    want = roomy.generate(PROMPTS, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]
    for g, w in zip(got, want, strict=True):
        assert g.prompt_logprobs is not None and len(g.prompt_logprobs) == len(g.prompt_token_ids)
        assert g.prompt_logprobs == w.prompt_logprobs
    assert tiny.stats()["kv_cache_usage"] == 0.0


def test_n_completions_share_the_prompt_blocks(default_gguf: Path) -> None:
    """n > 1 computes the prompt once: the other completions share its blocks (even with prefix caching off)
    and sample exactly what separate requests with seeds seed+i would."""
    engine = _engine(default_gguf, 256, enable_prefix_caching=False)
    prompt = SYSTEM + " " + QUESTIONS[0]
    params = SamplingParams(n=4, temperature=0.9, seed=11, max_tokens=10, ignore_eos=True)
    (forked,) = engine.generate(prompt, params, use_tqdm=False)
    stats = engine.stats()
    num_prompt = len(forked.prompt_token_ids)
    shared = (num_prompt - 1) // BLOCK_SIZE * BLOCK_SIZE
    assert stats["num_forked_tokens"] == 3 * shared
    assert stats["num_prompt_tokens"] == num_prompt + 3 * (num_prompt - shared)
    one_by_one = [
        engine.generate(
            prompt, SamplingParams(temperature=0.9, seed=11 + i, max_tokens=10, ignore_eos=True), use_tqdm=False
        )[0]
        for i in range(4)
    ]
    assert [c.token_ids for c in forked.outputs] == [o.outputs[0].token_ids for o in one_by_one]
    assert len({tuple(c.token_ids) for c in forked.outputs}) > 1
    assert engine.stats()["kv_cache_usage"] == 0.0
