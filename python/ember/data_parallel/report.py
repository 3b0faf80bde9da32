"""What the router tells /health and /metrics: each replica's state and load, and the engines' totals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ember import _core
from ember.data_parallel.replica import Replica

_GAUGE_AVERAGES = {key for key, _, kind, _, _, _ in _core.stat_specs() if kind == "averaged_gauge"}
"""Stats averaged over replicas (weighted by KV blocks) instead of summed."""


def replica_report(replica: Replica) -> dict[str, Any]:
    """One replica's state for /health: where it runs, restarts, load, and its last engine stats."""
    info = replica.info
    return {
        "index": replica.index,
        "state": replica.state.value,
        "pid": None if info is None else info.pid,
        "node": None if info is None else info.node,
        "num_restarts": replica.num_restarts,
        "num_in_flight_sequences": replica.num_in_flight_sequences,
        "num_routed_requests": replica.num_routed_requests,
        "num_predicted_cached_tokens": replica.num_matched_tokens,
        "last_failure": replica.last_failure,
        "stats": {} if replica.status is None else dict(replica.status.stats),
    }


_RATIOS = tuple((key, part, whole) for key, _, kind, _, part, whole in _core.stat_specs() if kind == "ratio")
"""(ratio key, numerator counter, denominator counter) of the engine stats that are ratios of counters."""


def engine_totals(replicas: Sequence[Replica]) -> dict[str, float]:
    """The replicas' last engine stats combined: counters and counts summed, KV usage averaged over every block,
    the ratios (prefix hit rate, speculative acceptance) recomputed from the summed counters. A restarted
    replica's counters start again from 0, so the sums can fall."""
    reported = [(r.status.stats, r.info.num_blocks if r.info else 0) for r in replicas if r.status is not None]
    totals: dict[str, float] = {}
    for stats, _ in reported:
        for key, value in stats.items():
            if key not in _GAUGE_AVERAGES:
                totals[key] = totals.get(key, 0.0) + value
    num_blocks = sum(blocks for _, blocks in reported)
    for key in _GAUGE_AVERAGES:
        weighted = sum(stats.get(key, 0.0) * blocks for stats, blocks in reported)
        totals[key] = weighted / num_blocks if num_blocks else 0.0
    for rate, part, whole in _RATIOS:
        denominator = totals.get(whole, 0.0)
        totals[rate] = totals.get(part, 0.0) / denominator if denominator else 0.0
    return totals


def health_body(replicas: Sequence[Replica], backend: str) -> tuple[int, dict[str, Any]]:
    """GET /health for a router: 200 while at least one replica is ready (503 otherwise), with every replica."""
    reports = [replica_report(r) for r in replicas]
    num_ready = sum(r.ready for r in replicas)
    status = "ok" if num_ready == len(replicas) else ("degraded" if num_ready else "unavailable")
    body = {"status": status, "backend": backend, "data_parallel_size": len(replicas), "replicas": reports}
    return (200 if num_ready else 503), body


def router_metric_lines(replicas: Sequence[Replica], num_retries: int) -> list[str]:
    """Prometheus lines of the router: per replica up, restarts, routed requests, in-flight sequences and predicted
    cached tokens; the retries."""
    families = (
        ("ember_replica_up", "gauge", "1 while the replica is ready for requests.", lambda r: int(r.ready)),
        ("ember_replica_restarts_total", "counter", "Times the replica was brought back.", lambda r: r.num_restarts),
        (
            "ember_router_requests_total",
            "counter",
            "Requests routed to the replica.",
            lambda r: r.num_routed_requests,
        ),
        (
            "ember_router_in_flight_sequences",
            "gauge",
            "Sequences the router has running on the replica.",
            lambda r: r.num_in_flight_sequences,
        ),
        (
            "ember_router_predicted_cached_tokens_total",
            "counter",
            "Prompt tokens the router's prefix view predicted the replica had cached.",
            lambda r: r.num_matched_tokens,
        ),
    )
    lines: list[str] = []
    for name, kind, help_text, value in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{replica="{r.index}"}} {value(r)}' for r in replicas]
    retries = "ember_router_retries_total"
    lines += [f"# HELP {retries} Requests retried on another replica after theirs died.", f"# TYPE {retries} counter"]
    lines.append(f"{retries} {num_retries}")
    return lines
