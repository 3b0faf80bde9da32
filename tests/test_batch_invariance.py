"""Batch invariance: a prompt's greedy tokens do not depend on what else is in the batch."""

from __future__ import annotations

import random

from ember import Engine, SamplingParams

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


def test_alone_equals_in_batch(engine: Engine) -> None:
    prompts = _mixed_length_prompts(32, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    batched = engine.generate(prompts, params, use_tqdm=False)
    mismatches = []
    for i, prompt in enumerate(prompts):
        (alone,) = engine.generate(prompt, params, use_tqdm=False)
        if alone.outputs[0].token_ids != batched[i].outputs[0].token_ids:
            mismatches.append(i)
    assert not mismatches, f"prompts {mismatches} differ between alone and batched"
