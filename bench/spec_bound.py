"""Upper bound of prompt-lookup speculation on bench/spec_decode.py's single-stream prompts.

Generates each prompt's plain greedy output (the same workload, prompts and stopping as bench/spec_decode.py's
batch-1 rows: `--workload grounded` stops at the end of turn, `copy` runs to `--max-tokens` with `ignore_eos`),
then replays it with an oracle proposer: at every step it drafts the longest run (up to `--k` tokens) of the
upcoming output that occurs anywhere in the prompt + output so far, the best any proposer that copies from the
request's own tokens can do. Runs of fewer than `--min-run` tokens are not proposed (a verified row costs more
than a lone draft saves). The step costs by verified rows come from `--row-costs-ms` (default: the forward of 1,
2, 4, 6 and 8 rows measured at 1 thread in bench/RESULTS.md, "Speculative decoding, third round"; linear in
between). Prints, per prompt: generated tokens, tokens that could come from drafts, steps without any draft,
and the bound on the speedup over plain decoding (prefill excluded); writes bench/out/spec_bound-<date>.json.

    python bench/spec_bound.py [--model PATH] [--workload grounded|copy] [--max-tokens N] [--prompts 6] [--k 5]
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from _common import common_parser, write_record
from spec_decode import add_workload_arguments, workload_params
from spec_prompts import conversations, single_stream_prompts

DEFAULT_ROW_COSTS_MS = "1:5.22,2:5.71,4:7.19,6:9.83,8:12.13"


def row_cost_ms(costs: dict[int, float], num_rows: int) -> float:
    """Step cost of `num_rows` verified rows, interpolated linearly (extrapolated past the last point)."""
    points = sorted(costs.items())
    for (r0, c0), (r1, c1) in itertools.pairwise(points):
        if r0 <= num_rows <= r1:
            return c0 + (c1 - c0) * (num_rows - r0) / (r1 - r0)
    (r0, c0), (r1, c1) = points[-2], points[-1]
    return c1 + (c1 - c0) / (r1 - r0) * (num_rows - r1)


def occurs(token_ids: list[int], run: list[int]) -> bool:
    """Whether `run` occurs contiguously in `token_ids`."""
    n = len(run)
    return any(token_ids[s : s + n] == run for s in range(len(token_ids) - n + 1))


def oracle_replay(prompt_ids: list[int], output_ids: list[int], k: int, min_run: int) -> list[tuple[int, int]]:
    """The oracle's steps over `output_ids`: (drafts verified, tokens emitted) each."""
    context, steps, i = list(prompt_ids), [], 0
    while i < len(output_ids):
        num_drafts = 0
        for n in range(min(k, len(output_ids) - i - 1), min_run - 1, -1):
            if occurs(context, output_ids[i : i + n]):
                num_drafts = n
                break
        steps.append((num_drafts, num_drafts + 1))
        context += output_ids[i : i + num_drafts + 1]
        i += num_drafts + 1
    return steps


def main() -> None:
    parser = common_parser(__doc__, "CPU threads of the engine (default: 2)", "two prompts")
    add_workload_arguments(parser)
    parser.add_argument("--prompts", type=int, default=6, help="single-stream prompts besides batch 1's (default: 6)")
    parser.add_argument("--k", type=int, default=5, help="most drafts per step (default: 5)")
    parser.add_argument("--min-run", type=int, default=2, help="shortest run worth proposing (default: 2)")
    parser.add_argument(
        "--row-costs-ms", default=DEFAULT_ROW_COSTS_MS, help=f"ROWS:MS,... step costs (default: {DEFAULT_ROW_COSTS_MS})"
    )
    bench(parser.parse_args())


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Records the plain outputs, replays the oracle, prints the table and writes the JSON record."""
    import ember
    from ember import Engine
    from ember.models import resolve_model

    costs = {int(r): float(ms) for r, ms in (pair.split(":") for pair in args.row_costs_ms.split(","))}
    model = args.model or resolve_model(None)
    engine = Engine(model, num_threads=args.threads, max_model_len=1024, kv_cache_memory_bytes=256 << 20)
    num_prompts = 2 if args.quick else args.prompts
    convs = conversations(args.workload, 1, args.seed + 1) + single_stream_prompts(
        args.workload, num_prompts, args.seed + 1
    )
    params = workload_params(args)
    outs = engine.chat(convs, params)
    rows = []
    print(f"\n{'prompt':<8} {'tokens':>6} {'copyable':>8} {'steps':>6} {'no draft':>8} {'bound':>7}")
    for index, out in enumerate(outs):
        output_ids = list(out.outputs[0].token_ids)
        steps = oracle_replay(list(out.prompt_token_ids), output_ids, args.k, args.min_run)
        plain_ms = len(output_ids) * row_cost_ms(costs, 1)
        oracle_ms = sum(row_cost_ms(costs, 1 + d) for d, _ in steps)
        row = {
            "prompt": "batch-1" if index == 0 else f"1x{len(outs) - 1}[{index - 1}]",
            "num_tokens": len(output_ids),
            "num_copyable_tokens": sum(d for d, _ in steps),
            "num_steps": len(steps),
            "num_steps_without_draft": sum(1 for d, _ in steps if d == 0),
            "speedup_bound": plain_ms / oracle_ms,
        }
        rows.append(row)
        print(
            f"{row['prompt']:<8} {row['num_tokens']:>6} {row['num_copyable_tokens']:>8} {row['num_steps']:>6} "
            f"{row['num_steps_without_draft']:>8} {row['speedup_bound']:>6.2f}x"
        )
    singles = rows[1:]
    mean_bound = sum(r["speedup_bound"] for r in singles) / len(singles)
    print(f"mean bound over the {len(singles)} single-stream prompts: {mean_bound:.2f}x")
    fields = {
        "model": str(model),
        "workload": args.workload,
        "max_tokens": args.max_tokens,
        "k": args.k,
        "min_run": args.min_run,
        "row_costs_ms": costs,
        "seed": args.seed,
        "rows": rows,
        "mean_single_stream_bound": mean_bound,
    }
    write_record(args.out, "spec_bound", fields, {"ember": ember.__version__})
    return fields


if __name__ == "__main__":
    main()
