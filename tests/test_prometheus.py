"""ember.metrics.render_prometheus: valid text exposition that mirrors Engine.stats()."""

from __future__ import annotations

import re

from ember import Engine, SamplingParams, _core
from ember.metrics import render_prometheus

SPECS = _core.stat_specs()
GAUGES = {metric: key for key, metric, kind, _, _, _ in SPECS if kind != "counter"}
COUNTERS = {metric: key for key, metric, kind, _, _, _ in SPECS if kind == "counter"}
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
    assert set(stats) == {key for key, *_ in SPECS}, "every statistic is defined once, in the Rust table"
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


def test_specs_name_each_statistic_once_with_its_kind() -> None:
    keys = [key for key, *_ in SPECS]
    metrics = [metric for _, metric, *_ in SPECS]
    assert len(set(keys)) == len(keys) and len(set(metrics)) == len(metrics)
    for key, metric, kind, help_text, part, whole in SPECS:
        assert kind in {"counter", "gauge", "averaged_gauge", "ratio"}, key
        assert metric.endswith("_total") == (kind == "counter"), metric
        assert help_text.endswith("."), key
        assert (part is not None and whole is not None) == (kind == "ratio"), key
        if kind == "ratio":
            assert {part, whole} <= set(keys), key
    assert {"num_loaded_adapters", "num_adapter_loads", "num_adapter_evictions", "num_active_adapters"} <= set(keys)
