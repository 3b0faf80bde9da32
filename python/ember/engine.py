"""`Engine`: the synchronous Python API over the Rust engine."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ember import _core
from ember._core import EmberError, StepOutput, Tokenizer
from ember._engine_args import check_engine_args
from ember._inputs import (
    Conversation,
    Prompt,
    PromptType,
    is_sequence,
    normalize_cache_salt,
    normalize_conversations,
    normalize_params,
    normalize_priority,
    normalize_prompts,
    one_conversation,
    one_prompt,
)
from ember._progress import PromptProgress
from ember._tracking import RequestState, step_failure
from ember.lora import LoRARequest, normalize_lora
from ember.models import resolve_model
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams

_Lora = tuple[str, int, str] | None
"""A request's adapter as the Rust engine takes it: (lora_name, lora_int_id, lora_path), or None."""

_Mail = StepOutput | EmberError | None
"""What a sub-request's mailbox holds: a step output, the error of the step that ended it, or None (aborted)."""


def _raise_failures(mail: list[tuple[str, _Mail]]) -> list[tuple[str, StepOutput | None]]:
    """The outputs in `mail`; raises the error of a failed step that ended one of these requests."""
    for _, item in mail:
        if isinstance(item, EmberError):
            raise item
    return mail  # type: ignore[return-value]


class Engine:
    """An LLM loaded for generation: batched `generate`/`chat`, and streaming variants.

    `model` is None or a known name (the default SmolLM2-135M-Instruct, fetched on
    first use), a GGUF file, or a Hugging Face model folder. The other arguments
    size the engine; see `ember._core.Engine`. `scheduling_policy` is vLLM's:
    "fcfs" (default) admits waiting requests first come, first served and takes
    only priority 0; "priority" admits the lowest `priority` value first (then
    the earliest) and preempts the highest first. `structured_jump_forward` appends
    the tokens a structured-output grammar forces (the single token allowed) without
    a decode step each; outputs are the same with it off. `speculative_config` turns on
    speculative decoding, vLLM's shape: `{"method": "ngram", "num_speculative_tokens": k,
    "prompt_lookup_min": a, "prompt_lookup_max": b}` (plus Ember's `adaptive`, default true,
    and `max_num_seqs_to_speculate`, default 1 for ngram and 2 for draft_model, 0 = any
    batch), or `{"method": "draft_model", "model": PATH_OR_NAME, "num_speculative_tokens": k,
    "dtype": "auto" | "float32"}` (a model with the target's vocabulary, run on the same
    backend with a KV cache mirroring the target's blocks); drafts are verified in one step
    and outputs are token for token those without it. `enable_lora`
    lets requests run with PEFT LoRA adapters (`lora_request=`): at most `max_loras` distinct
    adapters among running requests, ranks up to `max_lora_rank`, `max_cpu_loras` (default
    `max_loras`) kept loaded.
    Safe to share between threads: the Rust engine releases the GIL while it computes, and one
    lock serializes calls into it.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        block_size: int = 16,
        seed: int = 0,
        dtype: str = "auto",
        num_threads: int | None = None,
        enable_prefix_caching: bool = True,
        device: str = "auto",
        gpu_memory_utilization: float = 0.9,
        kv_cache_dtype: str = "auto",
        scheduling_policy: str = "fcfs",
        structured_jump_forward: bool = True,
        enable_lora: bool = False,
        max_loras: int = 1,
        max_lora_rank: int = 16,
        max_cpu_loras: int | None = None,
        speculative_config: dict[str, Any] | str | None = None,
    ) -> None:
        engine_args = {
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens,
            "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "block_size": block_size,
            "seed": seed,
            "dtype": dtype,
            "num_threads": num_threads,
            "enable_prefix_caching": enable_prefix_caching,
            "device": device,
            "gpu_memory_utilization": gpu_memory_utilization,
            "kv_cache_dtype": kv_cache_dtype,
            "scheduling_policy": scheduling_policy,
            "structured_jump_forward": structured_jump_forward,
            "enable_lora": enable_lora,
            "max_loras": max_loras,
            "max_lora_rank": max_lora_rank,
            "max_cpu_loras": max_cpu_loras,
            "speculative_config": speculative_config,
        }
        check_engine_args(engine_args)
        self.model_path = resolve_model(model)
        """The local file or folder the model was loaded from."""
        self._core = _core.Engine(self.model_path, **engine_args)
        self._lock = threading.Lock()
        self._request_counter = itertools.count()
        # Step outputs waiting for the caller that owns each sub-request (None = aborted).
        self._mailboxes: dict[str, list[_Mail]] = {}
        self._child_ids: dict[str, list[str]] = {}

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer."""
        return self._core.tokenizer

    @property
    def max_model_len(self) -> int:
        """The longest sequence (prompt plus generated tokens) a request may reach."""
        return self._core.max_model_len

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        priority: int | Sequence[int] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        cache_salt: str | Sequence[str | None] | None = None,
    ) -> list[RequestOutput]:
        """Completes each prompt (str | list[str] | list[int] | list[list[int]]); results in input order.

        `sampling_params` is None (defaults), one SamplingParams for all prompts,
        or a list with one per prompt. `priority` is None (0), one int for all
        prompts, or a list with one per prompt; with `scheduling_policy="priority"`
        lower values are admitted first and preempted last (an "fcfs" engine
        accepts only 0). `lora_request` is None (the base model), one LoRARequest for all prompts,
        or a list with one (or None) per prompt. `cache_salt` (vLLM's name) is None, one non-empty str for
        all prompts, or a list with one (or None) per prompt: a request reuses cached prefixes only of
        requests with the same salt (tenants that must not learn each other's prompts from timing use
        different salts). Text is encoded with the model's special tokens (BOS) added.
        """
        batch = normalize_prompts(prompts, self.tokenizer)
        params = normalize_params(sampling_params, len(batch))
        loras = normalize_lora(lora_request, len(batch))
        salts = normalize_cache_salt(cache_salt, len(batch))
        return self._run_batch(batch, params, use_tqdm, normalize_priority(priority, len(batch)), loras, salts)

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        priority: int | Sequence[int] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        cache_salt: str | Sequence[str | None] | None = None,
    ) -> list[RequestOutput]:
        """Answers one conversation (a list of {"role", "content"} dicts) or a list of them.

        Each conversation is rendered with the model's chat template. `priority`,
        `lora_request` and `cache_salt` are as in `generate`.
        """
        batch = normalize_conversations(messages, self.tokenizer, add_generation_prompt)
        params = normalize_params(sampling_params, len(batch))
        loras = normalize_lora(lora_request, len(batch))
        salts = normalize_cache_salt(cache_salt, len(batch))
        return self._run_batch(batch, params, use_tqdm, normalize_priority(priority, len(batch)), loras, salts)

    def generate_stream(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams | None = None,
        *,
        lora_request: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> Iterator[RequestOutput]:
        """Streams one prompt's completion as it is produced.

        Yields RequestOutputs whose `outputs` hold only the completions that
        changed, each with only the new text and token ids (a delta); for n=1,
        `outputs[0].text` is the new text. The last one has `finished=True` and
        the finish reason. The request starts at the first `next()` (errors are
        raised there); closing the iterator early aborts it. `lora_request` and `cache_salt` are as
        in `generate`, for this one prompt.
        """
        (item,) = normalize_prompts([one_prompt(prompt, "generate_stream")], self.tokenizer)
        (lora,), (salt,) = normalize_lora(lora_request, 1), normalize_cache_salt(cache_salt, 1)
        yield from self._stream(item, sampling_params or SamplingParams(), lora, salt)

    def chat_stream(
        self,
        messages: Conversation,
        sampling_params: SamplingParams | None = None,
        *,
        add_generation_prompt: bool = True,
        lora_request: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> Iterator[RequestOutput]:
        """Streams the answer to one conversation; yields deltas like `generate_stream`."""
        conversation = one_conversation(messages, "chat_stream")
        (item,) = normalize_conversations(conversation, self.tokenizer, add_generation_prompt)
        (lora,), (salt,) = normalize_lora(lora_request, 1), normalize_cache_salt(cache_salt, 1)
        yield from self._stream(item, sampling_params or SamplingParams(), lora, salt)

    def abort(self, request_id: str) -> bool:
        """Stops a running request (its output finishes with reason "abort"); False if unknown or done."""
        with self._lock:
            child_ids = self._child_ids.pop(request_id, None)
            if child_ids is None:
                return False
            aborted = False
            for child_id in child_ids:
                aborted |= self._core.abort(child_id)
                if child_id in self._mailboxes:
                    self._mailboxes[child_id].append(None)
            return aborted

    def stats(self) -> dict[str, float]:
        """Engine counters and gauges (requests, tokens, KV-cache usage, prefix-cache hits, CUDA graphs
        captured, replayed and failed)."""
        with self._lock:
            return self._core.stats()

    def reset_prefix_cache(self) -> bool:
        """Forgets cached prefixes; False if blocks are in use and nothing was reset."""
        with self._lock:
            return self._core.reset_prefix_cache()

    def score(
        self,
        prompt_token_ids: Sequence[int],
        positions: Sequence[int] | None = None,
        *,
        lora_request: LoRARequest | None = None,
    ) -> list[list[float]]:
        """The logits of one prompt, [num_positions][vocab_size] (for tests and evaluation): at every
        position, or at `positions` only (each below the prompt length), in their order; with the
        adapter of `lora_request` when given."""
        ids = list(prompt_token_ids) if is_sequence(prompt_token_ids) else prompt_token_ids
        lora = normalize_lora(lora_request, 1)[0]
        with self._lock:
            return self._core.score(ids, None if positions is None else list(positions), lora)

    def unload_lora(self, lora_int_id: int) -> bool:
        """Unloads a LoRA adapter (an error while requests use it); False if it was not loaded."""
        with self._lock:
            return self._core.unload_lora(lora_int_id)

    def loaded_loras(self) -> list[tuple[int, str, str]]:
        """`(lora_int_id, lora_name, lora_path)` of every loaded LoRA adapter."""
        with self._lock:
            return self._core.loaded_loras()

    def _run_batch(
        self,
        batch: list[Prompt],
        params: list[SamplingParams],
        use_tqdm: bool,
        priorities: list[int] | None = None,
        loras: list[_Lora] | None = None,
        salts: list[str | None] | None = None,
    ) -> list[RequestOutput]:
        """Adds every request, steps until all finish, and returns their outputs in order."""
        states = self._add_requests(batch, params, priorities, loras, salts)
        try:
            with PromptProgress(len(states), use_tqdm) as progress:
                running = {cid: s for s in states for cid in s.child_ids}
                while running:
                    for child_id, out in _raise_failures(self._next_outputs(running.keys())):
                        state = running[child_id]
                        state.add(child_id, out)
                        if state.completions[child_id].finished:
                            del running[child_id]
                            if state.finished:
                                num_out = sum(len(c.token_ids) for c in state.completions.values())
                                progress.prompt_done(len(state.prompt.token_ids), num_out)
        finally:
            self._abort_unfinished(states)
        return [s.output() for s in states]

    def _stream(
        self, item: Prompt, params: SamplingParams, lora: _Lora = None, salt: str | None = None
    ) -> Iterator[RequestOutput]:
        """Adds one request and yields its deltas until it finishes; aborts it if closed early."""
        (state,) = self._add_requests([item], [params], None, [lora], [salt])
        try:
            while not state.finished:
                for child_id, out in _raise_failures(self._next_outputs(state.unfinished_child_ids())):
                    state.add(child_id, out)
                delta = state.take_delta()
                if delta is not None:
                    yield delta
        finally:
            self._abort_unfinished([state])

    def _add_requests(
        self,
        batch: list[Prompt],
        params: list[SamplingParams],
        priorities: list[int] | None = None,
        loras: list[_Lora] | None = None,
        salts: list[str | None] | None = None,
    ) -> list[RequestState]:
        """Adds the requests to the engine; if one is rejected, aborts the others and re-raises."""
        states: list[RequestState] = []
        priorities = priorities or [0] * len(batch)
        loras = loras or [None] * len(batch)
        salts = salts or [None] * len(batch)
        # Adapter files are read before taking the lock, so other callers keep stepping meanwhile.
        reads = {lora: self._core.read_lora(lora) for lora in dict.fromkeys(loras) if lora is not None}
        # So are grammars: the engine then takes the compiled matcher from its cache.
        for p in params:
            self._core.compile_structured(p)
        with self._lock:
            try:
                for item, p, priority, lora, salt in zip(batch, params, priorities, loras, salts, strict=True):
                    state = RequestState(str(next(self._request_counter)), item, p)
                    states.append(state)
                    self._child_ids[state.request_id] = state.child_ids
                    for child_id, child_params, fork_of in state.engine_requests():
                        self._core.add_request(
                            child_id, item.token_ids, child_params, priority, fork_of, lora, reads.get(lora), salt
                        )
                        self._mailboxes[child_id] = []
            except BaseException:
                for state in states:
                    for child_id in state.child_ids:
                        if self._mailboxes.pop(child_id, None) is not None:
                            self._core.abort(child_id)
                    self._child_ids.pop(state.request_id, None)
                raise
        return states

    def _next_outputs(self, child_ids: Iterable[str]) -> list[tuple[str, _Mail]]:
        """New outputs for these sub-requests, stepping the engine when none are waiting.

        Whoever holds the lock steps the engine for everyone and files each
        output in its owner's mailbox, so several threads can generate at once.
        A failed step ended only its own requests: their owners find the error
        in their mailboxes, and everyone else goes on.
        """
        ids = list(child_ids)
        with self._lock:
            ready = self._take(ids)
            while not ready:
                if not self._core.has_unfinished_requests():
                    raise EmberError(f"the engine stopped with requests {ids[:4]} unfinished")
                try:
                    outputs = self._core.step()
                except EmberError as exc:
                    outputs = []
                    for child_id in step_failure(exc):
                        box = self._mailboxes.get(child_id)
                        if box is not None:
                            box.append(exc)
                for out in outputs:
                    box = self._mailboxes.get(out.request_id)
                    if box is not None:
                        box.append(out)
                ready = self._take(ids)
        return ready

    def _take(self, child_ids: list[str]) -> list[tuple[str, _Mail]]:
        """Empties the mailboxes of these sub-requests (caller holds the lock)."""
        taken: list[tuple[str, _Mail]] = []
        for child_id in child_ids:
            box = self._mailboxes.get(child_id)
            if box:
                taken.extend((child_id, out) for out in box)
                box.clear()
        return taken

    def _abort_unfinished(self, states: list[RequestState]) -> None:
        """Aborts whatever is still running of these requests (after an error or an early close)."""
        with self._lock:
            for state in states:
                for child_id in state.unfinished_child_ids():
                    self._core.abort(child_id)
                self._child_ids.pop(state.request_id, None)
                for child_id in state.child_ids:
                    self._mailboxes.pop(child_id, None)
