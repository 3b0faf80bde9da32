"""Limits on what one HTTP client can hold: request body size, and how long headers and body may take.

A body over `max_body_bytes` gets 413 before it is parsed; a body still arriving after
`body_timeout_s` gets 408; a connection whose request headers are not complete within
`header_timeout_s` is closed. All of it happens before any handler runs, so a slow or huge
request never ties up the event loop or memory.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ember.server.errors import error_response
from ember.server.request_limits import RequestLimits

DRAIN_FACTOR = 32
"""How many times the body limit a refused request may still send before its connection is cut."""


class BodyLimitMiddleware:
    """Reads each request body whole, within the size and time limits, then hands it to the app."""

    def __init__(self, app: ASGIApp, limits: RequestLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limits.max_body_bytes:
            await self._too_large(declared, scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.limits.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                seconds = self.limits.body_timeout_s
                await error_response(408, f"The request body did not arrive within {seconds:g} s.")(
                    scope, receive, send
                )
                return
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limits.max_body_bytes:
                await self._too_large(size, scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, size: int, scope: Scope, receive: Receive, send: Send) -> None:
        """413, after reading (and dropping) what the client is still sending, so that it reads the answer
        instead of a reset connection; a client sending more than `DRAIN_FACTOR` times the limit, or slower
        than the body timeout, is cut off."""
        limit = self.limits.max_body_bytes
        drained = 0
        deadline = time.monotonic() + self.limits.body_timeout_s
        more = True
        while more and drained <= DRAIN_FACTOR * limit and time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
            drained += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
        message = f"The request body has at least {size} bytes, more than the limit of {limit} bytes."
        response = error_response(413, message)
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete in time."""

    header_timeout_s = RequestLimits.header_timeout_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _header_timed_out(self) -> None:
        # Still waiting for (the rest of) a request's headers: the client is too slow.
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.close()


def uvicorn_config(app: ASGIApp, host: str, port: int, limits: RequestLimits, **options: Any) -> uvicorn.Config:
    """A uvicorn config serving `app` over h11 with the header timeout of `limits`."""
    protocol = type("HeaderTimeoutProtocol", (_HeaderTimeoutProtocol,), {"header_timeout_s": limits.header_timeout_s})
    return uvicorn.Config(app, host=host, port=port, http=protocol, **options)
