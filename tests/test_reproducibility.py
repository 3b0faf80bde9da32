"""Seeded requests do not depend on their batch, and streamed deltas rebuild the exact text (multi-byte too)."""

from __future__ import annotations

import random

from ember import Engine, SamplingParams

from conftest import computed_every_prompt_token

SEEDED = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=4321, max_tokens=24, ignore_eos=True)
OTHERS = [
    "Write a list of fruits:",
    "The history of Rome",
    "def quicksort(xs):",
    "Dear diary, today",
    "Translate to French: good morning",
    "The weather in Paris is",
]


def test_seeded_output_alone_equals_inside_a_shuffled_batch(uncached_engine: Engine) -> None:
    # Prefix caching off, so the batched runs compute the prompt again instead of reusing the
    # KV cache of the run alone.
    engine = uncached_engine
    prompt = "Tell me something surprising about octopuses."
    (alone,) = engine.generate(prompt, SEEDED, use_tqdm=False)
    rng = random.Random(0)
    for trial in range(3):
        batch = [*OTHERS, prompt]
        rng.shuffle(batch)
        params = [
            SEEDED if p == prompt else SamplingParams(temperature=0.8, max_tokens=rng.randint(4, 30), seed=trial)
            for p in batch
        ]
        outs = engine.generate(batch, params, use_tqdm=False)
        assert computed_every_prompt_token(outs)
        mine = outs[batch.index(prompt)]
        assert mine.outputs[0].token_ids == alone.outputs[0].token_ids, f"trial {trial}"
        assert mine.outputs[0].text == alone.outputs[0].text


def test_streamed_multibyte_text_concatenates_exactly(engine: Engine) -> None:
    prompts = [
        "Écris une phrase en français avec des accents : é, è, à, ç.",
        "请用中文写一句话: 你好",
        "Emoji party: 🎉🎈",
    ]
    texts = []
    for i, prompt in enumerate(prompts):
        params = SamplingParams(temperature=1.2, seed=i, max_tokens=48, ignore_eos=True)
        (full,) = engine.generate(prompt, params, use_tqdm=False)
        deltas = [c.outputs[0].text for c in engine.generate_stream(prompt, params)]
        assert "".join(deltas) == full.outputs[0].text
        texts.append(full.outputs[0].text)
    assert any(ord(ch) > 127 for text in texts for ch in text), f"no multi-byte text was generated: {texts}"
