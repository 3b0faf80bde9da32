"""The benchmark scripts' measurement code, run small on the CPU: each counts and times what it says.

- bench/gpu_e2e.py: Ember runs with prefix caching off (no timed run reuses the warm-up's KV)
  and every prompt is generated for.
- bench/prefix_cache.py: cached prompt tokens are reported apart and never counted as
  computed throughput.
- bench/lora.py: its adapters (written for the model's shapes) load, and both cases generate every token.
- bench/throughput.py: llama.cpp's multi-stream context keeps the library's default
  `kv_unified` off, so each stream attends over its own cells only.
- bench/spec_decode.py / spec_steps.py: the grounded workload stops at the end of turn (the copy workload runs
  past it), spec_decode pairs each round's runs for the median speedup and its range, and the step breakdown
  classes every step and emits the plain engine's tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from references import require

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gpu_e2e
import lora
import prefix_cache
import spec_decode
import spec_steps

import throughput


def test_gpu_e2e_ember_runs_uncached_on_every_prompt(default_gguf: Path) -> None:
    # Identical prompts: with prefix caching on, every run after the warm-up would hit the cache.
    prompts = [[1 + (7 * j) % 4000 for j in range(40)] for _ in range(5)] + [[5] * 40]
    result = gpu_e2e.bench_ember(str(default_gguf), prompts, decode_steps=6, output_len=3, device="cpu")
    assert result["prefix_cache_hit_tokens"] == 0
    assert (result["num_prompts"], result["num_generated_tokens"]) == (6, 18)
    assert result["decode_tok_s"] > 0 and result["ttft_s"] > 0


def test_prefix_cache_bench_counts_cached_tokens_apart(default_gguf: Path) -> None:
    args = argparse.Namespace(threads=2, seed=0)
    # A 64-token step budget: the first request computes the shared 64-token prefix (4 blocks of
    # 16) alone in the first step, and the three admitted after it reuse those blocks.
    on = prefix_cache.run(str(default_gguf), True, 4, args, system_tokens=64, max_num_batched_tokens=64)
    off = prefix_cache.run(str(default_gguf), False, 4, args, system_tokens=64, max_num_batched_tokens=64)
    assert on["prompt_tokens"] == off["prompt_tokens"] == on["computed_prompt_tokens"] + on["cached_prompt_tokens"]
    assert on["cached_prompt_tokens"] == 3 * 64 and off["cached_prompt_tokens"] == 0
    for r in (on, off):
        assert r["computed_tok_s"] == pytest.approx((r["computed_prompt_tokens"] + r["generated_tokens"]) / r["wall_s"])


def test_llama_cpp_streams_attend_over_their_own_cells(default_gguf: Path) -> None:
    require("llama_cpp")
    runner = throughput.LlamaCppRunner(str(default_gguf), threads=2, max_seqs=4, max_tokens_per_seq=64)
    assert runner.settings["kv_unified"] is False
    assert runner.settings["n_ctx_seq"] == runner.settings["n_ctx"] // 4 >= throughput.PREFILL_TOKENS + 64


def test_lora_bench_adapters_load_and_both_cases_generate_every_token(default_gguf: Path, tmp_path: Path) -> None:
    args = argparse.Namespace(threads=2, seed=0, max_tokens=2, repeats=1)
    record = lora.run(str(default_gguf), args, tmp_path)
    expected = lora.NUM_STREAMS * 2
    assert record["base"]["generated_tokens"] == record["mixed"]["generated_tokens"] == expected
    assert record["ratio"] == pytest.approx(record["mixed"]["tok_s"] / record["base"]["tok_s"])
    assert len(record["adapter_load_s"]) == lora.NUM_ADAPTERS and min(record["adapter_load_s"]) > 0


def test_spec_workloads_stop_where_they_say() -> None:
    grounded = spec_decode.workload_params(argparse.Namespace(workload="grounded", max_tokens=None))
    copy = spec_decode.workload_params(argparse.Namespace(workload="copy", max_tokens=None))
    assert (grounded.ignore_eos, grounded.max_tokens) == (False, 256)
    assert (copy.ignore_eos, copy.max_tokens) == (True, 96)


def test_spec_decode_pairs_rounds_and_reports_the_median_and_range() -> None:
    def runs(*tok_s: float) -> list[dict]:
        return [
            {"tok_s": t, "cpu_ms_per_token": 100 / t, "num_generated": 10, "num_verifications": 2}
            | {"num_proposed": 8, "num_accepted": 6, "acceptance_rate": 0.75, "mean_accepted_len": 3.0}
            for t in tok_s
        ]

    # Round 2 is slow for both engines (a load spike): paired by round, its speedup stays 2x.
    plain, spec = runs(10.0, 5.0, 11.0), runs(20.0, 10.0, 33.0)
    row = spec_decode.summarize(spec, plain)
    assert row["tok_s"] == 20.0 and row["tok_s_runs"] == [20.0, 10.0, 33.0]
    assert row["speedup"] == 2.0 and row["speedup_range"] == [2.0, 3.0]
    assert row["cpu_speedup"] == pytest.approx(2.0) and row["cpu_ms_per_token"] == 5.0
    assert spec_decode.summarize(plain, plain)["speedup_range"] == [1.0, 1.0]


def test_spec_steps_classes_every_step_and_matches_plain_tokens(default_gguf: Path, tmp_path: Path) -> None:
    args = argparse.Namespace(
        model=str(default_gguf),
        threads=2,
        seed=0,
        quick=True,
        out=tmp_path,
        workload="grounded",
        max_tokens=24,
        k=5,
        method="ngram",
    )
    record = spec_steps.bench(args)
    plain, ngram = record["summaries"]["plain"], record["summaries"]["spec"]
    # `bench` aborts on differing tokens; both engines emit the same count, one prefill per prompt.
    assert sum(s["num_tokens"] for s in plain.values()) == sum(s["num_tokens"] for s in ngram.values())
    assert plain["prefill"]["num_steps"] == ngram["prefill"]["num_steps"] == record["num_prompts"] == 2
    assert set(plain) == {"prefill", "decode 1 row"}
    # The rewrite copies its passage, so some steps verify drafts; each emits at most its rows.
    verified = {kind: s for kind, s in ngram.items() if kind.startswith("verify")}
    assert verified and all(s["num_tokens"] <= s["num_steps"] * int(kind.split()[1]) for kind, s in verified.items())
