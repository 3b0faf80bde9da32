"""The router's handle on one replica: its state and load, its requests' streams, its heartbeat and restarts.

Every method runs on the router's event loop. A transport (`MpReplica`, `RayReplica`) implements how to
launch the replica, open a request's stream, abort it, ask for a status and bring the replica back; this
class does the rest the same way for both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any

from ember._core import EmberError
from ember._streams import QueueStream
from ember.data_parallel.config import DataParallelConfig
from ember.data_parallel.prefix_view import PrefixView
from ember.data_parallel.worker import ReplicaInfo, ReplicaRequest, ReplicaStatus
from ember.outputs import RequestOutput

logger = logging.getLogger("ember.data_parallel")

Deliver = Callable[[Any], None]
"""Hands a stream its next item: a RequestOutput, END, or an exception to raise."""

MAX_RESTART_DELAY_S = 30.0
"""The longest wait between two attempts to restart a replica that died (the wait doubles from 0.5 s)."""


class ReplicaState(enum.Enum):
    """Where a replica is in its life."""

    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"
    STOPPED = "stopped"


class ReplicaLost(EmberError):
    """The replica a request ran on stopped (its process exited, its actor died, or it missed heartbeats)."""


class Replica(ABC):
    """One replica as the router sees it."""

    def __init__(self, index: int, model: str | None, engine_args: dict[str, Any], config: DataParallelConfig) -> None:
        self.index = index
        """Its position among the replicas (0-based)."""
        self.model = model
        self.engine_args = engine_args
        self.config = config
        self.state = ReplicaState.STARTING
        self.info: ReplicaInfo | None = None
        """What it reported when it last came up."""
        self.status: ReplicaStatus | None = None
        """Its last heartbeat answer."""
        self.view = PrefixView(0)
        """Which prompt blocks it probably caches."""
        self.num_restarts = 0
        self.num_routed_requests = 0
        self.num_matched_tokens = 0
        """Prompt tokens the prefix view predicted as cached, over the requests routed here."""
        self.num_in_flight_sequences = 0
        """Sequences of this router's requests that run on it now."""
        self.last_failure: str | None = None
        self._streams: dict[str, Deliver] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None

    # The transport.

    @abstractmethod
    async def _launch(self) -> ReplicaInfo:
        """Starts the replica and waits until its model is loaded."""

    @abstractmethod
    def _open(self, wire_id: str, request: ReplicaRequest) -> None:
        """Starts a request; its items then arrive through `_deliver(wire_id, item)`."""

    @abstractmethod
    def _abort(self, wire_id: str) -> None:
        """Asks the replica to abort a request (its stream then ends with finish_reason "abort")."""

    @abstractmethod
    async def _status(self) -> ReplicaStatus:
        """The replica's heartbeat answer; raises when it cannot be reached."""

    @abstractmethod
    async def _reset_prefix_cache(self) -> bool:
        """Asks the replica to forget its cached prefixes."""

    @abstractmethod
    async def _unload_lora(self, lora_int_id: int) -> bool:
        """Asks the replica's engine to unload a LoRA adapter; raises the engine's error."""

    @abstractmethod
    async def _recover(self) -> ReplicaInfo:
        """Brings a lost replica back (a new process, or the actor Ray re-created) and returns its info."""

    @abstractmethod
    async def _terminate(self) -> None:
        """Stops the replica for good."""

    # What the router uses.

    @property
    def ready(self) -> bool:
        """Whether requests may be routed here."""
        return self.state is ReplicaState.READY

    async def start(self) -> None:
        """Launches the replica; raises its error (a bad model path, too little memory) if it cannot start."""
        self._became_ready(await asyncio.wait_for(self._launch(), self.config.startup_timeout_s))

    async def generate(self, wire_id: str, request: ReplicaRequest) -> AsyncIterator[RequestOutput]:
        """Streams one request run here under the router's `wire_id`; raises ReplicaLost if the replica stops
        before the last output."""
        if not self.ready:
            raise ReplicaLost(f"replica {self.index} is {self.state.value}")
        stream = QueueStream()
        self._streams[wire_id] = stream.queue.put_nowait
        self.num_in_flight_sequences += request.params.n
        finished = False
        try:
            self._open(wire_id, request)
            async for item in stream:
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(wire_id, None)
            self.num_in_flight_sequences -= request.params.n
            if not (finished or stream.ended) and self.ready:
                self._abort(wire_id)

    def abort_stream(self, wire_id: str) -> None:
        """Aborts a request running here (its stream ends with finish_reason "abort")."""
        self._abort(wire_id)

    async def unload_lora(self, lora_int_id: int) -> bool:
        """Unloads a LoRA adapter from the replica's engine (an error while its requests use it); False when it
        was not loaded there or the replica is not ready."""
        if not self.ready:
            return False
        return await self._unload_lora(lora_int_id)

    async def reset_prefix_cache(self) -> bool:
        """Forgets the replica's cached prefixes (and the router's view of them)."""
        if not self.ready:
            return False
        reset = await self._reset_prefix_cache()
        if reset:
            self.view.clear()
        return reset

    def lost(self, reason: str) -> None:
        """Declares the replica dead: its requests end with ReplicaLost, and it is brought back in the background."""
        if self.state is not ReplicaState.READY:
            return
        self.state = ReplicaState.DEAD
        self.last_failure = reason
        logger.error("replica %d stopped (%s); %d requests in flight end", self.index, reason, len(self._streams))
        streams, self._streams = self._streams, {}
        for deliver in streams.values():
            deliver(ReplicaLost(f"replica {self.index} stopped while running the request: {reason}"))
        self._stop_heartbeat()
        self._recovery = asyncio.create_task(self._recover_loop())

    async def stop(self) -> None:
        """Stops the replica for good (outputs still in flight are delivered first, when it stops cleanly)."""
        previous, self.state = self.state, ReplicaState.STOPPED
        self._stop_heartbeat()
        if self._recovery is not None:
            self._recovery.cancel()
        if previous is not ReplicaState.STOPPED:
            await self._terminate()
        streams, self._streams = self._streams, {}
        for deliver in streams.values():
            deliver(ReplicaLost(f"replica {self.index} was shut down"))

    # For the transports.

    def _deliver(self, wire_id: str, item: Any) -> None:
        """Hands an item to its stream (dropped when the stream has ended)."""
        deliver = self._streams.get(wire_id)
        if deliver is not None:
            deliver(item)

    # Life cycle.

    def _became_ready(self, info: ReplicaInfo) -> None:
        self.info = info
        self.view = PrefixView(info.num_blocks)
        self.state = ReplicaState.READY
        self.last_failure = None
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())
        logger.info("replica %d ready: pid %d on %s, %d KV blocks", self.index, info.pid, info.node, info.num_blocks)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat is not asyncio.current_task():
            self._heartbeat.cancel()
        self._heartbeat = None

    async def _heartbeat_loop(self) -> None:
        timeout_s = self.config.heartbeat_timeout_s
        while self.ready:
            try:
                status = await asyncio.wait_for(self._status(), timeout_s)
            except asyncio.TimeoutError:
                self.lost(f"no heartbeat answer within {timeout_s:g} s")
                return
            except ReplicaLost as exc:
                self.lost(str(exc))
                return
            except EmberError as exc:
                self.lost(f"heartbeat failed: {exc}")
                return
            if self.info is not None and status.pid != self.info.pid:
                # Restarted between two heartbeats (Ray re-creates a dead actor by itself): its cache is empty.
                self.num_restarts += 1
                self.view.clear()
                self.info = dataclasses.replace(self.info, pid=status.pid)
                logger.warning("replica %d was restarted (now pid %d)", self.index, status.pid)
            self.status = status
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def _recover_loop(self) -> None:
        delay_s = 0.5
        while self.state is ReplicaState.DEAD:
            try:
                info = await asyncio.wait_for(self._recover(), self.config.startup_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep trying: a replica that cannot come back must not stop the others
                logger.error("replica %d did not come back (%s); retrying in %.1f s", self.index, exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(2 * delay_s, MAX_RESTART_DELAY_S)
                continue
            if self.state is ReplicaState.DEAD:
                self.num_restarts += 1
                self._became_ready(info)
            return
