"""The newer families against transformers on tiny random float32 models of its own config classes.

For each variant of `tiny_models.FAMILY_VARIANTS` (Qwen3's q/k norms, Mistral's sliding window on every
layer, Qwen3's window on its upper layers only, Phi-3's fused projections with long-rope or a window, Gemma 2's
soft-capping and interleaved windows, Gemma 3's q/k norms and local RoPE base):
logits within 1e-4 relative of transformers in one prefill, through chunked prefill (prompt logprobs) and
decode (sampled-token logprobs); greedy tokens identical past the window; each prompt's tokens the same
alone, batched, from the prefix cache, forked (n = 2) and after preemption; blocks wholly before the
window released only when every layer slides.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from composition import assert_batch_cache_and_forks_agree
from ember import Engine, SamplingParams

from references import require
from tiny_models import FAMILY_VARIANTS, SLIDING_WINDOW, Variant, assert_prefill_logits_match, write_model

MAX_REL_ERROR = 1e-4
NUM_DECODE_STEPS = 40
ENGINE_ARGS: dict[str, Any] = {"dtype": "float32", "max_model_len": 256, "kv_cache_memory_bytes": 16 << 20}


def _prompt(seed: int, length: int) -> list[int]:
    """A seeded prompt of byte and merge tokens (no special tokens)."""
    rng = random.Random(seed)
    return [rng.randrange(3, 265) for _ in range(length)]


# 3x the window, so most positions attend to a window, not the whole prompt.
PROMPT_IDS = _prompt(0, 3 * SLIDING_WINDOW)


@pytest.fixture(scope="module", params=FAMILY_VARIANTS, ids=lambda v: v.name)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Variant, Any, Path]:
    """(variant, transformers model, saved folder) on the same random weights."""
    require("torch")
    require("transformers")
    variant: Variant = request.param
    folder = tmp_path_factory.mktemp(variant.name)
    return variant, write_model(variant, folder), folder


def _reference(model: Any, prompt_ids: list[int], num_new: int) -> tuple[list[int], Any]:
    """transformers' greedy tokens (full recompute each step) and the logits of every position, [len, vocab]."""
    import torch

    seq = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(num_new):
            seq = torch.cat([seq, model(seq).logits[0, -1].argmax().view(1, 1)], dim=1)
        logits = model(seq).logits[0].float()
    return seq[0, len(prompt_ids) :].tolist(), logits


def test_prefill_logits_match(family: tuple[Variant, Any, Path]) -> None:
    _, model, folder = family
    assert_prefill_logits_match(Engine(str(folder), **ENGINE_ARGS), model, PROMPT_IDS, MAX_REL_ERROR)


def test_chunked_prefill_and_decode_match(family: tuple[Variant, Any, Path]) -> None:
    """8-token prefill chunks, then decode past the window: tokens identical, logprobs of every prompt
    and output token within 1e-4 of the logits' scale."""
    import torch

    _, model, folder = family
    expected, logits = _reference(model, PROMPT_IDS, NUM_DECODE_STEPS)
    engine = Engine(str(folder), max_num_batched_tokens=8, **ENGINE_ARGS)
    params = SamplingParams(
        temperature=0.0, max_tokens=NUM_DECODE_STEPS, ignore_eos=True, logprobs=0, prompt_logprobs=0
    )
    (out,) = engine.generate(PROMPT_IDS, params, use_tqdm=False)
    assert out.outputs[0].token_ids == expected
    ref = torch.log_softmax(logits, dim=-1)
    tolerance = MAX_REL_ERROR * logits.abs().max().item()
    all_ids = PROMPT_IDS + expected
    ours = [entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], PROMPT_IDS[1:], strict=True)]
    ours += [entry[token].logprob for entry, token in zip(out.outputs[0].logprobs, expected, strict=True)]
    wanted = [ref[i - 1, all_ids[i]].item() for i in range(1, len(all_ids))]
    worst = max(abs(a - b) for a, b in zip(ours, wanted, strict=True))
    assert worst < tolerance, f"logprob error {worst:.2e} (tolerance {tolerance:.2e})"


def test_tokens_do_not_depend_on_batch_cache_forks_or_preemption(family: tuple[Variant, Any, Path]) -> None:
    variant, _, folder = family
    shared = _prompt(1, 2 * SLIDING_WINDOW)
    prompts = [shared + _prompt(10 + i, n) for i, n in enumerate([1, 9, 33, 70])] + [_prompt(2, 5)]
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=30, ignore_eos=True)
    uncached = Engine(str(folder), enable_prefix_caching=False, **ENGINE_ARGS)
    alone = [
        uncached.generate(p, params, use_tqdm=False)[0].outputs[0].token_ids
        for p in prompts
        for params in (greedy, seeded)
    ]
    engine = Engine(str(folder), max_num_batched_tokens=32, **ENGINE_ARGS)
    assert_batch_cache_and_forks_agree(engine, prompts, alone, fork=3)
    # A cache of 12 blocks of 16 tokens for five ~100-token sequences: requests are preempted.
    head_dim = variant.config["head_dim"]
    num_layers = variant.config.get("num_hidden_layers", 2)
    block_bytes = 2 * num_layers * 16 * variant.num_key_value_heads * head_dim * 4  # K and V, float32
    tight = Engine(str(folder), dtype="float32", max_model_len=256, kv_cache_memory_bytes=12 * block_bytes,
                   max_num_batched_tokens=32, enable_prefix_caching=False)  # fmt: skip
    outs = tight.generate(prompts, greedy, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == alone[::2]
    assert tight.stats()["num_preemptions"] > 0


def test_blocks_before_the_window_are_released_when_every_layer_slides(family: tuple[Variant, Any, Path]) -> None:
    variant, _, folder = family
    engine = Engine(str(folder), **ENGINE_ARGS)
    params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
    (out,) = engine.generate(PROMPT_IDS, params, use_tqdm=False)
    freed = engine.stats()["num_window_freed_blocks"]
    num_tokens = len(PROMPT_IDS) + len(out.outputs[0].token_ids)
    if variant.family in ("mistral", "mixtral", "phi3") and variant.config.get("sliding_window"):
        # Released at each allocation: all but the blocks of the last window and the newest block.
        assert freed >= (num_tokens - SLIDING_WINDOW) // 16 - 1
    else:
        assert freed == 0  # full-attention layers read every position
