"""`LoRARequest`: which LoRA adapter (a PEFT folder) a request runs with (vLLM's name and fields)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ember._core import InvalidRequestError

_U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class LoRARequest:
    """A PEFT LoRA adapter: `lora_path` holds adapter_config.json and adapter_model.safetensors.

    `lora_int_id` (1 to 2**32 - 1) identifies the adapter in the engine: it keys the loaded set
    and the prefix cache, so one id must always name the same folder. The adapter is loaded on
    first use and kept among the engine's `max_cpu_loras` most recently used ones.
    """

    lora_name: str
    lora_int_id: int
    lora_path: str | os.PathLike[str]

    def __post_init__(self) -> None:
        if not isinstance(self.lora_name, str) or not self.lora_name:
            raise InvalidRequestError(f"lora_name must be a non-empty str, got {self.lora_name!r}")
        lora_id = self.lora_int_id
        if isinstance(lora_id, bool) or not isinstance(lora_id, int) or not 1 <= lora_id <= _U32_MAX:
            raise InvalidRequestError(f"lora_int_id must be an integer in [1, {_U32_MAX}], got {lora_id!r}")
        if not isinstance(self.lora_path, str | os.PathLike):
            raise InvalidRequestError(f"lora_path must be a str or path, got {type(self.lora_path).__name__}")

    def as_tuple(self) -> tuple[str, int, str]:
        """`(lora_name, lora_int_id, lora_path)` as the Rust engine takes it."""
        return (self.lora_name, self.lora_int_id, os.fspath(self.lora_path))


def normalize_lora(
    lora_request: LoRARequest | Sequence[LoRARequest | None] | None, num_prompts: int
) -> list[tuple[str, int, str] | None]:
    """One adapter tuple (or None for the base model) per prompt, from one request for all or a list."""
    if lora_request is None or isinstance(lora_request, LoRARequest):
        return [None if lora_request is None else lora_request.as_tuple()] * num_prompts
    if isinstance(lora_request, str | bytes) or not isinstance(lora_request, Sequence):
        raise InvalidRequestError(
            f"lora_request must be a LoRARequest, a list of them or None, got {type(lora_request).__name__}"
        )
    if len(lora_request) != num_prompts:
        raise InvalidRequestError(
            f"lora_request has {len(lora_request)} entries but there are {num_prompts} prompts; give one per prompt"
        )
    out: list[tuple[str, int, str] | None] = []
    for item in lora_request:
        if item is not None and not isinstance(item, LoRARequest):
            raise InvalidRequestError(f"lora_request entries must be LoRARequest or None, got {type(item).__name__}")
        out.append(None if item is None else item.as_tuple())
    return out
