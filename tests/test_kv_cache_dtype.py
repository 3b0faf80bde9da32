"""`kv_cache_dtype` on the CPU: float16 (the default), bfloat16 and float32 KV caches.

Teacher-forced over NATURAL_TEXT: in float32 arithmetic, where the cache is the only
difference, the half-precision caches stay within a tiny KL of a float32 cache; in the default
arithmetic (8-bit activations) the cache dtype does not change how far the logits are from the
exact path (any perturbation re-draws the 8-bit rounding, so comparing two 8-bit runs with each
other would mostly measure that). bench/kv_cache_dtype.py measures long contexts and speed.
"auto" is float16, or float32 with dtype="float32" (the exact path); a bfloat16 cache composes
with preemption, chunked prefill and prefix caching (the int8 cache: tests/test_kv_cache_int8.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember import Engine, InvalidRequestError, SamplingParams
from logit_metrics import faithfulness
from test_llamacpp_reference import NATURAL_TEXT

#: Mean KL from a float32 cache in float32 arithmetic, teacher-forced over NATURAL_TEXT
#: (measured 2026-11-30: float16 3.0e-7, bfloat16 1.8e-5); the bounds leave several times that.
MAX_KL = {"float16": 2e-6, "bfloat16": 1e-4}
#: In the default arithmetic, the KL to the exact path with a half cache over that with a float32
#: cache (measured: float16 1.03, bfloat16 0.95).
MAX_KL_RATIO_DEFAULT_ARITHMETIC = 1.25


def scores(path: Path, **kwargs: object) -> np.ndarray:
    """Teacher-forced logits of NATURAL_TEXT on an engine built with `kwargs`."""
    engine = Engine(str(path), kv_cache_memory_bytes=64 << 20, max_model_len=1024, **kwargs)  # type: ignore[arg-type]
    ids = engine.tokenizer.encode(NATURAL_TEXT, add_special_tokens=True)
    return np.asarray(engine.score(ids), np.float32)


@pytest.fixture(scope="module")
def exact(default_gguf: Path) -> np.ndarray:
    """The exact path: float32 arithmetic and a float32 cache."""
    return scores(default_gguf, dtype="float32", kv_cache_dtype="float32")


@pytest.mark.parametrize("kv_cache_dtype", list(MAX_KL))
def test_half_caches_track_float32(default_gguf: Path, exact: np.ndarray, kv_cache_dtype: str) -> None:
    kl, top1 = faithfulness(scores(default_gguf, dtype="float32", kv_cache_dtype=kv_cache_dtype), exact)
    print(f"float32 arithmetic, {kv_cache_dtype} KV cache vs float32: mean KL {kl:.2e}, top-1 {top1:.4f}")
    assert kl <= MAX_KL[kv_cache_dtype]
    assert top1 >= 0.99
    kl_f32, _ = faithfulness(scores(default_gguf, kv_cache_dtype="float32"), exact)
    kl_half, _ = faithfulness(scores(default_gguf, kv_cache_dtype=kv_cache_dtype), exact)
    print(f"default arithmetic vs the exact path: float32 KV {kl_f32:.5f}, {kv_cache_dtype} KV {kl_half:.5f}")
    assert kl_half <= MAX_KL_RATIO_DEFAULT_ARITHMETIC * kl_f32


def test_auto_follows_the_arithmetic(default_gguf: Path, exact: np.ndarray) -> None:
    np.testing.assert_array_equal(scores(default_gguf), scores(default_gguf, kv_cache_dtype="float16"))
    np.testing.assert_array_equal(exact, scores(default_gguf, dtype="float32"))
    assert not np.array_equal(exact, scores(default_gguf, dtype="float32", kv_cache_dtype="float16"))


def test_bfloat16_cache_composes_with_preemption_and_prefix_caching(default_gguf: Path) -> None:
    shared = "You are a helpful assistant. Answer briefly, clearly and politely, in plain English. "
    prompts = [shared + q for q in ["The capital of France is", "Name a fruit:", "Once upon a time", "1, 2, 3,"]]
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    roomy = Engine(str(default_gguf), kv_cache_dtype="bfloat16", kv_cache_memory_bytes=64 << 20, max_model_len=256)
    want = [o.outputs[0].token_ids for o in roomy.generate(prompts, greedy, use_tqdm=False)]
    # 6 blocks of 16 tokens at 2 bytes per element for 4 sequences of about 50 tokens.
    tight = Engine(
        str(default_gguf),
        kv_cache_dtype="bfloat16",
        kv_cache_memory_bytes=6 * 16 * 30 * 2 * 3 * 64 * 2,
        max_model_len=64,
        max_num_batched_tokens=8,
    )
    for _ in range(2):  # the second round hits the prefix cache
        got = [o.outputs[0].token_ids for o in tight.generate(prompts, greedy, use_tqdm=False)]
        assert got == want
    stats = tight.stats()
    assert stats["num_preemptions"] > 0 and stats["prefix_cache_hits"] > 0
    assert stats["kv_cache_usage"] == 0.0


def test_default_budget_is_logged(default_gguf: Path, capfd: pytest.CaptureFixture[str]) -> None:
    engine = Engine(str(default_gguf), max_model_len=512)
    err = capfd.readouterr().err
    assert "GiB of float16 by default" in err and "kv_cache_memory_bytes" in err, err
    assert engine._core.num_blocks * 16 * 30 * 2 * 3 * 64 * 2 <= 1 << 30


def test_score_positions_select_rows(default_gguf: Path) -> None:
    engine = Engine(str(default_gguf), kv_cache_memory_bytes=16 << 20, max_model_len=256)
    ids = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog.", add_special_tokens=True)
    full = np.asarray(engine.score(ids), np.float32)
    np.testing.assert_array_equal(np.asarray(engine.score(ids, positions=[5, 2]), np.float32), full[[5, 2]])
    with pytest.raises(InvalidRequestError, match=f"positions must be below the prompt length .{len(ids)}."):
        engine.score(ids, positions=[len(ids)])
