"""`ember serve`: its options and the uvicorn runner."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from ember._cli_options import add_device_options, device_kwargs
from ember.async_engine import AsyncEngine
from ember.models import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ember serve`: listening, access, limits and engine sizing."""
    parser.add_argument(
        "model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help="model to serve (default: %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("EMBER_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $EMBER_API_KEY, else no key)",
    )
    parser.add_argument(
        "--served-model-name", default=None, help="the model name clients send (default: the MODEL argument)"
    )
    parser.add_argument(
        "--max-pending-requests",
        type=int,
        default=1024,
        help="requests in flight beyond this get 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish on SIGINT/SIGTERM before aborting them (default: %(default)s)",
    )
    engine = parser.add_argument_group("engine")
    engine.add_argument("--max-model-len", type=int, default=None, help="longest prompt plus output, in tokens")
    engine.add_argument("--max-num-seqs", type=int, default=256, help="most requests per step (default: %(default)s)")
    engine.add_argument("--max-num-batched-tokens", type=int, default=None, help="token budget of one step")
    engine.add_argument(
        "--kv-cache-memory-bytes", type=int, default=None, help="KV-cache size on the CPU (default: automatic)"
    )
    engine.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    add_device_options(engine)
    engine.add_argument("--seed", type=int, default=0, help="engine seed for unseeded requests (default: 0)")
    engine.add_argument("--no-prefix-caching", action="store_true", help="turn automatic prefix caching off")


def served_name(model: str, explicit: str | None) -> str:
    """The model name the API uses: --served-model-name, else the MODEL argument (a file's stem for paths)."""
    if explicit:
        return explicit
    path = Path(model)
    return path.stem if path.suffix == ".gguf" else model


def run(args: argparse.Namespace) -> int:
    """Loads the model, then serves until SIGINT/SIGTERM; returns the exit status."""
    # Imported here so that `ember generate` and `ember chat` start without loading FastAPI.
    from ember.server.app import ServerConfig, build_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"ember: loading {args.model}...", file=sys.stderr, flush=True)
    engine = AsyncEngine(
        args.model,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        num_threads=args.threads,
        **device_kwargs(args),
        seed=args.seed,
        enable_prefix_caching=not args.no_prefix_caching,
    )
    config = ServerConfig(
        model_name=served_name(args.model, args.served_model_name),
        api_key=args.api_key,
        max_pending_requests=args.max_pending_requests,
    )
    app = build_app(engine, config)
    print(
        f"ember: serving '{config.model_name}' on http://{args.host}:{args.port}/v1 "
        f"(max_model_len {engine.max_model_len}{', API key required' if config.api_key else ''})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=args.shutdown_timeout
    )
    _GracefulServer(config, engine, args.shutdown_timeout / 2).run()
    return 0


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, plus: after a shutdown signal, in-flight requests get `grace` seconds to finish, then
    the engine aborts them, so every stream still ends with its final chunk and [DONE]."""

    def __init__(self, config: uvicorn.Config, engine: AsyncEngine, grace: float) -> None:
        super().__init__(config)
        self._engine = engine
        self._grace = grace

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            timer = threading.Timer(self._grace, self._abort_in_flight)
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)

    def _abort_in_flight(self) -> None:
        if self._engine.alive and self._engine.num_unfinished_requests:
            print(f"ember: aborting {self._engine.num_unfinished_requests} requests still running", file=sys.stderr)
            self._engine.abort_all()
