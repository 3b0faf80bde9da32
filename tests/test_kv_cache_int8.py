"""`kv_cache_dtype="int8"` on the CPU: each 32 elements of a cached K or V head row as 8-bit integers
with an f16 scale (GGUF's Q8_0 block), read by attention in place.

Teacher-forced over a long context (the last positions of ~1k tokens): in float32 arithmetic, where the
cache is the only difference, the int8 cache stays within a small KL of a float32 cache; in the default
arithmetic it adds little to the 8-bit activations' own error. The option round-trips through the CLI /
serve arguments, composes with forks (n > 1), prefix caching, preemption (recompute) and chunked prefill
(same tokens as a roomy int8 engine), and with n-gram speculation (same tokens as without it). The CUDA
side refuses it (no kernels), and a bad value names the field and the accepted list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember import Engine, InvalidRequestError, SamplingParams
from ember._cli_options import device_kwargs
from ember.cli import build_parser
from logit_metrics import faithfulness, long_text

CONTEXT_TOKENS = 768
NUM_POSITIONS = 64
#: Mean KL from a float32 cache in float32 arithmetic over the last NUM_POSITIONS of CONTEXT_TOKENS
#: (measured 2026-12-01 with attention's 16-bit quantized query: 768 tokens 1.11e-3, 1024 tokens 8.9e-4;
#: 7.4e-4 / 9.9e-4 with the float query); the bound leaves over twice that.
MAX_KL_FLOAT32_ARITHMETIC = 2.5e-3
#: In the default arithmetic, the KL to the exact path with an int8 cache over that with a float16 cache
#: (measured with the 16-bit query: 768 tokens 0.00372 / 0.00315 = 1.18, 1024 tokens 1.41; with the float
#: query 1.29 and 1.08).
MAX_KL_RATIO_DEFAULT_ARITHMETIC = 1.6
#: Bytes a token of the default model takes in the cache: 30 layers x K and V x 3 heads x 64 elements.
BYTES_PER_TOKEN = {"float16": 30 * 2 * 3 * 64 * 2, "int8": 30 * 2 * 3 * 2 * 34}


@pytest.fixture(scope="module")
def long_ids(default_gguf: Path) -> list[int]:
    """The first CONTEXT_TOKENS tokens of the seeded long text."""
    engine = Engine(str(default_gguf), kv_cache_memory_bytes=16 << 20, max_model_len=256)
    return engine.tokenizer.encode(long_text(), add_special_tokens=True)[:CONTEXT_TOKENS]


def scores(path: Path, ids: list[int], **kwargs: object) -> np.ndarray:
    """Teacher-forced logits of the last NUM_POSITIONS of `ids` on an engine built with `kwargs`."""
    engine = Engine(str(path), kv_cache_memory_bytes=64 << 20, max_model_len=CONTEXT_TOKENS, **kwargs)  # type: ignore[arg-type]
    positions = list(range(len(ids) - NUM_POSITIONS, len(ids)))
    return np.asarray(engine.score(ids, positions), np.float32)


def test_int8_cache_tracks_float32_on_a_long_context(default_gguf: Path, long_ids: list[int]) -> None:
    assert len(long_ids) == CONTEXT_TOKENS
    exact = scores(default_gguf, long_ids, dtype="float32", kv_cache_dtype="float32")
    kl, top1 = faithfulness(scores(default_gguf, long_ids, dtype="float32", kv_cache_dtype="int8"), exact)
    print(f"float32 arithmetic, int8 KV cache vs float32 over {CONTEXT_TOKENS} tokens: KL {kl:.2e}, top-1 {top1:.4f}")
    assert 0 < kl <= MAX_KL_FLOAT32_ARITHMETIC
    assert top1 >= 0.95
    kl_half, _ = faithfulness(scores(default_gguf, long_ids, kv_cache_dtype="float16"), exact)
    kl_int8, _ = faithfulness(scores(default_gguf, long_ids, kv_cache_dtype="int8"), exact)
    print(f"default arithmetic vs the exact path: float16 KV {kl_half:.5f}, int8 KV {kl_int8:.5f}")
    assert kl_int8 <= MAX_KL_RATIO_DEFAULT_ARITHMETIC * kl_half


def test_int8_cache_holds_about_twice_the_tokens_of_float16(default_gguf: Path) -> None:
    budget = 32 << 20
    blocks = {kv: Engine(str(default_gguf), kv_cache_dtype=kv, kv_cache_memory_bytes=budget, max_model_len=256)
              ._core.num_blocks for kv in BYTES_PER_TOKEN}  # fmt: skip
    for kv, per_token in BYTES_PER_TOKEN.items():
        assert blocks[kv] == budget // (16 * per_token), kv


def test_int8_cache_composes_with_forks_preemption_and_prefix_caching(default_gguf: Path) -> None:
    shared = "You are a helpful assistant. Answer briefly, clearly and politely, in plain English. "
    prompts = [shared + q for q in ["The capital of France is", "Name a fruit:", "Once upon a time", "1, 2, 3,"]]
    params = [
        SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.8, top_p=0.9, seed=7, n=2, max_tokens=20, ignore_eos=True, logprobs=2),
    ]
    roomy = Engine(str(default_gguf), kv_cache_dtype="int8", kv_cache_memory_bytes=64 << 20, max_model_len=256)

    def run(engine: Engine) -> list[tuple]:
        outs = engine.generate(prompts, [params[i % 2] for i in range(len(prompts))], use_tqdm=False)
        return [(c.index, c.token_ids, c.cumulative_logprob) for o in outs for c in o.outputs]

    want = run(roomy)
    # 9 blocks of 16 tokens for 6 sequences of about 40 tokens: preemption, in 8-token prefill chunks.
    tight = Engine(
        str(default_gguf),
        kv_cache_dtype="int8",
        kv_cache_memory_bytes=9 * 16 * BYTES_PER_TOKEN["int8"],
        max_model_len=64,
        max_num_batched_tokens=8,
    )
    for _ in range(2):  # the second round hits the prefix cache
        assert run(tight) == want
    stats = tight.stats()
    assert stats["num_preemptions"] > 0 and stats["prefix_cache_hits"] > 0
    assert stats["kv_cache_usage"] == 0.0
    spec = Engine(
        str(default_gguf),
        kv_cache_dtype="int8",
        kv_cache_memory_bytes=64 << 20,
        max_model_len=256,
        # Two prompts at once: speculate at any batch size (the n-gram default stops above one).
        speculative_config={
            "method": "ngram",
            "num_speculative_tokens": 3,
            "prompt_lookup_max": 3,
            "max_num_seqs_to_speculate": 0,
        },
    )
    greedy = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    repetitive = ["1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,", shared * 2]
    assert [o.outputs[0].token_ids for o in spec.generate(repetitive, greedy, use_tqdm=False)] == [
        o.outputs[0].token_ids for o in roomy.generate(repetitive, greedy, use_tqdm=False)
    ]
    assert spec.stats()["num_spec_accepted_tokens"] > 0


def test_int8_round_trips_through_the_serve_options(default_gguf: Path, capfd: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", str(default_gguf), "--kv-cache-dtype", "int8"])
    kwargs = device_kwargs(args)
    assert kwargs["kv_cache_dtype"] == "int8"
    Engine(str(default_gguf), kv_cache_memory_bytes=16 << 20, max_model_len=256, **kwargs)  # type: ignore[arg-type]
    assert "int8 KV cache" in capfd.readouterr().err


def test_unknown_kv_cache_dtype_names_the_choices(default_gguf: Path) -> None:
    for bad in ["fp8", "fp8_e4m3", "INT8", ""]:
        with pytest.raises(InvalidRequestError, match=r'kv_cache_dtype must be .*"bfloat16" or "int8" on the CPU'):
            Engine(str(default_gguf), kv_cache_dtype=bad, kv_cache_memory_bytes=16 << 20)
