"""A replica in a local process (`--distributed-executor-backend mp`), spoken to over a private socket pair."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from ember._core import EmberError
from ember._streams import END
from ember.data_parallel.config import replica_environment
from ember.data_parallel.replica import Replica, ReplicaLost
from ember.data_parallel.wire import FrameWriter, read_message
from ember.data_parallel.worker import ReplicaInfo, ReplicaRequest, ReplicaStatus

STOP_TIMEOUT_S = 10.0
"""Seconds a replica gets to stop cleanly before it is killed."""


class MpReplica(Replica):
    """A replica process started by the router: restarted by the router when it dies."""

    _process: subprocess.Popen[bytes] | None = None
    _writer: FrameWriter | None = None
    _reader_task: asyncio.Task[None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count()

    @property
    def pid(self) -> int | None:
        """The replica process's id, while it runs."""
        return None if self._process is None else self._process.pid

    async def _launch(self) -> ReplicaInfo:
        router_end, replica_end = socket.socketpair()
        env = {**os.environ, **replica_environment(self.index, self.engine_args)}
        command = [sys.executable, "-m", "ember.data_parallel.mp_worker", str(replica_end.fileno())]
        try:
            # A session of its own: a terminal's Ctrl-C goes to the router, which stops the replicas in order.
            self._process = subprocess.Popen(
                command, pass_fds=(replica_end.fileno(),), env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            replica_end.close()
        reader, writer = await asyncio.open_unix_connection(sock=router_end)
        self._writer = FrameWriter(writer)
        self._writer.send(("init", self.model, self.engine_args))
        try:
            kind, payload = await read_message(reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            status = await asyncio.to_thread(self._process.wait)
            raise EmberError(f"replica {self.index} exited with status {status} while loading the model") from exc
        if kind == "failed":
            await asyncio.to_thread(self._process.wait)
            raise payload
        self._reader_task = asyncio.create_task(self._read(reader))
        info: ReplicaInfo = payload
        return info

    def _open(self, wire_id: str, request: ReplicaRequest) -> None:
        self._send(("generate", wire_id, request))

    def _abort(self, wire_id: str) -> None:
        self._send(("abort", wire_id))

    async def _status(self) -> ReplicaStatus:
        status: ReplicaStatus = await self._call("status")
        return status

    async def _reset_prefix_cache(self) -> bool:
        return bool(await self._call("reset_prefix_cache"))

    async def _unload_lora(self, lora_int_id: int) -> bool:
        answer = await self._call("unload_lora", lora_int_id)
        if isinstance(answer, BaseException):
            raise answer
        return bool(answer)

    async def _recover(self) -> ReplicaInfo:
        await self._kill()
        return await self._launch()

    async def _terminate(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None and self._writer is not None:
            self._writer.send(("shutdown",))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._process.wait), STOP_TIMEOUT_S)
        await self._kill()

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._writer is None:
            raise ReplicaLost(f"replica {self.index} is not connected")
        self._writer.send(message)

    async def _call(self, kind: str, *args: Any) -> Any:
        """Sends a request that has an answer (status, reset_prefix_cache, unload_lora) and waits for it."""
        call_id = next(self._call_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        try:
            self._send((kind, call_id, *args))
            return await future
        finally:
            self._calls.pop(call_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Hands each message from the replica to its stream or call, until the connection ends."""
        try:
            while True:
                message = await read_message(reader)
                kind = message[0]
                if kind == "out":
                    self._deliver(message[1], message[2])
                elif kind == "end":
                    self._deliver(message[1], END)
                elif kind == "error":
                    self._deliver(message[1], message[2])
                else:
                    future = self._calls.get(message[1])
                    if future is not None and not future.done():
                        future.set_result(message[2])
        except (asyncio.IncompleteReadError, ConnectionError, EmberError) as exc:
            reason = await self._exit_reason(exc)
            calls, self._calls = self._calls, {}
            for future in calls.values():
                if not future.done():
                    future.set_exception(ReplicaLost(reason))
            self.lost(reason)

    async def _exit_reason(self, exc: BaseException) -> str:
        """Why the connection ended: the process's exit status when it has exited (or does so shortly)."""
        if self._process is None:
            return f"connection lost ({exc!r})"
        try:
            status = await asyncio.wait_for(asyncio.to_thread(self._process.wait), 1.0)
        except asyncio.TimeoutError:
            return f"connection lost ({type(exc).__name__}); the process still runs"
        if status < 0:
            return f"process {self._process.pid} was killed by {signal.Signals(-status).name}"
        return f"process {self._process.pid} exited with status {status}"

    async def _kill(self) -> None:
        """Kills the process if it still runs and reaps it."""
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            await asyncio.to_thread(self._process.wait)
