"""Teacher-forced comparisons of logits from two engines (or arithmetics) on the same tokens:
mean KL divergence from a reference distribution and top-1 agreement (also used by
bench/kv_cache_dtype.py)."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def faithfulness(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(mean KL(reference || logits), top-1 agreement) over positions (rows)."""
    p, q = log_softmax(reference), log_softmax(logits)
    kl = (np.exp(p) * (p - q)).sum(axis=-1).mean()
    return float(kl), float((logits.argmax(axis=-1) == reference.argmax(axis=-1)).mean())
