"""Soak test of `ember serve`: minutes of mixed valid, invalid and abandoned traffic at 64 concurrency.

Starts `ember serve` on loopback, drives it with seeded traffic (valid completions and streamed chats; invalid
bodies, oversized bodies and malformed JSON; streams abandoned after their first chunk; requests abandoned before
their first token), samples the server's resident memory, then reports: memory growth after warm-up beside the
KV pool's size, KV usage and running requests once the traffic stops (must be back to 0), p50 / p99 latency of
the valid requests, response counts by status (no 5xx allowed), and the exit status after SIGTERM (must be 0).
Prints a table and writes JSON to bench/out/. Only loopback is ever contacted; the run stops by itself.

    python scripts/soak_server.py --minutes 3 [--model PATH] [--concurrency 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "the",
    "a",
    "river",
    "stone",
    "light",
    "city",
    "north",
    "quiet",
    "paper",
    "engine",
    "window",
    "garden",
    "music",
]
KINDS = ["valid_completion", "valid_chat_stream", "invalid", "oversized", "abandoned_stream", "abandoned_early"]
WEIGHTS = [30, 25, 20, 5, 10, 10]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def prompt(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


async def one_request(client: httpx.AsyncClient, rng: random.Random, kind: str) -> tuple[int, float | None]:
    """Sends one request of `kind`; returns (status, latency in seconds for valid requests, else None)."""
    started = time.monotonic()
    if kind == "valid_completion":
        body = {"model": "soak", "prompt": prompt(rng, rng.randint(5, 60)), "max_tokens": rng.randint(4, 32)}
        r = await client.post("/v1/completions", json=body)
        return r.status_code, time.monotonic() - started
    if kind == "valid_chat_stream":
        messages = [{"role": "user", "content": prompt(rng, rng.randint(5, 40))}]
        body = {"model": "soak", "messages": messages, "max_tokens": rng.randint(4, 32), "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            async for _ in r.aiter_lines():
                pass
            return r.status_code, time.monotonic() - started
    if kind == "invalid":
        bodies: list[dict[str, object] | bytes] = [
            {"model": "soak", "prompt": "x", "temperature": -1},
            {"model": "soak", "prompt": "x", "n": 1000},
            {"model": "soak", "messages": [{"role": "wizard", "content": "x"}]},
            {"model": "soak", "prompt": [1, -5]},
            {"model": "soak", "prompt": "x", "logit_bias": {"1_0": 5}},
            b'{"model": "soak", "prompt": [',
        ]
        body = rng.choice(bodies)
        path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
        if isinstance(body, bytes):
            r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            r = await client.post(path, json=body)
        return r.status_code, None
    if kind == "oversized":
        r = await client.post("/v1/completions", json={"model": "soak", "prompt": "a" * (5 << 20)})
        return r.status_code, None
    if kind == "abandoned_stream":
        body = {"model": "soak", "prompt": prompt(rng, 20), "max_tokens": 200, "stream": True, "ignore_eos": True}
        async with client.stream("POST", "/v1/completions", json=body) as r:
            async for _ in r.aiter_lines():
                break  # leaves after the first chunk
            return r.status_code, None
    # abandoned_early: a long prompt, given up on before its first token
    body = {"model": "soak", "prompt": prompt(rng, 400), "max_tokens": 8}
    try:
        await client.post("/v1/completions", json=body, timeout=0.05)
    except httpx.TimeoutException:
        return 0, None
    return 200, None


async def drive(base: str, deadline: float, concurrency: int, seed: int, bar: tqdm) -> tuple[Counter[str], list[float]]:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while time.monotonic() < deadline:
                kind = rng.choices(KINDS, WEIGHTS)[0]
                try:
                    status, latency = await one_request(client, rng, kind)
                except httpx.HTTPError as exc:
                    status, latency = -1, None
                    statuses[f"{kind}:client_error:{type(exc).__name__}"] += 1
                statuses[f"{kind}:{status}"] += 1
                if latency is not None and status == 200:
                    latencies.append(latency)
                bar.update(1)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return statuses, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("EMBER_SMOLLM2_GGUF", "smollm2-135m-instruct"))
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--warmup-s", type=float, default=30.0, help="traffic before the memory baseline")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-memory-bytes", type=int, default=256 << 20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ember.cli",
        "serve",
        args.model,
        "--port",
        str(port),
        "--served-model-name",
        "soak",
        "--max-model-len",
        "1024",
        "--kv-cache-memory-bytes",
        str(args.kv_cache_memory_bytes),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    log_path = ROOT / "bench" / "out" / "soak-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not start; see " + str(log_path))
        started_rss = rss_bytes(server.pid)
        total_s = args.warmup_s + args.minutes * 60
        deadline = time.monotonic() + total_s
        samples: list[tuple[float, int]] = []
        baseline_rss = 0

        async def run() -> tuple[Counter[str], list[float]]:
            nonlocal baseline_rss
            with tqdm(desc="soak requests", unit="req", dynamic_ncols=True) as bar:
                traffic = asyncio.create_task(drive(base, deadline, args.concurrency, args.seed, bar))
                t0 = time.monotonic()
                while not traffic.done():
                    await asyncio.sleep(2)
                    elapsed = time.monotonic() - t0
                    samples.append((elapsed, rss_bytes(server.pid)))
                    if not baseline_rss and elapsed >= args.warmup_s:
                        baseline_rss = samples[-1][1]
                    bar.set_postfix(rss_mib=samples[-1][1] >> 20)
                return await traffic

        statuses, latencies = asyncio.run(run())
        idle_deadline = time.monotonic() + 60
        while True:
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
            gauges = {m[0]: float(m[1]) for m in re.findall(r"^(ember_\w+) ([0-9.e+-]+)$", metrics, re.M)}
            if gauges.get("ember_num_requests_running") == 0 and gauges.get("ember_kv_cache_usage_ratio") == 0:
                break
            if time.monotonic() > idle_deadline:
                break
            time.sleep(0.5)
        end_rss = rss_bytes(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        exit_status = server.wait(timeout=120)
    kv_line = next((line for line in log_path.read_text().splitlines() if "KV cache:" in line), "")
    five_xx = sum(n for key, n in statuses.items() if key.rsplit(":", 1)[-1].startswith("5"))
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "model": args.model,
        "minutes": args.minutes,
        "warmup_s": args.warmup_s,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "num_requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "num_5xx": five_xx,
        "valid_latency_p50_s": quantiles[49],
        "valid_latency_p99_s": quantiles[98],
        "rss_at_start_mib": started_rss / 2**20,
        "rss_after_warmup_mib": baseline_rss / 2**20,
        "rss_peak_mib": max(rss for _, rss in samples) / 2**20 if samples else 0,
        "rss_at_end_mib": end_rss / 2**20,
        "growth_after_warmup_mib": (end_rss - baseline_rss) / 2**20,
        "kv_pool_mib": args.kv_cache_memory_bytes / 2**20,
        "kv_log_line": kv_line.strip(),
        "final_kv_cache_usage": gauges.get("ember_kv_cache_usage_ratio"),
        "final_num_running": gauges.get("ember_num_requests_running"),
        "exit_status_after_sigterm": exit_status,
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    out = ROOT / "bench" / "out" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    ok = five_xx == 0 and result["final_kv_cache_usage"] == 0 and result["final_num_running"] == 0
    ok = ok and exit_status == 0 and result["growth_after_warmup_mib"] <= result["kv_pool_mib"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
