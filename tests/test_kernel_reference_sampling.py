"""Self-checks of the numpy sampling and rounding references that tests/gpu compares the CUDA
kernels against (tests/kernel_reference.py); CPU only, so the GPU tests' fixed cases and
statistics are known sound before they meet a device."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_reference import (
    CHI_SQUARE_CASES,
    FLOOR,
    SAMPLE_PARAMS,
    SLACK,
    Params,
    chi_square,
    chi_square_critical,
    decode,
    draw_streams,
    encode,
    inverse_cdf,
    kept_mask,
    pack_params,
    peaked_logits,
    probabilities,
    round_to,
    unambiguous,
    uniform,
    weights,
)

VOCAB = 49152


def test_bf16_rounds_to_nearest_even() -> None:
    """bf16 encoding: exact values kept, halfway cases to even, NaN and inf preserved."""
    one_and_half_ulp = 1.0 + 2.0**-8  # halfway between 1 and 1 + 2^-7: rounds to even (1.0)
    assert decode(encode(one_and_half_ulp, "bf16"), "bf16") == 1.0
    above = 1.0 + 2.0**-7 + 2.0**-8  # halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up
    assert decode(encode(above, "bf16"), "bf16") == 1.0 + 2.0**-6
    assert encode(np.nan, "bf16") == 0x7FC0 and np.isinf(round_to(np.inf, "bf16"))
    x = np.random.default_rng(0).standard_normal(1000)
    for name, ulp in (("bf16", 2.0**-8), ("f16", 2.0**-11), ("f32", 2.0**-24)):
        assert np.all(np.abs(round_to(x, name) - x) <= ulp * np.abs(x) * 1.0000001)


def test_sample_params_layout() -> None:
    """32 bytes per row: three f32, an i32, two u64 (the kernel's struct)."""
    words = pack_params([Params(0.5, 0.9, 0.05, 7, seed=2**40 + 3, token_index=2**33 + 1)])
    assert words.shape == (8,) and SAMPLE_PARAMS.itemsize == 32
    assert words[3] == 7 and words[4] == 3 and words[5] == 2**8 and words[6] == 1 and words[7] == 2
    assert words[0] == np.float32(0.5).view(np.uint32)


def test_uniform_draws_are_uniform_and_seeded() -> None:
    """The splitmix64 draw: in [0, 1), different per seed and per index, flat (chi-square)."""
    u = uniform(np.arange(20000, dtype=np.uint64), np.zeros(20000, np.uint64))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert uniform(1, 0)[0] != uniform(2, 0)[0] and uniform(1, 0)[0] != uniform(1, 1)[0]
    counts = np.bincount((u * 50).astype(int), minlength=50)
    stat, df = chi_square(counts, np.full(50, 1 / 50))
    assert stat < chi_square_critical(df)


def test_kept_mask_semantics() -> None:
    """Top-k keeps ties, top-p keeps the smallest best-first prefix reaching the mass, min-p
    compares against the top weight."""
    w = np.array([1.0, 0.5, 0.5, 0.25, 0.125])
    assert kept_mask(w, Params(1.0, top_k=2)).tolist() == [True, True, True, False, False]
    total = w.sum()
    p = float(np.float32(0.6))
    assert 1.0 / total < p <= 1.5 / total
    assert kept_mask(w, Params(1.0, top_p=0.6)).tolist() == [True, True, True, False, False]
    assert kept_mask(w, Params(1.0, top_p=0.01)).tolist() == [True, False, False, False, False]
    assert kept_mask(w, Params(1.0, min_p=0.3)).tolist() == [True, True, True, False, False]
    assert kept_mask(w, Params(1.0, top_k=4, top_p=0.5)).tolist() == [True, True, True, False, False]


@pytest.mark.parametrize("case", sorted(CHI_SQUARE_CASES))
def test_chi_square_cases_are_unambiguous_and_pass_with_the_reference_sampler(case: str) -> None:
    """The GPU test's fixed distributions cut only between clearly separated weights, and the
    reference sampler (inverse CDF in id order over the same draws) passes the same test."""
    p = CHI_SQUARE_CASES[case]
    logits = peaked_logits(VOCAB, np.random.default_rng(11))
    assert unambiguous(logits, p)
    probs = probabilities(logits, p)
    assert abs(probs.sum() - 1.0) < 1e-12
    streams = draw_streams(p, 4096, salt=5)
    u = uniform([s.seed for s in streams], [s.token_index for s in streams])
    tokens = inverse_cdf(probs, u)
    assert np.all(probs[tokens] > 0)
    stat, df = chi_square(np.bincount(tokens, minlength=VOCAB), probs)
    assert stat < chi_square_critical(df), (stat, df)


def test_loose_set_contains_tight_set() -> None:
    """On random rows the loose set (what the kernel may keep) contains the tight one."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        logits = (rng.standard_normal(1000) * 3).astype(np.float32)
        p = Params(float(rng.uniform(0.2, 2)), float(rng.uniform(0.05, 1)), float(rng.uniform(0, 0.3)), 50)
        w = weights(logits, p)
        tight, loose = kept_mask(w, p, -SLACK), kept_mask(w, p, SLACK, FLOOR)
        assert tight.any() and np.all(loose[tight])
