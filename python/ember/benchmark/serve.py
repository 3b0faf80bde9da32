"""`ember bench serve`: load-test a running OpenAI-compatible server and report latency percentiles and throughput.

Sends `--num-prompts` seeded synthetic prompts as streaming requests, at a fixed request
rate (Poisson arrivals), at a fixed concurrency, or both, then prints a table of TTFT,
TPOT, inter-token latency and end-to-end latency (mean, p50, p90, p99) with throughput,
and writes the same as JSON.

Approximations, also recorded in the JSON result:
- Prompt length: `WORDS_PER_TOKEN` words from a built-in list per requested token, plus
  the prompt's index; other tokenizers differ. The token counts in the report are the
  server's own (`usage.prompt_tokens`), and chat adds the template's tokens.
- The OpenAI API cannot ignore end-of-sequence, so `--output-len` is only `max_tokens`;
  output tokens are counted from the final usage chunk (`stream_options.include_usage`).
- ITL is the gap between successive streamed content chunks. A chunk may carry several
  tokens, so ITL is per chunk; TPOT = (E2E - TTFT) / (output tokens - 1) is per token.

Imports only the standard library, httpx, tqdm and its siblings `sse_client` and `serve_options` (nothing else from
ember, not the compiled extension), so the `ember.benchmark` folder also loads on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from .serve_options import ENDPOINT_PATHS, add_arguments
from .sse_client import RequestResult, send_request

__all__ = ["add_arguments", "run"]

WORDS_PER_TOKEN = 1.0
"""Prompt words per requested token. Each built-in word is one token (after a space) in byte-level BPE
vocabularies such as SmolLM2's (checked: 200 requested tokens gave 203 with the index prefix); the
usual 0.75 for English prose would undershoot with these common words."""
PERCENTILES = (50, 90, 99)
NUM_ERRORS_KEPT = 10

_WORD_TEXT = """
    the of and to in is was for on that with as by at from this which river city garden market
    engine history music light water mountain story simple people world school house family friend
    morning evening winter summer spring autumn forest ocean island valley bridge road train letter
    window door table chair paper book teacher student doctor farmer painter writer village country
    kitchen bread apple orange coffee tea milk sugar salt stone iron gold silver copper glass
    red green blue yellow black white small large old new early late quiet loud bright dark warm cold
    walk run read write build carry open close watch listen learn teach travel follow remember begin
    after before under over between around through during without about again always often never
    because while where when what every many some other first last next great little long short
    number question answer reason problem idea moment minute hour week month year power energy field
    science nature animal bird horse fish tree flower grass cloud rain snow wind fire earth sky star
"""
_WORDS = tuple(_WORD_TEXT.split())


def make_prompts(num_prompts: int, input_len: int, seed: int) -> list[str]:
    """`num_prompts` distinct seeded prompts of about `input_len` tokens (`WORDS_PER_TOKEN` words per token).

    Each prompt starts with its own index, so no two share even a first KV-cache block: the
    server's prefix cache cannot hit within a run (a rerun with the same seed repeats them).
    """
    rng = random.Random(seed)
    num_words = max(1, round(input_len * WORDS_PER_TOKEN))
    return [f"{i}: " + " ".join(rng.choices(_WORDS, k=num_words)) for i in range(num_prompts)]


def shared_prefix_prompts(num_prompts: int, input_len: int, prefix_len: int, num_groups: int, seed: int) -> list[str]:
    """`num_prompts` seeded prompts over `num_groups` shared prefixes of about `prefix_len` tokens, interleaved as
    the turns of concurrent agents with their own long system prompts: in each round of `num_groups` prompts every
    prefix comes once, in a seeded order of its own (a fixed cycle would line up with round-robin routing). Each
    prompt then has its index and about `input_len` tokens of its own."""
    rng = random.Random(seed)
    num_prefix_words = max(1, round(prefix_len * WORDS_PER_TOKEN))
    num_words = max(1, round(input_len * WORDS_PER_TOKEN))
    prefixes = [f"Agent {g}. " + " ".join(rng.choices(_WORDS, k=num_prefix_words)) for g in range(num_groups)]
    order: list[int] = []
    while len(order) < num_prompts:
        order += rng.sample(range(num_groups), num_groups)
    return [
        f"{prefixes[g]}\n{i}: " + " ".join(rng.choices(_WORDS, k=num_words)) for i, g in enumerate(order[:num_prompts])
    ]


def arrival_offsets_s(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Send time of each request in seconds from the start: seeded Poisson arrivals, all 0.0 at an infinite rate."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    gaps_s = (rng.expovariate(request_rate) for _ in range(num_requests - 1))
    return list(accumulate(gaps_s, initial=0.0))


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0 to 100) of `values`, interpolating linearly between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def latency_stats_ms(values_s: Sequence[float]) -> dict[str, float | None]:
    """Mean and percentiles of latencies given in seconds, in milliseconds; None for each when there are none."""
    keys = ["mean", *(f"p{q}" for q in PERCENTILES)]
    if not values_s:
        return dict.fromkeys(keys, None)
    stats_s = [sum(values_s) / len(values_s), *(percentile(values_s, q) for q in PERCENTILES)]
    return {key: value_s * 1000 for key, value_s in zip(keys, stats_s, strict=True)}


def request_body(endpoint: str, model: str, prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of one streaming request to `endpoint` ("completions" or "chat")."""
    body: dict[str, Any] = {"model": model}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body |= {
        "max_tokens": args.output_len,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return body | (args.extra_body or {})


async def run_requests(
    client: httpx.AsyncClient,
    url: str,
    bodies: Sequence[dict[str, Any]],
    offsets_s: Sequence[float],
    max_concurrency: int | None,
    progress: tqdm,
) -> tuple[list[RequestResult], float]:
    """Sends each body at its offset, at most `max_concurrency` in flight; returns the results and the duration."""
    semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    start_s = time.perf_counter()

    async def one(body: dict[str, Any], offset_s: float) -> RequestResult:
        await asyncio.sleep(max(0.0, start_s + offset_s - time.perf_counter()))
        async with semaphore or contextlib.nullcontext():
            result = await send_request(client, url, body)
        progress.update(1)
        return result

    results = await asyncio.gather(*(one(body, offset_s) for body, offset_s in zip(bodies, offsets_s, strict=True)))
    return list(results), time.perf_counter() - start_s


def summarize(results: Sequence[RequestResult], duration_s: float) -> dict[str, Any]:
    """Counts, throughputs (successful requests only) and latency statistics of one run."""
    ok = [r for r in results if r.success]
    num_input_tokens = sum(r.prompt_tokens for r in ok)
    num_output_tokens = sum(r.output_tokens for r in ok)
    per_s = 1 / duration_s if duration_s > 0 else 0.0
    return {
        "num_requests": len(results),
        "num_succeeded": len(ok),
        "num_failed": len(results) - len(ok),
        "num_without_usage": sum(not r.usage_reported for r in ok),
        "duration_s": duration_s,
        "total_input_tokens": num_input_tokens,
        "total_output_tokens": num_output_tokens,
        "total_cached_tokens": sum(r.cached_tokens for r in ok),
        "request_throughput_per_s": len(ok) * per_s,
        "output_token_throughput_per_s": num_output_tokens * per_s,
        "total_token_throughput_per_s": (num_input_tokens + num_output_tokens) * per_s,
        "ttft_ms": latency_stats_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_ms": latency_stats_ms([tpot for r in ok if (tpot := r.tpot_s) is not None]),
        "itl_ms": latency_stats_ms([gap_s for r in ok for gap_s in r.itl_s]),
        "e2e_ms": latency_stats_ms([r.e2e_s for r in ok]),
        "errors": dict(Counter(r.error for r in results if not r.success).most_common(NUM_ERRORS_KEPT)),
    }


def format_table(summary: dict[str, Any], model: str, args: argparse.Namespace) -> str:
    """The human-readable report of `summary`: load, counts and throughput, then a latency table in milliseconds."""
    rows = [
        ("Model", model),
        ("Endpoint", args.endpoint),
        ("Request rate (req/s) / max concurrency", f"{args.request_rate} / {args.max_concurrency or 'none'}"),
        ("Requests: succeeded / failed", f"{summary['num_succeeded']} / {summary['num_failed']}"),
        ("Duration (s)", f"{summary['duration_s']:.2f}"),
        ("Input / output tokens", f"{summary['total_input_tokens']} / {summary['total_output_tokens']}"),
        ("Input tokens cached (server's usage)", str(summary["total_cached_tokens"])),
        ("Request throughput (req/s)", f"{summary['request_throughput_per_s']:.2f}"),
        ("Output token throughput (tok/s)", f"{summary['output_token_throughput_per_s']:.2f}"),
        ("Total token throughput (tok/s)", f"{summary['total_token_throughput_per_s']:.2f}"),
    ]
    lines = [f"{' Serving benchmark ':=^60}", *(f"{name:<40}{value:>20}" for name, value in rows)]
    lines += [f"{' Latency (ms) ':-^60}", f"{'':<12}" + "".join(f"{key:>12}" for key in ("mean", "p50", "p90", "p99"))]
    for name in ("ttft", "tpot", "itl", "e2e"):
        stats = summary[f"{name}_ms"].values()
        lines.append(f"{name.upper():<12}" + "".join(f"{_ms(value):>12}" for value in stats))
    if summary["num_without_usage"]:
        lines.append(f"note: {summary['num_without_usage']} responses had no usage; their chunks were counted")
    lines.extend(f"error x{count}: {error}" for error, count in summary["errors"].items())
    return "\n".join([*lines, "=" * 60])


def _ms(value: float | None) -> str:
    """A millisecond figure for the table, or "-" when there is none."""
    return "-" if value is None else f"{value:.2f}"


def _jsonable(value: Any) -> Any:
    """`value` as strict JSON allows it: non-finite floats and unknown objects become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def result_record(args: argparse.Namespace, model: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The JSON result: date, the arguments (API key redacted), server, model, approximations and the summary."""
    options = {k: v for k, v in vars(args).items() if not callable(v)}
    if options.get("api_key"):
        options["api_key"] = "<redacted>"
    record: dict[str, Any] = _jsonable(
        {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "benchmark": "serve",
            "base_url": args.base_url,
            "model": model,
            "endpoint": args.endpoint,
            "args": options,
            "words_per_token": WORDS_PER_TOKEN,
            "itl_unit": "streamed content chunk (may hold several tokens)",
            **summary,
        }
    )
    return record


def write_record(out: Path, record: dict[str, Any]) -> Path:
    """Writes `record` to `out` when it names a .json file, else to `out/serve-<date>.json`; returns the path."""
    path = out if out.suffix == ".json" else out / f"serve-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


class BenchmarkError(Exception):
    """A benchmark that could not run or in which every request failed."""


async def discover_model(client: httpx.AsyncClient, base_url: str) -> str:
    """The id of the first model listed by `GET {base_url}/models`."""
    url = f"{base_url}/models"
    try:
        response = await client.get(url)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except httpx.HTTPError as e:
        raise BenchmarkError(f"cannot reach the server at {url} ({type(e).__name__}: {e})") from e
    except (ValueError, LookupError, TypeError) as e:
        raise BenchmarkError(f"{url} lists no model ({type(e).__name__}: {e}); pass --model") from e


def _client(args: argparse.Namespace) -> httpx.AsyncClient:
    """An HTTP client without connection-pool limits (concurrency is ours to cap) that ignores proxy settings."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(args.timeout, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        trust_env=False,
    )


async def _benchmark(args: argparse.Namespace) -> int:
    """Runs the benchmark, prints the table, writes the JSON; raises BenchmarkError when nothing succeeded."""
    base_url = args.base_url.rstrip("/")
    async with _client(args) as client:
        model = args.model or await discover_model(client, base_url)
        if args.shared_prefix_len:
            prompts = shared_prefix_prompts(
                args.num_prompts, args.input_len, args.shared_prefix_len, args.shared_prefix_groups, args.seed
            )
        else:
            prompts = make_prompts(args.num_prompts, args.input_len, args.seed)
        bodies = [request_body(args.endpoint, model, prompt, args) for prompt in prompts]
        offsets_s = arrival_offsets_s(args.num_prompts, args.request_rate, args.seed)
        url = base_url + ENDPOINT_PATHS[args.endpoint]
        print(f"ember bench serve: {args.num_prompts} requests to {url}, model {model}", file=sys.stderr)
        with tqdm(total=args.num_prompts, desc="Requests", disable=args.no_progress, dynamic_ncols=True) as bar:
            results, duration_s = await run_requests(client, url, bodies, offsets_s, args.max_concurrency, bar)
    summary = summarize(results, duration_s)
    print(format_table(summary, model, args))
    print(f"wrote {write_record(args.out, result_record(args, model, summary))}")
    if not summary["num_succeeded"]:
        first_error = next(iter(summary["errors"]), "unknown")
        raise BenchmarkError(f"all {len(results)} requests failed; most common error: {first_error}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs `ember bench serve` with `add_arguments` options; returns 0, or 1 when it could not run or all failed."""
    try:
        return asyncio.run(_benchmark(args))
    except BenchmarkError as e:
        print(f"ember bench serve: error: {e}", file=sys.stderr)
        return 1
