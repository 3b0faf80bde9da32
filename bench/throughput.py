"""CPU throughput of Ember next to llama.cpp on the same GGUF file, measured side by side.

Measures, for both engines with the same thread count: prefill tok/s of a ~512-token
prompt; single-stream greedy decode tok/s (first to last generated token); and the
aggregate throughput of 16 and 64 concurrent greedy streams (generated tokens per
wall-clock second, prefill of their short prompts included). llama.cpp runs through
llama-cpp-python's low-level API (llama_batch / llama_decode with one sequence id
per stream), so its multi-stream numbers are real batched decoding, with the library's
default context settings: `kv_unified` off (each stream attends over its own cache cells,
`n_ctx / n_seq_max` of them), flash attention on auto, 512-token micro-batches. Ember runs
with prefix caching off, so no run reuses KV computed by an earlier one. Each number also
comes as tokens per second of process CPU time (`*_tok_per_cpu_s`), which on a shared machine
moves less with other processes' load than wall-clock time (most steadily with `--threads 1`).

    python bench/throughput.py [--model PATH] [--threads 2] [--streams 16 64] [--repeats 3] [--quick]

Both engines are loaded at once and take turns within each repeat (best of 3), so load
from other processes that changes during the run weighs on both alike. Prints a progress
line per measurement to stderr, then a table, and writes bench/out/throughput-<date>.json.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import sys
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


class EmberRunner:
    """Ember measurements (the Python API, as a user would call it)."""

    def __init__(self, model: str, threads: int, max_seqs: int) -> None:
        from ember import Engine

        self.engine = Engine(model, num_threads=threads, max_num_seqs=max_seqs, max_model_len=2048,
                             kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False)  # fmt: skip

    def ids(self, text: str) -> list[int]:
        """Token ids of `text`, BOS added as the model wants."""
        return self.engine.tokenizer.encode(text, add_special_tokens=True)

    def prefill(self, prompt_ids: list[int]) -> float:
        """Prompt tokens per second for one prompt (one output token)."""
        from ember import SamplingParams

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

        params = SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True)
        start = time.perf_counter()
        outs = self.engine.generate(prompts_ids, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


_QUIET_LOG: list[Any] = []
"""The ctypes callback that silences llama.cpp's log; llama.cpp keeps calling it for the rest of the
process, so it must never be freed."""


def _quiet_log_callback(lc: Any) -> Any:
    """One process-wide log callback that drops every message."""
    if not _QUIET_LOG:
        _QUIET_LOG.append(lc.llama_log_callback(lambda level, text, user_data: None))
    return _QUIET_LOG[0]


class LlamaCppRunner:
    """llama.cpp measurements through llama-cpp-python's low-level batch API."""

    def __init__(self, model: str, threads: int, max_seqs: int, max_tokens_per_seq: int) -> None:
        import llama_cpp as lc

        self.lc = lc
        lc.llama_log_set(_quiet_log_callback(lc), ctypes.c_void_p())
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(model.encode(), lc.llama_model_default_params())
        # The library's defaults but for sizes: with kv_unified off (the default) each of the
        # n_seq_max streams owns n_ctx / n_seq_max cells, enough for the prefill prompt.
        params = lc.llama_context_default_params()
        params.n_seq_max = max_seqs
        params.n_ctx = max_seqs * max(PREFILL_TOKENS + 64, max_tokens_per_seq)
        params.n_batch = params.n_ctx
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, params)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(params.n_batch, 0, max_seqs)
        self.settings = {
            "kv_unified": bool(params.kv_unified),
            "n_ctx": lc.llama_n_ctx(self.ctx),
            "n_ctx_seq": lc.llama_n_ctx_seq(self.ctx),
            "n_seq_max": max_seqs,
            "n_ubatch": params.n_ubatch,
            "flash_attn_type": params.flash_attn_type,
        }
        """The context settings the llama.cpp rows ran with (written to the JSON result)."""

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
    runners: dict[str, Any], prefill_ids: list[int], short_ids: list[list[int]], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Every throughput figure of every engine, best of `args.repeats`: `<metric>_tok_s` (wall clock) and
    `<metric>_tok_per_cpu_s` (process CPU time, all threads). The engines alternate within each repeat, so
    load from other processes that changes during the run weighs on both alike."""
    tokens = args.decode_tokens
    metrics: dict[str, tuple[Callable[[Any], float], int]] = {
        "prefill": (lambda r: r.prefill(prefill_ids), len(prefill_ids)),
        "decode_1_stream": (lambda r: r.decode_single(short_ids[0], tokens), tokens),
    }
    for n in args.streams:
        metrics[f"decode_{n}_streams"] = (lambda r, n=n: r.decode_many(short_ids[:n], tokens), n * tokens)
    for runner in runners.values():
        runner.decode_single(short_ids[0], 8)  # warm-up
    results: dict[str, dict[str, float]] = {name: {} for name in runners}
    for key, (run, num_tokens) in metrics.items():
        for repeat in range(args.repeats):
            for name, runner in runners.items():
                start = time.process_time()
                value = run(runner)
                per_cpu_s = num_tokens / max(time.process_time() - start, 1e-9)
                best = results[name]
                best[f"{key}_tok_s"] = max(value, best.get(f"{key}_tok_s", 0.0))
                best[f"{key}_tok_per_cpu_s"] = max(per_cpu_s, best.get(f"{key}_tok_per_cpu_s", 0.0))
                print(f"{key} repeat {repeat + 1}/{args.repeats} {name}: {value:.1f}", file=sys.stderr, flush=True)
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

    theirs = LlamaCppRunner(model, args.threads, max(args.streams), max_tokens_per_seq)
    results = measure({"ember": ours, "llama.cpp": theirs}, prefill_ids, short_ids, args)

    print(f"\nSmolLM2-135M Q4_1 GGUF, {args.threads} threads, {cpu_model()}")
    print(f"llama.cpp context: {theirs.settings}")
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
            "llama_cpp_context": theirs.settings,
            "results": results,
        },
        {"ember": f"{ember.__version__} ({ember.__file__})", "llama_cpp_python": llama_cpp.__version__},
    )


if __name__ == "__main__":
    main()
