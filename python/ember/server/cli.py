"""`ember serve`: its options; `ember.server.runner` loads the engine and runs uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ember._cli_options import add_device_options
from ember.models import DEFAULT_MODEL
from ember.server.request_limits import DEFAULT_MAX_BODY_BYTES, RequestLimits


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
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $EMBER_API_KEY, else no key)",
    )
    parser.add_argument(
        "--served-model-name", default=None, help="the model name clients send (default: the MODEL argument)"
    )
    parser.add_argument(
        "--max-pending-requests",
        type=int,
        default=1024,
        help="sequences in flight (prompts times n) beyond this get 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-need-api-key",
        action="store_true",
        help="require the API key on /metrics too (/health always stays open)",
    )
    parser.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=RequestLimits.header_timeout_s,
        help="seconds a client may take to send request headers before the connection is closed (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=RequestLimits.body_timeout_s,
        help="seconds a client may take to send a request body before it gets 408 (default: %(default)s)",
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
    engine.add_argument(
        "--scheduling-policy",
        choices=["fcfs", "priority"],
        default="fcfs",
        help="admission order of waiting requests: fcfs (first come, first served; requests must leave "
        "`priority` at 0) or priority (lowest `priority` first, then arrival) (default: %(default)s)",
    )
    engine.add_argument(
        "--speculative-config",
        default=None,
        metavar="JSON",
        help='speculative decoding, e.g. \'{"method": "ngram", "num_speculative_tokens": 4}\' or '
        '\'{"method": "draft_model", "model": PATH, "num_speculative_tokens": 4}\'; outputs are unchanged',
    )
    _add_lora_arguments(parser)
    _add_data_parallel_arguments(parser)


def _add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    """LoRA adapters chosen per request by the `model` field."""
    lora = parser.add_argument_group("LoRA adapters (PEFT folders, picked per request by `model`)")
    lora.add_argument("--enable-lora", action="store_true", help="let requests run with LoRA adapters")
    lora.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="adapters served from the start, each under its own model name (needs --enable-lora)",
    )
    lora.add_argument(
        "--max-loras", type=int, default=1, help="most distinct adapters among running requests (default: 1)"
    )
    lora.add_argument("--max-lora-rank", type=int, default=16, help="highest adapter rank accepted (default: 16)")
    lora.add_argument("--max-cpu-loras", type=int, default=None, help="adapters kept loaded (default: --max-loras)")


def _add_data_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """Replicas of the engine behind the one endpoint (see `ember.data_parallel`)."""
    dp = parser.add_argument_group("data parallel (several engines behind this one endpoint)")
    dp.add_argument(
        "--data-parallel-size",
        type=int,
        default=1,
        help="engine replicas; requests go to the one with the longest cached prefix unless it is overloaded "
        "(default: %(default)s)",
    )
    dp.add_argument(
        "--distributed-executor-backend",
        choices=["mp", "ray"],
        default=None,
        help="mp: one process per replica on this machine (default with --data-parallel-size > 1); ray: one Ray "
        "actor per replica, placed by Ray on any node of the cluster (pip install 'ember[ray]')",
    )
    dp.add_argument(
        "--threads-per-replica",
        type=int,
        default=None,
        help="CPU threads of each replica (default: --threads, or all cores, split evenly)",
    )
    dp.add_argument(
        "--routing",
        choices=["prefix", "load"],
        default="prefix",
        help="prefix: longest cached prefix unless overloaded; load: least loaded, blind to prefixes "
        "(default: %(default)s)",
    )
    dp.add_argument(
        "--routing-load-weight",
        type=float,
        default=1.0,
        help="beta in: score = matched prefix fraction - beta * relative load (default: %(default)s)",
    )
    dp.add_argument(
        "--ray-address",
        default=None,
        help="the Ray cluster to join (default: $RAY_ADDRESS, a cluster started on this machine, else a local one)",
    )


def served_name(model: str, explicit: str | None) -> str:
    """The model name the API uses: --served-model-name, else the MODEL argument (a file's stem for paths)."""
    if explicit:
        return explicit
    path = Path(model)
    return path.stem if path.suffix == ".gguf" else model


def run(args: argparse.Namespace) -> int:
    """Loads the model, then serves until SIGINT/SIGTERM; returns the exit status."""
    # Imported here so that `ember generate` and `ember chat` start without loading the web stack.
    from ember.server.runner import run_server

    return run_server(args)
