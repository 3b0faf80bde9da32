"""Engine statistics in the Prometheus text exposition format."""

from __future__ import annotations

from collections.abc import Sequence

# (metric name, type, stats() key, help text)
_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("ember_num_requests_running", "gauge", "num_running", "Requests currently scheduled."),
    ("ember_num_requests_waiting", "gauge", "num_waiting", "Requests waiting to be scheduled."),
    ("ember_kv_cache_usage_ratio", "gauge", "kv_cache_usage", "Fraction of KV-cache blocks in use (0 to 1)."),
    ("ember_prefix_cache_hit_rate", "gauge", "prefix_cache_hit_rate", "Prefix-cache hits per queried token."),
    (
        "ember_prefix_cache_queries_total",
        "counter",
        "prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache.",
    ),
    ("ember_prefix_cache_hits_total", "counter", "prefix_cache_hits", "Prompt tokens found in the prefix cache."),
    ("ember_num_preemptions_total", "counter", "num_preemptions", "Requests preempted for lack of KV-cache space."),
    ("ember_prompt_tokens_total", "counter", "num_prompt_tokens", "Prompt tokens processed."),
    ("ember_generation_tokens_total", "counter", "num_generation_tokens", "Tokens generated."),
    (
        "ember_structured_masks_total",
        "counter",
        "num_structured_masks",
        "Token masks computed for structured output.",
    ),
    (
        "ember_structured_mask_seconds_total",
        "counter",
        "structured_mask_s",
        "Wall time of structured-output mask computation, in seconds.",
    ),
    (
        "ember_window_freed_blocks_total",
        "counter",
        "num_window_freed_blocks",
        "KV-cache blocks released early because they fell wholly before a sliding window.",
    ),
    (
        "ember_spec_proposed_tokens_total",
        "counter",
        "num_spec_proposed_tokens",
        "Speculative draft tokens proposed and verified.",
    ),
    (
        "ember_spec_accepted_tokens_total",
        "counter",
        "num_spec_accepted_tokens",
        "Speculative draft tokens accepted (equal to what plain decoding samples).",
    ),
    ("ember_spec_verify_steps_total", "counter", "num_spec_verify_steps", "Speculative verifications run."),
    (
        "ember_spec_acceptance_rate",
        "gauge",
        "spec_acceptance_rate",
        "Accepted per proposed speculative draft token.",
    ),
    (
        "ember_spec_mean_accepted_length",
        "gauge",
        "spec_mean_accepted_len",
        "Draft tokens accepted per speculative verification.",
    ),
    ("ember_cuda_graphs_captured_total", "counter", "num_cuda_graphs_captured", "Decode CUDA graphs captured."),
    ("ember_cuda_graph_replays_total", "counter", "num_cuda_graph_replays", "Decode steps run from a CUDA graph."),
    (
        "ember_cuda_graph_failures_total",
        "counter",
        "num_cuda_graph_failures",
        "CUDA graph warm-ups or captures that failed (their steps run eagerly).",
    ),
)


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
