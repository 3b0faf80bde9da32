"""Structured-output requests speculate too: drafts (n-gram or draft model) are cut to the prefix the grammar
accepts, each verified row is masked with the grammar's state after the drafts before it, and the matcher is rolled
back, so JSON schema and regex requests in a speculating batch give exactly plain decoding's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import Engine, SamplingParams, StructuredOutputsParams
from test_speculative import ROOMY_KV_BYTES, _batch, _completions, _spec
from test_speculative_draft import _draft_config

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "count": {"type": "integer"}},
    "required": ["name", "count"],
}


def _structured(seed: int) -> list[SamplingParams]:
    """Regex and JSON schema requests, greedy and seeded, with logprobs and n = 2."""
    repeat = StructuredOutputsParams(regex="(ab|cd){4,30}")
    return [
        SamplingParams(max_tokens=40, temperature=0.0, logprobs=2, structured_outputs=repeat),
        SamplingParams(max_tokens=40, temperature=0.8, seed=seed, n=2, structured_outputs=repeat),
        SamplingParams(
            max_tokens=60,
            temperature=0.7,
            seed=seed,
            logprobs=1,
            structured_outputs=StructuredOutputsParams(json=SCHEMA),
        ),
        SamplingParams(
            max_tokens=30,
            temperature=1.0,
            seed=seed + 1,
            structured_outputs=StructuredOutputsParams(regex="[a-c]{2,9}-[0-9]+"),
        ),
    ]


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path) -> Engine:
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES)


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
@pytest.mark.parametrize("jump_forward", [True, False])
def test_structured_requests_speculate_with_unchanged_output(
    tiny_model_dir: Path, plain: Engine, method: str, jump_forward: bool
) -> None:
    config = _spec() if method == "ngram" else _draft_config(tiny_model_dir)
    spec = Engine(
        str(tiny_model_dir),
        kv_cache_memory_bytes=ROOMY_KV_BYTES,
        speculative_config=config,
        structured_jump_forward=jump_forward,
    )
    prompts = [[5, 6, 7], [9, 9, 8, 7], [30, 31], [12, 13, 14]]
    for seed in (1, 2):
        params = _structured(seed)
        before = spec.stats()
        got = spec.generate(prompts, params, use_tqdm=False)
        assert _completions(got) == _completions(plain.generate(prompts, params, use_tqdm=False))
        after = spec.stats()
        assert after["num_spec_accepted_tokens"] > before["num_spec_accepted_tokens"]
    # Mixed with unconstrained requests in one batch.
    batch_prompts, batch_params = _batch(3)
    inputs, mixed = [*batch_prompts, *prompts], [*batch_params, *_structured(3)]
    assert _completions(spec.generate(inputs, mixed, use_tqdm=False)) == _completions(
        plain.generate(inputs, mixed, use_tqdm=False)
    )
    assert spec.stats()["kv_cache_usage"] == 0.0
