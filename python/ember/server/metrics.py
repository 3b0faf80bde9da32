"""Server-side Prometheus metrics: request counts, token counts and latency histograms."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Sequence

from ember.metrics import render_prometheus

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
"""Histogram bucket upper bounds in seconds, shared by TTFT, inter-token and end-to-end latency."""


class Histogram:
    """A Prometheus histogram with fixed buckets (cumulative counts are computed when rendered)."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.name = name
        self.help_text = help_text
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float, times: int = 1) -> None:
        """Records `value` `times` times."""
        self._counts[bisect.bisect_left(self.buckets, value)] += times
        self._sum += value * times
        self._count += times

    def render(self) -> list[str]:
        """The exposition lines: # HELP, # TYPE, cumulative buckets, +Inf, sum and count."""
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip(self.buckets, self._counts, strict=False):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self._count}')
        lines += [f"{self.name}_sum {self._sum!r}", f"{self.name}_count {self._count}"]
        return lines


class ServerMetrics:
    """What the server counts; `render` adds the engine's own gauges and counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self.ttft = Histogram("ember_time_to_first_token_seconds", "Time from arrival to the first generated token.")
        self.itl = Histogram("ember_inter_token_latency_seconds", "Time between successive generated tokens.")
        self.e2e = Histogram("ember_e2e_request_latency_seconds", "Time from arrival to the end of the request.")

    def count_request(self, endpoint: str, status: int) -> None:
        """Counts one finished HTTP request by endpoint and status code."""
        with self._lock:
            self._requests[(endpoint, status)] += 1

    def observe(self, histogram: Histogram, value: float, times: int = 1) -> None:
        """Records a latency observation (thread-safe)."""
        with self._lock:
            histogram.observe(value, times)

    def render(
        self,
        engine_stats: dict[str, float],
        replica_stats: Sequence[dict[str, float]] = (),
        extra_lines: Sequence[str] = (),
    ) -> str:
        """Prometheus text: the engine's stats (with data parallelism: the total, then each replica's), the request
        counter, the latency histograms and `extra_lines` (the router's own metrics)."""
        with self._lock:
            lines = [
                "# HELP ember_http_requests_total HTTP requests answered, by endpoint and status code.",
                "# TYPE ember_http_requests_total counter",
            ]
            for (endpoint, status), count in sorted(self._requests.items()):
                lines.append(f'ember_http_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
            for histogram in (self.ttft, self.itl, self.e2e):
                lines += histogram.render()
            lines += extra_lines
        return render_prometheus(engine_stats, replica_stats) + "\n".join(lines) + "\n"
