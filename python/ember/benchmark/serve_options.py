"""The options of `ember bench serve`, kept apart from the benchmark so the `ember` command can offer them
without importing the HTTP client."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
ENDPOINT_PATHS = {"completions": "/completions", "chat": "/chat/completions"}


def _positive(kind: type[int] | type[float]) -> Any:
    """An argparse type converting to `kind` and rejecting values that are not > 0 (NaN included)."""

    def convert(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" message
    return convert


def _json_object(text: str) -> dict[str, Any]:
    """An argparse type parsing a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `ember bench serve` to `parser`."""
    add = parser.add_argument
    add("--base-url", default=DEFAULT_BASE_URL, help="the server's OpenAI API root (default: %(default)s)")
    add("--api-key", default=os.environ.get("EMBER_API_KEY"), help="bearer token (default: $EMBER_API_KEY, or none)")
    add("--model", default=None, help="model to request (default: the first one GET /models lists)")
    add("--endpoint", choices=sorted(ENDPOINT_PATHS), default="completions", help="API (default: %(default)s)")
    add("--num-prompts", type=_positive(int), default=200, help="requests to send (default: %(default)s)")
    add(
        "--request-rate",
        type=_positive(float),
        default=math.inf,
        help="mean requests per second, Poisson arrivals seeded by --seed (default: inf, all sent at once)",
    )
    add("--max-concurrency", type=_positive(int), default=None, help="most requests in flight (default: no cap)")
    add(
        "--input-len",
        type=_positive(int),
        default=200,
        help="approximate prompt tokens: one word of a built-in list each, plus an index (default: %(default)s)",
    )
    add(
        "--shared-prefix-len",
        type=int,
        default=0,
        help="start the prompts with one of --shared-prefix-groups shared prefixes of about this many tokens, "
        "interleaved (default: 0, every prompt its own)",
    )
    add(
        "--shared-prefix-groups",
        type=_positive(int),
        default=8,
        help="distinct shared prefixes with --shared-prefix-len (default: %(default)s)",
    )
    add("--output-len", type=_positive(int), default=128, help="max_tokens of each request (default: %(default)s)")
    add("--temperature", type=float, default=0.0, help="sampling temperature (default: %(default)s)")
    add(
        "--extra-body",
        type=_json_object,
        default=None,
        help="JSON object merged into every request body, e.g. '{\"ignore_eos\": true}' where the server has it",
    )
    add(
        "--timeout",
        type=_positive(float),
        default=600.0,
        help="seconds to wait to connect or for the next chunk (default: %(default)s)",
    )
    add(
        "--seed",
        type=int,
        default=0,
        help="seed for prompts and arrivals (default: 0); change it to rerun without the server's prefix cache hitting",
    )
    add(
        "--out",
        type=Path,
        default=Path("bench/out"),
        help="JSON file, or folder for serve-<date>.json (default: %(default)s)",
    )
    add("--no-progress", action="store_true", help="hide the progress bar")
