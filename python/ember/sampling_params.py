"""Per-request sampling parameters, with vLLM's field names and defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ember import _core


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request; validated by the Rust engine on construction.

    Field names and defaults follow vLLM. Out-of-range values raise
    `ember.InvalidRequestError` (a `ValueError`) naming the field and its range.
    Frozen: use `dataclasses.replace(params, ...)` for a changed copy (validated
    again); the engine validates the parameters once more when a request is added.
    """

    n: int = 1
    """Number of completions to return for the prompt."""
    max_tokens: int | None = 16
    """Maximum number of generated tokens per completion; None: up to the engine's max_model_len."""
    min_tokens: int = 0
    """Generate at least this many tokens before EOS or stop strings may end a completion."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (0 < top_p <= 1)."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 or -1 disables."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely token's."""
    seed: int | None = None
    """Per-request random seed in [0, 2**64 - 1] (others are refused); None derives one from the engine seed."""
    stop: str | list[str] | None = None
    """Strings that end a completion when generated (not included in the text unless include_stop_str_in_output)."""
    stop_token_ids: list[int] | None = None
    """Token ids that end a completion when generated."""
    ignore_eos: bool = False
    """Keep generating after the model's end-of-sequence token."""
    logprobs: int | None = None
    """Return this many most likely alternatives (plus the sampled token) per generated token."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the returned text."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token already generated (-2 <= presence_penalty <= 2)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated (-2 <= frequency_penalty <= 2)."""
    repetition_penalty: float = 1.0
    """Tokens in the prompt or output get logit / r if positive, logit * r otherwise (r > 0; 1 disables)."""
    logit_bias: dict[int, float] | None = None
    """Added to the logits of these token ids before sampling (-100 <= bias <= 100)."""
    prompt_logprobs: int | None = None
    """Return the log probability of each prompt token plus this many most likely alternatives."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string at the end of the text."""
    detokenize: bool = True
    """Decode generated tokens to text; False leaves text empty and cannot be combined with stop."""

    def __post_init__(self) -> None:
        # Copies of the lists given, so later changes to the caller's lists cannot reach these params.
        if isinstance(self.stop, list | tuple):
            object.__setattr__(self, "stop", list(self.stop))
        elif isinstance(self.stop, str):
            object.__setattr__(self, "stop", [self.stop])
        if isinstance(self.stop_token_ids, list | tuple):
            object.__setattr__(self, "stop_token_ids", list(self.stop_token_ids))
        if isinstance(self.logit_bias, dict):
            object.__setattr__(self, "logit_bias", dict(self.logit_bias))
        self.validate()

    def validate(self) -> None:
        """Raises `InvalidRequestError` naming the first field out of range (or of the wrong type)."""
        _core.validate_sampling_params(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The parameters as the dict `ember._core.Engine.add_request` takes (keys = field names)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def for_child(self, index: int) -> SamplingParams:
        """The parameters of sub-request `index` of an n > 1 request: n=1, seed+index (mod 2**64) when seeded.

        Only sub-request 0 computes prompt logprobs (they are the same for every completion).
        """
        seed = None if self.seed is None else (self.seed + index) % 2**64
        prompt_logprobs = self.prompt_logprobs if index == 0 else None
        return dataclasses.replace(self, n=1, seed=seed, prompt_logprobs=prompt_logprobs)
