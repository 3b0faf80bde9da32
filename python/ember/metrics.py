"""Engine statistics in the Prometheus text exposition format."""

from __future__ import annotations

from collections.abc import Sequence

from ember import _core

_METRICS: tuple[tuple[str, str, str, str], ...] = tuple(
    (metric, "counter" if kind == "counter" else "gauge", key, help_text)
    for key, metric, kind, help_text, _, _ in _core.stat_specs()
)
"""(metric name, Prometheus type, stats() key, help text), from the engine's one definition of each statistic."""


def _format_value(value: float) -> str:
    """A sample value as Prometheus writes it (integers without a fraction)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_prometheus(stats: dict[str, float], per_replica: Sequence[dict[str, float]] = ()) -> str:
    """The text exposition of `Engine.stats()`: # HELP, # TYPE and one sample per metric; missing keys are skipped.

    With `per_replica` (data parallel: `stats` is then the total), each metric also gets one sample per replica,
    labelled `replica="<index>"`; the unlabelled sample stays the total."""
    lines: list[str] = []
    for name, kind, key, help_text in _METRICS:
        if key not in stats:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_format_value(stats[key])}"]
        lines += [
            f'{name}{{replica="{i}"}} {_format_value(replica[key])}'
            for i, replica in enumerate(per_replica)
            if key in replica
        ]
    return "\n".join(lines) + "\n"
