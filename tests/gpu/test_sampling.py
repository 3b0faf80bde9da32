"""GPU sampling helpers against numpy: the bf16-to-f32 cast, the chosen token's logprob, and
greedy rows of the sampler (the argmax, lowest id on ties)."""

from __future__ import annotations

import cupy as cp
import numpy as np


def test_cast_logprob_and_greedy_sample(module):
    rng = np.random.default_rng(0)
    rows, vocab = 5, 50_001
    x = rng.standard_normal((rows, vocab)).astype(np.float32) * 4
    bits = ((x.view(np.uint32) + 0x8000) >> 16).astype(np.uint16)
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    logits = cp.full((rows, vocab), np.nan, np.float32)
    module.get_function("ember_to_f32_bf16")((64,), (256,), (logits, cp.asarray(bits), np.int64(rows * vocab)))
    np.testing.assert_array_equal(cp.asnumpy(logits), want)
    params = np.zeros(rows * 8, np.uint32)  # temperature 0: greedy
    ids = cp.full((rows,), -1, np.int32)
    module.get_function("ember_sample_f32")((rows,), (1024,), (ids, logits, cp.asarray(params), np.int32(vocab)))
    np.testing.assert_array_equal(cp.asnumpy(ids), want.argmax(axis=1))
    out = cp.full((rows,), np.nan, np.float32)
    module.get_function("ember_token_logprob_f32")((rows,), (1024,), (out, logits, ids, np.int32(vocab)))
    w = want.astype(np.float64)
    lse = w.max(axis=1) + np.log(np.exp(w - w.max(axis=1, keepdims=True)).sum(axis=1))
    np.testing.assert_allclose(cp.asnumpy(out), w[np.arange(rows), want.argmax(axis=1)] - lse, rtol=1e-5, atol=1e-5)
