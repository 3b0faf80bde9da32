"""Speculative decoding: plain vs n-gram speculation, and float32 vs Q4_1 drafting for float32, side by side.

On the default model, with one of two seeded workloads of input-grounded chat requests (bench/spec_prompts.py;
`--workload`), runs every batch size (1, 2, 4 and 16 streams) on three engines loaded side by side, and
`--prompts` single streams one after another (batch "1xN": one prompt per passage, each alone; the speedup is the
mean of the per-prompt speedups, and each prompt's is printed too; `--draft-prompts` for (b), off by default to
keep the run short):

- plain: no speculation;
- ngram: `{"method": "ngram", "num_speculative_tokens": K}` with adaptive draft length and speculation on at any
  batch size (`max_num_seqs_to_speculate` 0);
- ngram+cap: the same with the engine's default `max_num_seqs_to_speculate` (or `--cap`), the batch size above
  which speculation turns off.

Greedy decoding. The `grounded` workload (default) stops at the end of turn, as a user's rewrite does, with
`--max-tokens` (default 256) only as a cap; the `copy` workload (the earlier rounds') generates `--max-tokens`
(default 96) tokens with `ignore_eos`. Either way every engine generates the same tokens: those of every
speculative run are checked equal to the plain run's (a mismatch aborts the run), and throughput counts the
tokens actually generated.
Throughput is generated tokens per second of wall time, prefill included (the prompts are the same for all; the
prefix cache is cleared before every timed run, so no repeat reuses an earlier run's prompt KV), beside the
process's CPU milliseconds per generated token (steadier on a shared machine; with one thread it is the work
done); acceptance is accepted / proposed drafts, the mean accepted length is accepted drafts per verification.
Each engine first runs one short warm-up request. Each case runs `--repeats` rounds (default 3), one run of every
engine per round in turn (A/B alternated); a row shows the median tok/s and its range over the rounds, and the
median speedup over the rounds (each round's run against the baseline's run of that round) and its range, so
the run-to-run noise is printed beside every figure.

`num_speculative_tokens` (`--k`) defaults per suite to the value tuned by a k sweep (NGRAM_K, DRAFT_K; see
bench/RESULTS.md); `--draft-ks 5 8 12 16` adds one q4-draft engine per value at batch 1 to run that sweep.

(b) The draft-model method on the same workload at batch 1, 4 and 16: the model computed in float32 (exact
arithmetic) without speculation (plain-f32), and with its own Q4_1 arithmetic drafting for it (`{"method":
"draft_model", "model": the same file, "dtype": "auto"}`; q4-draft at any batch size, q4-draft+cap with the
default cap); tokens checked equal to plain-f32's.

    python bench/spec_decode.py [--model PATH] [--threads 2] [--workload grounded|copy] [--max-tokens N]
        [--prompts 6] [--draft-prompts 0] [--batch-sizes 1 4 16] [--quick]
        [--suite ngram|draft] [--k K] [--draft-ks K ...] [--repeats 3]

Prints a table and writes bench/out/spec_decode-<date>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from _common import common_parser, write_record
from spec_prompts import WORKLOADS, conversations, single_stream_prompts

BATCH_SIZES = (1, 2, 4, 16)
DRAFT_BATCH_SIZES = (1, 4, 16)
# num_speculative_tokens per suite, tuned by CPU time per token on the shared machine (bench/RESULTS.md, issue 16
# round 6): n-gram 5 / 8 / 12 / 16 were within ~4 % (12 best; the proposer's match caps most drafts, see
# `max_drafts_for_match`); the draft model, accepted in full, gained up to 16 (1.90x at 5, 2.04x at 8 and 12,
# 2.12-2.27x at 16).
NGRAM_K = 12
DRAFT_K = 16


def run_once(engine: Any, convs: list, params: Any) -> dict[str, Any]:
    """One run of `convs` on `engine`: tokens, wall and CPU time, tok/s, CPU ms per generated token and the
    speculation counters' deltas."""
    engine.reset_prefix_cache()  # every run pays its prompts' prefill, as a new request does
    before = engine.stats()
    start, start_cpu = time.perf_counter(), time.process_time()
    outs = engine.chat(convs, params, use_tqdm=False)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    after = engine.stats()
    num_generated = sum(len(o.outputs[0].token_ids) for o in outs)
    proposed = after["num_spec_proposed_tokens"] - before["num_spec_proposed_tokens"]
    accepted = after["num_spec_accepted_tokens"] - before["num_spec_accepted_tokens"]
    verifications = after["num_spec_verify_steps"] - before["num_spec_verify_steps"]
    return {
        "token_ids": [o.outputs[0].token_ids for o in outs],
        "num_generated": num_generated,
        "num_verifications": verifications,
        "wall_s": wall_s,
        "tok_s": num_generated / wall_s,
        "cpu_s": cpu_s,
        "cpu_ms_per_token": 1e3 * cpu_s / num_generated,
        "num_proposed": proposed,
        "num_accepted": accepted,
        "acceptance_rate": accepted / proposed if proposed else 0.0,
        "mean_accepted_len": accepted / verifications if verifications else 0.0,
    }


def alternating_runs(engines: dict[str, Any], convs: list, params: Any, repeats: int) -> dict[str, list[dict]]:
    """`repeats` rounds of one run per engine (A/B alternated, so drifting load hits every engine alike), each
    speculative run's tokens checked equal to the first engine's."""
    names = list(engines)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            result = run_once(engines[name], convs, params)
            if name != names[0] and result["token_ids"] != runs[names[0]][-1]["token_ids"]:
                raise SystemExit(f"{name}: tokens differ from {names[0]}")
            runs[name].append(result)
    return runs


def summarize(runs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's repeats against the baseline's (paired by round): median tok/s and CPU ms per token, the
    median speedup (wall and CPU) over the rounds and its range, and the counters (the same in every run)."""
    speedups = [r["tok_s"] / b["tok_s"] for r, b in zip(runs, baseline, strict=True)]
    cpu_speedups = [b["cpu_ms_per_token"] / r["cpu_ms_per_token"] for r, b in zip(runs, baseline, strict=True)]
    first = runs[0]
    return {
        **{k: first[k] for k in ("num_generated", "num_verifications", "num_proposed", "num_accepted")},
        **{k: first[k] for k in ("acceptance_rate", "mean_accepted_len")},
        "tok_s": statistics.median(r["tok_s"] for r in runs),
        "tok_s_runs": [r["tok_s"] for r in runs],
        "cpu_ms_per_token": statistics.median(r["cpu_ms_per_token"] for r in runs),
        "speedup": statistics.median(speedups),
        "speedup_range": [min(speedups), max(speedups)],
        "cpu_speedup": statistics.median(cpu_speedups),
    }


def single_streams(engines: dict[str, Any], suite: str, convs: list, params: Any, repeats: int) -> list[dict[str, Any]]:
    """Each prompt of `convs` alone on every engine (the first is the baseline; A/B alternated per prompt): one
    row per engine with batch "1xN": per round the mean of the per-prompt speedups; the median over the rounds
    and its range; per prompt the median speedup."""
    from tqdm import tqdm

    names = list(engines)
    per_prompt = [alternating_runs(engines, [c], params, repeats) for c in tqdm(convs, desc=f"spec_decode {suite}")]
    rows = []
    for name in names:
        prompts = [summarize(p[name], p[names[0]]) for p in per_prompt]
        rounds = [
            statistics.fmean(p[name][r]["tok_s"] / p[names[0]][r]["tok_s"] for p in per_prompt) for r in range(repeats)
        ]
        cpu_rounds = [
            statistics.fmean(p[names[0]][r]["cpu_ms_per_token"] / p[name][r]["cpu_ms_per_token"] for p in per_prompt)
            for r in range(repeats)
        ]
        num_tokens, proposed, accepted, verifications = (
            sum(r[key] for r in prompts)
            for key in ("num_generated", "num_proposed", "num_accepted", "num_verifications")
        )
        walls = [sum(p[name][r]["wall_s"] for p in per_prompt) for r in range(repeats)]
        cpus = [sum(p[name][r]["cpu_s"] for p in per_prompt) for r in range(repeats)]
        rows.append(
            {
                "suite": suite,
                "batch": f"1x{len(convs)}",
                "engine": name,
                "num_generated": num_tokens,
                "num_verifications": verifications,
                "tok_s": num_tokens / statistics.median(walls),
                "tok_s_runs": [num_tokens / w for w in walls],
                "cpu_ms_per_token": 1e3 * statistics.median(cpus) / num_tokens,
                "num_proposed": proposed,
                "num_accepted": accepted,
                "acceptance_rate": accepted / proposed if proposed else 0.0,
                "mean_accepted_len": accepted / verifications if verifications else 0.0,
                "speedup": statistics.median(rounds),
                "speedup_range": [min(rounds), max(rounds)],
                "cpu_speedup": statistics.median(cpu_rounds),
                "per_prompt_speedups": [r["speedup"] for r in prompts],
                "per_prompt_num_generated": [r["num_generated"] for r in prompts],
            }
        )
    return rows


def main() -> None:
    parser = common_parser(__doc__, "CPU threads of every engine (default: 2)", "batch 1, 2 and 4 only, one repeat")
    add_workload_arguments(parser)
    parser.add_argument(
        "--k",
        type=int,
        default=None,
        help=f"num_speculative_tokens of both suites (default: {NGRAM_K} for ngram, {DRAFT_K} for draft)",
    )
    parser.add_argument(
        "--draft-ks",
        type=int,
        nargs="*",
        default=[],
        help="a k sweep: one more q4-draft engine (any batch size) per value, run at batch 1 only (default: none)",
    )
    parser.add_argument(
        "--cap", type=int, default=None, help="max_num_seqs_to_speculate of ngram+cap (default: the engine's default)"
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help=f"batch sizes to run (default: {BATCH_SIZES} for ngram, {DRAFT_BATCH_SIZES} for draft)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds per case, engines alternated; the median counts and the range is printed (default: 3)",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=6,
        help="single-stream prompts of the n-gram batch-1 mean, one after another (default: 6)",
    )
    parser.add_argument(
        "--draft-prompts", type=int, default=0, help="the same for the draft suite (default: 0, off: float32 is slow)"
    )
    parser.add_argument(
        "--suite", choices=["ngram", "draft", "both"], default="both", help="which comparison (default: both)"
    )
    args = parser.parse_args()
    bench(args)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--workload` and `--max-tokens` options (shared with bench/spec_bound.py)."""
    parser.add_argument(
        "--workload", choices=WORKLOADS, default="grounded", help="prompts (bench/spec_prompts.py; default: grounded)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="token cap per prompt (default: 256 for grounded, which stops at the end of turn; 96 for copy, "
        "which ignores it)",
    )


def suite_batch_sizes(args: argparse.Namespace, default: tuple[int, ...]) -> tuple[int, ...]:
    """The batch sizes of a suite: `--batch-sizes`, else `default` (its smaller ones with `--quick`)."""
    if args.batch_sizes:
        return tuple(args.batch_sizes)
    return tuple(b for b in default if b <= 4) if args.quick else default


def workload_params(args: argparse.Namespace) -> Any:
    """Greedy SamplingParams of the chosen workload: stop at the end of turn (grounded) or run to the cap (copy)."""
    from ember import SamplingParams

    if args.max_tokens is None:
        args.max_tokens = 256 if args.workload == "grounded" else 96
    return SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=args.workload == "copy")


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the comparison, prints the table and writes the JSON record."""
    from tqdm import tqdm

    import ember
    from ember import Engine, SamplingParams
    from ember.models import resolve_model

    model = args.model or resolve_model(None)
    common = {"num_threads": args.threads, "max_model_len": 1024, "kv_cache_memory_bytes": 256 << 20}
    suites: list[tuple[str, tuple[int, ...], dict[str, Any]]] = []
    if args.suite in ("ngram", "both"):
        ngram = {"method": "ngram", "num_speculative_tokens": args.k or NGRAM_K}
        capped = ngram if args.cap is None else {**ngram, "max_num_seqs_to_speculate": args.cap}
        suites.append(
            (
                "ngram",
                suite_batch_sizes(args, BATCH_SIZES),
                {
                    "plain": {},
                    "ngram": {"speculative_config": {**ngram, "max_num_seqs_to_speculate": 0}},
                    "ngram+cap": {"speculative_config": capped},
                },
            )
        )
    if args.suite in ("draft", "both"):
        draft = {"method": "draft_model", "model": str(model), "num_speculative_tokens": args.k or DRAFT_K}
        draft["dtype"] = "auto"
        f32 = {"dtype": "float32"}
        sweep = {
            f"q4-draft k={k}": {**f32, "speculative_config": {**draft, "num_speculative_tokens": k}}
            for k in args.draft_ks
        }
        suites.append(
            (
                "draft",
                suite_batch_sizes(args, DRAFT_BATCH_SIZES),
                {
                    "plain-f32": f32,
                    "q4-draft": {**f32, "speculative_config": {**draft, "max_num_seqs_to_speculate": 0}},
                    "q4-draft+cap": {**f32, "speculative_config": draft},
                    **sweep,
                },
            )
        )
    params = workload_params(args)
    repeats = 1 if args.quick else args.repeats
    rows: list[dict[str, Any]] = []
    for suite, batch_sizes, configs in suites:
        engines = {name: Engine(model, **common, **extra) for name, extra in configs.items()}
        for engine in engines.values():  # first touch of the weights and caches, outside the timings
            engine.chat(conversations(args.workload, 1, args.seed + 99), SamplingParams(max_tokens=8), use_tqdm=False)
        for batch in tqdm(batch_sizes, desc=f"spec_decode {suite}"):
            convs = conversations(args.workload, batch, args.seed + batch)
            running = {name: e for name, e in engines.items() if batch == 1 or " k=" not in name}
            runs = alternating_runs(running, convs, params, repeats)
            baseline = runs[next(iter(running))]
            for name, engine_runs in runs.items():
                rows.append({"suite": suite, "batch": batch, "engine": name, **summarize(engine_runs, baseline)})
        num_prompts = args.prompts if suite == "ngram" else args.draft_prompts
        if num_prompts:
            rows.extend(
                single_streams(
                    engines, suite, single_stream_prompts(args.workload, num_prompts, args.seed + 1), params, repeats
                )
            )
        del engines
    print(
        f"\n{'batch':>5} {'engine':<16} {'tok/s':>7} {'tok/s range':>13} {'speedup':>8} {'range':>13} "
        f"{'cpu ms/tok':>10} {'cpu speedup':>11} {'accept':>6} {'mean len':>8}"
    )
    for r in rows:
        lo, hi = min(r["tok_s_runs"]), max(r["tok_s_runs"])
        s_lo, s_hi = r["speedup_range"]
        print(
            f"{r['batch']!s:>5} {r['engine']:<16} {r['tok_s']:>7.1f} {f'{lo:.1f}-{hi:.1f}':>13} {r['speedup']:>7.2f}x "
            f"{f'{s_lo:.2f}-{s_hi:.2f}x':>13} {r['cpu_ms_per_token']:>10.2f} {r['cpu_speedup']:>10.2f}x "
            f"{r['acceptance_rate']:>6.2f} {r['mean_accepted_len']:>8.2f}"
        )
    for r in rows:
        if "per_prompt_speedups" in r and r["engine"] not in ("plain", "plain-f32"):
            each = " ".join(f"{x:.2f}x" for x in r["per_prompt_speedups"])
            tokens = " ".join(str(n) for n in r["per_prompt_num_generated"])
            print(f"{r['batch']} {r['engine']}: per-prompt speedups {each} (tokens {tokens})")
    fields = {
        "model": str(model),
        "threads": args.threads,
        "workload": args.workload,
        "max_tokens": args.max_tokens,
        "ignore_eos": params.ignore_eos,
        "num_speculative_tokens": {"ngram": args.k or NGRAM_K, "draft": args.k or DRAFT_K},
        "draft_ks": args.draft_ks,
        "repeats": repeats,
        "cap": args.cap,
        "seed": args.seed,
        "num_single_stream_prompts": args.prompts,
        "num_draft_single_stream_prompts": args.draft_prompts,
        "rows": rows,
    }
    write_record(args.out, "spec_decode", fields, {"ember": ember.__version__})
    return fields


if __name__ == "__main__":
    main()
