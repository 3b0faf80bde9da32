"""Sampling kernels beyond greedy, against float64 (tests/kernel_reference.py):

- `ember_sample_f32` with temperature / top-k / top-p / min-p and per-request seeds: on random
  rows (vocab 49152, 50001 and 7, NaN and -inf logits, greedy and degenerate settings) the
  token is always inside the reference's kept set (loose by 1e-4 relative and 2^-31 absolute:
  __expf, f32 sums and the kernel's 32-step bisections), never a NaN/-inf logit, and the argmax
  for greedy rows; on fixed peaked rows whose filters cut between clearly separated weights, the
  frequencies over 16384 seeded draws pass a chi-square test against the reference
  distribution (one-sided 1e-4 critical value, Wilson-Hilferty), and, since the draw
  u = uniform(seed, index) is reproduced exactly in numpy, at least 98% of the tokens are the
  reference's own inverse-CDF pick (the rest: draws within the f32 rounding of the kernel's
  prefix sums of a CDF step, up to ~n * 1e-7 of the mass over n = 49152 kept tokens).
- `ember_log_softmax_f32` over rows 1, 3, 17, 64 (NaN counts as -inf, an all -inf row gives
  -inf), `ember_argmax_f32` (lowest id on ties, NaN ignored) and `ember_token_logprob_f32`
  (out-of-range ids give -inf).
Outputs NaN/-1 poisoned before each launch."""

from __future__ import annotations

import cupy as cp
import numpy as np
import pytest

from kernel_harness import Buffer
from kernel_reference import (
    CHI_SQUARE_CASES,
    FLOOR,
    SLACK,
    Params,
    chi_square,
    chi_square_critical,
    clean_logits,
    draw_streams,
    inverse_cdf,
    is_greedy,
    kept_mask,
    pack_params,
    peaked_logits,
    probabilities,
    uniform,
    weights,
)

THREADS = 1024  # launch::SAMPLING_THREADS, one block per row


def sample(module, logits: cp.ndarray, rows: list[Params]) -> np.ndarray:
    """Sampled ids of every row of f32 device `logits`."""
    ids = cp.full((len(rows),), -1, np.int32)
    module.get_function("ember_sample_f32")(
        (len(rows),), (THREADS,), (ids, logits, cp.asarray(pack_params(rows)), np.int32(logits.shape[1]))
    )
    return cp.asnumpy(ids)


def random_rows(vocab: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """f32 logits N(0, 3) with a few NaN and -inf entries per row."""
    logits = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    for r in range(rows):
        bad = rng.integers(0, vocab, max(vocab // 1000, 1) * 2)
        logits[r, bad[: bad.size // 2]] = np.nan
        logits[r, bad[bad.size // 2 :]] = -np.inf
    return logits


def random_params(rng: np.random.Generator, vocab: int) -> Params:
    """A random mix of settings, including greedy, top_k = 1, vocab-sized top_k and tiny top_p."""
    return Params(
        temperature=float(rng.choice([0.0, 0.05, 0.3, 0.7, 1.0, 2.0])),
        top_p=float(rng.choice([1.0, 0.99, 0.9, 0.5, 0.01])),
        min_p=float(rng.choice([0.0, 0.0, 0.05, 0.3])),
        top_k=int(rng.choice([0, 1, 5, 50, vocab, vocab + 3, -1])),
        seed=int(rng.integers(0, 2**63)) * 2 + 1,
        token_index=int(rng.integers(0, 2**40)),
    )


@pytest.mark.parametrize("vocab", [49152, 50001, 7])
@pytest.mark.parametrize("rows", [1, 3, 17, 64])
def test_sampled_token_is_in_the_kept_set(module, vocab, rows):
    rng = np.random.default_rng(vocab + rows)
    for _ in range(4):
        logits = random_rows(vocab, rows, rng)
        params = [random_params(rng, vocab) for _ in range(rows)]
        ids = sample(module, cp.asarray(logits), params)
        for r, (p, t) in enumerate(zip(params, ids, strict=True)):
            row = logits[r]
            assert 0 <= t < vocab, (r, p, t)
            assert np.isfinite(row[t]), (r, p, t)
            if is_greedy(p, row):
                assert t == int(np.argmax(clean_logits(row))), (r, p, t)
            else:
                assert kept_mask(weights(row, p), p, SLACK, FLOOR)[t], (r, p, t)


@pytest.mark.parametrize("case", sorted(CHI_SQUARE_CASES))
def test_frequencies_match_the_reference_distribution(module, case):
    vocab, draws, launches = 49152, 16384, 2
    logits = peaked_logits(vocab, np.random.default_rng(11))
    base = CHI_SQUARE_CASES[case]
    probs = probabilities(logits, base)
    dev = cp.ascontiguousarray(cp.broadcast_to(cp.asarray(logits), (draws // launches, vocab)))
    tokens, expected = [], []
    for launch in range(launches):
        streams = draw_streams(base, draws // launches, salt=100 + launch)
        tokens.append(sample(module, dev, streams))
        u = uniform([s.seed for s in streams], [s.token_index for s in streams])
        expected.append(inverse_cdf(probs, u))
    tokens, expected = np.concatenate(tokens), np.concatenate(expected)
    assert np.all(probs[tokens] > 0), "a token outside the kept set"
    stat, df = chi_square(np.bincount(tokens, minlength=vocab), probs)
    assert stat < chi_square_critical(df), (case, stat, df)
    agree = float(np.mean(tokens == expected))
    assert agree >= 0.98, (case, agree)


@pytest.mark.parametrize("vocab", [7, 49152, 50001])
@pytest.mark.parametrize("rows", [1, 3, 17, 64])
def test_log_softmax(module, vocab, rows):
    """Tolerance: 2e-5 absolute + 1e-6 relative (f32 expf, block sums in f32, |lse| ~ 20)."""
    rng = np.random.default_rng(vocab * 3 + rows)
    logits = random_rows(vocab, rows, rng) * np.float32(4 / 3)
    if rows >= 3:
        logits[1] = -np.inf
        logits[2, : vocab // 2] = np.nan
    out = Buffer((rows, vocab), "f32")
    module.get_function("ember_log_softmax_f32")((rows,), (THREADS,), (out.arr, cp.asarray(logits), np.int32(vocab)))
    x = clean_logits(logits)
    m = x.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        lse = m + np.log(np.exp(x - np.where(np.isfinite(m), m, 0.0)).sum(axis=1, keepdims=True))
        want = np.where(np.isfinite(lse), x - lse, -np.inf)
    np.testing.assert_allclose(out.values(), want, rtol=1e-6, atol=2e-5)
    out.check_guard()


@pytest.mark.parametrize("vocab", [7, 49152, 50001])
def test_argmax_and_token_logprob(module, vocab):
    rng = np.random.default_rng(vocab)
    rows = 17
    logits = random_rows(vocab, rows, rng)
    logits[0, [3, 5]] = 1e3  # tie: the lower id wins
    logits[1] = np.nan  # no finite logit: id 0
    logits[2, 0] = np.nan
    logits[2, vocab - 1] = 1e3
    dev = cp.asarray(logits)
    ids = cp.full((rows,), -1, np.int32)
    module.get_function("ember_argmax_f32")((rows,), (THREADS,), (ids, dev, np.int32(vocab)))
    want = np.argmax(clean_logits(logits), axis=1)
    np.testing.assert_array_equal(cp.asnumpy(ids), want)
    assert want[0] == 3 and want[1] == 0 and want[2] == vocab - 1
    chosen = rng.integers(0, vocab, rows).astype(np.int32)
    chosen[3], chosen[4] = -1, vocab  # out of range: -inf
    out = Buffer(rows, "f32")
    module.get_function("ember_token_logprob_f32")(
        (rows,), (THREADS,), (out.arr, dev, cp.asarray(chosen), np.int32(vocab))
    )
    x = clean_logits(logits)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = x.max(axis=1)
        lse = m + np.log(np.exp(x - np.where(np.isfinite(m), m, 0.0)[:, None]).sum(axis=1))
        valid = (chosen >= 0) & (chosen < vocab) & np.isfinite(lse)
        want_lp = np.where(valid, x[np.arange(rows), np.clip(chosen, 0, vocab - 1)] - lse, -np.inf)
    np.testing.assert_allclose(out.values(), want_lp, rtol=1e-6, atol=2e-5)
    out.check_guard()
