"""Results of a request, with vLLM's field names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Logprob:
    """The log probability of one token, with its rank among all tokens when known (1 = most likely)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """One completion of a request.

    `logprobs` holds, per generated token, a dict `{token_id: Logprob}` with the
    sampled token and the top alternatives; it is None unless
    `SamplingParams.logprobs` was set. `finish_reason` is "stop", "length" or
    "abort" once finished, else None; `stop_reason` is the stop string or stop
    token id that ended it, if any.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        """Whether this completion has ended."""
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """When a request arrived, produced its first token and finished (`time.time()` seconds)."""

    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from arrival to the first generated token, or None before it."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass
class RequestOutput:
    """A request's prompt and its completions (one per `SamplingParams.n`), with its timings.

    `prompt_logprobs` is None unless `SamplingParams.prompt_logprobs` was set; then it holds one
    entry per prompt token: None for the first, then `{token_id: Logprob}` with the prompt token
    and the top alternatives.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
