"""Running the OpenAI server in-process for tests: uvicorn on a free loopback port in a background thread."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from ember import AsyncEngine
from ember.server.app import ServerConfig, build_app
from ember.server.limits import uvicorn_config


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(engine: AsyncEngine, config: ServerConfig) -> Iterator[str]:
    """Serves `engine` until the block ends; yields the base URL (…/v1). The engine is shut down at the end."""
    port = free_port()
    app = build_app(engine, config)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, config.limits, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_healthy(f"http://127.0.0.1:{port}")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_healthy(root: str, timeout: float = 60.0) -> None:
    """Polls GET /health until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{root}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{root} not healthy after {timeout}s")
        time.sleep(0.1)


def wait_idle(engine: AsyncEngine, timeout: float = 30.0) -> dict[str, float]:
    """Waits until the engine runs nothing and its KV cache is empty; returns the stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = engine.stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["kv_cache_usage"] == 0.0:
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(f"engine still busy after {timeout}s: {stats}")
        time.sleep(0.05)


def check_sigterm_ends_streams(proc: subprocess.Popen[bytes], port: int, max_tokens: int) -> None:
    """Sends `ember serve` (process `proc` on `port`) SIGTERM while a long stream runs: after the grace period the
    engine aborts the request, so the stream ends properly (finish_reason "abort", then [DONE]), not cut off, and
    the drained shutdown exits 0."""
    body = {"prompt": "Go:", "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        proc.send_signal(signal.SIGTERM)
        events = [line for line in lines if line.startswith("data: ")]
    assert proc.wait(timeout=60) == 0
    assert events[-1] == "data: [DONE]"
    assert '"finish_reason":"abort"' in events[-2]
