"""RequestOutput.metrics: arrival, first-token and finish times, and the derived TTFT."""

from __future__ import annotations

import time

from ember import Engine, RequestMetrics, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def test_generate_fills_metrics_in_order(engine: Engine) -> None:
    before = time.time()
    outs = engine.generate(["The capital of France is", "Once upon a time"], GREEDY, use_tqdm=False)
    after = time.time()
    for out in outs:
        m = out.metrics
        assert isinstance(m, RequestMetrics)
        assert m.first_token_time is not None and m.finish_time is not None
        assert before <= m.arrival_time <= m.first_token_time <= m.finish_time <= after
        assert m.time_to_first_token == m.first_token_time - m.arrival_time >= 0.0


def test_stream_metrics_finish_only_at_the_end(engine: Engine) -> None:
    deltas = list(engine.generate_stream("1, 2, 3, 4,", GREEDY))
    assert all(d.metrics is not None and d.metrics.first_token_time is not None for d in deltas)
    assert all(d.metrics is not None and d.metrics.finish_time is None for d in deltas[:-1])
    last = deltas[-1].metrics
    assert last is not None and last.finish_time is not None and last.finish_time >= last.arrival_time


def test_time_to_first_token_is_none_before_the_first_token() -> None:
    assert RequestMetrics(arrival_time=1.0).time_to_first_token is None
    assert RequestMetrics(arrival_time=1.0, first_token_time=1.25).time_to_first_token == 0.25
