"""ASGI middleware: the API-key check, the per-endpoint request counter, and the last-resort 500."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.server.errors import error_response
from ember.server.metrics import ServerMetrics

logger = logging.getLogger("ember.server")

_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/health",
    "/metrics",
)
"""Paths counted under their own label; anything else is counted as "other"."""


class ApiMiddleware:
    """Refuses requests without the API key (401) on every path but /health (and /metrics unless
    `metrics_need_key`), counts every HTTP response by endpoint and status, and answers an error
    that nothing else handled with an OpenAI-shaped 500 (logging its traceback)."""

    def __init__(
        self, app: ASGIApp, api_key: str | None, metrics: ServerMetrics, metrics_need_key: bool = False
    ) -> None:
        self.app = app
        self.expected = api_key.encode() if api_key else None
        self.metrics = metrics
        self.open_paths = {"/health"} if metrics_need_key else {"/health", "/metrics"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        endpoint = path if path in _ENDPOINTS else "other"
        if self.expected is not None and path not in self.open_paths and not self._authorized(scope):
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

        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_counting(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            logger.exception("unhandled error answering %s %s", scope.get("method"), path)
            if started:
                raise
            status = 500
            await error_response(500, "Internal server error; the server logged the details.")(scope, receive, send)
        finally:
            self.metrics.count_request(endpoint, status)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        """Whether the request carries `Authorization: Bearer <key>` (the scheme in any case)."""
        assert self.expected is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected)
        return False


def _route_path(scope: Scope) -> str:
    """The path inside this application: without the prefix it is mounted under (`root_path`), if any."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path
