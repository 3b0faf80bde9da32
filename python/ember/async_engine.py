"""`AsyncEngine`: the asyncio API for serving stacks, with the engine loop on a background thread."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from ember import _core
from ember._core import InvalidRequestError, Tokenizer
from ember._engine_args import check_engine_args
from ember._engine_loop import AbortCommand, AddCommand, CallCommand, EngineLoop, Sink
from ember._inputs import (
    Conversation,
    Prompt,
    PromptType,
    check_cache_salt,
    normalize_conversations,
    normalize_prompts,
    one_conversation,
    one_prompt,
)
from ember._streams import LiveRequests
from ember._tracking import RequestState
from ember.lora import LoRARequest, normalize_lora
from ember.models import resolve_model
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams


class AsyncEngine:
    """An LLM for asyncio code: `async for out in engine.generate(...)` streams one request.

    Takes the same arguments as `ember.Engine`. The model is loaded in the
    constructor; then a daemon thread steps the engine whenever a request is
    unfinished, with the GIL released while it computes, so the event loop
    stays free. Every method may be called from any thread and any event loop.
    Cancelling a consumer (task cancel, `aclose()`, leaving the `async for`)
    aborts its request and frees its KV-cache blocks.

    >>> async with AsyncEngine() as engine:
    ...     async for out in engine.generate("Hello", SamplingParams(max_tokens=8)):
    ...         print(out.outputs[0].text)
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, **engine_args: Any) -> None:
        check_engine_args(engine_args)
        self.model_path = resolve_model(model)
        """The local file or folder the model was loaded from."""
        core = _core.Engine(self.model_path, **engine_args)
        self._read_lora = core.read_lora
        self._compile_structured = core.compile_structured
        self.tokenizer: Tokenizer = core.tokenizer
        """The model's tokenizer."""
        self.max_model_len: int = core.max_model_len
        """The longest sequence (prompt plus generated tokens) a request may reach."""
        self.model_name: str = core.model_name
        """The model's display name."""
        self.num_blocks: int = core.num_blocks
        """KV-cache blocks of the engine."""
        self.block_size: int = core.block_size
        """Tokens per KV-cache block (the unit of prefix caching)."""
        self._loop = EngineLoop(core)
        self._counter = itertools.count()
        self._live: LiveRequests[list[str]] = LiveRequests(len)
        """Each live request's sub-request ids."""

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        delta: bool = False,
        lora_request: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams one prompt's completion (a str or a list of token ids).

        Yields cumulative RequestOutputs (everything so far) as tokens arrive;
        with `delta=True` each holds only the completions that changed and only
        their new text and tokens. The last one has `finished=True`. Invalid
        parameters raise `InvalidRequestError` at the first iteration. If the
        consumer yields fewer times than the engine steps, outputs are merged.
        Text is tokenized on a worker thread, so a long prompt never stalls the event loop.
        `cache_salt` (a non-empty str) lets the request reuse cached prefixes only of requests
        with the same salt (as `Engine.generate`).
        """
        checked = one_prompt(prompt, "generate")
        (item,) = await asyncio.to_thread(normalize_prompts, [checked], self.tokenizer)
        async for out in self._run(item, sampling_params, request_id, priority, delta, lora_request, cache_salt):
            yield out

    async def chat(
        self,
        messages: Conversation,
        sampling_params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        delta: bool = False,
        add_generation_prompt: bool = True,
        lora_request: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams the answer to one conversation (rendered with the chat template); like `generate`."""
        conversation = one_conversation(messages, "chat")
        (item,) = await asyncio.to_thread(normalize_conversations, conversation, self.tokenizer, add_generation_prompt)
        async for out in self._run(item, sampling_params, request_id, priority, delta, lora_request, cache_salt):
            yield out

    def abort(self, request_id: str) -> bool:
        """Aborts a running request (its stream ends with finish_reason "abort"); False if unknown."""
        child_ids = self._live.get(request_id)
        if child_ids is None:
            return False
        self._loop.post(AbortCommand(list(child_ids)))
        return True

    def abort_all(self) -> None:
        """Aborts every request in flight; their streams end with finish_reason "abort"."""
        self._loop.post(AbortCommand(None))

    def stats(self) -> dict[str, float]:
        """Engine counters and gauges as of the last step (never waits for the engine)."""
        return self._loop.stats

    async def call(self, fn: Callable[[_core.Engine], Any]) -> Any:
        """Runs `fn(core_engine)` on the engine thread between steps and returns its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loop.post(CallCommand(fn, future))
        return await future

    async def unload_lora(self, lora_int_id: int) -> bool:
        """Unloads a LoRA adapter (an error while requests use it); False if it was not loaded."""
        return bool(await self.call(lambda core: core.unload_lora(lora_int_id)))

    async def reset_prefix_cache(self) -> bool:
        """Forgets cached prefixes; False if blocks are in use and nothing was reset."""
        return bool(await self.call(lambda core: core.reset_prefix_cache()))

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs (False after shutdown or an internal error)."""
        return self._loop.alive

    @property
    def num_unfinished_requests(self) -> int:
        """Requests whose streams have not ended yet."""
        return self._live.num_requests

    @property
    def num_unfinished_sequences(self) -> int:
        """Sequences (completions: n per request) whose streams have not ended yet."""
        return self._live.num_sequences

    async def shutdown(self) -> None:
        """Aborts every request in flight (their streams end with "abort") and stops the engine thread."""
        self._loop.stop()
        await asyncio.to_thread(self._loop.join)

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    async def _run(
        self,
        item: Prompt,
        sampling_params: SamplingParams | None,
        request_id: str | None,
        priority: int,
        delta: bool,
        lora_request: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Submits one request and yields its outputs until it finishes; aborts it if left early."""
        (lora,) = normalize_lora(lora_request, 1)
        salt = check_cache_salt(cache_salt)
        params = sampling_params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidRequestError(f"priority must be an int, got {type(priority).__name__}")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidRequestError(f"request_id must be a str, got {type(request_id).__name__}")
        user_id = request_id if request_id is not None else f"req-{next(self._counter)}"
        # Adapter files are read off the engine loop (and off this event loop), so neither stalls.
        read_lora = None if lora is None else await asyncio.to_thread(self._read_lora, lora)
        # So are grammars: the loop then takes the compiled matcher from the engine's cache.
        if params.structured_outputs is not None:
            await asyncio.to_thread(self._compile_structured, params)
        # Sub-request ids are internal, so user ids like "a" and "a-0" never collide.
        state = RequestState(f"{next(self._counter)}", item, params)
        self._live.add(user_id, state.child_ids)
        sink = Sink(asyncio.get_running_loop())
        try:
            command = AddCommand(state.engine_requests(), list(item.token_ids), priority, sink, lora, read_lora, salt)
            self._loop.post(command)
            while not state.finished:
                items = [await sink.queue.get()]
                while not sink.queue.empty():
                    items.append(sink.queue.get_nowait())
                for batch in items:
                    if isinstance(batch, BaseException):
                        raise batch
                    for child_id, out in batch:
                        state.add(child_id, out)
                out = state.take_delta() if delta else state.output()
                if out is not None:
                    yield replace(out, request_id=user_id)
        finally:
            self._live.remove(user_id)
            if not state.finished and self._loop.alive:
                self._loop.post(AbortCommand(state.unfinished_child_ids()))
