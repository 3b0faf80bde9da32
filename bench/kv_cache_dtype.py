"""Chooses the CPU KV cache's element type: accuracy over long contexts and decode speed at 4k.

For each `kv_cache_dtype` (float32, float16, bfloat16, int8), on the same GGUF file:
- teacher-forced mean KL divergence from the exact path (float32 arithmetic and a float32
  cache) and top-1 agreement with it, at the last positions of contexts of 1k, 2k and 4k tokens
  (seeded text: Python standard library docstrings, natural English prose), in float32
  arithmetic (where the cache is the only difference) and in the default arithmetic (8-bit
  activations, where the question is whether the cache adds to the quantization error);
- single-stream decode tok/s in the default arithmetic after a 4k-token prompt (first to last
  generated token);
- KV cache bytes per token (the 1 GiB budget over the blocks it holds).

    python bench/kv_cache_dtype.py [--model PATH] [--threads 2] [--contexts 1024 2048 4096] [--quick]
                                   [--decode-only]

--decode-only skips the accuracy runs and measures only the decode speed (a short run, e.g. at
--threads 1 on a shared machine, where two threads wait on each other).

Prints a table and writes bench/out/kv_cache_dtype-<date>.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from _common import common_parser, cpu_model, write_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from logit_metrics import faithfulness, long_text

DTYPES = ["float32", "float16", "bfloat16", "int8"]
BUDGET_BYTES = 1 << 30


def main() -> None:
    """Runs the measurements, prints the table, writes the JSON result."""
    parser = common_parser(__doc__, threads_help="CPU threads (default: 2)", quick_help="1k context only, 16 tokens")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096], help="context lengths")
    parser.add_argument("--decode-only", action="store_true", help="only the decode speed at the longest context")
    args = parser.parse_args()
    from tqdm import tqdm

    import ember
    from ember import Engine, SamplingParams
    from ember.models import resolve_model

    model = resolve_model(args.model)
    contexts = [1024] if args.quick else sorted(args.contexts)
    num_positions, decode_tokens = (32, 16) if args.quick else (128, 64)
    max_len = max(contexts) + decode_tokens
    logits: dict[tuple[str, str, int], np.ndarray] = {}
    speed: dict[str, float] = {}
    bytes_per_token: dict[str, float] = {}
    runs = [("float32", "float32")] + [
        (arith, kv) for arith in ["float32", "auto"] for kv in DTYPES if (arith, kv) != ("float32", "float32")
    ]
    if args.decode_only:
        runs = [("auto", kv) for kv in DTYPES]
    for arith, kv in tqdm(runs, desc="dtype / kv_cache_dtype"):
        engine = Engine(model, dtype=arith, kv_cache_dtype=kv, num_threads=args.threads, max_model_len=max_len,
                        kv_cache_memory_bytes=BUDGET_BYTES)  # fmt: skip
        bytes_per_token[kv] = BUDGET_BYTES / (engine._core.num_blocks * engine._core.block_size)
        ids = engine.tokenizer.encode(long_text(), add_special_tokens=True)
        assert len(ids) >= max(contexts), f"the text has only {len(ids)} tokens"
        for n in [] if args.decode_only else contexts:
            logits[arith, kv, n] = np.asarray(engine.score(ids[:n], list(range(n - num_positions, n))), np.float32)
        if arith == "auto":
            params = SamplingParams(temperature=0.0, max_tokens=decode_tokens, ignore_eos=True)
            stamps = [time.perf_counter() for out in engine.generate_stream(ids[: max(contexts)], params)
                      for _ in out.outputs[0].token_ids]  # fmt: skip
            speed[kv] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        del engine
    rows = {}
    print(f"\n{model}, {args.threads} threads, {cpu_model()}; reference: dtype float32 + kv float32")
    print(f"{'dtype':<10}{'kv_cache_dtype':<16}{'context':>8}{'mean KL':>12}{'top-1':>8}")
    for arith, kv in [] if args.decode_only else runs[1:]:
        for n in contexts:
            kl, top1 = faithfulness(logits[arith, kv, n], logits["float32", "float32", n])
            rows[f"{arith}/{kv}/{n}"] = {"mean_kl": kl, "top1_agreement": top1}
            print(f"{arith:<10}{kv:<16}{n:>8}{kl:>12.2e}{top1:>8.3f}")
    print(f"\n{'kv_cache_dtype':<16}{'decode tok/s at ' + str(max(contexts)):>24}{'bytes/token':>14}")
    for kv in DTYPES:
        print(f"{kv:<16}{speed[kv]:>24.1f}{bytes_per_token[kv]:>14.0f}")
    write_record(
        args.out,
        "kv_cache_dtype",
        {
            "threads": args.threads,
            "model": str(model),
            "positions_per_context": num_positions,
            "decode_tokens": decode_tokens,
            "accuracy": rows,
            "decode_tok_s": speed,
            "kv_bytes_per_token": bytes_per_token,
        },
        {"ember": ember.__version__},
    )


if __name__ == "__main__":
    main()
