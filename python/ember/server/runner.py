"""Running `ember serve`: load the model into an AsyncEngine (or replicas behind a router), build the app, serve it
with uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
from collections.abc import Generator
from types import FrameType

import uvicorn

from ember._cli_options import device_kwargs
from ember.async_engine import AsyncEngine
from ember.data_parallel.config import DataParallelConfig
from ember.data_parallel.router import ReplicaRouter
from ember.server.app import ServerConfig, build_app
from ember.server.cli import served_name
from ember.server.engine_client import EngineClient
from ember.server.errors import ApiError
from ember.server.limits import uvicorn_config
from ember.server.lora_modules import parse_lora_modules
from ember.server.request_limits import RequestLimits


def run_server(args: argparse.Namespace) -> int:
    """Loads the model, then serves until SIGINT/SIGTERM; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"ember: loading {args.model}...", file=sys.stderr, flush=True)
    try:
        lora_modules = parse_lora_modules(args.lora_modules)
    except ValueError as exc:
        raise SystemExit(f"ember serve: {exc}") from None
    if lora_modules and not args.enable_lora:
        raise SystemExit("ember serve: --lora-modules needs --enable-lora")
    engine = _load_engine(args)
    server_config = ServerConfig(
        enable_lora=args.enable_lora,
        lora_modules=lora_modules,
        model_name=served_name(args.model, args.served_model_name),
        api_key=args.api_key,
        max_pending_requests=args.max_pending_requests,
        metrics_need_key=args.metrics_need_api_key,
        limits=RequestLimits(
            max_body_bytes=args.max_request_body_bytes,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
        ),
    )
    try:
        app = build_app(engine, server_config)
    except ApiError as exc:  # an adapter of --lora-modules that is not a PEFT folder
        raise SystemExit(f"ember serve: --lora-modules: {exc.message}") from None
    print(
        f"ember: serving '{server_config.model_name}' on http://{args.host}:{args.port}/v1 "
        f"(max_model_len {engine.max_model_len}{_replicas_note(engine)}"
        f"{', API key required' if server_config.api_key else ''})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn_config(
        app,
        args.host,
        args.port,
        server_config.limits,
        log_level="info",
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    _GracefulServer(config, engine, args.shutdown_timeout / 2).run()
    return 0


def _load_engine(args: argparse.Namespace) -> EngineClient:
    """One AsyncEngine, or a ReplicaRouter over `--data-parallel-size` replicas (or any size on Ray)."""
    engine_args = {
        "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "kv_cache_memory_bytes": args.kv_cache_memory_bytes,
        "num_threads": args.threads,
        **device_kwargs(args),
        "seed": args.seed,
        "enable_prefix_caching": not args.no_prefix_caching,
        "scheduling_policy": args.scheduling_policy,
        "speculative_config": args.speculative_config,
    }
    if args.enable_lora:
        engine_args.update(
            enable_lora=True,
            max_loras=args.max_loras,
            max_lora_rank=args.max_lora_rank,
            max_cpu_loras=args.max_cpu_loras,
        )
    if args.data_parallel_size == 1 and args.distributed_executor_backend != "ray":
        return AsyncEngine(args.model, **engine_args)
    config = DataParallelConfig(
        data_parallel_size=args.data_parallel_size,
        backend=args.distributed_executor_backend or "mp",
        routing=args.routing,
        load_weight=args.routing_load_weight,
        threads_per_replica=args.threads_per_replica,
        ray_address=args.ray_address,
    )
    return ReplicaRouter(args.model, config, **engine_args)


def _replicas_note(engine: EngineClient) -> str:
    if not isinstance(engine, ReplicaRouter):
        return ""
    return f", {engine.config.data_parallel_size} replicas on {engine.config.backend}"


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, plus: after a shutdown signal, in-flight requests get `grace` seconds to finish, then
    the engine aborts them, so every stream still ends with its final chunk and [DONE]. A drained shutdown is a
    clean exit: the signal is not raised again afterwards, so `ember serve` exits 0."""

    def __init__(self, config: uvicorn.Config, engine: EngineClient, grace: float) -> None:
        super().__init__(config)
        self._engine = engine
        self._grace = grace

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            timer = threading.Timer(self._grace, self._abort_in_flight)
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    def _abort_in_flight(self) -> None:
        if self._engine.alive and self._engine.num_unfinished_requests:
            print(f"ember: aborting {self._engine.num_unfinished_requests} requests still running", file=sys.stderr)
            self._engine.abort_all()
