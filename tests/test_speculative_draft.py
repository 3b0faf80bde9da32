"""Draft-model speculation never changes outputs: with a draft model proposing (one that is always right, one that
is almost never right), every request's tokens, logprobs, text and finish reason equal the same request without
speculation, over random prompts and sampling parameters and combined with n > 1, stop strings, preemption, prefix
caching, chunked prefill and abort mid-speculation (structured output: tests/test_speculative_structured.py); the
KV cache ends empty. The draft's vocabulary must be the target's. On the default model, its Q4_1 arithmetic drafts
for its float32 one."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import AsyncEngine, Engine, InvalidRequestError, SamplingParams
from test_speculative import PROMPTS, ROOMY_KV_BYTES, SMALL_KV_BYTES, _batch, _completions, sampling, serve_stats


def _draft_config(model: Path | str, **extra: Any) -> dict[str, Any]:
    """A fixed draft length at any batch size, so nearly every decode step verifies drafts."""
    return {
        "method": "draft_model",
        "model": str(model),
        "num_speculative_tokens": 3,
        "adaptive": False,
        "max_num_seqs_to_speculate": 0,
        **extra,
    }


@pytest.fixture(scope="module")
def random_draft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny random Llama (other seed, untied) with the same tokenizer: its drafts are almost never right."""
    from tiny_models import VARIANTS, write_model

    folder = tmp_path_factory.mktemp("draft") / VARIANTS[2].name
    write_model(VARIANTS[2], folder, seed=7)
    return folder


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path) -> Engine:
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES)


@pytest.fixture(scope="module")
def self_draft(tiny_model_dir: Path) -> Engine:
    """The target drafting for itself: greedy drafts are always accepted."""
    config = _draft_config(tiny_model_dir)
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES, speculative_config=config)


@pytest.fixture(scope="module")
def wrong_draft(tiny_model_dir: Path, random_draft_dir: Path) -> Engine:
    config = _draft_config(random_draft_dir)
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES, speculative_config=config)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(PROMPTS, min_size=1, max_size=4), kw=sampling(), stop_at=st.integers(0, 30))
def test_outputs_equal_plain_decoding(
    plain: Engine, self_draft: Engine, wrong_draft: Engine, prompts: list[list[int]], kw: dict[str, Any], stop_at: int
) -> None:
    params = SamplingParams(**kw)
    expected = _completions(plain.generate(prompts, params, use_tqdm=False))
    for spec in (self_draft, wrong_draft):
        assert _completions(spec.generate(prompts, params, use_tqdm=False)) == expected
    text = plain.generate(prompts[:1], params, use_tqdm=False)[0].outputs[0].text
    if len(text) > stop_at + 2:
        stopped = SamplingParams(**kw, stop=[text[stop_at : stop_at + 2]])
        want = _completions(plain.generate(prompts, stopped, use_tqdm=False))
        assert _completions(self_draft.generate(prompts, stopped, use_tqdm=False)) == want
    for spec in (self_draft, wrong_draft):
        assert spec.stats()["kv_cache_usage"] == 0.0
        assert not spec._core.has_unfinished_requests()


def test_acceptance_follows_the_draft(plain: Engine, self_draft: Engine, wrong_draft: Engine) -> None:
    """Greedy drafts of the target itself are all accepted under greedy decoding; a random draft's hardly ever."""
    prompts, _ = _batch(4)
    greedy = SamplingParams(max_tokens=40, ignore_eos=True, temperature=0.0, logprobs=1)
    want = _completions(plain.generate(prompts, greedy, use_tqdm=False))
    rates = []
    for spec in (self_draft, wrong_draft):
        before = spec.stats()
        assert _completions(spec.generate(prompts, greedy, use_tqdm=False)) == want
        after = spec.stats()
        proposed = after["num_spec_proposed_tokens"] - before["num_spec_proposed_tokens"]
        accepted = after["num_spec_accepted_tokens"] - before["num_spec_accepted_tokens"]
        assert proposed > 0
        rates.append(accepted / proposed)
    assert rates[0] == 1.0, rates
    assert rates[1] < 0.5, rates


def test_preemption_prefix_caching_and_chunked_prefill(tiny_model_dir: Path, random_draft_dir: Path) -> None:
    prompts, params = _batch()
    plain = Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES, enable_prefix_caching=False)
    want = _completions(plain.generate(prompts, params, use_tqdm=False))
    for draft in (tiny_model_dir, random_draft_dir):
        # The draft's cache takes half of 40 small blocks: eight ~100-token requests do not fit at once, so some
        # are preempted and recomputed; a budget of 24 tokens chunks the prompts (through the draft too) and cuts
        # drafts short; the repeat hits the prefix cache of both models.
        small = Engine(
            str(tiny_model_dir),
            kv_cache_memory_bytes=2 * SMALL_KV_BYTES,
            max_num_batched_tokens=24,
            speculative_config=_draft_config(draft),
        )
        assert _completions(small.generate(prompts, params, use_tqdm=False)) == want
        stats = small.stats()
        assert stats["num_preemptions"] > 0 and stats["num_spec_proposed_tokens"] > 0
        assert stats["kv_cache_usage"] == 0.0
        # The latest prompts again, greedy: their blocks come from the prefix cache of both models. A draft that is
        # the target reads the same K/V as the target there, so all its drafts are accepted.
        greedy = SamplingParams(max_tokens=30, ignore_eos=True, temperature=0.0)
        before = small.stats()
        again = small.generate(prompts[-2:], greedy, use_tqdm=False)
        assert sum(o.num_cached_tokens for o in again) > 0
        assert _completions(again) == _completions(plain.generate(prompts[-2:], greedy, use_tqdm=False))
        if draft == tiny_model_dir:
            after = small.stats()
            proposed = after["num_spec_proposed_tokens"] - before["num_spec_proposed_tokens"]
            accepted = after["num_spec_accepted_tokens"] - before["num_spec_accepted_tokens"]
            assert 0 < proposed == accepted


def test_abort_mid_speculation(tiny_model_dir: Path, plain: Engine) -> None:
    prompts, params = _batch(3)
    want = _completions(plain.generate(prompts, params, use_tqdm=False))

    async def scenario() -> None:
        config = _draft_config(tiny_model_dir)
        engine = AsyncEngine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES, speculative_config=config)
        try:
            long = SamplingParams(max_tokens=200, ignore_eos=True, temperature=0.0)
            doomed = engine.generate([3, 4, 5, 6], long, request_id="doomed")
            await doomed.__anext__()
            second = await doomed.__anext__()  # after a verification: the next step drafts again
            assert len(second.outputs[0].token_ids) > 1
            assert engine.abort("doomed")
            rest = [out async for out in doomed]
            assert (rest or [second])[-1].outputs[0].finish_reason == "abort"
            outs = []
            for prompt, p in zip(prompts, params, strict=True):
                async for out in engine.generate(prompt, p):
                    final = out
                outs.append(final)
            assert _completions(outs) == want
            assert engine.stats()["num_spec_accepted_tokens"] > 0
            # The engine thread frees a request's blocks just after its final output is delivered.
            for _ in range(200):
                if engine.stats()["kv_cache_usage"] == 0.0:
                    break
                await asyncio.sleep(0.01)
            assert engine.stats()["kv_cache_usage"] == 0.0
        finally:
            await engine.shutdown()

    asyncio.run(scenario())


def test_a_different_vocabulary_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tiny_models import VARIANTS, VOCAB_SIZE, write_model

    bigger = tmp_path / "bigger"
    write_model(VARIANTS[0], bigger, sizes={"vocab_size": VOCAB_SIZE + 8})
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_model_dir, renamed)
    tokenizer = json.loads((renamed / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == 100)
    vocab["\u00e9\u00e9zz"] = vocab.pop(token)
    (renamed / "tokenizer.json").write_text(json.dumps(tokenizer))
    for draft, needle in [
        (bigger, f"vocab_size (embedding rows) {VOCAB_SIZE + 8} != the target's {VOCAB_SIZE}"),
        (renamed, "token 100 is"),
        (tmp_path / "missing", "speculative_config.model"),
    ]:
        with pytest.raises(InvalidRequestError, match=r"speculative_config\.model") as err:
            Engine(str(tiny_model_dir), kv_cache_memory_bytes=ROOMY_KV_BYTES, speculative_config=_draft_config(draft))
        assert needle in str(err.value)


def test_serve_flag(tiny_model_dir: Path) -> None:
    stats = serve_stats(tiny_model_dir, json.dumps(_draft_config(tiny_model_dir)))
    assert stats["num_spec_proposed_tokens"] > 0
    assert stats["num_spec_accepted_tokens"] == stats["num_spec_proposed_tokens"]


def test_quantized_default_model_drafts_for_its_float32_self(default_gguf: Path) -> None:
    """The Q4_1 file drafting (its own arithmetic) for the same file computed in float32: tokens and logprobs are
    float32's, greedy and seeded; the acceptance rate is printed."""
    args: dict[str, Any] = {"dtype": "float32", "kv_cache_memory_bytes": 64 << 20, "max_model_len": 512}
    plain = Engine(str(default_gguf), enable_prefix_caching=False, **args)
    config = _draft_config(default_gguf, num_speculative_tokens=4, dtype="auto")
    spec = Engine(str(default_gguf), speculative_config=config, **args)
    prompts = ["The capital of France is", "def add(a, b):\n    return"]
    for params in [
        SamplingParams(max_tokens=16, temperature=0.0, logprobs=1),
        SamplingParams(max_tokens=12, temperature=0.7, seed=3, n=2, logprobs=1),
    ]:
        assert _completions(spec.generate(prompts, params, use_tqdm=False)) == _completions(
            plain.generate(prompts, params, use_tqdm=False)
        )
    stats = spec.stats()
    print(f"Q4_1 drafting for float32: acceptance rate {stats['spec_acceptance_rate']:.2f}")
    assert stats["num_spec_accepted_tokens"] > 0
    assert stats["kv_cache_usage"] == 0.0
