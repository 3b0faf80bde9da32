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
prefix cache is cleared before every timed run, so no repeat reuses an earlier run's prompt KV), and
per second of the process's CPU time (steadier on a shared machine; with one thread it is the work done);
acceptance is accepted / proposed drafts, the mean accepted length is accepted drafts per verification. Each
engine first runs one short warm-up request; each case runs `--repeats` times and the fastest counts.

(b) The draft-model method on the same workload at batch 1, 4 and 16: the model computed in float32 (exact
arithmetic) without speculation (plain-f32), and with its own Q4_1 arithmetic drafting for it (`{"method":
"draft_model", "model": the same file, "dtype": "auto"}`; q4-draft at any batch size, q4-draft+cap with the
default cap); tokens checked equal to plain-f32's.

    python bench/spec_decode.py [--model PATH] [--threads 2] [--workload grounded|copy] [--max-tokens N]
        [--prompts 6] [--draft-prompts 0] [--batch-sizes 1 4 16] [--quick]
        [--suite ngram|draft]

Prints a table and writes bench/out/spec_decode-<date>.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import common_parser, write_record
from spec_prompts import WORKLOADS, conversations, single_stream_prompts

BATCH_SIZES = (1, 2, 4, 16)
DRAFT_BATCH_SIZES = (1, 4, 16)


def run(engine: Any, convs: list, params: Any, repeats: int) -> dict[str, Any]:
    """Fastest of `repeats` runs of `convs` on `engine`: tokens, tok/s and the speculation counters' deltas."""
    best: dict[str, Any] | None = None
    for _ in range(repeats):
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
        result = {
            "token_ids": [o.outputs[0].token_ids for o in outs],
            "num_generated": num_generated,
            "num_verifications": verifications,
            "wall_s": wall_s,
            "tok_s": num_generated / wall_s,
            "cpu_s": cpu_s,
            "tok_per_cpu_s": num_generated / cpu_s,
            "num_proposed": proposed,
            "num_accepted": accepted,
            "acceptance_rate": accepted / proposed if proposed else 0.0,
            "mean_accepted_len": accepted / verifications if verifications else 0.0,
        }
        if best is None or result["wall_s"] < best["wall_s"]:
            best = result
    assert best is not None
    return best


def single_streams(engines: dict[str, Any], suite: str, convs: list, params: Any, repeats: int) -> list[dict[str, Any]]:
    """Each prompt of `convs` alone on every engine (the first is the baseline): one row per engine with batch
    "1xN", the summed tokens over the summed fastest walls, and the mean and per-prompt speedups."""
    from tqdm import tqdm

    names = list(engines)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    cases = [(i, name) for i in range(len(convs)) for name in names]
    for i, name in tqdm(cases, desc=f"spec_decode {suite} 1x{len(convs)}"):
        result = run(engines[name], [convs[i]], params, repeats)
        if name != names[0] and result["token_ids"] != results[names[0]][i]["token_ids"]:
            raise SystemExit(f"{name} on single-stream prompt {i}: tokens differ from {names[0]}")
        results[name].append(result)
    rows = []
    for name in names:
        per_prompt = results[name]
        pairs = list(zip(per_prompt, results[names[0]], strict=True))
        speedups = [r["tok_s"] / p["tok_s"] for r, p in pairs]
        cpu_speedups = [r["tok_per_cpu_s"] / p["tok_per_cpu_s"] for r, p in pairs]
        num_tokens, proposed, accepted, verifications = (
            sum(r[key] for r in per_prompt)
            for key in ("num_generated", "num_proposed", "num_accepted", "num_verifications")
        )
        rows.append(
            {
                "suite": suite,
                "batch": f"1x{len(convs)}",
                "engine": name,
                "num_generated": num_tokens,
                "num_verifications": verifications,
                "wall_s": sum(r["wall_s"] for r in per_prompt),
                "tok_s": num_tokens / sum(r["wall_s"] for r in per_prompt),
                "cpu_s": sum(r["cpu_s"] for r in per_prompt),
                "tok_per_cpu_s": num_tokens / sum(r["cpu_s"] for r in per_prompt),
                "num_proposed": proposed,
                "num_accepted": accepted,
                "acceptance_rate": accepted / proposed if proposed else 0.0,
                "mean_accepted_len": accepted / verifications if verifications else 0.0,
                "speedup": sum(speedups) / len(speedups),
                "cpu_speedup": sum(cpu_speedups) / len(cpu_speedups),
                "per_prompt_speedups": speedups,
                "per_prompt_num_generated": [r["num_generated"] for r in per_prompt],
            }
        )
    return rows


def main() -> None:
    parser = common_parser(__doc__, "CPU threads of every engine (default: 2)", "batch 1, 2 and 4 only, one repeat")
    add_workload_arguments(parser)
    parser.add_argument("--k", type=int, default=5, help="num_speculative_tokens (default: 5)")
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
    parser.add_argument("--repeats", type=int, default=2, help="runs per case, fastest counts (default: 2)")
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
        ngram = {"method": "ngram", "num_speculative_tokens": args.k}
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
        draft = {"method": "draft_model", "model": str(model), "num_speculative_tokens": args.k, "dtype": "auto"}
        f32 = {"dtype": "float32"}
        suites.append(
            (
                "draft",
                suite_batch_sizes(args, DRAFT_BATCH_SIZES),
                {
                    "plain-f32": f32,
                    "q4-draft": {**f32, "speculative_config": {**draft, "max_num_seqs_to_speculate": 0}},
                    "q4-draft+cap": {**f32, "speculative_config": draft},
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
        baseline = next(iter(engines))
        plain_by_batch: dict[int, dict[str, Any]] = {}
        cases = [(b, name) for b in batch_sizes for name in engines]
        for batch, name in tqdm(cases, desc=f"spec_decode {suite}"):
            convs = conversations(args.workload, batch, args.seed + batch)
            result = run(engines[name], convs, params, repeats)
            token_ids = result.pop("token_ids")
            if name == baseline:
                plain_by_batch[batch] = {"token_ids": token_ids, **result}
            elif token_ids != plain_by_batch[batch]["token_ids"]:
                raise SystemExit(f"{name} at batch {batch}: tokens differ from {baseline}")
            result["speedup"] = result["tok_s"] / plain_by_batch[batch]["tok_s"]
            result["cpu_speedup"] = result["tok_per_cpu_s"] / plain_by_batch[batch]["tok_per_cpu_s"]
            rows.append({"suite": suite, "batch": batch, "engine": name, **result})
        num_prompts = args.prompts if suite == "ngram" else args.draft_prompts
        if num_prompts:
            rows.extend(
                single_streams(
                    engines, suite, single_stream_prompts(args.workload, num_prompts, args.seed + 1), params, repeats
                )
            )
        del engines
    print(
        f"\n{'batch':>5} {'engine':<13} {'tok/s':>8} {'speedup':>8} {'tok/cpu-s':>10} {'cpu speedup':>12} "
        f"{'accept':>7} {'mean len':>9}"
    )
    for r in rows:
        print(
            f"{r['batch']!s:>5} {r['engine']:<13} {r['tok_s']:>8.1f} {r['speedup']:>7.2f}x {r['tok_per_cpu_s']:>10.1f} "
            f"{r['cpu_speedup']:>11.2f}x {r['acceptance_rate']:>7.2f} {r['mean_accepted_len']:>9.2f}"
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
        "num_speculative_tokens": args.k,
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
