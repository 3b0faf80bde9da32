"""Accumulating the engine's per-step outputs into vLLM-style request outputs."""

from __future__ import annotations

import time
from dataclasses import replace

from ember._core import EmberError, SamplingParams, StepOutput
from ember._inputs import Prompt
from ember.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput

PositionLogprobs = tuple[int, float, int | None, str | None, list[tuple[int, float, str | None]]]
"""One position as the engine reports it: (token id, logprob, rank, text, [(id, logprob, text)] best first)."""


def _logprob_dict(position: PositionLogprobs) -> dict[int, Logprob]:
    """{token id: Logprob with its true rank, alternative ids: Logprob with rank 1..k}, texts as
    the engine decoded them."""
    token_id, logprob, rank, text, alternatives = position
    entry = {tid: Logprob(lp, r, alt_text) for r, (tid, lp, alt_text) in enumerate(alternatives, start=1)}
    entry[token_id] = Logprob(logprob, rank, text)
    return entry


class CompletionState:
    """The growing state of one completion (one engine sub-request), plus what is new since last taken."""

    def __init__(self, index: int, want_logprobs: bool) -> None:
        self.index = index
        self.token_ids: list[int] = []
        self.text = ""
        self.logprobs: list[dict[int, Logprob]] | None = [] if want_logprobs else None
        self.cumulative_logprob: float | None = 0.0 if want_logprobs else None
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self._delta_tokens = 0
        self._delta_chars = 0
        self._delta_pending = False

    def add(self, out: StepOutput | None) -> None:
        """Appends one step's output; None means the request was aborted."""
        if self.finished:
            return
        self._delta_pending = True
        if out is None:
            self.finish_reason = "abort"
            return
        new_ids = list(out.new_token_ids)
        self.token_ids.extend(new_ids)
        self.text += out.new_text
        if self.logprobs is not None and out.new_logprobs is not None:
            self.logprobs.extend(_logprob_dict(position) for position in out.new_logprobs)
            self.cumulative_logprob = (self.cumulative_logprob or 0.0) + sum(p[1] for p in out.new_logprobs)
        if out.finish_reason is not None:
            self.finish_reason = out.finish_reason
            self.stop_reason = out.stop_reason

    @property
    def finished(self) -> bool:
        """Whether the completion has ended."""
        return self.finish_reason is not None

    def output(self) -> CompletionOutput:
        """Everything generated so far."""
        return CompletionOutput(
            index=self.index,
            text=self.text,
            token_ids=list(self.token_ids),
            cumulative_logprob=self.cumulative_logprob,
            logprobs=None if self.logprobs is None else list(self.logprobs),
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )

    def take_delta(self) -> CompletionOutput | None:
        """What was added since the last call (None if nothing); text and token_ids hold only the new part."""
        if not self._delta_pending:
            return None
        start_tok, start_chr = self._delta_tokens, self._delta_chars
        self._delta_tokens, self._delta_chars = len(self.token_ids), len(self.text)
        self._delta_pending = False
        return CompletionOutput(
            index=self.index,
            text=self.text[start_chr:],
            token_ids=self.token_ids[start_tok:],
            cumulative_logprob=self.cumulative_logprob,
            logprobs=None if self.logprobs is None else self.logprobs[start_tok:],
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


EngineRequest = tuple[str, SamplingParams, "str | None"]
"""One engine sub-request: its id, its sampling parameters, and the sibling whose prompt blocks it shares."""


def step_failure(exc: EmberError) -> list[str]:
    """The engine requests a failed step ended (only those failed); re-raises `exc` when it is not such a failure."""
    failed = getattr(exc, "request_ids", None)
    if failed is None:
        raise exc
    return list(failed)


class RequestState:
    """One user-facing request: its prompt and its n completions, keyed by engine sub-request id."""

    def __init__(self, request_id: str, prompt: Prompt, params: SamplingParams) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        n = params.n
        self.child_ids = [request_id] if n == 1 else [f"{request_id}-{i}" for i in range(n)]
        self.completions = {
            cid: CompletionState(i, params.logprobs is not None) for i, cid in enumerate(self.child_ids)
        }
        # One entry per prompt token (None for the first); filled by sub-request 0 only.
        self.prompt_logprobs: list[dict[int, Logprob] | None] | None = (
            [None] if params.prompt_logprobs is not None else None
        )
        self._prompt_delta_start = 0
        self.num_cached_tokens = 0
        self.metrics = RequestMetrics(arrival_time=time.time())

    def engine_requests(self) -> list[EngineRequest]:
        """The engine sub-requests of this request, one per completion. Completions after the first
        share the first one's prompt blocks (`fork_of`), so the prompt is computed once."""
        p = self.params
        return [
            (child_id, p if p.n == 1 else p.for_child(i), self.child_ids[0] if i > 0 else None)
            for i, child_id in enumerate(self.child_ids)
        ]

    def add(self, child_id: str, out: StepOutput | None) -> None:
        """Records one step output (None: aborted) of sub-request `child_id`."""
        if out is not None:
            # The prompt's cache hit is that of sub-request 0; the others share its blocks (forked, not cached).
            if child_id == self.child_ids[0]:
                self.num_cached_tokens = max(self.num_cached_tokens, out.num_cached_tokens)
            if self.prompt_logprobs is not None and out.new_prompt_logprobs and child_id == self.child_ids[0]:
                self.prompt_logprobs.extend(_logprob_dict(position) for position in out.new_prompt_logprobs)
        self.completions[child_id].add(out)
        now = time.time()
        if self.metrics.first_token_time is None and out is not None and out.new_token_ids:
            self.metrics.first_token_time = now
        if self.metrics.finish_time is None and self.finished:
            self.metrics.finish_time = now

    def unfinished_child_ids(self) -> list[str]:
        """Sub-requests still running."""
        return [cid for cid, c in self.completions.items() if not c.finished]

    @property
    def finished(self) -> bool:
        """Whether every completion has ended."""
        return all(c.finished for c in self.completions.values())

    def output(self) -> RequestOutput:
        """The full request output so far."""
        prompt_logprobs = None if self.prompt_logprobs is None else list(self.prompt_logprobs)
        return self._request_output([c.output() for c in self.completions.values()], prompt_logprobs)

    def take_delta(self) -> RequestOutput | None:
        """A RequestOutput holding only the completions that changed, each with only its new part
        (prompt_logprobs: the entries not yet sent)."""
        deltas = [d for c in self.completions.values() if (d := c.take_delta()) is not None]
        if not deltas:
            return None
        prompt_logprobs = None
        if self.prompt_logprobs is not None:
            prompt_logprobs = self.prompt_logprobs[self._prompt_delta_start :]
            self._prompt_delta_start = len(self.prompt_logprobs)
        return self._request_output(deltas, prompt_logprobs)

    def _request_output(
        self, outputs: list[CompletionOutput], prompt_logprobs: list[dict[int, Logprob] | None] | None
    ) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt.text,
            prompt_token_ids=list(self.prompt.token_ids),
            outputs=outputs,
            finished=self.finished,
            num_cached_tokens=self.num_cached_tokens,
            metrics=replace(self.metrics),
            prompt_logprobs=prompt_logprobs,
        )
