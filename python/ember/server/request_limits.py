"""The HTTP layer's per-request limits (plain data, so `ember serve --help` needs no web stack)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BODY_BYTES = 4 << 20
"""4 MiB: room for a prompt of a million characters, or 100k token ids as JSON."""


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits of the HTTP layer."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Largest request body accepted; larger ones get 413."""
    header_timeout_s: float = 10.0
    """Seconds a connection may take to send a request's headers before it is closed."""
    body_timeout_s: float = 30.0
    """Seconds a request may take to send its whole body before it gets 408."""
