"""The main program of a local replica process: `python -m ember.data_parallel.mp_worker FD`.

FD is this process's end of a socket pair with the router. The first message is ("init", model,
engine_args); the answer is ("ready", ReplicaInfo) or ("failed", error). Then the router sends
("generate", id, ReplicaRequest), ("abort", id), ("status", seq),
("reset_prefix_cache", seq), ("unload_lora", seq, lora_int_id) and ("shutdown",); the replica answers
("out", id, RequestOutput), ("end", id), ("error", id, error), ("status", seq, ReplicaStatus),
("reset_prefix_cache", seq, bool) and ("unload_lora", seq, bool or the engine's error).
The process ends when the router says so or its end of the socket closes (the router is gone).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

from ember.data_parallel.wire import FrameWriter, portable_error, read_message
from ember.data_parallel.worker import ReplicaWorker

logger = logging.getLogger("ember.data_parallel")


async def _stream(worker: ReplicaWorker, out: FrameWriter, request_id: str, args: tuple[Any, ...]) -> None:
    """Runs one request, sending each output, then "end" or the error."""
    try:
        async for output in worker.generate(request_id, *args):
            out.send(("out", request_id, output))
    except Exception as exc:  # the router's caller gets the engine's own error
        out.send(("error", request_id, portable_error(exc)))
    else:
        out.send(("end", request_id))


async def _reset_prefix_cache(worker: ReplicaWorker, out: FrameWriter, seq: int) -> None:
    out.send(("reset_prefix_cache", seq, await worker.reset_prefix_cache()))


async def _unload_lora(worker: ReplicaWorker, out: FrameWriter, seq: int, lora_int_id: int) -> None:
    """Answers with whether the adapter was unloaded, or the engine's error (the router raises it)."""
    try:
        answer: bool | BaseException = await worker.unload_lora(lora_int_id)
    except Exception as exc:
        answer = portable_error(exc)
    out.send(("unload_lora", seq, answer))


async def serve(sock: socket.socket) -> int:
    """Loads the engine the router asks for, then serves its messages until told to stop."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    out = FrameWriter(writer)
    _, model, engine_args = await read_message(reader)
    try:
        worker = await asyncio.to_thread(ReplicaWorker, model, engine_args)
    except Exception as exc:  # reported to the router, which raises it
        out.send(("failed", portable_error(exc)))
        await out.close()
        return 1
    out.send(("ready", worker.info()))
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        while True:
            try:
                message = await read_message(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                logger.warning("replica %d: the router went away; stopping", worker.info().pid)
                return 0
            kind = message[0]
            if kind == "generate":
                spawn(_stream(worker, out, message[1], message[2:]))
            elif kind == "abort":
                worker.abort(message[1])
            elif kind == "status":
                out.send(("status", message[1], worker.status()))
            elif kind == "reset_prefix_cache":
                spawn(_reset_prefix_cache(worker, out, message[1]))
            elif kind == "unload_lora":
                spawn(_unload_lora(worker, out, message[1], message[2]))
            elif kind == "shutdown":
                return 0
    finally:
        await worker.shutdown()
        await asyncio.gather(*tasks, return_exceptions=True)
        await out.close()


def main(argv: list[str]) -> int:
    """Serves the router over the inherited socket `argv[0]` (a file descriptor)."""
    # The router stops replicas itself; a terminal's Ctrl-C reaching the whole group must not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=int(argv[0]))
    return asyncio.run(serve(sock))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
