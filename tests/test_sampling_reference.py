"""The Rust sampler against an independent numpy reference: filters, penalties, logit_bias,
logprobs and ranks (hypothesis), and sampled frequencies (a chi-square test over fixed seeds)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ember import InvalidRequestError, SamplingParams, _core

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Relative margin kept between a filter threshold and the values it compares (f32 arithmetic).
MARGIN = 1e-3


def reference_adjust(
    logits: np.ndarray, params: dict[str, Any], prompt: list[int], output: list[int], eos: list[int] = ()
) -> np.ndarray:
    """min_tokens mask, logit_bias, then repetition / frequency / presence penalties (vLLM's formulas)."""
    x = logits.astype(np.float64).copy()
    vocab = len(x)
    if len(output) < params.get("min_tokens", 0):
        banned = list(params.get("stop_token_ids") or [])
        if not params.get("ignore_eos", False):
            banned += list(eos)
        x[banned] = -np.inf
    for token_id, bias in (params.get("logit_bias") or {}).items():
        x[int(token_id)] += bias
    counts = np.bincount(np.asarray(output, dtype=np.int64), minlength=vocab)[:vocab].astype(np.float64)
    seen = counts > 0
    seen[np.asarray(prompt, dtype=np.int64)] = True
    r = params.get("repetition_penalty", 1.0)
    x = np.where(seen, np.where(x > 0, x / r, x * r), x)
    x -= params.get("frequency_penalty", 0.0) * counts
    x -= params.get("presence_penalty", 0.0) * (counts > 0)
    return x


def reference_probs(x: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Temperature, top-k, min-p, top-p over adjusted logits `x`; also the distance of the closest
    filter decision from its threshold (relative), so that callers can skip knife-edge cases."""
    temperature = params.get("temperature", 1.0)
    probs = np.zeros_like(x)
    if temperature == 0.0:
        probs[int(np.argmax(x))] = 1.0
        return probs, math.inf
    z = (x - x.max()) / temperature
    p = np.exp(z)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.ones_like(p, dtype=bool)
    slack = math.inf
    top_k = params.get("top_k", 0)
    if 0 < top_k < len(p):
        keep[order[top_k:]] = False
    min_p = params.get("min_p", 0.0)
    if min_p > 0:
        ratio = p / p.max()
        keep &= ratio >= min_p
        slack = min(slack, float(np.min(np.abs(ratio[p > 0] - min_p))))
    top_p = params.get("top_p", 1.0)
    if top_p < 1.0:
        kept_sorted = np.where(keep[order], p[order], 0.0)
        mass = kept_sorted / kept_sorted.sum()
        before = np.concatenate([[0.0], np.cumsum(mass)[:-1]])  # mass strictly ahead of each token
        in_nucleus = before < top_p
        in_nucleus[0] = True
        keep[order[~in_nucleus]] = False
        live = kept_sorted > 0
        slack = min(slack, float(np.min(np.abs(before[live] - top_p))))
    probs = np.where(keep, p, 0.0)
    return probs / probs.sum(), slack


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


@st.composite
def logits_rows(draw: st.DrawFn, min_vocab: int = 2, max_vocab: int = 64) -> np.ndarray:
    """Random float32 logits whose sorted values are at least 1e-3 apart (no ties)."""
    vocab = draw(st.integers(min_vocab, max_vocab))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.5, 2.0, 6.0]))
    row = (np.random.default_rng(seed).standard_normal(vocab) * scale).astype(np.float32)
    assume(vocab < 2 or np.min(np.diff(np.sort(row))) > 1e-3)
    return row


@st.composite
def filter_params(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "temperature": draw(st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.5, 3.0])),
        "top_k": draw(st.sampled_from([0, -1, 1, 2, 5, 20])),
        "top_p": draw(st.sampled_from([1.0, 0.95, 0.8, 0.5, 0.2])),
        "min_p": draw(st.sampled_from([0.0, 0.0, 0.05, 0.3])),
    }


@st.composite
def penalty_case(draw: st.DrawFn) -> tuple[np.ndarray, dict[str, Any], list[int], list[int]]:
    row = draw(logits_rows(min_vocab=4, max_vocab=40))
    vocab = len(row)
    token = st.integers(0, vocab - 1)
    prompt = draw(st.lists(token, min_size=1, max_size=12))
    output = draw(st.lists(token, max_size=12))
    bias = draw(st.dictionaries(token, st.floats(-100, 100, allow_nan=False, width=32), max_size=4))
    params = {
        "temperature": draw(st.sampled_from([0.0, 0.8, 1.0])),
        "repetition_penalty": draw(st.sampled_from([1.0, 0.5, 1.3, 2.0])),
        "frequency_penalty": draw(st.floats(-2, 2, allow_nan=False, width=32)),
        "presence_penalty": draw(st.floats(-2, 2, allow_nan=False, width=32)),
        "logit_bias": bias,
    }
    return row, params, prompt, output


def _assert_probs_match(got: list[float], want: np.ndarray) -> None:
    got_arr = np.asarray(got)
    # The sampler's exp flushes weights below e^-87 to zero; treat anything that small as zero.
    tiny = 1e-30
    assert np.array_equal(got_arr > tiny, want > tiny), f"support {np.flatnonzero(got_arr)} vs {np.flatnonzero(want)}"
    np.testing.assert_allclose(got_arr, want, rtol=2e-4, atol=1e-7)


@SETTINGS
@given(logits_rows(), filter_params())
def test_filters_match_the_reference(row: np.ndarray, params: dict[str, Any]) -> None:
    want, slack = reference_probs(row.astype(np.float64), params)
    assume(slack > MARGIN)
    _assert_probs_match(_core.sampling_probs(row.tolist(), SamplingParams(**params)), want)


@SETTINGS
@given(penalty_case())
def test_penalties_and_bias_match_the_reference(case: tuple[np.ndarray, dict[str, Any], list[int], list[int]]) -> None:
    row, params, prompt, output = case
    x = reference_adjust(row, params, prompt, output)
    # The adjusted row must still have a clear maximum and no near-ties for greedy.
    top2 = np.sort(x)[-2:]
    assume(top2[1] - top2[0] > 1e-3 * max(1.0, abs(top2[1])))
    want, _ = reference_probs(x, params)
    got = _core.sampling_probs(row.tolist(), SamplingParams(**params), prompt, output)
    if params["temperature"] == 0.0:
        assert int(np.argmax(got)) == int(np.argmax(x))
    else:
        # The sampler works in float32: allow for the rounding of logits up to ~200 in size.
        got_arr, ref = np.asarray(got), want
        np.testing.assert_allclose(got_arr, ref, rtol=5e-3, atol=1e-6)


@SETTINGS
@given(logits_rows(), st.integers(0, 20), st.integers(0, 2**63 - 1), st.sampled_from([0.0, 1.0, 2.0]))
def test_logprobs_and_ranks_are_those_of_the_raw_logits(row: np.ndarray, k: int, seed: int, temperature: float) -> None:
    params = {"temperature": temperature, "logprobs": k, "repetition_penalty": 1.5}
    token, logprob, rank, top = _core.sample_token(row.tolist(), SamplingParams(**params), [0, 1], [], seed)
    ref = log_softmax(row)
    assert logprob == pytest.approx(ref[token], abs=1e-4)
    assert rank == 1 + int(np.sum(row > row[token]))
    order = np.argsort(-row, kind="stable")[: min(k, len(row))]
    assert [t for t, _ in top] == order.tolist()
    np.testing.assert_allclose([lp for _, lp in top], ref[order], atol=1e-4)
    which = int(order[-1]) if k else token
    lp, r, alts = _core.token_logprobs(row.tolist(), which, k)
    assert lp == pytest.approx(ref[which], abs=1e-4)
    assert r == 1 + int(np.sum(row > row[which]))
    assert [t for t, _ in alts] == order.tolist()


def test_min_tokens_masks_eos_and_stop_ids() -> None:
    row = [0.0, 3.0, 2.0, 1.0]
    params = {"temperature": 1.0, "min_tokens": 2, "stop_token_ids": [2]}
    got = _core.sampling_probs(row, SamplingParams(**params), [3], [0], eos_token_ids=[1])
    want, _ = reference_probs(reference_adjust(np.asarray(row), params, [3], [0], [1]), params)
    _assert_probs_match(got, want)
    assert got[1] == 0.0 and got[2] == 0.0
    assert _core.sampling_probs(row, SamplingParams(**params), [3], [0, 0], eos_token_ids=[1])[1] > 0.0


def test_logit_bias_ids_are_checked() -> None:
    with pytest.raises(InvalidRequestError, match=r"logit_bias.*7.*vocab_size 4"):
        _core.sampling_probs([0.0] * 4, SamplingParams(logit_bias={7: 1.0}))
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        _core.sampling_probs([0.0] * 4, SamplingParams(logit_bias={-1: 1.0}))


def chi_square_critical(dof: int, z: float = 3.090232) -> float:
    """Upper 1e-3 quantile of chi-square (Wilson-Hilferty; z is the normal 1e-3 upper quantile)."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def test_chi_square_critical_values() -> None:
    # Tabulated 0.999 quantiles for 3, 5 and 10 degrees of freedom.
    for dof, table in [(3, 16.27), (5, 20.52), (10, 29.59)]:
        assert chi_square_critical(dof) == pytest.approx(table, rel=0.02)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.8},
        {"temperature": 1.2, "top_k": 6, "top_p": 0.9},
        {"temperature": 1.0, "min_p": 0.1, "repetition_penalty": 1.4, "frequency_penalty": 0.3},
        {"temperature": 0.7, "presence_penalty": -0.5, "logit_bias": {7: 2.0, 0: -1.5}},
    ],
)
def test_sampled_frequencies_match_the_reference(params: dict[str, Any]) -> None:
    row = np.asarray([1.2, 0.3, -0.4, 0.9, 0.0, 1.5, -1.0, 0.6], dtype=np.float32)
    prompt, output = [1, 5, 5], [3, 0, 3]
    want, _ = reference_probs(reference_adjust(row, params, prompt, output), params)
    num_draws = 4000
    counts = np.zeros(len(row))
    for seed in range(num_draws):
        token, *_ = _core.sample_token(row.tolist(), SamplingParams(**params), prompt, output, seed)
        counts[token] += 1
    support = want > 0
    assert counts[~support].sum() == 0, f"drew masked tokens: {counts}"
    expected = want[support] * num_draws
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    assert chi2 < chi_square_critical(int(support.sum()) - 1), f"{counts} vs {expected}"
