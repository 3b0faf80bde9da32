"""Messages between the router and a local replica process: length-prefixed pickles over a socket pair.

The socket pair is private to the two processes (the child inherits its end), so pickle's trust in its peer
holds. One writer task per side sends the frames, so messages never interleave and back-pressure applies.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

from ember._core import EmberError

logger = logging.getLogger("ember.data_parallel")

_HEADER_BYTES = 8
MAX_FRAME_BYTES = 1 << 30
"""A frame longer than this means the stream is corrupt."""


async def read_message(reader: asyncio.StreamReader) -> Any:
    """The next message; raises `asyncio.IncompleteReadError` at the end of the stream."""
    header = await reader.readexactly(_HEADER_BYTES)
    num_bytes = int.from_bytes(header, "big")
    if num_bytes > MAX_FRAME_BYTES:
        raise EmberError(f"corrupt replica stream: a frame of {num_bytes} bytes (limit {MAX_FRAME_BYTES})")
    return pickle.loads(await reader.readexactly(num_bytes))


def encode(message: Any) -> bytes:
    """One frame: the pickle's length, then the pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_HEADER_BYTES, "big") + data


def portable_error(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (Ember's errors keep their class, `param` and `request_ids`), else an
    EmberError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return EmberError(f"{type(exc).__name__}: {exc}")
    return exc


class FrameWriter:
    """Sends messages in order from one task; `send` never blocks the caller."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    def send(self, message: Any) -> None:
        """Queues one message."""
        self._queue.put_nowait(encode(message))

    async def close(self) -> None:
        """Sends what is queued, then closes the connection."""
        self._queue.put_nowait(None)
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while (frame := await self._queue.get()) is not None:
                self._writer.write(frame)
                if self._queue.empty():
                    await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            logger.debug("replica connection closed while writing: %s", exc)
        finally:
            self._writer.close()
