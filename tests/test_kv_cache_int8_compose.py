"""The int8 KV cache composed with the engine's other features, each quick.

- streaming: the deltas of a streamed request add up to the tokens `generate` gives;
- abort mid-generation: the aborted request ends with "abort", the requests beside it keep their
  tokens, and the cache returns to empty;
- LoRA adapters (f16 factors under a cache that is not float32): a batch mixing two adapters and the
  base model gives each request the tokens it gets alone;
- draft-model speculation: the default model drafting for itself gives the tokens and logprobs of plain
  decoding (the 1 + k verification rows of a sequence are attended together, each row's bits as alone);
- n-gram speculation under a block budget that forces preemption, in small prefill chunks: the multi-row
  verification over an int8 cache that is freed and recomputed gives the tokens and logprobs of plain decoding.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ember import AsyncEngine, Engine, LoRARequest, SamplingParams
from test_speculative import _completions

from lora_adapters import ALL_LINEAR, write_model_with_adapters
from server_harness import wait_idle
from tiny_models import FAMILY_VARIANTS

INT8: dict[str, Any] = {"kv_cache_dtype": "int8", "kv_cache_memory_bytes": 32 << 20, "max_model_len": 256}
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=5, n=2, max_tokens=16, ignore_eos=True, logprobs=1)
PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Once upon a time"]


@pytest.fixture(scope="module")
def plain(default_gguf: Path) -> Engine:
    return Engine(str(default_gguf), **INT8)


def test_int8_streaming_equals_generate(plain: Engine) -> None:
    want = plain.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    streamed: list[int] = []
    for delta in plain.generate_stream(PROMPTS[0], GREEDY):
        streamed += delta.outputs[0].token_ids
    assert streamed == want and len(want) == GREEDY.max_tokens


def test_int8_abort_mid_generation_empties_the_cache(default_gguf: Path, plain: Engine) -> None:
    want = _completions(plain.generate(PROMPTS[1:], [GREEDY, SEEDED], use_tqdm=False))

    async def scenario() -> None:
        engine = AsyncEngine(str(default_gguf), **INT8)
        try:
            doomed = engine.generate(PROMPTS[0], SamplingParams(max_tokens=200, ignore_eos=True), request_id="doomed")
            await doomed.__anext__()
            assert engine.abort("doomed")
            rest = [out async for out in doomed]
            assert rest and rest[-1].outputs[0].finish_reason == "abort"
            outs = []
            for prompt, params in zip(PROMPTS[1:], [GREEDY, SEEDED], strict=True):
                async for out in engine.generate(prompt, params):
                    final = out
                outs.append(final)
            assert _completions(outs) == want
            # The engine thread frees a request's blocks just after its final output is delivered.
            assert (await asyncio.to_thread(wait_idle, engine))["kv_cache_usage"] == 0.0
        finally:
            await engine.shutdown()

    asyncio.run(scenario())


def test_int8_lora_mixed_batch_equals_each_alone(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("lora_int8")
    # head_dim 32: the smallest head an int8 cache row (one Q8_0 block) holds.
    adapters = {
        "a": {"rank": 4, "alpha": 8.0, "targets": ALL_LINEAR, "seed": 21},
        "b": {"rank": 8, "alpha": 8.0, "targets": ["q_proj", "v_proj", "down_proj"], "seed": 22},
    }
    write_model_with_adapters(FAMILY_VARIANTS[0], root, adapters)
    loras = [LoRARequest(name, i + 1, str(root / name)) for i, name in enumerate(adapters)]
    args = {**INT8, "dtype": "float32", "enable_lora": True, "max_loras": 2, "max_lora_rank": 8}
    prompts = [[(11 * i + 7 * k) % 250 + 3 for k in range(n)] for i, n in enumerate([6, 21, 37])]
    assignment: list[LoRARequest | None] = [loras[0], None, loras[1]]
    alone_engine = Engine(str(root / "model"), enable_prefix_caching=False, **args)

    def tokens(engine: Engine, ps: list[Any], lora: Any) -> list[list[int]]:
        return [c.token_ids for o in engine.generate(ps, GREEDY, lora_request=lora, use_tqdm=False) for c in o.outputs]

    alone = [tokens(alone_engine, [p], lora)[0] for p, lora in zip(prompts, assignment, strict=True)]
    base = [tokens(alone_engine, [p], None)[0] for p in prompts]
    assert alone[0] != base[0] and alone[2] != base[2], "the adapters change the tokens"
    # One batch in 8-token prefill chunks: both adapters and the base model in every step.
    mixed = Engine(str(root / "model"), max_num_batched_tokens=8, **args)
    assert tokens(mixed, prompts, assignment) == alone


def test_int8_draft_model_speculation_equals_plain_decoding(default_gguf: Path, plain: Engine) -> None:
    config = {
        "method": "draft_model",
        "model": str(default_gguf),
        "num_speculative_tokens": 3,
        "adaptive": False,
        "max_num_seqs_to_speculate": 0,
    }
    spec = Engine(str(default_gguf), speculative_config=config, **INT8)
    for params in [GREEDY, SEEDED]:
        got = _completions(spec.generate(PROMPTS[:2], params, use_tqdm=False))
        assert got == _completions(plain.generate(PROMPTS[:2], params, use_tqdm=False))
    stats = spec.stats()
    assert stats["num_spec_accepted_tokens"] > 0 and stats["kv_cache_usage"] == 0.0


def test_int8_multi_row_verification_under_preemption_equals_plain_decoding(default_gguf: Path) -> None:
    # Repetitive prompts, so that prompt lookup drafts and verification steps attend 1 + 3 rows per sequence;
    # on 2 threads a sequence's rows walk the cache together (runs are cut smaller only when a step has under
    # two (run, KV head) units per thread: many threads and few sequences).
    prompts = ["1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,", "red green blue red green blue red green", "a b c d a b c d a b"]
    params = [GREEDY, SEEDED, GREEDY]
    base = {"kv_cache_dtype": "int8", "num_threads": 2, "max_model_len": 64}
    plain = Engine(str(default_gguf), kv_cache_memory_bytes=32 << 20, **base)
    want = _completions(plain.generate(prompts, params, use_tqdm=False))
    ngram = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "max_num_seqs_to_speculate": 0}
    # 5 blocks of 16 tokens for 4 sequences needing 11 together: some are preempted and recomputed.
    tight = Engine(
        str(default_gguf),
        kv_cache_memory_bytes=5 * 16 * 30 * 2 * 3 * 2 * 34,
        max_num_batched_tokens=8,
        speculative_config=ngram,
        **base,
    )
    assert _completions(tight.generate(prompts, params, use_tqdm=False)) == want
    stats = tight.stats()
    assert stats["num_preemptions"] > 0 and stats["num_spec_accepted_tokens"] > 0, stats
    assert stats["kv_cache_usage"] == 0.0
