"""The engine side of one replica: an AsyncEngine that serves the router, in a local process or a Ray actor."""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ember.async_engine import AsyncEngine
from ember.lora import LoRARequest
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams

_MAX_EARLY_ABORTS = 4096


@dataclass(frozen=True)
class ReplicaInfo:
    """What a replica reports once its model is loaded."""

    model_name: str
    """The model's display name."""
    max_model_len: int
    """The longest sequence it accepts."""
    block_size: int
    """Tokens per KV-cache block."""
    num_blocks: int
    """KV-cache blocks of its engine."""
    pid: int
    """Its process id."""
    node: str
    """The host it runs on."""


@dataclass(frozen=True)
class ReplicaRequest:
    """What a replica needs to run one request (sent over the wire as it is)."""

    token_ids: list[int]
    """The prompt."""
    params: SamplingParams
    """Its sampling parameters (the replica's engine validates them)."""
    priority: int
    """Its scheduling priority: lower values are served first (an engine scheduling "fcfs" accepts only 0)."""
    delta: bool
    """Whether outputs carry only what is new (as `AsyncEngine.generate`'s `delta`)."""
    lora_request: LoRARequest | None = None
    """The LoRA adapter it runs with (None: the base model); the replica's engine loads it on first use."""
    cache_salt: str | None = None
    """Its cache salt (None: none): it shares cached prefixes only with requests of the same salt."""


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica's answer to a heartbeat."""

    stats: dict[str, float]
    """Its engine's counters and gauges (`AsyncEngine.stats()`)."""
    num_unfinished_sequences: int
    """Sequences it is running or queueing."""
    pid: int
    """Its process id (changes when it was restarted)."""


class ReplicaWorker:
    """One replica's engine, driven by the router: start requests, stream their outputs, abort them."""

    def __init__(self, model: str | None, engine_args: dict[str, Any]) -> None:
        self.engine = AsyncEngine(model, **engine_args)
        self._active: set[str] = set()
        self._pending_aborts: set[str] = set()
        # Aborts of ids not started yet (a message may overtake the request it aborts); bounded, since an
        # abort may also come after its request ended.
        self._early_aborts: OrderedDict[str, None] = OrderedDict()

    def info(self) -> ReplicaInfo:
        """The replica's model limits and where it runs."""
        e = self.engine
        return ReplicaInfo(e.model_name, e.max_model_len, e.block_size, e.num_blocks, os.getpid(), socket.gethostname())

    def status(self) -> ReplicaStatus:
        """The heartbeat answer."""
        return ReplicaStatus(self.engine.stats(), self.engine.num_unfinished_sequences, os.getpid())

    async def generate(self, request_id: str, request: ReplicaRequest) -> AsyncIterator[RequestOutput]:
        """Streams one request's outputs (as `AsyncEngine.generate`)."""
        self._active.add(request_id)
        if request_id in self._early_aborts:
            del self._early_aborts[request_id]
            self._pending_aborts.add(request_id)
        stream = self.engine.generate(
            request.token_ids,
            request.params,
            request_id=request_id,
            priority=request.priority,
            delta=request.delta,
            lora_request=request.lora_request,
            cache_salt=request.cache_salt,
        )
        try:
            async for out in stream:
                # An abort that came before the engine knew the id is applied now.
                if request_id in self._pending_aborts and not out.finished:
                    self._pending_aborts.discard(request_id)
                    self.engine.abort(request_id)
                yield out
        finally:
            self._active.discard(request_id)
            self._pending_aborts.discard(request_id)
            await stream.aclose()

    def abort(self, request_id: str) -> None:
        """Aborts a request: its stream ends with finish_reason "abort"."""
        if request_id not in self._active:
            self._early_aborts[request_id] = None
            while len(self._early_aborts) > _MAX_EARLY_ABORTS:
                self._early_aborts.popitem(last=False)
        elif not self.engine.abort(request_id):
            self._pending_aborts.add(request_id)

    async def unload_lora(self, lora_int_id: int) -> bool:
        """Unloads a LoRA adapter (an error while requests use it); False when it was not loaded."""
        return await self.engine.unload_lora(lora_int_id)

    async def reset_prefix_cache(self) -> bool:
        """Forgets cached prefixes; False when blocks are in use."""
        return await self.engine.reset_prefix_cache()

    async def shutdown(self) -> None:
        """Aborts what runs and stops the engine."""
        await self.engine.shutdown()
