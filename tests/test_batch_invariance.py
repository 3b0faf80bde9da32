"""Batch invariance: a prompt's greedy tokens do not depend on what else is in the batch, nor on prefix-cache hits."""

from __future__ import annotations

import random

from ember import Engine, RequestOutput, SamplingParams

from conftest import computed_every_prompt_token

WORDS = [
    "the",
    "river",
    "mountain",
    "quietly",
    "seven",
    "engine",
    "because",
    "orange",
    "library",
    "whisper",
    "data",
    "market",
    "under",
    "between",
    "thunder",
    "garden",
    "small",
    "ancient",
    "compute",
    "yellow",
    "bridge",
    "silent",
    "forty",
    "paper",
    "window",
]


def _mixed_length_prompts(num_prompts: int, seed: int) -> list[str]:
    """Seeded prompts from 1 to ~300 words, so prefill and decode mix in one step."""
    rng = random.Random(seed)
    lengths = [1, 2, 3, 5, 8, 300] + [rng.randint(1, 200) for _ in range(num_prompts - 6)]
    rng.shuffle(lengths)
    return [" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() for n in lengths]


def _token_ids(outputs: list[RequestOutput]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_alone_equals_in_batch(engine: Engine, uncached_engine: Engine) -> None:
    prompts = _mixed_length_prompts(32, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    # Prefix caching off: every run computes its prompts itself, so the batched run and the
    # runs alone share nothing but the weights.
    batched = uncached_engine.generate(prompts, params, use_tqdm=False)
    alone = [uncached_engine.generate(prompt, params, use_tqdm=False)[0] for prompt in prompts]
    assert computed_every_prompt_token(batched + alone)
    mismatches = [i for i, (a, b) in enumerate(zip(_token_ids(alone), _token_ids(batched), strict=True)) if a != b]
    assert not mismatches, f"prompts {mismatches} differ between alone and batched"


def test_prefix_cache_hits_give_the_uncomputed_tokens(engine: Engine, uncached_engine: Engine) -> None:
    prompts = _mixed_length_prompts(12, seed=1)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    reference = uncached_engine.generate(prompts, params, use_tqdm=False)
    engine.generate(prompts, params, use_tqdm=False)
    again = engine.generate(prompts, params, use_tqdm=False)
    assert sum(o.num_cached_tokens for o in again) > sum(len(o.prompt_token_ids) for o in again) / 2
    assert _token_ids(again) == _token_ids(reference)
