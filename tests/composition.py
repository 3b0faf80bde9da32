"""The batch / prefix-cache / fork check that every family's engine must pass: the same tokens as each request
run alone."""

from __future__ import annotations

from typing import Any

from ember import SamplingParams


def assert_batch_cache_and_forks_agree(
    engine: Any, prompts: list[list[int]], alone: list[list[int]], fork: int
) -> None:
    """`engine` gives `alone` (each prompt run alone, greedy then seeded: temperature 1, seed 7; 30 tokens) for
    the prompts batched with greedy and seeded rows mixed, again with their shared prefix from the cache, and for
    prompt `fork` forked (n = 2, greedy)."""
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=30, ignore_eos=True)
    doubled = [p for p in prompts for _ in (0, 1)]
    batched = engine.generate(doubled, [greedy, seeded] * len(prompts), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in batched] == alone
    again = engine.generate(prompts, greedy, use_tqdm=False)
    assert sum(o.num_cached_tokens for o in again) > 0
    assert [o.outputs[0].token_ids for o in again] == alone[::2]
    forked = engine.generate(prompts[fork], SamplingParams(n=2, temperature=0.0, max_tokens=30, ignore_eos=True),
                             use_tqdm=False)[0]  # fmt: skip
    assert [c.token_ids for c in forked.outputs] == [alone[2 * fork], alone[2 * fork]]
