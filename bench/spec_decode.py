"""Speculative decoding: plain vs n-gram speculation, and float32 vs Q4_1 drafting for float32, side by side.

On the default model, with one seeded workload of chat prompts that ask the model to repeat, extract from or
lightly rewrite a given text or code passage (where the answer reuses the input, so prompt lookup finds drafts),
runs every batch size (1, 2, 4 and 16 streams) on three engines loaded side by side, and `--prompts` single
streams one after another (batch "1xN": one prompt per passage, each alone; the speedup is the mean of the
per-prompt speedups, and each prompt's is printed too; `--draft-prompts` for (b), off by default to keep the run
short):

- plain: no speculation;
- ngram: `{"method": "ngram", "num_speculative_tokens": K}` with adaptive draft length and speculation on at any
  batch size (`max_num_seqs_to_speculate` 0);
- ngram+cap: the same with the engine's default `max_num_seqs_to_speculate` (or `--cap`), the batch size above
  which speculation turns off.

Greedy decoding with `ignore_eos` and a fixed `--max-tokens`, so every engine generates the same number of
tokens; the tokens of every speculative run are checked equal to the plain run's (a mismatch aborts the run).
Throughput is generated tokens per second of wall time (prefill included: the prompts are the same for all), and
per second of the process's CPU time (steadier on a shared machine; with one thread it is the work done);
acceptance is accepted / proposed drafts, the mean accepted length is accepted drafts per verification. Each
engine first runs one short warm-up request; each case runs `--repeats` times and the fastest counts.

(b) The draft-model method on the same workload at batch 1, 4 and 16: the model computed in float32 (exact
arithmetic) without speculation (plain-f32), and with its own Q4_1 arithmetic drafting for it (`{"method":
"draft_model", "model": the same file, "dtype": "auto"}`; q4-draft at any batch size, q4-draft+cap with the
default cap); tokens checked equal to plain-f32's.

    python bench/spec_decode.py [--model PATH] [--threads 2] [--max-tokens 96] [--prompts 6] [--draft-prompts 0]
        [--quick]
        [--suite ngram|draft]

Prints a table and writes bench/out/spec_decode-<date>.json.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from _common import common_parser, write_record

PASSAGES = [
    "def moving_average(values, window):\n    total = sum(values[:window])\n    out = [total / window]\n"
    "    for i in range(window, len(values)):\n        total += values[i] - values[i - window]\n"
    "        out.append(total / window)\n    return out\n",
    "The river rises in the northern hills, runs south through three small towns, and reaches the sea "
    "at a wide, shallow bay where fishing boats have landed their catch for more than two hundred years.",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n",
    "Meeting notes: the budget review moves to Thursday; Anna will send the revised figures by Tuesday; "
    "the new office opens on the first of March; all travel requests go through the shared form.",
    "SELECT name, city, total FROM orders JOIN customers ON orders.customer_id = customers.id "
    "WHERE total > 100 ORDER BY total DESC LIMIT 20;",
    "To reset the device, hold the power button for ten seconds, wait for the light to blink twice, "
    "then release the button and wait until the light stays green before unplugging the cable.",
]
TASKS = [
    "Repeat the following text exactly, without any comment:\n\n{}",
    "Copy the following passage word for word:\n\n{}",
    "Rewrite the following, keeping every word the same:\n\n{}",
]
BATCH_SIZES = (1, 2, 4, 16)
DRAFT_BATCH_SIZES = (1, 4, 16)


def conversations(num: int, seed: int) -> list[list[dict[str, str]]]:
    """Seeded input-grounded chat prompts."""
    rng = random.Random(seed)
    return [[{"role": "user", "content": rng.choice(TASKS).format(rng.choice(PASSAGES))}] for _ in range(num)]


def single_stream_prompts(num: int, seed: int) -> list[list[dict[str, str]]]:
    """`num` seeded input-grounded chat prompts for one stream each, cycling through the passages (so no single
    passage decides the batch-1 figure)."""
    rng = random.Random(seed)
    return [[{"role": "user", "content": rng.choice(TASKS).format(PASSAGES[i % len(PASSAGES)])}] for i in range(num)]


def run(engine: Any, convs: list, params: Any, repeats: int) -> dict[str, Any]:
    """Fastest of `repeats` runs of `convs` on `engine`: tokens, tok/s and the speculation counters' deltas."""
    best: dict[str, Any] | None = None
    for _ in range(repeats):
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
            }
        )
    return rows


def main() -> None:
    parser = common_parser(__doc__, "CPU threads of every engine (default: 2)", "batch 1, 2 and 4 only, one repeat")
    parser.add_argument("--max-tokens", type=int, default=96, help="tokens generated per prompt (default: 96)")
    parser.add_argument("--k", type=int, default=5, help="num_speculative_tokens (default: 5)")
    parser.add_argument(
        "--cap", type=int, default=None, help="max_num_seqs_to_speculate of ngram+cap (default: the engine's default)"
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
                BATCH_SIZES[:3] if args.quick else BATCH_SIZES,
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
                DRAFT_BATCH_SIZES[:2] if args.quick else DRAFT_BATCH_SIZES,
                {
                    "plain-f32": f32,
                    "q4-draft": {**f32, "speculative_config": {**draft, "max_num_seqs_to_speculate": 0}},
                    "q4-draft+cap": {**f32, "speculative_config": draft},
                },
            )
        )
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    repeats = 1 if args.quick else args.repeats
    rows: list[dict[str, Any]] = []
    for suite, batch_sizes, configs in suites:
        engines = {name: Engine(model, **common, **extra) for name, extra in configs.items()}
        for engine in engines.values():  # first touch of the weights and caches, outside the timings
            engine.chat(conversations(1, args.seed + 99), SamplingParams(max_tokens=8), use_tqdm=False)
        baseline = next(iter(engines))
        plain_by_batch: dict[int, dict[str, Any]] = {}
        cases = [(b, name) for b in batch_sizes for name in engines]
        for batch, name in tqdm(cases, desc=f"spec_decode {suite}"):
            convs = conversations(batch, args.seed + batch)
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
                single_streams(engines, suite, single_stream_prompts(num_prompts, args.seed + 1), params, repeats)
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
            print(f"{r['batch']} {r['engine']}: per-prompt speedups {each}")
    fields = {
        "model": str(model),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
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
