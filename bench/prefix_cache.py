"""What prefix caching buys on requests that share a long system prompt.

Runs the same workload on two engines with identical settings, prefix caching on
and off: 64 requests (seeded) that share a 1,000-token system prompt of synthetic
words, each followed by a distinct short question, 16 greedy tokens each, all
submitted in one `generate` call. Reports time to first token (mean and p50,
from `RequestOutput.metrics`), the prompt tokens served from the cache and those
computed, and throughput counted in tokens the engine computed (prompt tokens it
prefilled plus generated tokens) and in generated tokens alone: cached prompt tokens
are reported, never counted as throughput.

    python bench/prefix_cache.py [--model PATH] [--threads 2] [--quick]

Prints a table and writes bench/out/prefix-cache-<date>.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from _common import common_parser, write_record

WORDS = [
    "the",
    "of",
    "and",
    "river",
    "city",
    "garden",
    "market",
    "engine",
    "history",
    "music",
    "light",
    "water",
    "mountain",
    "story",
    "quiet",
    "ancient",
]
SUBJECTS = ["rivers", "cities", "gardens", "markets", "engines", "music", "light", "water", "mountains", "stories"]
SYSTEM_TOKENS = 1000
MAX_TOKENS = 16
KV_CACHE_MEMORY_BYTES = 1 << 30
MAX_MODEL_LEN = 2048


def workload(tokenizer: Any, num_requests: int, seed: int, system_tokens: int = SYSTEM_TOKENS) -> list[list[int]]:
    """Token-id prompts: one shared `system_tokens`-token system prompt plus a distinct question each."""
    rng = random.Random(seed)
    system_text = " ".join(rng.choice(WORDS) for _ in range(2 * system_tokens))
    system = tokenizer.encode(system_text, add_special_tokens=True)[:system_tokens]
    questions = [
        f"\nQuestion {i}: what do you know about {rng.choice(SUBJECTS)}?\nAnswer:" for i in range(num_requests)
    ]
    return [system + tokenizer.encode(q) for q in questions]


def run(
    model: str,
    prefix_caching: bool,
    num_requests: int,
    args: argparse.Namespace,
    system_tokens: int = SYSTEM_TOKENS,
    max_num_batched_tokens: int | None = None,
) -> dict[str, float]:
    """Loads an engine, warms it up, runs the workload once and returns its numbers (the last two
    arguments shrink the workload and the step budget for quick checks; the benchmark uses the defaults)."""
    from ember import Engine, SamplingParams

    engine = Engine(
        model,
        kv_cache_memory_bytes=KV_CACHE_MEMORY_BYTES,
        max_model_len=MAX_MODEL_LEN,
        num_threads=args.threads,
        enable_prefix_caching=prefix_caching,
        max_num_batched_tokens=max_num_batched_tokens,
    )
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    engine.generate("Warm-up.", params, use_tqdm=False)
    prompts = workload(engine.tokenizer, num_requests, args.seed, system_tokens)
    before = engine.stats()
    start = time.perf_counter()
    outs = engine.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    after = engine.stats()
    ttfts = [o.metrics.time_to_first_token for o in outs if o.metrics and o.metrics.time_to_first_token is not None]
    prompt_tokens = sum(len(p) for p in prompts)
    cached = sum(o.num_cached_tokens for o in outs)
    computed = prompt_tokens - cached
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    queries = after["prefix_cache_queries"] - before["prefix_cache_queries"]
    hits = after["prefix_cache_hits"] - before["prefix_cache_hits"]
    return {
        "ttft_mean_s": statistics.fmean(ttfts),
        "ttft_p50_s": statistics.median(ttfts),
        "wall_s": elapsed,
        "prompt_tokens": prompt_tokens,
        "cached_prompt_tokens": cached,
        "computed_prompt_tokens": computed,
        "generated_tokens": generated,
        "computed_tok_s": (computed + generated) / elapsed,
        "generated_tok_s": generated / elapsed,
        "prefix_cache_hit_rate": hits / queries if queries else 0.0,
    }


def main() -> None:
    """Runs the benchmark with prefix caching on and off, prints the table, writes the JSON result."""
    parser = common_parser(
        __doc__,
        threads_help="engine threads (default: 2)",
        quick_help="a small smoke run: 8 requests instead of 64",
    )
    args = parser.parse_args()
    num_requests = 8 if args.quick else 64

    import ember
    from ember.models import resolve_model

    model = resolve_model(args.model)
    results = {name: run(model, on, num_requests, args) for name, on in (("cache_on", True), ("cache_off", False))}

    print(
        f"\n{num_requests} requests, {SYSTEM_TOKENS}-token shared prefix, {MAX_TOKENS} tokens, {args.threads} threads"
    )
    print(f"{'metric':<24}{'cache on':>12}{'cache off':>12}")
    for key in results["cache_on"]:
        on, off = results["cache_on"][key], results["cache_off"][key]
        cells = (f"{on:>12d}{off:>12d}" if isinstance(on, int) else f"{on:>12.3f}{off:>12.3f}")  # fmt: skip
        print(f"{key:<24}{cells}")

    write_record(
        args.out,
        "prefix-cache",
        {
            "threads": args.threads,
            "quick": args.quick,
            "seed": args.seed,
            "model": str(model),
            "num_requests": num_requests,
            "system_tokens": SYSTEM_TOKENS,
            "max_tokens": MAX_TOKENS,
            "results": results,
        },
        {"ember": ember.__version__},
    )


if __name__ == "__main__":
    main()
