"""CPU throughput of Ember next to llama.cpp on the same GGUF file, measured side by side.

Measures, for both engines with the same thread count: prefill tok/s of a ~512-token
prompt; single-stream greedy decode tok/s (first to last generated token); and the
aggregate throughput of 16 and 64 concurrent greedy streams (generated tokens per
wall-clock second, prefill of their short prompts included; with --steady also without it, as
the single-stream row counts). llama.cpp runs through
llama-cpp-python's low-level API (llama_batch / llama_decode with one sequence id
per stream), so its multi-stream numbers are real batched decoding, with the library's
default context settings: `kv_unified` off (each stream attends over its own cache cells,
`n_ctx / n_seq_max` of them), flash attention on auto, 512-token micro-batches. Ember runs
with prefix caching off, so no run reuses KV computed by an earlier one.

Both engines live in one process and take turns: every repeat of every metric runs Ember,
then llama.cpp, back to back, so load from other processes on a shared machine falls on both
alike. The table gives each engine's best rate and the median over the turns of the per-turn
ratio Ember / llama.cpp; each rate also per second of process CPU time (`*_tok_per_cpu_s`;
all threads, spinning included), which moves less with other processes' load than wall-clock
time (most steadily with `--threads 1`).

    python bench/throughput.py [--model PATH] [--quant Q4_K_M] [--threads 2] [--repeats 3]
                               [--streams 16 64] [--steady] [--quick]

--quant requantizes the model with llama.cpp's own quantizer (llama_model_quantize, cached
under .cache/quantized; see tests/quantized_models.py) and runs both engines on that file.

Prints a progress bar to stderr, then the table, and writes bench/out/throughput-<date>.json.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
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


Measure = Callable[[Any], float | tuple[float, float]]
"""Measures one runner once: tok/s wall clock, or (tok/s wall clock, tok per CPU second)."""


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


def workloads(
    prefill_ids: list[int], short_ids: list[list[int]], args: argparse.Namespace
) -> list[tuple[str, Measure, int]]:
    """The measured metrics: a name, a call that measures one runner once (tok/s), and the
    number of tokens that call processes."""
    tokens = args.decode_tokens
    metrics: list[tuple[str, Measure, int]] = [
        ("prefill", lambda r: r.prefill(prefill_ids), len(prefill_ids)),
        ("decode_1_stream", lambda r: r.decode_single(short_ids[0], tokens), tokens),
    ]
    for n in args.streams:
        metrics.append((f"decode_{n}_streams", lambda r, n=n: r.decode_many(short_ids[:n], tokens), n * tokens))
        if args.steady:
            metrics.append((f"steady_{n}_streams", lambda r, n=n: steady_rates(r, short_ids[:n], tokens), 0))
    return metrics


def steady_rates(runner: Any, prompts_ids: list[list[int]], num_tokens: int) -> tuple[float, float]:
    """Decode-only aggregate rate of concurrent streams, (tok/s wall clock, tok per CPU second):
    the time of a run to `num_tokens` tokens minus that of a run to 1 token (the prompts' prefill
    and first token), over the `num_tokens - 1` later tokens of every stream; the single-stream
    row also counts from the first token."""
    times = []
    for tokens in (1, num_tokens):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        runner.decode_many(prompts_ids, tokens)
        times.append((time.perf_counter() - wall0, time.process_time() - cpu0))
    num_later = len(prompts_ids) * (num_tokens - 1)
    return num_later / max(times[1][0] - times[0][0], 1e-9), num_later / max(times[1][1] - times[0][1], 1e-9)


def take_turns(
    runners: dict[str, Any], metrics: list[tuple[str, Measure, int]], repeats: int
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Runs every metric `repeats` times, each runner once per turn, back to back; returns
    {metric: {runner: [(tok/s wall clock, tok per second of process CPU time)]}}. CPU time counts
    all threads, spinning included; on a shared machine it moves less with other processes'
    load than wall-clock time does."""
    from tqdm import tqdm

    Rates = dict[str, list[tuple[float, float]]]
    turns: dict[str, Rates] = {key: {name: [] for name in runners} for key, *_ in metrics}
    with tqdm(total=len(metrics) * repeats * len(runners), desc="turns") as bar:
        for key, measure, num_tokens in metrics:
            for _ in range(repeats):
                for name, runner in runners.items():
                    bar.set_postfix_str(f"{key} {name}")
                    cpu0 = time.process_time()
                    rate = measure(runner)
                    cpu_rate = num_tokens / max(time.process_time() - cpu0, 1e-9)
                    # A measure that times its own CPU use returns (wall, cpu) rates.
                    turns[key][name].append(rate if isinstance(rate, tuple) else (rate, cpu_rate))
                    bar.update()
    return turns


def summary(turns: dict[str, dict[str, list[tuple[float, float]]]]) -> dict[str, dict[str, float]]:
    """Per metric: each engine's best wall-clock and per-CPU-second rates, and the median, lowest
    and highest per-turn wall-clock ratio Ember / llama.cpp."""
    out = {}
    for key, rates in turns.items():
        ratios = [a[0] / b[0] for a, b in zip(rates["ember"], rates["llama.cpp"], strict=True)]
        out[key] = {
            "ember_tok_s": max(r[0] for r in rates["ember"]),
            "llama.cpp_tok_s": max(r[0] for r in rates["llama.cpp"]),
            "median_turn_ratio": float(np.median(ratios)),
            "min_turn_ratio": min(ratios),
            "max_turn_ratio": max(ratios),
            "ember_tok_per_cpu_s": max(r[1] for r in rates["ember"]),
            "llama.cpp_tok_per_cpu_s": max(r[1] for r in rates["llama.cpp"]),
        }
    return out


def print_table(results: dict[str, dict[str, float]]) -> None:
    """The results as a table: best rates, the per-turn ratio, the per-CPU-second rates."""
    print(f"{'metric':<18}{'ember tok/s':>12}{'llama.cpp':>11}{'ratio: median [min, max] of turns':>36}"
          f"{'ember tok/cpu-s':>17}{'llama.cpp':>11}")  # fmt: skip
    for key, row in results.items():
        spread = f"{row['median_turn_ratio']:.2f} [{row['min_turn_ratio']:.2f}, {row['max_turn_ratio']:.2f}]"
        print(f"{key:<18}{row['ember_tok_s']:>12.1f}{row['llama.cpp_tok_s']:>11.1f}{spread:>36}"
              f"{row['ember_tok_per_cpu_s']:>17.1f}{row['llama.cpp_tok_per_cpu_s']:>11.1f}")  # fmt: skip
    single = results["decode_1_stream"]["ember_tok_s"]
    for key, row in results.items():
        if key.startswith(("decode_", "steady_")) and key != "decode_1_stream":
            print(f"ember {key} / decode_1_stream: {row['ember_tok_s'] / single:.2f}x")


def main() -> None:
    """Runs the benchmark, prints the table, writes the JSON result."""
    parser = common_parser(
        __doc__,
        threads_help="threads for both engines (default: 2)",
        quick_help="a small smoke run: 16 tokens, 1 repeat, 16 streams",
    )
    parser.add_argument("--quant", default=None, help="requantize the model with llama.cpp first: Q4_K_M, ...")
    parser.add_argument("--repeats", type=int, default=3, help="turns per metric (default: 3)")
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64], help="concurrent streams rows")
    parser.add_argument("--decode-tokens", type=int, default=128, help="greedy tokens per stream (default: 128)")
    parser.add_argument("--steady", action="store_true",
                        help="add decode-only rows for the streams (prefill and first token subtracted)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.decode_tokens, args.repeats, args.streams = 16, 1, [16]

    import llama_cpp

    import ember
    from ember.models import resolve_model

    model = resolve_model(args.model)
    if args.quant:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from quantized_models import quantized_gguf

        model = str(quantized_gguf(Path(model), args.quant))
    ours = EmberRunner(model, args.threads, max(args.streams))
    words = PREFILL_TOKENS  # about one token per word for this vocabulary; trimmed to PREFILL_TOKENS below
    prefill_ids = ours.ids(seeded_prompts(1, words, args.seed)[0])[:PREFILL_TOKENS]
    short_ids = [ours.ids(p) for p in seeded_prompts(max(args.streams), SHORT_PROMPT_WORDS, args.seed + 1)]
    max_tokens_per_seq = max(len(ids) for ids in short_ids) + args.decode_tokens + 8
    theirs = LlamaCppRunner(model, args.threads, max(args.streams), max_tokens_per_seq)
    runners = {"ember": ours, "llama.cpp": theirs}
    for runner in runners.values():
        runner.decode_single(short_ids[0], 8)  # warm-up
    turns = take_turns(runners, workloads(prefill_ids, short_ids, args), args.repeats)
    results = summary(turns)

    print(f"\n{Path(model).name}, {args.threads} threads, {cpu_model()}")
    print(f"llama.cpp context: {theirs.settings}")
    print_table(results)

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
            "turns": turns,
        },
        {"ember": f"{ember.__version__} ({ember.__file__})", "llama_cpp_python": llama_cpp.__version__},
    )


if __name__ == "__main__":
    main()
