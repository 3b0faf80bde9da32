"""The sampling controls end to end through `ember.Engine` on the default model: penalties,
logit_bias, min_tokens, logprob ranks, prompt logprobs, stop strings and detokenize."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ember import Engine, InvalidRequestError, SamplingParams
from ember.outputs import CompletionOutput, RequestOutput

REPEATING_PROMPT = "The cat sat on the mat. The cat sat on the mat. The cat"


def _one(engine: Engine, prompt: str | list[int], params: SamplingParams) -> RequestOutput:
    return engine.generate(prompt, params, use_tqdm=False)[0]


def _completion(engine: Engine, prompt: str | list[int], params: SamplingParams) -> CompletionOutput:
    return _one(engine, prompt, params).outputs[0]


def _num_repeats(token_ids: list[int]) -> int:
    return len(token_ids) - len(set(token_ids))


def test_repetition_penalty_changes_greedy_output_and_reduces_repeats(engine: Engine) -> None:
    base = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = _completion(engine, REPEATING_PROMPT, base)
    penalized = _completion(engine, REPEATING_PROMPT, SamplingParams(**{**base.to_dict(), "repetition_penalty": 1.5}))
    assert penalized.token_ids != plain.token_ids
    assert _num_repeats(penalized.token_ids) < _num_repeats(plain.token_ids)


def test_frequency_and_presence_penalties_reduce_repeats(engine: Engine) -> None:
    base = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = _completion(engine, REPEATING_PROMPT, base)
    params = SamplingParams(**{**base.to_dict(), "frequency_penalty": 1.0, "presence_penalty": 1.0})
    penalized = _completion(engine, REPEATING_PROMPT, params)
    assert _num_repeats(penalized.token_ids) < _num_repeats(plain.token_ids)


def test_logit_bias_forces_a_token(engine: Engine) -> None:
    (banana,) = engine.tokenizer.encode(" banana")
    for temperature in (0.0, 1.0):
        params = SamplingParams(temperature=temperature, seed=3, max_tokens=5, logit_bias={banana: 100.0})
        out = _completion(engine, "The capital of France is", params)
        assert out.token_ids == [banana] * 5


def test_min_tokens_holds_back_eos(engine: Engine) -> None:
    (eos,) = engine._core.eos_token_ids
    prompt = "The capital of France is"
    eager = SamplingParams(temperature=0.0, max_tokens=20, logit_bias={eos: 100.0})
    out = _completion(engine, prompt, eager)
    assert (out.token_ids, out.finish_reason, out.stop_reason) == ([eos], "stop", eos)
    held = SamplingParams(**{**eager.to_dict(), "min_tokens": 5})
    out = _completion(engine, prompt, held)
    assert len(out.token_ids) == 6 and out.token_ids[-1] == eos and eos not in out.token_ids[:5]
    assert out.finish_reason == "stop"


def test_sampled_rank_is_consistent_with_the_logprob_list(engine: Engine) -> None:
    params = SamplingParams(temperature=1.5, seed=11, max_tokens=24, logprobs=5, ignore_eos=True)
    out = _completion(engine, "Once upon a time", params)
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)
    beyond_top = 0
    for token_id, entry in zip(out.token_ids, out.logprobs, strict=True):
        chosen = entry[token_id]
        others = [lp for tid, lp in entry.items() if tid != token_id]
        assert chosen.rank is not None and chosen.rank >= 1
        if chosen.rank > 5:
            beyond_top += 1
            assert len(entry) == 6 and all(lp.logprob >= chosen.logprob for lp in others)
        else:
            assert chosen.rank == 1 + sum(lp.logprob > chosen.logprob + 1e-6 for lp in others)
        assert chosen.decoded_token == engine.tokenizer.decode([token_id], skip_special_tokens=False)
    assert out.cumulative_logprob == pytest.approx(
        sum(e[t].logprob for t, e in zip(out.token_ids, out.logprobs, strict=True))
    )
    assert beyond_top > 0, "expected some sampled tokens outside the top 5 at temperature 1.5"


def _log_softmax(row: list[float]) -> np.ndarray:
    x = np.asarray(row, dtype=np.float64)
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def _check_prompt_logprobs(engine: Engine, out: RequestOutput, k: int) -> None:
    prompt = out.prompt_token_ids
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(prompt)
    assert out.prompt_logprobs[0] is None
    rows = engine.score(prompt)
    for position in range(1, len(prompt)):
        entry = out.prompt_logprobs[position]
        assert entry is not None
        reference = _log_softmax(rows[position - 1])
        token = prompt[position]
        assert entry[token].logprob == pytest.approx(reference[token], abs=2e-3)
        assert entry[token].rank == 1 + int(np.sum(reference > reference[token]))
        top = np.argsort(-reference, kind="stable")[:k].tolist()
        assert set(entry) == set(top) | {token}
        assert [entry[t].rank for t in top if t != token] == [r for r, t in enumerate(top, 1) if t != token]


def test_prompt_logprobs_match_score(engine: Engine) -> None:
    prompt = "The quick brown fox jumps over the lazy dog because it was bored. " * 3
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=3)
    first = _one(engine, prompt, params)
    assert len(first.prompt_token_ids) > 2 * engine._core.block_size
    _check_prompt_logprobs(engine, first, 3)
    # The same prompt again: prefix-cache hits would skip rows, so the request takes none...
    again = _one(engine, prompt, params)
    assert again.num_cached_tokens == 0
    assert again.prompt_logprobs == first.prompt_logprobs
    # ...while a request without prompt logprobs does hit the blocks the first one cached.
    plain = _one(engine, prompt, SamplingParams(temperature=0.0, max_tokens=2))
    assert plain.prompt_logprobs is None and plain.num_cached_tokens > 0


def test_prompt_logprobs_survive_chunked_prefill(default_gguf: Path, engine: Engine) -> None:
    small = Engine(str(default_gguf), kv_cache_memory_bytes=16 << 20, max_model_len=256, max_num_batched_tokens=8)
    prompt = "A long prompt that needs several prefill chunks to be computed, one after the other."
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2)
    chunked = _one(small, prompt, params)
    assert len(chunked.prompt_token_ids) > 16
    _check_prompt_logprobs(engine, chunked, 2)
    streamed = list(small.generate_stream(prompt, params))
    joined = [e for d in streamed if d.prompt_logprobs is not None for e in d.prompt_logprobs]
    assert joined == chunked.prompt_logprobs


def test_include_stop_str_in_output(engine: Engine) -> None:
    prompt = "The capital of France is"
    full = _completion(engine, prompt, SamplingParams(temperature=0.0, max_tokens=16)).text
    stop = "population"
    assert stop in full
    cut = _completion(engine, prompt, SamplingParams(temperature=0.0, max_tokens=16, stop=[stop]))
    kept = _completion(
        engine, prompt, SamplingParams(temperature=0.0, max_tokens=16, stop=[stop], include_stop_str_in_output=True)
    )
    assert cut.text == full[: full.index(stop)] and cut.stop_reason == stop
    assert kept.text == full[: full.index(stop) + len(stop)] and kept.stop_reason == stop


def test_detokenize_false_returns_tokens_without_text(engine: Engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=1)
    with_text = _completion(engine, "The capital of France is", params)
    without = _completion(
        engine, "The capital of France is", SamplingParams(**{**params.to_dict(), "detokenize": False})
    )
    assert with_text.text != "" and without.text == ""
    assert without.token_ids == with_text.token_ids
    assert without.logprobs is not None
    assert all(lp.decoded_token is None for entry in without.logprobs for lp in entry.values())
    with pytest.raises(InvalidRequestError, match="stop"):
        SamplingParams(stop=["."], detokenize=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("presence_penalty", 3.0),
        ("frequency_penalty", -2.5),
        ("repetition_penalty", 0.0),
        ("logit_bias", {10**9: 1.0}),
        ("logit_bias", {1: 101.0}),
        ("prompt_logprobs", 100),
    ],
)
def test_bad_sampling_values_name_the_field(engine: Engine, field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        engine._core.add_request("bad", [1, 2, 3], SamplingParams(**{field: value}))
    assert not engine._core.has_unfinished_requests()


def test_logit_bias_id_beyond_the_vocab_is_rejected_at_submission(engine: Engine) -> None:
    vocab_size = engine.tokenizer.vocab_size
    params = SamplingParams(logit_bias={vocab_size: 1.0})  # fine without a model
    with pytest.raises(InvalidRequestError) as info:
        engine.generate("hello", params, use_tqdm=False)
    message = str(info.value)
    assert "logit_bias" in message and str(vocab_size) in message
