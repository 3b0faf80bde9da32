"""One streamed OpenAI-compatible request, measured: an incremental SSE parser and the per-request timings."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

MAX_ERROR_CHARS = 300
"""Longest error text kept per failed request."""

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class SseParser:
    """Incremental server-sent-events parser: feed body bytes as they arrive, get each finished event's data."""

    def __init__(self) -> None:
        self._pending = b""
        self._data_lines: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of every event that `chunk` completes; data split over several `data:` lines is joined by \\n."""
        data = self._pending + chunk
        held = b""
        if data.endswith(b"\r"):  # maybe the first half of \r\n: wait for the next chunk
            data, held = data[:-1], b"\r"
        *lines, rest = _LINE_BREAK.split(data)
        self._pending = rest + held
        return [event for line in lines if (event := self._line(line)) is not None]

    def finish(self) -> list[str]:
        """At the end of the body: the data of an event left unterminated (lenient; the spec drops it)."""
        line, self._pending = self._pending.rstrip(b"\r"), b""
        events = [event] if line and (event := self._line(line)) is not None else []
        last = self._line(b"")
        return [*events, last] if last is not None else events

    def _line(self, line: bytes) -> str | None:
        """Takes one line; returns the event's data when the line (a blank one) ends an event that has data."""
        if not line:
            data, self._data_lines = self._data_lines, []
            return "\n".join(data) if data else None
        name, _, value = line.decode("utf-8", errors="replace").partition(":")
        if name == "data":
            self._data_lines.append(value.removeprefix(" "))
        return None


@dataclass
class RequestResult:
    """What one streamed request measured; times in seconds from when it was sent."""

    success: bool = False
    error: str = ""
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the server reports as served from its prefix cache (`usage.prompt_tokens_details`)."""
    output_tokens: int = 0
    num_content_chunks: int = 0
    usage_reported: bool = False

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first, or None with fewer than two tokens."""
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


class StreamRecorder:
    """Turns one response's SSE data payloads into its RequestResult."""

    def __init__(self, start_s: float) -> None:
        self.result = RequestResult()
        self._start_s = start_s
        self._last_s = start_s

    def on_data(self, data: str, now_s: float) -> bool:
        """Records one payload received at `now_s`; returns True when the stream is over ([DONE] or an error)."""
        if data == "[DONE]":
            return True
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            self.result.error = f"malformed event: {data[:MAX_ERROR_CHARS]}"
            return True
        if "error" in event:
            self.result.error = f"error event: {json.dumps(event['error'])[:MAX_ERROR_CHARS]}"
            return True
        self._record_usage(event.get("usage"))
        if _has_content(event):
            self._record_content(now_s)
        return False

    def _record_usage(self, usage: Any) -> None:
        """Takes the token counts of a usage object, when the event carries one."""
        if isinstance(usage, dict):
            self.result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.result.output_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                self.result.cached_tokens = int(details.get("cached_tokens") or 0)
            self.result.usage_reported = True

    def _record_content(self, now_s: float) -> None:
        """Times a chunk that carries text: the first sets TTFT, later ones add an inter-chunk gap."""
        if self.result.ttft_s is None:
            self.result.ttft_s = now_s - self._start_s
        else:
            self.result.itl_s.append(now_s - self._last_s)
        self._last_s = now_s
        self.result.num_content_chunks += 1


def _has_content(event: dict[str, Any]) -> bool:
    """Whether a completions (`text`) or chat (`delta.content`) chunk carries any text."""
    for choice in event.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if choice.get("text") or (isinstance(delta, dict) and delta.get("content")):
            return True
    return False


async def _sse_data(response: httpx.Response) -> AsyncIterator[tuple[str, float]]:
    """Each SSE data payload of `response` with the perf_counter time its bytes arrived."""
    parser = SseParser()
    now_s = time.perf_counter()
    async for chunk in response.aiter_bytes():
        now_s = time.perf_counter()
        for data in parser.feed(chunk):
            yield data, now_s
    for data in parser.finish():
        yield data, now_s


async def send_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestResult:
    """Sends one streaming request and measures it; a failure comes back as a result with `error` set, never raised."""
    start_s = time.perf_counter()
    recorder = StreamRecorder(start_s)
    result = recorder.result
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:MAX_ERROR_CHARS]}"
            else:
                await _read_stream(response, recorder)
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
    result.e2e_s = time.perf_counter() - start_s
    result.success = not result.error
    if not result.usage_reported:
        result.output_tokens = result.num_content_chunks
    return result


async def _read_stream(response: httpx.Response, recorder: StreamRecorder) -> None:
    """Feeds the SSE body to `recorder` until [DONE] or an error event; a body ending before [DONE] is an error."""
    async for data, now_s in _sse_data(response):
        if recorder.on_data(data, now_s):
            return
    recorder.result.error = "stream ended without data: [DONE]"
