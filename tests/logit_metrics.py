"""Teacher-forced comparisons of logits from two engines (or arithmetics) on the same tokens:
mean KL divergence from a reference distribution and top-1 agreement, and a long seeded text to
run them over (also used by bench/kv_cache_dtype.py)."""

from __future__ import annotations

import importlib
import warnings

import numpy as np

LONG_TEXT_MODULES = ["argparse", "asyncio", "collections", "csv", "dataclasses", "datetime", "decimal", "difflib",
                     "email", "fractions", "functools", "heapq", "inspect", "json", "logging", "pathlib", "pickle",
                     "random", "re", "shutil", "statistics", "string", "subprocess", "tarfile", "textwrap",
                     "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile"]  # fmt: skip
"""Standard library modules whose docstrings make `long_text`."""


def long_text() -> str:
    """Docstrings of standard library modules and their public members, in a fixed order (tens of
    thousands of tokens of natural English and code)."""
    parts = []
    with warnings.catch_warnings():  # typing's deprecated members warn when read
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in LONG_TEXT_MODULES:
            module = importlib.import_module(name)
            parts.append(module.__doc__ or "")
            for attr in sorted(dir(module)):
                doc = getattr(getattr(module, attr, None), "__doc__", None)
                if not attr.startswith("_") and isinstance(doc, str) and len(doc) > 200:
                    parts.append(doc)
    return "\n\n".join(p.strip() for p in parts if p.strip())


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
