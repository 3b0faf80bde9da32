"""Serving benchmark, side by side: `ember serve` and llama.cpp's `llama-server` on the same GGUF file.

Starts each server in turn on a loopback port with the same thread count, runs
`ember bench serve` against it (the same seeded prompts, streaming completions, fixed
concurrency, greedy, control tokens such as end-of-sequence banned with `logit_bias` so
both servers generate exactly `--output-len` tokens per request), stops it, and prints one
table with both.

The peer is llama.cpp's own continuous-batching server, `llama-server` from the llama.cpp
vendored in llama-cpp-python 0.3.36, built by `bash scripts/build_llama_server.sh` (cached in
.cache/llama-server/). It runs one parallel slot per request in flight (`--parallel`, equal to
`--concurrency`), continuous batching on (its default), each slot with the same context as
Ember's `--max-model-len`, and otherwise its defaults (prompt cache on, like Ember's prefix
caching; `kv_unified` off).

    python bench/serve.py [--model PATH] [--threads 2] [--concurrency 16] [--quick]

Prints a table and writes bench/out/serve-<date>.json.

With `--data-parallel` it compares `ember serve` alone with two replicas behind its router instead, on the same
total threads and KV-cache memory: 1 replica with all of them, 2 replicas routed by prefix, and 2 replicas routed
blind (least loaded), over a shared-prefix workload (8 long prefixes, interleaved, `--shared-prefix-len` tokens
each). It writes bench/out/serve-dp-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from gguf import GGUFReader

from _common import common_parser, write_record
from ember.benchmark import serve as serve_benchmark
from ember.models import resolve_model

GGUF_CONTROL_TOKEN = 3
"""`tokenizer.ggml.token_type` of control tokens."""
ROWS = (
    ("requests ok / failed", lambda s: f"{s['num_succeeded']} / {s['num_failed']}"),
    ("duration (s)", lambda s: f"{s['duration_s']:.1f}"),
    ("output tokens", lambda s: str(s["total_output_tokens"])),
    ("output tok/s", lambda s: f"{s['output_token_throughput_per_s']:.1f}"),
    ("requests/s", lambda s: f"{s['request_throughput_per_s']:.2f}"),
    ("TTFT p50 / p99 (ms)", lambda s: f"{s['ttft_ms']['p50']:.0f} / {s['ttft_ms']['p99']:.0f}"),
    ("TPOT p50 / p99 (ms)", lambda s: f"{s['tpot_ms']['p50']:.1f} / {s['tpot_ms']['p99']:.1f}"),
    ("ITL p50 / p99 (ms)", lambda s: f"{s['itl_ms']['p50']:.1f} / {s['itl_ms']['p99']:.1f}"),
    ("E2E p50 / p99 (ms)", lambda s: f"{s['e2e_ms']['p50']:.0f} / {s['e2e_ms']['p99']:.0f}"),
)


DP_ROWS = (
    *(row for row in ROWS if row[0] in ("requests ok / failed", "duration (s)", "output tok/s")),
    ("total tok/s", lambda s: f"{s['total_token_throughput_per_s']:.1f}"),
    *(row for row in ROWS if row[0] in ("TTFT p50 / p99 (ms)", "E2E p50 / p99 (ms)")),
    ("prompt tokens cached", lambda s: f"{s['total_cached_tokens'] / max(1, s['total_input_tokens']):.0%}"),
)
"""The --data-parallel table: the serving rows that matter there, total throughput and the cache hits."""


def control_token_ids(model: str) -> list[int]:
    """The GGUF file's control tokens (end-of-sequence and the other special markers)."""
    field = GGUFReader(model).fields["tokenizer.ggml.token_type"]
    return [i for i, part in enumerate(field.data) if int(field.parts[part][0]) == GGUF_CONTROL_TOKEN]


LLAMA_SERVER = Path(__file__).resolve().parent.parent / ".cache" / "llama-server" / "bin" / "llama-server"
"""Where scripts/build_llama_server.sh caches the peer."""


def server_commands(model: str, port: int, threads: int, max_model_len: int, slots: int) -> dict[str, list[str]]:
    """The command line of each server, with the same model, port, threads and per-request context length."""
    ember = [sys.executable, "-m", "ember.cli", "serve", model, "--port", str(port), "--threads", str(threads)]
    ember += ["--max-model-len", str(max_model_len)]
    llama = [str(LLAMA_SERVER), "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    llama += ["--threads", str(threads), "--threads-batch", str(threads)]
    # One slot per request in flight, each with its own max_model_len cells (kv_unified off, the
    # default for an explicit slot count, stated here so the label cannot drift).
    llama += ["--parallel", str(slots), "--ctx-size", str(slots * max_model_len), "--no-kv-unified"]
    llama += ["--cont-batching"]
    return {"ember": ember, "llama-server": llama}


def data_parallel_commands(model: str, port: int, threads: int, kv_bytes: int) -> dict[str, list[str]]:
    """`ember serve` alone and with two replicas (by prefix, blind), with the same total threads and KV memory."""
    ember = [sys.executable, "-m", "ember.cli", "serve", model, "--port", str(port), "--threads", str(threads)]
    ember += ["--max-model-len", "2048"]
    two = [*ember, "--data-parallel-size", "2", "--kv-cache-memory-bytes", str(kv_bytes // 2)]
    return {
        "1 replica": [*ember, "--kv-cache-memory-bytes", str(kv_bytes)],
        "2 replicas, prefix": [*two, "--routing", "prefix"],
        "2 replicas, blind": [*two, "--routing", "load"],
    }


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    """Polls GET /health (200 once the model is loaded, for both servers); fails if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base_url.removesuffix('/v1')}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{base_url} not ready after {timeout_s}s")


def bench_one(name: str, command: list[str], base_url: str, bench_args: list[str]) -> dict[str, Any]:
    """Starts one server, runs the serving benchmark against it, stops it; returns the summary."""
    print(f"\n== {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(base_url, proc)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            parser = argparse.ArgumentParser()
            serve_benchmark.add_arguments(parser)
            args = parser.parse_args([*bench_args, "--base-url", base_url, "--out", str(out)])
            if serve_benchmark.run(args) != 0:
                raise RuntimeError(f"the benchmark against {name} failed")
            return dict(json.loads(out.read_text()))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def table(results: dict[str, dict[str, Any]], rows: tuple[tuple[str, Any], ...] = ROWS) -> str:
    """The servers' figures side by side."""
    names = list(results)
    lines = [f"{'':<24}" + "".join(f"{n:>20}" for n in names)]
    for label, cell in rows:
        lines.append(f"{label:<24}" + "".join(f"{cell(results[n]):>20}" for n in names))
    return "\n".join(lines)


def main() -> None:
    parser = common_parser(__doc__, "threads for each server (default: 2)", "16 requests instead of 128")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: 16)")
    parser.add_argument("--input-len", type=int, default=200, help="prompt tokens, about (default: 200)")
    parser.add_argument("--output-len", type=int, default=64, help="max_tokens per request (default: 64)")
    parser.add_argument("--port", type=int, default=8765, help="loopback port for the servers (default: 8765)")
    parser.add_argument(
        "--data-parallel", action="store_true", help="1 vs 2 ember replicas on a shared-prefix workload (see above)"
    )
    parser.add_argument(
        "--shared-prefix-len", type=int, default=384, help="with --data-parallel: prefix tokens (default: 384)"
    )
    parser.add_argument(
        "--kv-cache-memory-bytes",
        type=int,
        default=144 << 20,
        help="with --data-parallel: KV memory in all, split between replicas (default: 144 MiB, about 409 blocks "
        "of the default model's float16 KV: each of two replicas holds the requests in flight and half of the "
        "prefixes, not all of them)",
    )
    args = parser.parse_args()
    if args.data_parallel:
        main_data_parallel(args)
        return
    model = args.model or resolve_model(None)
    num_prompts = 16 if args.quick else 128
    bench_args = ["--num-prompts", str(num_prompts), "--max-concurrency", str(args.concurrency)]
    bench_args += ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
    bench_args += ["--seed", str(args.seed), "--no-progress", "--temperature", "0"]
    banned = {str(token_id): -100 for token_id in control_token_ids(str(model))}
    bench_args += ["--extra-body", json.dumps({"logit_bias": banned})]
    base_url = f"http://127.0.0.1:{args.port}/v1"
    if not LLAMA_SERVER.is_file():
        sys.exit(f"{LLAMA_SERVER} not found: build it with `bash scripts/build_llama_server.sh`")
    commands = server_commands(model, args.port, args.threads, max_model_len=2048, slots=args.concurrency)
    os.environ.setdefault("EMBER_LOG", "warn")
    results = {name: bench_one(name, command, base_url, bench_args) for name, command in commands.items()}
    print(f"\nServing {num_prompts} streamed completions, concurrency {args.concurrency}, {args.threads} threads")
    print(table(results))
    fields = {"model": str(model), "num_prompts": num_prompts, "concurrency": args.concurrency, "results": results}
    fields |= {"threads": args.threads, "input_len": args.input_len, "output_len": args.output_len}
    fields["commands"] = {name: " ".join(command) for name, command in commands.items()}
    versions = {"ember": version("ember"), "llama_server": "llama.cpp vendored in llama-cpp-python 0.3.36"}
    write_record(args.out, "serve", fields, versions)


def main_data_parallel(args: argparse.Namespace) -> None:
    """The --data-parallel comparison: one table, one JSON record."""
    model = args.model or resolve_model(None)
    num_prompts = 24 if args.quick else 96
    bench_args = ["--num-prompts", str(num_prompts), "--max-concurrency", str(args.concurrency)]
    bench_args += ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
    bench_args += ["--shared-prefix-len", str(args.shared_prefix_len), "--shared-prefix-groups", "8"]
    bench_args += ["--seed", str(args.seed), "--no-progress", "--temperature", "0"]
    banned = {str(token_id): -100 for token_id in control_token_ids(str(model))}
    bench_args += ["--extra-body", json.dumps({"logit_bias": banned})]
    base_url = f"http://127.0.0.1:{args.port}/v1"
    commands = data_parallel_commands(str(model), args.port, args.threads, args.kv_cache_memory_bytes)
    os.environ.setdefault("EMBER_LOG", "warn")
    results = {name: bench_one(name, command, base_url, bench_args) for name, command in commands.items()}
    print(
        f"\nData parallel: {num_prompts} streamed completions over 8 shared {args.shared_prefix_len}-token prefixes, "
        f"concurrency {args.concurrency}, {args.threads} threads and {args.kv_cache_memory_bytes >> 20} MiB of KV "
        "cache in all"
    )
    print(table(results, DP_ROWS))
    fields = {"model": str(model), "num_prompts": num_prompts, "concurrency": args.concurrency, "results": results}
    fields |= {"threads": args.threads, "input_len": args.input_len, "output_len": args.output_len}
    fields |= {"shared_prefix_len": args.shared_prefix_len, "kv_cache_memory_bytes": args.kv_cache_memory_bytes}
    write_record(args.out, "serve-dp", fields, {"ember": version("ember")})


if __name__ == "__main__":
    main()
