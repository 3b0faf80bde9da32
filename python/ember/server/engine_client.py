"""What the OpenAI server needs from the engine behind it: an `AsyncEngine`, or a `ReplicaRouter` in front of
several. Anything with these members can be served with `build_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ember._core import Tokenizer
from ember.lora import LoRARequest
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams


class EngineClient(Protocol):
    """The engine API the server's handlers call."""

    tokenizer: Tokenizer
    max_model_len: int

    def generate(
        self,
        prompt: list[int],
        sampling_params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        delta: bool = False,
        lora_request: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams one request's outputs (with a LoRA adapter when given; the server passes one only when LoRA
        is enabled; with a cache salt when the body has one)."""
        ...

    def abort(self, request_id: str) -> bool:
        """Aborts a request; its stream ends with finish_reason "abort"."""
        ...

    def abort_all(self) -> None:
        """Aborts every request in flight."""
        ...

    def stats(self) -> dict[str, float]:
        """Engine counters and gauges."""
        ...

    @property
    def alive(self) -> bool:
        """Whether requests can be served."""
        ...

    @property
    def num_unfinished_requests(self) -> int:
        """Requests whose streams have not ended."""
        ...

    @property
    def num_unfinished_sequences(self) -> int:
        """Sequences (n per request) whose streams have not ended."""
        ...

    async def shutdown(self) -> None:
        """Stops serving."""
        ...
