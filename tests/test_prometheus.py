"""ember.metrics.render_prometheus: valid text exposition that mirrors Engine.stats()."""

from __future__ import annotations

import re

from ember import Engine, SamplingParams
from ember.metrics import render_prometheus

GAUGES = {
    "ember_num_requests_running": "num_running",
    "ember_num_requests_waiting": "num_waiting",
    "ember_kv_cache_usage_ratio": "kv_cache_usage",
    "ember_prefix_cache_hit_rate": "prefix_cache_hit_rate",
    "ember_spec_acceptance_rate": "spec_acceptance_rate",
    "ember_spec_mean_accepted_length": "spec_mean_accepted_len",
}
COUNTERS = {
    "ember_prefix_cache_queries_total": "prefix_cache_queries",
    "ember_prefix_cache_hits_total": "prefix_cache_hits",
    "ember_num_preemptions_total": "num_preemptions",
    "ember_prompt_tokens_total": "num_prompt_tokens",
    "ember_generation_tokens_total": "num_generation_tokens",
    "ember_structured_masks_total": "num_structured_masks",
    "ember_structured_mask_seconds_total": "structured_mask_s",
    "ember_window_freed_blocks_total": "num_window_freed_blocks",
    "ember_spec_proposed_tokens_total": "num_spec_proposed_tokens",
    "ember_spec_accepted_tokens_total": "num_spec_accepted_tokens",
    "ember_spec_verify_steps_total": "num_spec_verify_steps",
    "ember_cuda_graphs_captured_total": "num_cuda_graphs_captured",
    "ember_cuda_graph_replays_total": "num_cuda_graph_replays",
    "ember_cuda_graph_failures_total": "num_cuda_graph_failures",
}
_HELP = re.compile(r"# HELP (ember_[a-z_]+) \S.*")
_TYPE = re.compile(r"# TYPE (ember_[a-z_]+) (gauge|counter)")
_SAMPLE = re.compile(r"(ember_[a-z_]+) (-?[0-9.e+-]+)")


def _parse(text: str) -> tuple[dict[str, str], dict[str, float]]:
    """(metric -> type, metric -> value), checking every line's syntax and HELP/TYPE before the sample."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helped: set[str] = set()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if m := _HELP.fullmatch(line):
            helped.add(m[1])
        elif m := _TYPE.fullmatch(line):
            types[m[1]] = m[2]
        else:
            m = _SAMPLE.fullmatch(line)
            assert m is not None, f"bad line: {line!r}"
            assert m[1] in helped and m[1] in types and m[1] not in values
            values[m[1]] = float(m[2])
    return types, values


def test_render_reflects_engine_stats_after_generate(engine: Engine) -> None:
    engine.generate(["Hello there", "The sky is"], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    stats = engine.stats()
    types, values = _parse(render_prometheus(stats))
    assert types == {**dict.fromkeys(GAUGES, "gauge"), **dict.fromkeys(COUNTERS, "counter")}
    for name, key in {**GAUGES, **COUNTERS}.items():
        assert values[name] == stats[key]
    assert values["ember_generation_tokens_total"] >= 8
    assert values["ember_prompt_tokens_total"] > 0
    assert values["ember_cuda_graphs_captured_total"] == 0, "the CPU backend has no graphs"


def test_render_writes_fractions_and_skips_missing_keys() -> None:
    _, values = _parse(render_prometheus({"kv_cache_usage": 0.125, "num_preemptions": 3.0}))
    assert values == {"ember_kv_cache_usage_ratio": 0.125, "ember_num_preemptions_total": 3.0}
