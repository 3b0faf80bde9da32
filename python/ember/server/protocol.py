"""The OpenAI request bodies the server accepts, as pydantic models, and their mapping to SamplingParams."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ember.sampling_params import SamplingParams
from ember.server.errors import ApiError
from ember.server.structured import Constraint, body_constraint
from ember.server.tools import ToolDefinition

_TOKEN_ID_KEY = re.compile(r"-?[0-9]{1,20}")
"""A logit_bias key: decimal digits only (no spaces, signs other than '-', or '_' separators)."""


class StreamOptions(BaseModel):
    """`stream_options`: whether the last streamed chunk carries the usage counts."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class StructuredOutputsBody(BaseModel):
    """vLLM's `structured_outputs` object: exactly one of json, regex, choice, grammar, json_object."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    whitespace_pattern: str | None = None

    def fields(self) -> dict[str, Any]:
        """The set fields, as StructuredOutputsParams keyword arguments."""
        return self.model_dump(by_alias=True, exclude_none=True)


class SamplingFields(BaseModel):
    """Fields shared by both endpoints: OpenAI's, plus vLLM's extra sampling controls."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM extensions, accepted by the same names.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: int = 0
    # vLLM's prefix-cache salt: the request reuses cached prefixes only of requests with the same salt.
    cache_salt: str | None = Field(default=None, min_length=1)
    # Structured output: OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields.
    response_format: dict[str, Any] | None = None
    structured_outputs: StructuredOutputsBody | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None

    def constraint(self) -> Constraint | None:
        """The body's output constraint, if any (a 400 naming the field when it is malformed or set twice)."""
        guided = {
            "guided_json": self.guided_json,
            "guided_regex": self.guided_regex,
            "guided_choice": self.guided_choice,
            "guided_grammar": self.guided_grammar,
        }
        structured = self.structured_outputs.fields() if self.structured_outputs is not None else None
        return body_constraint(self.response_format, structured, guided, self.guided_whitespace_pattern)

    def sampling_params(
        self, max_tokens: int | None, logprobs: int | None, constraint: Constraint | None = None
    ) -> SamplingParams:
        """The engine's SamplingParams for this body (raises InvalidRequestError naming a bad field)."""
        extra: dict[str, Any] = {}
        if constraint is not None:
            extra["structured_outputs"] = constraint.params
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                extra[name] = value
        return SamplingParams(
            n=self.n,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=_token_bias(self.logit_bias),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            **extra,
        )

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


def _token_bias(logit_bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's {"token id as a string": bias} as {token_id: bias}."""
    if logit_bias is None:
        return None
    result = {}
    for key, bias in logit_bias.items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise ApiError(400, f"logit_bias keys must be token ids (decimal digits), got {key!r}", "logit_bias")
        result[int(key)] = bias
    return result


class ChatMessage(BaseModel):
    """One message of a conversation; `content` may be a string or a list of text parts."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text, with text parts joined."""
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    message = f"only text content parts are supported, got type {part.get('type')!r}"
                    raise ApiError(400, message, "messages")
                parts.append(part["text"])
            return "".join(parts)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    tools: list[ToolDefinition] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True

    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens`, else the deprecated `max_tokens`; None means up to the context length."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_logprobs(self) -> int | None:
        """Top alternatives per token when `logprobs` is on (`top_logprobs`, default 0), else None."""
        if not self.logprobs:
            if self.top_logprobs:
                raise ApiError(400, "top_logprobs requires logprobs to be true", "top_logprobs")
            return None
        return self.top_logprobs or 0


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None


CompletionKind = Literal["chat", "completion"]
"""Which endpoint a response is for."""
