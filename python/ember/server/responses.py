"""OpenAI response bodies built from Ember's RequestOutputs: whole responses and streamed chunks."""

from __future__ import annotations

import json
import time
from typing import Any

from ember.outputs import CompletionOutput, Logprob, RequestOutput
from ember.server.protocol import CompletionKind
from ember.server.tools import ToolCall, ToolPlan


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """The `usage` object; `prompt_tokens_details.cached_tokens` counts prompt tokens served from the prefix cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _ranked(entry: dict[int, Logprob], top: int) -> list[tuple[int, Logprob]]:
    """The `top` most likely alternatives of one position, best first."""
    ranked = [(tid, lp) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= top]
    return sorted(ranked, key=lambda item: item[1].rank or 0)


def _token_text(lp: Logprob) -> str:
    return lp.decoded_token or ""


def chat_logprobs(completion: CompletionOutput, top: int) -> dict[str, Any] | None:
    """Chat's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}, ...]} for the completion's tokens."""
    if completion.logprobs is None:
        return None
    content = []
    for token_id, entry in zip(completion.token_ids, completion.logprobs, strict=True):
        chosen = entry[token_id]
        content.append(
            {
                "token": _token_text(chosen),
                "logprob": chosen.logprob,
                "bytes": list(_token_text(chosen).encode()),
                "top_logprobs": [
                    {"token": _token_text(lp), "logprob": lp.logprob, "bytes": list(_token_text(lp).encode())}
                    for _, lp in _ranked(entry, top)
                ],
            }
        )
    return {"content": content}


def completion_logprobs(completion: CompletionOutput, top: int, text_offset: int) -> dict[str, Any] | None:
    """Legacy completions' `logprobs`: parallel lists tokens / token_logprobs / top_logprobs / text_offset."""
    if completion.logprobs is None:
        return None
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_offset
    for token_id, entry in zip(completion.token_ids, completion.logprobs, strict=True):
        chosen = entry[token_id]
        text = _token_text(chosen)
        tokens.append(text)
        token_logprobs.append(chosen.logprob)
        tops.append({_token_text(lp): lp.logprob for _, lp in _ranked(entry, top)})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


class ResponseBuilder:
    """Builds the bodies of one response (one id, one creation time) for either endpoint."""

    def __init__(self, kind: CompletionKind, model: str, top_logprobs: int, tools: ToolPlan | None = None) -> None:
        self.kind = kind
        self.model = model
        self.top_logprobs = top_logprobs
        self.tools = tools if tools is not None and tools.parses_calls else None
        """Set when outputs may hold tool calls (chat with tools and tool_choice other than 'none')."""
        self._tool_text: dict[int, str] = {}
        self._named_call_ids: dict[int, str] = {}
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{time.time_ns():x}"
        self.created = int(time.time())

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        obj = "text_completion"
        if self.kind == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def choice(self, completion: CompletionOutput, index: int, prefix: str = "", chunk: bool = False) -> dict[str, Any]:
        """One choice: a chat message (or delta) or a completion text, with its logprobs and finish reason."""
        finish_reason = completion.finish_reason
        if self.kind == "chat":
            body: dict[str, Any] = {"content": prefix + completion.text}
            choice: dict[str, Any] = {"index": index, "delta" if chunk else "message": body}
            if not chunk:
                body["role"] = "assistant"
                if self.tools is not None and finish_reason == "stop":
                    content, calls = self.tools.parse(completion.text)
                    if calls:
                        body["content"] = content
                        body["tool_calls"] = [c.as_dict() for c in calls]
                        finish_reason = "tool_calls"
            choice["logprobs"] = chat_logprobs(completion, self.top_logprobs)
        else:
            choice = {
                "index": index,
                "text": prefix + completion.text,
                "logprobs": completion_logprobs(completion, self.top_logprobs, len(prefix)),
            }
        choice["finish_reason"] = finish_reason
        if completion.stop_reason is not None:
            choice["stop_reason"] = completion.stop_reason
        return choice

    def full(self, outputs: list[RequestOutput], echo_prompts: list[str] | None = None) -> dict[str, Any]:
        """A non-streamed response over one or more prompts' outputs (choices numbered across prompts)."""
        choices = []
        prompt_tokens = completion_tokens = cached_tokens = 0
        for i, out in enumerate(outputs):
            prompt_tokens += len(out.prompt_token_ids)
            cached_tokens += out.num_cached_tokens
            prefix = echo_prompts[i] if echo_prompts else ""
            for completion in out.outputs:
                completion_tokens += len(completion.token_ids)
                choices.append(self.choice(completion, i * len(out.outputs) + completion.index, prefix))
        return {
            **self._envelope(False),
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
        }

    def role_chunk(self, n: int) -> str:
        """The first chat chunk of each choice: the assistant role with empty content."""
        choices = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None} for i in range(n)]
        return sse({**self._envelope(True), "choices": [{**c, "finish_reason": None} for c in choices]})

    def delta_chunk(self, delta: RequestOutput, index_base: int = 0, prefixes: dict[int, str] | None = None) -> str:
        """A streamed chunk holding the completions that changed in `delta`; `prefixes` maps a choice index to text
        put before its delta (the echoed prompt)."""
        prefixes = prefixes or {}
        choices = [
            self.choice(c, index_base + c.index, prefixes.get(index_base + c.index, ""), chunk=True)
            for c in delta.outputs
        ]
        return sse({**self._envelope(True), "choices": choices})

    def tool_delta_chunk(self, delta: RequestOutput, index_base: int = 0) -> str | None:
        """A streamed chunk of a request whose output may hold tool calls, or None when nothing is sent yet. A named
        function's arguments stream as they are generated (the first delta carries the call's id and name); other
        modes hold the text until the choice finishes, then send its calls (or its text when it made none)."""
        assert self.tools is not None
        choices = []
        for c in delta.outputs:
            index = index_base + c.index
            if self.tools.mode == "named":
                choices.extend(self._named_delta(index, c))
                continue
            self._tool_text[index] = self._tool_text.get(index, "") + c.text
            if c.finish_reason is None:
                continue
            text = self._tool_text.pop(index)
            content, calls = self.tools.parse(text) if c.finish_reason == "stop" else (text, [])
            body: dict[str, Any] = {"content": content}
            if calls:
                body["tool_calls"] = [_call_delta(k, call) for k, call in enumerate(calls)]
            reason = "tool_calls" if calls else c.finish_reason
            choices.append({"index": index, "delta": body, "logprobs": None, "finish_reason": reason})
        if not choices:
            return None
        return sse({**self._envelope(True), "choices": choices})

    def _named_delta(self, index: int, c: CompletionOutput) -> list[dict[str, Any]]:
        assert self.tools is not None
        function: dict[str, Any] = {"arguments": c.text}
        call: dict[str, Any] = {"index": 0, "function": function}
        if index not in self._named_call_ids:
            self._named_call_ids[index] = ToolCall.new_id()
            call.update(id=self._named_call_ids[index], type="function")
            function["name"] = self.tools.named
        elif not c.text and c.finish_reason is None:
            return []
        reason = None
        if c.finish_reason is not None:
            reason = "tool_calls" if c.finish_reason == "stop" else c.finish_reason
        return [{"index": index, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": reason}]

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> str:
        """The last chunk when `stream_options.include_usage` is set: no choices, the usage counts."""
        usage_body = usage(prompt_tokens, completion_tokens, cached_tokens)
        return sse({**self._envelope(True), "choices": [], "usage": usage_body})


def _call_delta(index: int, call: ToolCall) -> dict[str, Any]:
    """One whole call as a streamed `tool_calls` entry."""
    return {"index": index, **call.as_dict()}


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event: `data: <json>` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"
