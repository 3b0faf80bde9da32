"""The background thread that owns a Rust engine and steps it for `AsyncEngine`.

Callers never touch the Rust engine directly: they post commands (add, abort,
stop) to a thread-safe queue, and the loop thread applies them between steps,
so no caller ever waits for a step to finish. Each request has a `Sink` that
receives its step outputs on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember import _core
from ember._core import EmberError, StepOutput
from ember._tracking import EngineRequest, step_failure

logger = logging.getLogger("ember")

SinkItem = list[tuple[str, StepOutput | None]] | BaseException
"""What a sink receives: one step's outputs (None = aborted) for its sub-requests, or an error."""


@dataclass(eq=False)
class Sink:
    """Where one request's outputs go: an asyncio queue on the caller's event loop (compared by identity)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[SinkItem] = field(default_factory=asyncio.Queue)

    def post(self, item: SinkItem) -> bool:
        """Hands `item` to the caller's loop from any thread; False when that loop is closed."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            return False
        return True


@dataclass
class AddCommand:
    """Queue the sub-requests of one request (same prompt; see `RequestState.engine_requests`)."""

    requests: list[EngineRequest]
    token_ids: list[int]
    priority: int
    sink: Sink
    lora: tuple[str, int, str] | None = None
    """The request's adapter (lora_name, lora_int_id, lora_path), or None for the base model."""
    read_lora: _core.ReadLora | None = None
    """The adapter as read on the caller's thread (`Engine.read_lora`), or None when the engine holds it."""
    cache_salt: str | None = None
    """The request's cache salt: only requests with the same salt share cached prefixes (None: no salt)."""


@dataclass
class AbortCommand:
    """Abort these sub-requests (unknown or finished ones are ignored); None aborts every request."""

    child_ids: list[str] | None


@dataclass
class CallCommand:
    """Run `fn(core)` on the loop thread between steps and resolve `future` with its result."""

    fn: Callable[[_core.Engine], Any]
    future: asyncio.Future[Any]


class _Stop:
    """Finish: abort everything in flight and end the thread."""


Command = AddCommand | AbortCommand | CallCommand | _Stop


class EngineLoop:
    """Steps one `_core.Engine` on a daemon thread while any request is unfinished."""

    def __init__(self, core: _core.Engine) -> None:
        self._core = core
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._sinks: dict[str, Sink] = {}
        self._stats: dict[str, float] = core.stats()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ember-engine-loop", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> dict[str, float]:
        """The counters as of the last step or command (read without waiting for the engine)."""
        return dict(self._stats)

    @property
    def alive(self) -> bool:
        """Whether the loop thread still runs."""
        return self._thread.is_alive()

    def post(self, command: Command) -> None:
        """Queues a command for the loop thread (from any thread); raises if the loop has ended."""
        if self._error is not None:
            raise EmberError(f"the engine stopped after an internal error: {self._error}")
        if not self._thread.is_alive():
            raise EmberError("the engine has been shut down")
        self._commands.put(command)
        self._wakeup.set()

    def stop(self) -> None:
        """Asks the thread to abort what is in flight and end."""
        if self._thread.is_alive():
            self._commands.put(_Stop())
            self._wakeup.set()

    def join(self, timeout: float | None = None) -> None:
        """Waits for the thread to end."""
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                if not self._apply_commands():
                    return
                if self._core.has_unfinished_requests():
                    self._step()
                else:
                    self._wakeup.wait()
                    self._wakeup.clear()
        except BaseException as exc:  # every waiting caller must hear of it
            logger.exception("the engine loop failed")
            self._error = exc
            for sink in set(self._sinks.values()):
                sink.post(EmberError(f"the engine stopped after an internal error: {exc}"))
            self._sinks.clear()

    def _step(self) -> None:
        """Runs one step and delivers its outputs. A failed step ended only its own requests: each of their
        callers gets the error, and the loop goes on serving the rest."""
        try:
            outputs = self._core.step()
        except EmberError as exc:
            failed = step_failure(exc)
            logger.error("an engine step failed; ending its %d requests: %s", len(failed), exc)
            sinks = {sink for child_id in failed if (sink := self._sinks.pop(child_id, None)) is not None}
            for sink in sinks:
                sink.post(EmberError(str(exc)))
            outputs = []
        self._deliver(outputs)
        self._stats = self._core.stats()

    def _apply_commands(self) -> bool:
        """Applies every queued command; False after a stop command."""
        applied = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            applied = True
            if isinstance(command, _Stop):
                self._abort(list(self._sinks))
                return False
            if isinstance(command, AddCommand):
                self._add(command)
            elif isinstance(command, AbortCommand):
                self._abort(list(self._sinks) if command.child_ids is None else command.child_ids)
            else:
                self._call(command)
        if applied:
            self._stats = self._core.stats()
        return True

    def _add(self, command: AddCommand) -> None:
        """Adds the sub-requests; on a rejection, withdraws those already added and tells the caller."""
        added: list[str] = []
        try:
            for child_id, params, fork_of in command.requests:
                self._core.add_request(
                    child_id,
                    command.token_ids,
                    params,
                    command.priority,
                    fork_of,
                    command.lora,
                    command.read_lora,
                    command.cache_salt,
                )
                added.append(child_id)
                self._sinks[child_id] = command.sink
        except Exception as exc:  # the caller gets the engine's own error
            for child_id in added:
                self._core.abort(child_id)
                self._sinks.pop(child_id, None)
            command.sink.post(exc)

    def _abort(self, child_ids: list[str]) -> None:
        """Aborts sub-requests and tells their callers (None = aborted)."""
        aborted: list[tuple[Sink, str, StepOutput | None]] = []
        for child_id in child_ids:
            sink = self._sinks.pop(child_id, None)
            if sink is not None:
                self._core.abort(child_id)
                aborted.append((sink, child_id, None))
        _post_by_sink(aborted)

    def _call(self, command: CallCommand) -> None:
        """Runs a function on the engine and resolves the caller's future with its outcome."""
        future = command.future
        try:
            result = command.fn(self._core)
        except Exception as exc:  # handed to the caller
            future.get_loop().call_soon_threadsafe(_resolve, future, None, exc)
        else:
            future.get_loop().call_soon_threadsafe(_resolve, future, result, None)

    def _deliver(self, outputs: list[StepOutput]) -> None:
        """Sends each step output to its request's sink, one post per request and step."""
        delivered: list[tuple[Sink, str, StepOutput | None]] = []
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue
            if out.finish_reason is not None:
                del self._sinks[out.request_id]
            delivered.append((sink, out.request_id, out))
        for gone in _post_by_sink(delivered):
            # The caller's event loop is gone: nobody will read this request any more.
            self._abort([child_id for child_id, s in self._sinks.items() if s is gone])


def _post_by_sink(items: list[tuple[Sink, str, StepOutput | None]]) -> list[Sink]:
    """Posts each sink its `(child_id, output)` pairs as one batch; returns the sinks whose event loop is gone."""
    batches: dict[int, tuple[Sink, list[tuple[str, StepOutput | None]]]] = {}
    for sink, child_id, out in items:
        batches.setdefault(id(sink), (sink, []))[1].append((child_id, out))
    return [sink for sink, batch in batches.values() if not sink.post(batch)]


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Completes `future` on its own loop unless the caller already gave up on it."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
