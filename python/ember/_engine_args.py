"""Type and range checks of the engine's construction arguments, before they reach Rust.

Rust checks the values that need the model (context length, device, dtype); this checks what a
Python caller can get wrong in type: a bool, a float or a negative number where a count goes,
or an unknown argument. Every failure is an `InvalidRequestError` naming the argument.
"""

from __future__ import annotations

import json
from typing import Any

from ember._core import InvalidRequestError, ModelLoadError
from ember.models import resolve_model

_U64_MAX = 2**64 - 1

_COUNTS = {
    "max_model_len": True,
    "max_num_seqs": False,
    "max_num_batched_tokens": True,
    "kv_cache_memory_bytes": True,
    "block_size": False,
    "num_threads": True,
    "max_loras": False,
    "max_lora_rank": False,
    "max_cpu_loras": True,
}
"""Arguments that are counts of at least 1, and whether each may be None."""

_OTHERS = {
    "seed",
    "dtype",
    "kv_cache_dtype",
    "enable_prefix_caching",
    "structured_jump_forward",
    "enable_lora",
    "device",
    "gpu_memory_utilization",
    "scheduling_policy",
    "speculative_config",
}


def check_engine_args(args: dict[str, Any]) -> None:
    """Raises InvalidRequestError for an unknown argument or a value of the wrong type or range.

    A `speculative_config` dict is replaced in `args` by its JSON text, the form Rust parses."""
    for name, value in args.items():
        if name in _COUNTS:
            if value is None and _COUNTS[name]:
                continue
            _check_int(name, value, 1)
        elif name == "seed":
            _check_int(name, value, 0)
        elif name in ("dtype", "kv_cache_dtype", "device", "scheduling_policy"):
            if not isinstance(value, str):
                raise InvalidRequestError(f"{name} must be a str, got {type(value).__name__}")
        elif name in ("enable_prefix_caching", "structured_jump_forward", "enable_lora"):
            if not isinstance(value, bool):
                raise InvalidRequestError(f"{name} must be a bool, got {type(value).__name__}")
        elif name == "speculative_config":
            args[name] = _speculative_config_json(value)
        elif name == "gpu_memory_utilization":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequestError(f"{name} must be a number in (0, 1], got {type(value).__name__}")
        else:
            known = ", ".join(sorted([*_COUNTS, *_OTHERS]))
            raise InvalidRequestError(f"unknown engine argument '{name}'; known: {known}")


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= _U64_MAX:
        raise InvalidRequestError(f"{name} must be an integer in [{low}, {_U64_MAX}], got {value}")


def _speculative_config_json(value: object) -> str | None:
    """`speculative_config` (a dict, JSON text or None) as JSON text for Rust, which checks its keys.

    A draft model's `model` is resolved as the target's is (a known name or a local path)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value  # Rust names the JSON error
    elif isinstance(value, dict):
        parsed = dict(value)
    else:
        raise InvalidRequestError(f"speculative_config must be a dict, a JSON str or None, got {type(value).__name__}")
    if isinstance(parsed, dict) and parsed.get("method") == "draft_model" and isinstance(parsed.get("model"), str):
        try:
            parsed["model"] = resolve_model(parsed["model"])
        except ModelLoadError as e:
            raise InvalidRequestError(f"speculative_config.model: {e}") from None
    try:
        return json.dumps(parsed)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"speculative_config must be JSON-serializable: {e}") from None
