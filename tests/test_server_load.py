"""The server under load: many concurrent streams with early disconnects, the queue limit, and SIGTERM."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from ember import AsyncEngine
from ember.server.app import ServerConfig

from server_harness import check_sigterm_ends_streams, free_port, running_server, wait_healthy, wait_idle

MODEL = "smollm2-load"
PROMPTS = [f"Write a short note about the number {i}." for i in range(8)]
NUM_CLIENTS = 64


def test_64_concurrent_streams_with_disconnects(default_gguf: Path) -> None:
    engine = AsyncEngine(str(default_gguf), kv_cache_memory_bytes=128 << 20, max_model_len=1024, max_num_seqs=64)
    with running_server(engine, ServerConfig(model_name=MODEL)) as base_url:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=300)

        async def expected(prompt: str) -> str:
            out = await client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
            )
            return out.choices[0].text

        async def stream(i: int) -> str | None:
            """Streams one prompt; every fourth client hangs up after three chunks (returns None)."""
            chunks = await client.completions.create(
                model=MODEL,
                prompt=PROMPTS[i % len(PROMPTS)],
                max_tokens=24,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            text = ""
            count = 0
            async for chunk in chunks:
                count += 1
                text += chunk.choices[0].text if chunk.choices else ""
                if i % 4 == 3 and count == 3:
                    await chunks.close()
                    return None
            return text

        async def run() -> tuple[list[str], list[str | None], float]:
            wanted = [await expected(p) for p in PROMPTS]
            results = await asyncio.gather(*(stream(i) for i in range(NUM_CLIENTS)))
            # Responsive after the burst: a health check answers at once.
            start = time.monotonic()
            async with httpx.AsyncClient() as raw:
                assert (await raw.get(base_url.removesuffix("/v1") + "/health")).status_code == 200
            return wanted, results, time.monotonic() - start

        wanted, results, health_latency = asyncio.run(run())
        completed = [(i, text) for i, text in enumerate(results) if text is not None]
        assert len(completed) == NUM_CLIENTS - NUM_CLIENTS // 4
        for i, text in completed:
            assert text == wanted[i % len(PROMPTS)], f"client {i}"
        assert health_latency < 5.0
        stats = wait_idle(engine)
        assert stats["kv_cache_usage"] == 0.0
        assert engine.num_unfinished_requests == 0


def test_queue_limit_answers_503(default_gguf: Path) -> None:
    engine = AsyncEngine(str(default_gguf), kv_cache_memory_bytes=64 << 20, max_model_len=1024)
    with running_server(engine, ServerConfig(model_name=MODEL, max_pending_requests=2)) as base_url:
        body = {"model": MODEL, "prompt": "Go:", "max_tokens": 600, "temperature": 0, "stream": True}
        body["ignore_eos"] = True
        url = f"{base_url}/completions"
        with (
            httpx.Client(timeout=60) as raw,
            raw.stream("POST", url, json=body) as first,
            raw.stream("POST", url, json=body) as second,
        ):
            assert first.status_code == 200 and second.status_code == 200
            r = raw.post(url, json={**body, "stream": False, "max_tokens": 2})
            assert r.status_code == 503
            assert "limit 2" in r.json()["error"]["message"]
        wait_idle(engine)
        r = httpx.post(f"{base_url}/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200


def test_sigterm_shuts_down_cleanly(default_gguf: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "ember.cli", "serve", str(default_gguf), "--port", str(port)]
    command += ["--kv-cache-memory-bytes", str(64 << 20), "--max-model-len", "1024", "--shutdown-timeout", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        check_sigterm_ends_streams(proc, port, max_tokens=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert "Shutting down" in log or "Finished server process" in log, log
