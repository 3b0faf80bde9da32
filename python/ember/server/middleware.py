"""ASGI middleware: the API-key check on /v1 routes and the per-endpoint request counter."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.server.errors import error_response
from ember.server.metrics import ServerMetrics

_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
"""Paths counted under their own label; anything else is counted as "other"."""


class ApiMiddleware:
    """Refuses /v1 requests without the API key (401) and counts every HTTP response by endpoint and status."""

    def __init__(self, app: ASGIApp, api_key: str | None, metrics: ServerMetrics) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        if self.expected is not None and path.startswith("/v1/") and not self._authorized(scope):
            response = error_response(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.")
            await response(scope, receive, send)
            self.metrics.count_request(endpoint, 401)
            return
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            self.metrics.count_request(endpoint, status)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        assert self.expected is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False
