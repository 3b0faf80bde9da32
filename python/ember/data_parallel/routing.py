"""Choosing a replica for a request: the longest cached prefix, unless that replica is overloaded."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RoutingPolicy = Literal["prefix", "load"]
"""`prefix`: score = matched fraction - load_weight * relative load; `load`: the least loaded replica, ties
broken at random (what a router blind to prefixes does)."""


@dataclass(frozen=True)
class Candidate:
    """What the router knows of one ready replica when it routes a request."""

    index: int
    """The replica's index."""
    num_matched_blocks: int
    """Leading prompt blocks the replica's prefix view says it holds."""
    num_in_flight_sequences: int
    """Sequences this router has running on it."""


@dataclass(frozen=True)
class Choice:
    """The chosen replica and the score that chose it."""

    index: int
    """The chosen replica's index."""
    num_matched_blocks: int
    """Leading prompt blocks its prefix view says it holds."""
    score: float
    """Its score under the routing policy (higher is better)."""


IDLE_SEQUENCES = 4.0
"""Sequences a replica runs at almost no extra cost (they share its steps): the smoothing of the relative load,
so that a few requests in flight never outweigh a cached prompt, while a real pile-up does."""


def relative_load(num_in_flight_sequences: int, mean_in_flight_sequences: float) -> float:
    """A replica's load relative to the mean of the ready replicas, smoothed by `IDLE_SEQUENCES`: about 1 for an
    average replica under heavy load, near 0 for all of them when they are nearly idle."""
    return num_in_flight_sequences / (mean_in_flight_sequences + IDLE_SEQUENCES)


def choose(
    candidates: Sequence[Candidate],
    num_prompt_blocks: int,
    policy: RoutingPolicy,
    load_weight: float,
    rng: random.Random,
) -> Choice:
    """The replica to send a request with `num_prompt_blocks` matchable blocks to.

    Ties (equal score, then equal load) are broken at random, so idle replicas share uniform traffic."""
    if not candidates:
        raise ValueError("no replica to choose from")
    mean = sum(c.num_in_flight_sequences for c in candidates) / len(candidates)
    scored = []
    for c in candidates:
        load = relative_load(c.num_in_flight_sequences, mean)
        if policy == "prefix":
            matched = c.num_matched_blocks / num_prompt_blocks if num_prompt_blocks else 0.0
            score = matched - load_weight * load
        else:
            score = -load
        scored.append((score, -c.num_in_flight_sequences, rng.random(), c))
    score, _, _, best = max(scored, key=lambda item: item[:3])
    return Choice(best.index, best.num_matched_blocks, score)
