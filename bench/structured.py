"""What structured output costs: constrained vs unconstrained decode, the mask time per token, and what
jump-forward saves.

On the default model, with one seeded workload, runs the same prompts at batch 1 and batch 16 four
ways, side by side in one run:

- unconstrained: greedy decode of `--max-tokens` tokens with `ignore_eos` (the baseline);
- constrained: the same, with every request under a JSON schema whose language is long enough that
  no request finishes early (at least 16 objects with long fixed keys), so both decode the same
  number of tokens;
- constrained without jump-forward (a second engine with `structured_jump_forward=False`): every
  token decoded one step at a time; its tokens must equal the jump-forward run's (checked);
- the mask time per constrained token, from the engine's counters (`structured_mask_s` /
  `num_structured_masks`: the wall time of each step's mask computation, which runs on the rayon
  pool in parallel across the batch, divided by the masks it produced).

Each case runs `--repeats` times and the fastest run counts. Decode throughput is generated tokens per second of
wall time, prefill included in both (the prompts
are short); the slowdown is `1 - constrained / unconstrained`. Compilation of the schema happens once
(compiled grammars are cached) and is timed apart. Jump-forward appends only tokens that are the single
one the grammar allows, so how much it saves depends on the vocabulary: a large BPE vocabulary has many
tokens that fit a fixed key (`"id`, `"ident`, ...), so fewer steps are forced to one token.

    python bench/structured.py [--model PATH] [--threads 2] [--max-tokens 64] [--quick]

Prints a table and writes bench/out/structured-<date>.json.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from typing import Any

from _common import common_parser, write_record

KEYS = ["identification_number_of_the_record", "fully_qualified_display_name", "geographic_region_of_origin"]
SCHEMA = {
    "type": "array",
    "minItems": 16,
    "items": {
        "type": "object",
        "properties": {
            KEYS[0]: {"type": "integer", "minimum": 0, "maximum": 99999},
            KEYS[1]: {"type": "string", "maxLength": 24},
            KEYS[2]: {"enum": ["north", "south", "east", "west"]},
        },
        "required": KEYS,
        "additionalProperties": False,
    },
}
TOPICS = ["cities", "rivers", "books", "planets", "songs", "birds", "bridges", "islands"]


def prompts(num: int, seed: int) -> list[str]:
    """Seeded short prompts asking for JSON records."""
    rng = random.Random(seed)
    return [f"List some {rng.choice(TOPICS)} as JSON records (#{i}):" for i in range(num)]


def timed(engine: Any, batch: list[str], params: Any) -> tuple[float, list[list[int]], dict[str, float]]:
    """(wall seconds, each output's token ids, the engine's counters that changed) of one generate call."""
    before = engine.stats()
    start = time.perf_counter()
    outs = engine.generate(batch, params, use_tqdm=False)
    wall_s = time.perf_counter() - start
    after = engine.stats()
    return wall_s, [o.outputs[0].token_ids for o in outs], {k: after[k] - before[k] for k in before}


def run(model: str, args: argparse.Namespace, batch_sizes: list[int]) -> list[dict[str, Any]]:
    """The rows of the table: per batch size, both ways."""
    from ember import Engine, SamplingParams, StructuredOutputsParams

    def load(jump_forward: bool) -> Any:
        return Engine(
            model,
            kv_cache_memory_bytes=256 << 20,
            max_model_len=1024,
            num_threads=args.threads,
            structured_jump_forward=jump_forward,
        )

    constraint = StructuredOutputsParams(json=SCHEMA)
    base = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    constrained = SamplingParams(**{**base.to_dict(), "structured_outputs": constraint})
    results: dict[tuple[int, str], dict[str, Any]] = {}
    tokens: dict[tuple[int, str], list[list[int]]] = {}
    compile_s = 0.0
    # One engine at a time: two engines' CPU thread pools in one process would compete for the cores.
    for jump_forward, ways in (
        (True, (("unconstrained", base), ("constrained", constrained))),
        (False, (("no_jump", constrained),)),
    ):
        engine = load(jump_forward)
        engine.generate(prompts(16, args.seed + 1), base, use_tqdm=False)  # warm-up of the batch-16 shapes
        start = time.perf_counter()
        engine.generate("Warm-up:", SamplingParams(max_tokens=2, structured_outputs=constraint), use_tqdm=False)
        compile_s = compile_s or time.perf_counter() - start
        for batch_size in batch_sizes:
            batch = prompts(batch_size, args.seed)
            for name, params in ways:
                # Best of `--repeats` runs: the machine may be shared, and the first run warms the lexer caches.
                runs = [timed(engine, batch, params) for _ in range(args.repeats)]
                wall_s, tokens[batch_size, name], counters = min(runs, key=lambda run: run[0])
                num_tokens = sum(len(t) for t in tokens[batch_size, name])
                num_masks = counters["num_structured_masks"]
                results[batch_size, name] = {
                    "wall_s": wall_s,
                    "generated_tokens": num_tokens,
                    "tok_s": num_tokens / wall_s,
                    "mask_us_per_token": 1e6 * counters["structured_mask_s"] / num_masks if num_masks else 0.0,
                }
                print(f"  batch {batch_size:2d} {name:13s} {num_tokens:5d} tokens {wall_s:7.2f} s", flush=True)
        del engine
        gc.collect()
    rows = []
    for batch_size in batch_sizes:
        free, con, step = (results[batch_size, k]["tok_s"] for k in ("unconstrained", "constrained", "no_jump"))
        rows.append(
            {
                "batch_size": batch_size,
                **{k: results[batch_size, k] for k in ("unconstrained", "constrained", "no_jump")},
                "slowdown": 1.0 - con / free,
                "slowdown_without_jump_forward": 1.0 - step / free,
                "jump_forward_speedup": con / step,
                "jump_forward_identical": tokens[batch_size, "constrained"] == tokens[batch_size, "no_jump"],
                "compile_s": compile_s,
            }
        )
    return rows


def main() -> None:
    """Runs the benchmark, prints the table, writes the JSON result."""
    parser = common_parser(
        __doc__, threads_help="engine threads (default: 2)", quick_help="a small smoke run: 16 tokens per request"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case; the fastest counts (default: 3)")
    args = parser.parse_args()
    if args.quick:
        args.max_tokens = 16
    from ember.models import resolve_model

    model = resolve_model(args.model)
    rows = run(model, args, [1, 16])
    print(f"\nschema compile + first request: {rows[0]['compile_s']:.2f} s")
    print(
        f"{'batch':>5} | {'free tok/s':>10} | {'constrained':>11} | {'slowdown':>8} | {'no jump-fwd':>11} | "
        f"{'slowdown':>8} | {'jump speedup':>12} | {'identical':>9} | {'mask us/token':>13}"
    )
    for r in rows:
        free, con, step = r["unconstrained"], r["constrained"], r["no_jump"]
        print(
            f"{r['batch_size']:5d} | {free['tok_s']:10.1f} | {con['tok_s']:11.1f} | {100 * r['slowdown']:7.1f}% | "
            f"{step['tok_s']:11.1f} | {100 * r['slowdown_without_jump_forward']:7.1f}% | "
            f"{r['jump_forward_speedup']:11.2f}x | {r['jump_forward_identical']!s:>9} | "
            f"{con['mask_us_per_token']:13.1f}"
        )
    import ember

    write_record(
        args.out,
        "structured",
        {"max_tokens": args.max_tokens, "repeats": args.repeats, "rows": rows},
        {"ember": ember.__version__},
    )


if __name__ == "__main__":
    main()
