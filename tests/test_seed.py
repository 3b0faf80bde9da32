"""Seeds are integers in [0, 2**64 - 1]: a negative or too large one is refused by name, never wrapped."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import Engine, InvalidRequestError, SamplingParams

U64_MAX = 2**64 - 1


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**64, 2**70])
def test_out_of_range_request_seed_is_refused(seed: int) -> None:
    with pytest.raises(InvalidRequestError, match=rf"seed must be an integer in \[0, {U64_MAX}\], got {seed}"):
        SamplingParams(seed=seed)


def test_whole_u64_range_is_usable_and_children_wrap(engine: Engine) -> None:
    assert SamplingParams(n=3, seed=U64_MAX).for_child(1).seed == 0
    sampled = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True)
    (pair,) = engine.generate("Once upon a time", SamplingParams(**{**sampled.to_dict(), "n": 2, "seed": U64_MAX}),
                              use_tqdm=False)  # fmt: skip
    (zero,) = engine.generate("Once upon a time", SamplingParams(**{**sampled.to_dict(), "seed": 0}), use_tqdm=False)
    assert pair.outputs[1].token_ids == zero.outputs[0].token_ids
    assert pair.outputs[0].token_ids != pair.outputs[1].token_ids


def test_engine_seed_is_checked_the_same_way(default_gguf: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"seed must be an integer in \[0, .*\], got -5"):
        Engine(str(default_gguf), seed=-5, kv_cache_memory_bytes=16 << 20)
