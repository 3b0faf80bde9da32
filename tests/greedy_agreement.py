"""Greedy tokens and logits of a bf16 device run against a float32 reference run, fairly: bf16
weights move the logits by ~1% of their spread, so a step whose float32 top-2 gap is smaller than
that may flip, and after one flip the contexts differ.

- Free-running: the first `N` tokens must match exactly, unless the float32 reference itself has a
  near-tie (top-2 gap below `NEAR_TIE` x the logits' standard deviation) at an earlier step, where
  the comparison of that prompt stops; at least half of all first-`N` tokens must be compared, so a
  comparison cannot pass by stopping.
- Teacher-forced (both engines score the reference's tokens): every row's logits within a relative
  L2 error of `MAX_REL_L2`, and the same top-1 wherever the float32 top-2 gap is not a near-tie."""

from __future__ import annotations

import numpy as np

from ember import Engine

N = 8
NEAR_TIE = 0.05
MIN_COMPARED = 0.5
MAX_REL_L2 = 5e-2


def relative_gaps(logits: np.ndarray) -> np.ndarray:
    """Top-2 gap of each row over the row's standard deviation."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) / logits.std(axis=1)


def near_tie_step(reference: Engine, prompt: list[int], tokens: list[int], n: int = N) -> int:
    """The first of the `n` generated steps whose float32 top-2 gap is a near-tie, else `n`."""
    logits = np.array(reference.score(prompt + tokens[:n]), np.float64)[len(prompt) - 1 :][:n]
    return next((i for i, gap in enumerate(relative_gaps(logits)) if gap < NEAR_TIE), n)


def assert_greedy_agreement(
    reference: Engine, prompts: list[list[int]], device_tokens: list[list[int]], reference_tokens: list[list[int]]
) -> None:
    """Device and reference greedy tokens agree up to each prompt's first float32 near-tie."""
    compared = 0
    for prompt, got, want in zip(prompts, device_tokens, reference_tokens, strict=True):
        stop = near_tie_step(reference, prompt, want)
        assert got[:stop] == want[:stop], (prompt, stop, got, want)
        compared += stop
    assert compared >= MIN_COMPARED * N * len(prompts), f"only {compared} tokens before a float32 near-tie"


def assert_teacher_forced_agreement(device: Engine, reference: Engine, sequences: list[list[int]]) -> None:
    """Both engines' logits at every position of each sequence: close, and the same top-1 away from near-ties."""
    for seq in sequences:
        got = np.array(device.score(seq), np.float64)
        want = np.array(reference.score(seq), np.float64)
        assert got.shape == want.shape
        rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
        assert rel.max() < MAX_REL_L2, (seq, rel.max())
        clear = relative_gaps(want) >= NEAR_TIE
        assert np.array_equal(got.argmax(axis=1)[clear], want.argmax(axis=1)[clear]), seq
