"""Normalizing the flexible prompt, parameter and conversation arguments of `Engine`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from ember._core import InvalidRequestError, Tokenizer
from ember.sampling_params import SamplingParams

PromptType = str | Sequence[int]
"""One prompt: text, or token ids."""
Conversation = Sequence[dict[str, Any]]
"""One chat: a list of {"role": ..., "content": ...} messages."""


@dataclass(frozen=True)
class Prompt:
    """A prompt ready for the engine: its text (None when given as ids) and token ids."""

    text: str | None
    token_ids: list[int]


def _is_plain_int(value: object) -> bool:
    """Whether `value` is an int and not a bool (a bool is an int to Python, but never a token id or a priority)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_sequence(value: object) -> bool:
    """Whether `value` is a list-like of items (text and bytes are not lists of prompts or token ids)."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _is_token_ids(value: object) -> bool:
    """Whether `value` is a non-empty sequence of ints (one tokenized prompt)."""
    return is_sequence(value) and len(value) > 0 and all(_is_plain_int(t) for t in value)  # type: ignore[arg-type]


def one_prompt(prompt: object, method: str) -> PromptType:
    """Checks that `prompt` is one prompt (a str or a list of token ids) for a single-prompt method."""
    if isinstance(prompt, str) or _is_token_ids(prompt):
        return prompt  # type: ignore[return-value]
    raise InvalidRequestError(f"{method} takes one prompt: a str or a list of token ids, got {type(prompt).__name__}")


def one_conversation(messages: object, method: str) -> Conversation:
    """Checks that `messages` is one conversation (a non-empty list of message dicts)."""
    if is_sequence(messages) and len(messages) > 0 and all(isinstance(m, dict) for m in messages):  # type: ignore[arg-type]
        return messages  # type: ignore[return-value]
    raise InvalidRequestError(f"{method} takes one conversation (a non-empty list of message dicts)")


def normalize_prompts(prompts: PromptType | Sequence[PromptType], tokenizer: Tokenizer) -> list[Prompt]:
    """Turns str | list[str] | list[int] | list[list[int]] into a list of Prompts (text encoded with BOS)."""
    items: Sequence[Any]
    if isinstance(prompts, str) or _is_token_ids(prompts):
        items = [prompts]
    elif is_sequence(prompts):
        items = prompts
    else:
        raise InvalidRequestError(
            f"prompts must be a str, a list of str or token id lists, got {type(prompts).__name__}"
        )
    if len(items) == 0:
        raise InvalidRequestError("prompts must not be empty")
    result = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            result.append(Prompt(item, tokenizer.encode(item, add_special_tokens=True)))
        elif is_sequence(item) and all(_is_plain_int(t) for t in item):
            result.append(Prompt(None, list(item)))
        else:
            raise InvalidRequestError(f"prompts[{i}] must be a str or a list of token ids, got {type(item).__name__}")
    return result


def normalize_conversations(
    conversations: Conversation | Sequence[Conversation],
    tokenizer: Tokenizer,
    add_generation_prompt: bool,
) -> list[Prompt]:
    """Renders one conversation or a list of them with the model's chat template and encodes them."""
    if not is_sequence(conversations):
        raise InvalidRequestError(
            f"messages must be a list of message dicts (or a list of such lists), got {type(conversations).__name__}"
        )
    if len(conversations) == 0:
        raise InvalidRequestError("messages must not be empty")
    convs = cast("Sequence[Conversation]", [conversations] if isinstance(conversations[0], dict) else conversations)
    result = []
    for i, conv in enumerate(convs):
        if not is_sequence(conv) or len(conv) == 0 or not all(isinstance(m, dict) for m in conv):
            raise InvalidRequestError(f"conversation {i} must be a non-empty list of {{'role', 'content'}} dicts")
        text = tokenizer.apply_chat_template(list(conv), add_generation_prompt=add_generation_prompt)
        # The template already writes the special tokens it needs (BOS, role markers).
        result.append(Prompt(text, tokenizer.encode(text, add_special_tokens=False)))
    return result


def normalize_params(
    sampling_params: SamplingParams | Sequence[SamplingParams] | None, num_prompts: int
) -> list[SamplingParams]:
    """One SamplingParams per prompt: defaults for None, one shared, or a list whose length must match."""
    if sampling_params is None:
        return [SamplingParams()] * num_prompts
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * num_prompts
    if not is_sequence(sampling_params):
        raise InvalidRequestError(
            f"sampling_params must be a SamplingParams or a list of them, got {type(sampling_params).__name__}"
        )
    return _one_per_prompt(sampling_params, num_prompts, "sampling_params", ("a", "SamplingParams"), _is_params)


def normalize_priority(priority: int | Sequence[int] | None, num_prompts: int) -> list[int]:
    """One scheduling priority per prompt (lower runs first): 0 for None, one shared int, or one per prompt."""
    if priority is None:
        return [0] * num_prompts
    if _is_plain_int(priority):
        return [priority] * num_prompts  # type: ignore[list-item]
    if not is_sequence(priority):
        raise InvalidRequestError(f"priority must be an int or a list of ints, got {type(priority).__name__}")
    return _one_per_prompt(priority, num_prompts, "priority", ("an", "int"), _is_plain_int)


def normalize_cache_salt(cache_salt: str | Sequence[str | None] | None, num_prompts: int) -> list[str | None]:
    """One cache salt (or None) per prompt: None for none, one shared str, or one per prompt. A salt is a
    non-empty str; requests share cached prefixes only with requests of the same salt."""
    if cache_salt is None or isinstance(cache_salt, str):
        return [check_cache_salt(cache_salt)] * num_prompts
    if not is_sequence(cache_salt):
        raise InvalidRequestError(
            f"cache_salt must be a str, a list of str (or None) per prompt, or None, got {type(cache_salt).__name__}"
        )
    salts = _one_per_prompt(cache_salt, num_prompts, "cache_salt", ("a", "str or None"), _is_salt)
    return [check_cache_salt(s, f"cache_salt[{i}]") for i, s in enumerate(salts)]


def check_cache_salt(cache_salt: object, name: str = "cache_salt") -> str | None:
    """`cache_salt` when it is None or a non-empty str; otherwise an InvalidRequestError naming `name`."""
    if cache_salt is None or (isinstance(cache_salt, str) and cache_salt):
        return cache_salt
    got = "an empty str" if isinstance(cache_salt, str) else type(cache_salt).__name__
    error = InvalidRequestError(f"{name} must be a non-empty str or None, got {got}")
    error.param = "cache_salt"
    raise error


def _is_salt(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_params(value: object) -> bool:
    return isinstance(value, SamplingParams)


def _one_per_prompt(
    values: Iterable[Any],
    num_prompts: int,
    field: str,
    kind: tuple[str, str],
    is_item: Callable[[object], bool],
) -> list[Any]:
    """`values` as a list, checked to hold exactly one item of `kind` (article, type name) per prompt;
    errors name `field` and the index."""
    article, type_name = kind
    items = list(values)
    if len(items) != num_prompts:
        raise InvalidRequestError(
            f"{field} has {len(items)} entries but there are {num_prompts} prompts; "
            f"pass one {type_name} or exactly one per prompt"
        )
    for i, item in enumerate(items):
        if not is_item(item):
            raise InvalidRequestError(f"{field}[{i}] must be {article} {type_name}, got {type(item).__name__}")
    return items
