"""CPU throughput of Ember next to llama.cpp on the same GGUF file, measured side by side.

Measures, for both engines with the same thread count: prefill tok/s of a ~512-token
prompt; single-stream greedy decode tok/s (first to last generated token); and the
aggregate throughput of 16 and 64 concurrent greedy streams (generated tokens per
wall-clock second, prefill of their short prompts included). llama.cpp runs through
llama-cpp-python's low-level API (llama_batch / llama_decode with one sequence id
per stream), so its multi-stream numbers are real batched decoding. Each number also comes
as tokens per second of process CPU time (`*_tok_per_cpu_s`), which on a shared machine moves
less with other processes' load than wall-clock time (most steadily with `--threads 1`).

    python bench/throughput.py [--model PATH] [--threads 2] [--streams 16 64] [--repeats 3] [--quick]

Prints a table and writes bench/out/throughput-<date>.json.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from _common import common_parser, cpu_model, write_record

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "they",
    "this",
    "which",
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
    "simple",
    "quiet",
    "bright",
    "ancient",
]
PREFILL_TOKENS = 512
SHORT_PROMPT_WORDS = 12


def seeded_prompts(num_prompts: int, num_words: int, seed: int) -> list[str]:
    """Deterministic word-salad prompts, all different (so no prefix-cache hits between them)."""
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(num_words)) for i in range(num_prompts)]


def best_of(repeats: int, measure: Callable[[], float], num_tokens: int) -> tuple[float, float]:
    """The best (highest) of `repeats` throughput measurements, and the best rate of the
    `num_tokens` tokens each call processes per second of process CPU time (all threads; on a
    shared machine this moves less with the load than wall-clock time does)."""
    best_wall, best_cpu = 0.0, 0.0
    for _ in range(repeats):
        start = time.process_time()
        best_wall = max(best_wall, measure())
        best_cpu = max(best_cpu, num_tokens / max(time.process_time() - start, 1e-9))
    return best_wall, best_cpu


class EmberRunner:
    """Ember measurements (the Python API, as a user would call it)."""

    def __init__(self, model: str, threads: int, max_seqs: int) -> None:
        from ember import Engine

        self.engine = Engine(model, num_threads=threads, max_num_seqs=max_seqs, max_model_len=2048,
                             kv_cache_memory_bytes=1 << 30)  # fmt: skip

    def ids(self, text: str) -> list[int]:
        """Token ids of `text`, BOS added as the model wants."""
        return self.engine.tokenizer.encode(text, add_special_tokens=True)

    def prefill(self, prompt_ids: list[int]) -> float:
        """Prompt tokens per second for one prompt (one output token)."""
        from ember import SamplingParams

        self.engine.reset_prefix_cache()
        start = time.perf_counter()
        self.engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
        return len(prompt_ids) / (time.perf_counter() - start)

    def decode_single(self, prompt_ids: list[int], num_tokens: int) -> float:
        """Generated tokens per second of one greedy stream, first to last token."""
        from ember import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True)
        stamps = [time.perf_counter() for chunk in self.engine.generate_stream(prompt_ids, params)
                  for _ in chunk.outputs[0].token_ids]  # fmt: skip
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def decode_many(self, prompts_ids: list[list[int]], num_tokens: int) -> float:
        """Aggregate generated tokens per wall-clock second of concurrent greedy streams."""
        from ember import SamplingParams

        self.engine.reset_prefix_cache()
        params = SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True)
        start = time.perf_counter()
        outs = self.engine.generate(prompts_ids, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


class LlamaCppRunner:
    """llama.cpp measurements through llama-cpp-python's low-level batch API."""

    def __init__(self, model: str, threads: int, max_seqs: int, max_tokens_per_seq: int) -> None:
        import llama_cpp as lc

        self.lc = lc
        self._quiet = lc.llama_log_callback(lambda level, text, user_data: None)  # kept alive: C holds it
        lc.llama_log_set(self._quiet, ctypes.c_void_p())
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(model.encode(), lc.llama_model_default_params())
        params = lc.llama_context_default_params()
        params.n_ctx = max(PREFILL_TOKENS + 64, max_seqs * max_tokens_per_seq)
        params.n_batch = params.n_ctx
        params.n_ubatch = 512
        params.n_seq_max = max_seqs
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, params)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(params.n_batch, 0, max_seqs)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """Decodes (token, pos, seq_id, wants_logits) entries; returns the greedy next token per logits row."""
        b = self.batch
        b.n_tokens = len(entries)
        rows = []
        for i, (token, pos, seq, wants_logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, wants_logits
            b.seq_id[i][0] = seq
            if wants_logits:
                rows.append(i)
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        # Output rows are stored contiguously, in batch order: [len(rows), n_vocab].
        logits = np.ctypeslib.as_array(self.lc.llama_get_logits(self.ctx), shape=(len(rows), self.n_vocab))
        return logits.argmax(axis=1).tolist()

    def _run(self, prompts_ids: list[list[int]], num_tokens: int) -> list[float]:
        """Greedy-decodes every prompt as its own sequence; returns the time of each decode step."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        entries = [(t, p, s, p == len(ids) - 1) for s, ids in enumerate(prompts_ids) for p, t in enumerate(ids)]
        last = self._decode(entries)
        stamps = [time.perf_counter()]
        for step in range(num_tokens - 1):
            last = self._decode(
                [(t, len(ids) + step, s, True) for s, (t, ids) in enumerate(zip(last, prompts_ids, strict=True))]
            )
            stamps.append(time.perf_counter())
        return stamps

    def prefill(self, prompt_ids: list[int]) -> float:
        """Prompt tokens per second for one prompt."""
        start = time.perf_counter()
        stamps = self._run([prompt_ids], 1)
        return len(prompt_ids) / (stamps[0] - start)

    def decode_single(self, prompt_ids: list[int], num_tokens: int) -> float:
        """Generated tokens per second of one greedy stream, first to last token."""
        stamps = self._run([prompt_ids], num_tokens)
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def decode_many(self, prompts_ids: list[list[int]], num_tokens: int) -> float:
        """Aggregate generated tokens per wall-clock second of concurrent greedy streams."""
        start = time.perf_counter()
        stamps = self._run(prompts_ids, num_tokens)
        return len(prompts_ids) * num_tokens / (stamps[-1] - start)


def measure(
    runner: Any, prefill_ids: list[int], short_ids: list[list[int]], args: argparse.Namespace
) -> dict[str, float]:
    """All throughput numbers of one engine: `<metric>_tok_s` (wall clock) and
    `<metric>_tok_per_cpu_s` (process CPU time) for prefill, one stream and each stream count."""
    runner.decode_single(short_ids[0], 8)  # warm-up
    tokens = args.decode_tokens
    cases: dict[str, tuple[Callable[[], float], int]] = {
        "prefill": (lambda: runner.prefill(prefill_ids), len(prefill_ids)),
        "decode_1_stream": (lambda: runner.decode_single(short_ids[0], tokens), tokens),
    }
    for n in args.streams:
        cases[f"decode_{n}_streams"] = (lambda n=n: runner.decode_many(short_ids[:n], tokens), n * tokens)
    results = {}
    for name, (call, num_tokens) in cases.items():
        wall, cpu = best_of(args.repeats, call, num_tokens)
        results[f"{name}_tok_s"], results[f"{name}_tok_per_cpu_s"] = wall, cpu
    return results


def main() -> None:
    """Runs the benchmark, prints the table, writes the JSON result."""
    parser = common_parser(
        __doc__,
        threads_help="threads for both engines (default: 2)",
        quick_help="a small smoke run: 16 tokens, 1 repeat, 16 streams",
    )
    parser.add_argument(
        "--streams", type=int, nargs="+", default=None, help="concurrent stream counts (default: 16 64; quick: 16)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="best of this many runs (default: 3; quick: 1)")
    args = parser.parse_args()
    args.decode_tokens, repeats, streams = (16, 1, [16]) if args.quick else (128, 3, [16, 64])
    args.repeats, args.streams = args.repeats or repeats, args.streams or streams

    import llama_cpp

    import ember
    from ember.models import resolve_model

    model = resolve_model(args.model)
    ours = EmberRunner(model, args.threads, max(args.streams))
    words = PREFILL_TOKENS  # about one token per word for this vocabulary; trimmed to PREFILL_TOKENS below
    prefill_ids = ours.ids(seeded_prompts(1, words, args.seed)[0])[:PREFILL_TOKENS]
    short_ids = [ours.ids(p) for p in seeded_prompts(max(args.streams), SHORT_PROMPT_WORDS, args.seed + 1)]
    max_tokens_per_seq = max(len(ids) for ids in short_ids) + args.decode_tokens + 8

    results = {"ember": measure(ours, prefill_ids, short_ids, args)}
    del ours
    theirs = LlamaCppRunner(model, args.threads, max(args.streams), max_tokens_per_seq)
    results["llama.cpp"] = measure(theirs, prefill_ids, short_ids, args)

    print(f"\nSmolLM2-135M Q4_1 GGUF, {args.threads} threads, {cpu_model()}")
    print(f"{'metric':<34}{'ember':>12}{'llama.cpp':>12}{'ratio':>8}")
    for key in results["ember"]:
        a, b = results["ember"][key], results["llama.cpp"][key]
        print(f"{key:<34}{a:>12.1f}{b:>12.1f}{a / b:>8.2f}")

    write_record(
        args.out,
        "throughput",
        {
            "threads": args.threads,
            "quick": args.quick,
            "seed": args.seed,
            "model": str(model),
            "prefill_tokens": len(prefill_ids),
            "decode_tokens": args.decode_tokens,
            "repeats": args.repeats,
            "streams": args.streams,
            "results": results,
        },
        {"ember": f"{ember.__version__} ({ember.__file__})", "llama_cpp_python": llama_cpp.__version__},
    )


if __name__ == "__main__":
    main()
