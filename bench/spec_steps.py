"""Where a speculative single stream's time goes: every engine step timed, by kind and by verified rows.

Runs bench/spec_decode.py's single-stream prompts (`--workload`, default grounded: stops at the end of turn)
one at a time on a plain engine and a speculative one ("spec": n-gram, or with `--method draft` the model in
float32 with its own Q4_1 arithmetic drafting, beside plain float32; `--k` drafts, at any batch size), stepping
the engine directly and timing each `step()` call (the whole step: scheduling, the proposal, the forward of its
rows, sampling, host work). Each step is classed by the engine's counters: the prefill, decode steps without a
proposal (one row), and verifications by rows (1 + drafts). The tokens of both engines are checked equal. Each
prompt runs `--repeats` times on each engine and every run's steps count (the per-kind means then average
over the repeats).

Prints, per engine: steps, tokens and wall time of each kind; the mean and median step time by rows, in wall
time and in process CPU time (with `--threads 1` the work done, steadier than wall time on a shared machine; a
draft-model step includes the draft's forwards); the speculative engine's
extra cost per one-row step over the plain engine's (the proposal and host work a step without a draft pays);
the speedup with and without the prefill; and the decode speedup if every verification cost no more than a
plain step (the part of the gap to the ideal that is verification cost, not missing drafts). The prefix cache is
cleared before every run, so each prefill computes its whole prompt. Writes bench/out/spec_steps-<date>.json.

    python bench/spec_steps.py [--model PATH] [--threads 2] [--workload grounded|copy] [--method ngram|draft]
        [--prompts 6] [--k 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from typing import Any

from _common import common_parser, write_record
from spec_decode import add_workload_arguments, workload_params
from spec_prompts import single_stream_prompts


def main() -> None:
    parser = common_parser(__doc__, "CPU threads of every engine (default: 2)", "two prompts, one repeat")
    add_workload_arguments(parser)
    parser.add_argument("--prompts", type=int, default=6, help="single-stream prompts (default: 6)")
    parser.add_argument(
        "--method",
        choices=["ngram", "draft"],
        default="ngram",
        help="n-gram speculation (default), or float32 with its own Q4_1 arithmetic drafting beside plain float32",
    )
    parser.add_argument("--k", type=int, default=5, help="num_speculative_tokens (default: 5)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each prompt per engine (default: 2)")
    bench(parser.parse_args())


def timed_steps(engine: Any, request_id: str, prompt_ids: list[int], params: Any) -> list[dict[str, Any]]:
    """One request alone on `engine`, stepped to the end: per step its wall and CPU time, drafts verified and
    tokens."""
    core = engine._core
    engine.reset_prefix_cache()  # the prefill computes the whole prompt, as for a new request
    core.add_request(request_id, prompt_ids, params)
    steps = []
    while core.has_unfinished_requests():
        before = core.stats()["num_spec_proposed_tokens"]
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs = core.step()
        wall_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        num_drafts = int(core.stats()["num_spec_proposed_tokens"] - before)
        token_ids = [t for out in outputs for t in out.new_token_ids]
        steps.append({"wall_s": wall_s, "cpu_s": cpu_s, "num_drafts": num_drafts, "token_ids": token_ids})
    return steps


def tokens_of(steps: list[dict[str, Any]]) -> list[int]:
    """Every token the steps emitted, in order."""
    return [t for step in steps for t in step["token_ids"]]


def step_kind(index: int, step: dict[str, Any]) -> str:
    """The step's class: the prefill (the first step), a one-row decode, or a verification of its rows."""
    if index == 0:
        return "prefill"
    return "decode 1 row" if step["num_drafts"] == 0 else f"verify {1 + step['num_drafts']} rows"


def summarize(all_steps: list[list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per step kind: steps, tokens, total and mean wall time, and mean and median CPU time over every run."""
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for steps in all_steps:
        for index, step in enumerate(steps):
            kinds[step_kind(index, step)].append(step)
    return {
        kind: {
            "num_steps": len(steps),
            "num_tokens": sum(len(s["token_ids"]) for s in steps),
            "wall_s": sum(s["wall_s"] for s in steps),
            "mean_ms": 1e3 * statistics.fmean(s["wall_s"] for s in steps),
            "median_ms": 1e3 * statistics.median(s["wall_s"] for s in steps),
            "mean_cpu_ms": 1e3 * statistics.fmean(s["cpu_s"] for s in steps),
            "median_cpu_ms": 1e3 * statistics.median(s["cpu_s"] for s in steps),
        }
        for kind, steps in sorted(kinds.items(), key=lambda item: (item[0] != "prefill", len(item[0]), item[0]))
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Runs both engines over the prompts, prints the breakdown and writes the JSON record."""
    from tqdm import tqdm

    import ember
    from ember import Engine, SamplingParams
    from ember.models import resolve_model

    model = args.model or resolve_model(None)
    common = {"num_threads": args.threads, "max_model_len": 1024, "kv_cache_memory_bytes": 256 << 20}
    spec: dict[str, Any] = {"method": "ngram", "num_speculative_tokens": args.k, "max_num_seqs_to_speculate": 0}
    if args.method == "draft":
        common["dtype"] = "float32"
        spec.update(method="draft_model", model=str(model), dtype="auto")
    engines = {"plain": Engine(model, **common), "spec": Engine(model, **common, speculative_config=spec)}
    params = workload_params(args)
    convs = single_stream_prompts(args.workload, 2 if args.quick else args.prompts, args.seed + 1)
    prompts = [out.prompt_token_ids for out in engines["plain"].chat(convs, SamplingParams(max_tokens=1))]
    for engine in engines.values():  # first touch of the weights and caches, outside the timings
        engine.chat(convs[:1], SamplingParams(max_tokens=8), use_tqdm=False)
    repeats = 1 if args.quick else args.repeats
    runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in engines}
    cases = [(i, r, name) for i in range(len(prompts)) for r in range(repeats) for name in engines]
    for i, r, name in tqdm(cases, desc="spec_steps"):
        steps = timed_steps(engines[name], f"{name}-{i}-{r}", list(prompts[i]), params)
        # Plain runs first in each case, so the latest plain run is this prompt's.
        if name != "plain" and tokens_of(steps) != tokens_of(runs["plain"][-1]["steps"]):
            raise SystemExit(f"{name} on prompt {i}: tokens differ from plain")
        runs[name].append({"prompt": i, "steps": steps})
    summaries = {name: summarize([run["steps"] for run in engine_runs]) for name, engine_runs in runs.items()}
    plain_decode_ms = summaries["plain"]["decode 1 row"]["mean_ms"]
    print(
        f"\n{'engine':<6} {'step kind':<15} {'steps':>6} {'tokens':>7} {'wall s':>8} {'mean ms':>8} {'median ms':>9} "
        f"{'cpu ms':>7} {'med cpu':>8}"
    )
    for name, summary in summaries.items():
        for kind, s in summary.items():
            print(
                f"{name:<6} {kind:<15} {s['num_steps']:>6} {s['num_tokens']:>7} {s['wall_s']:>8.3f} "
                f"{s['mean_ms']:>8.2f} {s['median_ms']:>9.2f} {s['mean_cpu_ms']:>7.2f} {s['median_cpu_ms']:>8.2f}"
            )
    speculative = summaries["spec"]
    total = {name: sum(s["wall_s"] for s in summary.values()) for name, summary in summaries.items()}
    decode_s = {name: total[name] - summary["prefill"]["wall_s"] for name, summary in summaries.items()}
    verify_s = sum(s["wall_s"] for kind, s in speculative.items() if kind.startswith("verify"))
    num_verify = sum(s["num_steps"] for kind, s in speculative.items() if kind.startswith("verify"))
    free_verify_decode_s = decode_s["spec"] - verify_s + num_verify * plain_decode_ms / 1e3
    derived = {
        "plain_total_s": total["plain"],
        "spec_total_s": total["spec"],
        "speedup": total["plain"] / total["spec"],
        "decode_speedup": decode_s["plain"] / decode_s["spec"],
        "spec_one_row_extra_ms": speculative.get("decode 1 row", {}).get("mean_ms", float("nan")) - plain_decode_ms,
        "spec_verification_s": verify_s,
        "decode_speedup_if_verification_cost_one_row": decode_s["plain"] / free_verify_decode_s,
    }
    print(
        f"plain {total['plain']:.3f} s, spec {total['spec']:.3f} s: {derived['speedup']:.2f}x with the prefill, "
        f"{derived['decode_speedup']:.2f}x without; a one-row step costs the speculative engine "
        f"{derived['spec_one_row_extra_ms']:+.2f} ms more than plain; with every verification at a plain step's "
        f"cost the decode would be {derived['decode_speedup_if_verification_cost_one_row']:.2f}x"
    )
    fields = {
        "model": str(model),
        "threads": args.threads,
        "workload": args.workload,
        "method": args.method,
        "max_tokens": args.max_tokens,
        "num_speculative_tokens": args.k,
        "repeats": repeats,
        "num_prompts": len(prompts),
        "summaries": summaries,
        **derived,
    }
    write_record(args.out, "spec_steps", fields, {"ember": ember.__version__})
    return fields


if __name__ == "__main__":
    main()
