"""Running one OpenAI request on the AsyncEngine: limits, streaming, disconnects and latency metrics."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request

from ember.lora import LoRARequest
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams
from ember.server.engine_client import EngineClient
from ember.server.errors import ApiError
from ember.server.metrics import ServerMetrics

T = TypeVar("T")

_request_ids = itertools.count()
"""Engine request ids of the server's requests."""


def resolve_max_tokens(prompt_len: int, max_tokens: int | None, max_model_len: int, prompt_param: str) -> int:
    """The max_tokens to run with: the room left in the context when None; a 400 with the numbers when too long.

    `prompt_param` is the body field that holds the prompt ("messages" or "prompt")."""
    if prompt_len >= max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has {prompt_len} "
            "tokens, leaving no room to generate. Shorten the prompt.",
            prompt_param,
        )
    if max_tokens is None:
        return max_model_len - prompt_len
    if max_tokens >= 1 and prompt_len + max_tokens > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). "
            "Reduce the prompt or max_tokens.",
            "max_tokens",
        )
    return max_tokens


class TrackedStream:
    """One engine request's stream (deltas or cumulative outputs), recording TTFT, inter-token and e2e latency."""

    def __init__(
        self,
        engine: EngineClient,
        metrics: ServerMetrics,
        token_ids: list[int],
        params: SamplingParams,
        priority: int,
        delta: bool,
        lora: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> None:
        self._engine = engine
        self.request_id = f"http-{next(_request_ids)}"
        # Only adapter (salted) requests pass lora_request (cache_salt), so engines without them serve the rest.
        extra: dict[str, object] = {} if lora is None else {"lora_request": lora}
        if cache_salt is not None:
            extra["cache_salt"] = cache_salt
        self._stream = engine.generate(
            token_ids, params, request_id=self.request_id, priority=priority, delta=delta, **extra
        )
        self._delta = delta
        self._metrics = metrics
        self._arrival = time.monotonic()
        self._last_token: float | None = None
        self.num_prompt_tokens = len(token_ids)
        self.num_cached_tokens = 0
        """Prompt tokens the engine found in its prefix cache."""
        self.num_generated = 0

    async def first(self) -> RequestOutput:
        """The first output; request errors (InvalidRequestError) surface here, before any byte is sent."""
        return self._record(await self._stream.__anext__())

    async def rest(self) -> AsyncIterator[RequestOutput]:
        """The outputs after the first."""
        async for out in self._stream:
            yield self._record(out)

    def abort(self) -> None:
        """Aborts the request if it still runs. Synchronous on purpose: it is called from `finally` blocks of
        cancelled tasks, where an await would be cancelled again, and while another task iterates the stream."""
        self._engine.abort(self.request_id)

    def _record(self, out: RequestOutput) -> RequestOutput:
        self.num_cached_tokens = max(self.num_cached_tokens, out.num_cached_tokens)
        num_tokens = sum(len(c.token_ids) for c in out.outputs)
        new = num_tokens if self._delta else num_tokens - self.num_generated
        now = time.monotonic()
        if new:
            if self._last_token is None:
                self._metrics.observe(self._metrics.ttft, now - self._arrival)
            else:
                self._metrics.observe(self._metrics.itl, (now - self._last_token) / new, new)
            self._last_token = now
            self.num_generated += new
        if out.finished:
            self._metrics.observe(self._metrics.e2e, now - self._arrival)
        return out


async def merge(streams: list[TrackedStream], firsts: list[RequestOutput]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleaves several streams as (stream index, output), each starting with its already-taken first output."""
    for i, first in enumerate(firsts):
        yield i, first
    if len(streams) == 1:
        if not firsts[0].finished:
            async for out in streams[0].rest():
                yield 0, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | None]] = asyncio.Queue()

    async def pump(i: int, stream: TrackedStream) -> None:
        try:
            async for out in stream.rest():
                await queue.put((i, out))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams) if not firsts[i].finished]
    try:
        remaining = len(tasks)
        while remaining:
            i, out = await queue.get()
            if out is None:
                remaining -= 1
            else:
                yield i, out
        for task in tasks:
            task.result()
    finally:
        for task in tasks:
            task.cancel()


async def unless_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Runs `work`, cancelling it if the client hangs up first (the request body is already read).

    Only one watcher may read `request.receive()` at a time: call it once per request."""
    task = asyncio.create_task(work())

    async def wait_for_disconnect() -> None:
        while True:
            message: dict[str, Any] = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.create_task(wait_for_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            raise ApiError(499, "the client closed the connection")
        return task.result()
    finally:
        watcher.cancel()
        task.cancel()
