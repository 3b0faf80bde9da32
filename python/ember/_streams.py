"""Pieces shared by the async front ends (`AsyncEngine`, the data-parallel router and its replicas): the table of
live request ids and a stream read from an asyncio queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ember._core import InvalidRequestError

Entry = TypeVar("Entry")

END = object()
"""Put on a stream's queue after its last item."""


class LiveRequests(Generic[Entry]):
    """The user-visible ids of requests whose streams have not ended, each with its entry; thread-safe.

    Two live requests may not share an id. `num_sequences(entry)` says how many sequences (n) an entry runs.
    """

    def __init__(self, num_sequences: Callable[[Entry], int]) -> None:
        self._num_sequences = num_sequences
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}

    def add(self, request_id: str, entry: Entry) -> None:
        """Marks `request_id` live; raises InvalidRequestError if a live request already has it."""
        with self._lock:
            if request_id in self._entries:
                raise InvalidRequestError(f"request_id '{request_id}' is already in use")
            self._entries[request_id] = entry

    def get(self, request_id: str) -> Entry | None:
        """The live request's entry, or None."""
        with self._lock:
            return self._entries.get(request_id)

    def remove(self, request_id: str) -> None:
        """Forgets the request (its stream ended); unknown ids are ignored."""
        with self._lock:
            self._entries.pop(request_id, None)

    def entries(self) -> list[Entry]:
        """Every live request's entry."""
        with self._lock:
            return list(self._entries.values())

    @property
    def num_requests(self) -> int:
        """Requests whose streams have not ended yet."""
        with self._lock:
            return len(self._entries)

    @property
    def num_sequences(self) -> int:
        """Sequences (n per request) whose streams have not ended yet."""
        with self._lock:
            return sum(self._num_sequences(entry) for entry in self._entries.values())


class QueueStream:
    """One request's items arriving on an asyncio queue: outputs, then END or an exception to raise.

    `ended` turns true once END or an exception has been taken, so a consumer's cleanup can tell a stream
    that ran out from one it left early.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.ended = False

    def __aiter__(self) -> QueueStream:
        return self

    async def __anext__(self) -> Any:
        item = await self.queue.get()
        if item is END:
            self.ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.ended = True
            raise item
        return item
