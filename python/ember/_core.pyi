"""Type stubs for ember._core, the Rust extension module (crates/ember-py)."""

from collections.abc import Sequence
from typing import Any

__version__: str

class EmberError(Exception):
    """Base class of every error Ember raises."""

    request_ids: list[str]
    """Set on the error of a failed engine step: the requests it ended."""

class InvalidRequestError(EmberError, ValueError):
    """A request or parameter is invalid; the message names the field and the limit."""

    param: str | None
    """The request field the error is about, when there is one."""

class ModelLoadError(EmberError):
    """A model file is missing, corrupt or unsupported; the message names it."""

class OutOfMemoryError(EmberError, MemoryError):
    """Not enough memory for the weights or the KV cache; the message has the numbers."""

class StructuredOutputsParams:
    """What a request's output must match: exactly one of `json` (a JSON schema, dict or str), `regex`
    (the whole output matches), `choice`, `grammar` (Lark, llguidance's dialect) or `json_object=True`.

    `whitespace_pattern` (JSON only) is a regex of the whitespace allowed between JSON tokens; by
    default JSON is compact (", " and ": " separators). Wrong values raise `ember.InvalidRequestError`.
    """

    def __init__(
        self,
        *,
        json: dict[str, Any] | str | None = None,
        regex: str | None = None,
        choice: Sequence[str] | None = None,
        grammar: str | None = None,
        json_object: bool | None = None,
        whitespace_pattern: str | None = None,
    ) -> None: ...
    @property
    def json(self) -> str | None:
        """The JSON schema as JSON text, when the constraint is a schema."""
    @property
    def regex(self) -> str | None:
        """The regular expression the whole output must match."""
    @property
    def choice(self) -> list[str] | None:
        """The strings the output must be one of."""
    @property
    def grammar(self) -> str | None:
        """The Lark grammar (llguidance's dialect)."""
    @property
    def json_object(self) -> bool:
        """True when the output must be any JSON object."""
    @property
    def whitespace_pattern(self) -> str | None:
        """Regex of the whitespace allowed between JSON tokens; None: compact JSON."""
    def to_dict(self) -> dict[str, Any]:
        """The set field and the options, as keyword arguments that make an equal object."""

class SamplingParams:
    """How to sample one request; validated when made (keyword arguments only), immutable afterwards.

    Field names and defaults follow vLLM. Out-of-range values raise `ember.InvalidRequestError`
    (a `ValueError`) naming the field and its range; an unknown keyword raises `TypeError`.
    """

    def __init__(
        self,
        *,
        n: int = 1,
        max_tokens: int | None = 16,
        min_tokens: int = 0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool = False,
        logprobs: int | None = None,
        skip_special_tokens: bool = True,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        logit_bias: dict[int, float] | dict[str, float] | None = None,
        prompt_logprobs: int | None = None,
        include_stop_str_in_output: bool = False,
        detokenize: bool = True,
        structured_outputs: StructuredOutputsParams | dict[str, Any] | None = None,
    ) -> None: ...
    @property
    def n(self) -> int:
        """Number of completions to return for the prompt."""
    @property
    def max_tokens(self) -> int | None:
        """Maximum number of generated tokens per completion; None: up to the engine's max_model_len."""
    @property
    def min_tokens(self) -> int:
        """Generate at least this many tokens before EOS or stop strings may end a completion."""
    @property
    def temperature(self) -> float:
        """Softmax temperature; 0 means greedy."""
    @property
    def top_p(self) -> float:
        """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (0 < top_p <= 1)."""
    @property
    def top_k(self) -> int:
        """Keep only the k most likely tokens; 0 or -1 disables."""
    @property
    def min_p(self) -> float:
        """Drop tokens whose probability is below min_p times the most likely token's."""
    @property
    def seed(self) -> int | None:
        """Per-request random seed in [0, 2**64 - 1] (others are refused); None derives one from the engine seed."""
    @property
    def stop(self) -> list[str] | None:
        """Strings that end a completion when generated (not in the text unless include_stop_str_in_output)."""
    @property
    def stop_token_ids(self) -> list[int] | None:
        """Token ids that end a completion when generated."""
    @property
    def ignore_eos(self) -> bool:
        """Keep generating after the model's end-of-sequence token."""
    @property
    def logprobs(self) -> int | None:
        """Return this many most likely alternatives (plus the sampled token) per generated token."""
    @property
    def skip_special_tokens(self) -> bool:
        """Leave special tokens out of the returned text."""
    @property
    def presence_penalty(self) -> float:
        """Subtracted from the logit of every token already generated (-2 <= presence_penalty <= 2)."""
    @property
    def frequency_penalty(self) -> float:
        """Subtracted from a token's logit once per time it was generated (-2 <= frequency_penalty <= 2)."""
    @property
    def repetition_penalty(self) -> float:
        """Tokens in the prompt or output get logit / r if positive, logit * r otherwise (r > 0; 1 disables)."""
    @property
    def logit_bias(self) -> dict[int, float] | None:
        """Added to the logits of these token ids before sampling (-100 <= bias <= 100)."""
    @property
    def prompt_logprobs(self) -> int | None:
        """Return the log probability of each prompt token plus this many most likely alternatives."""
    @property
    def include_stop_str_in_output(self) -> bool:
        """Keep the matched stop string at the end of the text."""
    @property
    def detokenize(self) -> bool:
        """Decode generated tokens to text; False leaves text empty and cannot be combined with stop."""
    @property
    def structured_outputs(self) -> StructuredOutputsParams | None:
        """What the output must match (ember.StructuredOutputsParams); None: free text."""
    def to_dict(self) -> dict[str, Any]:
        """Every field by name: keyword arguments that make an equal `SamplingParams`."""
    def for_child(self, index: int) -> SamplingParams:
        """The parameters of sub-request `index` of an n > 1 request: n=1, seed+index (mod 2**64) when seeded;
        only sub-request 0 computes prompt logprobs."""

# For a router in front of several engines (crates/ember-py/src/routing.rs).

def prefix_block_hashes(
    token_ids: Sequence[int], block_size: int, lora_int_id: int | None = None, cache_salt: str | None = None
) -> list[int]:
    """The prefix-cache keys of the prompt's full blocks, each chained over the one before (the engine's own hashes
    for a request with LoRA adapter `lora_int_id`, or the base model, and `cache_salt`, or none)."""

def stat_specs() -> list[tuple[str, str, str, str, str | None, str | None]]:
    """Every statistic of `Engine.stats()`, in /metrics order: (key, Prometheus name, kind, help text, ratio
    numerator key, ratio denominator key); kind is "counter", "gauge", "averaged_gauge" (averaged over replicas)
    or "ratio" (recomputed from two counters)."""

def load_tokenizer(model_path: str) -> Tokenizer:
    """The tokenizer and chat template of a GGUF file or Hugging Face folder, without loading its weights."""

# Testing aids: the Rust sampler's own code path on one row of logits, to check against a reference.

def sampling_probs(
    logits: Sequence[float],
    params: SamplingParams,
    prompt_token_ids: Sequence[int] = (),
    output_token_ids: Sequence[int] = (),
    eos_token_ids: Sequence[int] = (),
) -> list[float]:
    """Testing aid: the distribution the sampler draws output token len(output_token_ids) from.

    Applies, in order, the min_tokens mask (eos_token_ids and stop_token_ids), logit_bias,
    repetition/frequency/presence penalties, temperature, top-k, top-p and min-p; zeros for
    dropped tokens, one-hot at the first argmax when temperature is 0.
    """

def sample_token(
    logits: Sequence[float],
    params: SamplingParams,
    prompt_token_ids: Sequence[int] = (),
    output_token_ids: Sequence[int] = (),
    seed: int = 0,
    eos_token_ids: Sequence[int] = (),
) -> tuple[int, float | None, int | None, list[tuple[int, float]]]:
    """Testing aid: one draw of the sampler, (token_id, logprob, rank, top logprobs).

    Logprob (None unless params.logprobs is set: the sampler skips the log-sum-exp), rank
    (1 + the number of strictly larger logits; None unless params.logprobs is set) and the
    top logprobs describe the raw logits, before any adjustment.
    """

def _raise_panic(message: str) -> None:
    """Test hook: panics inside the FFI guard (raises EmberError)."""

def token_logprobs(logits: Sequence[float], token_id: int, k: int = 0) -> tuple[float, int, list[tuple[int, float]]]:
    """Testing aid: (log-softmax at token_id, its rank, the k best (token_id, logprob)) of one row."""

def dequantize(data: bytes, ggml_type: int) -> bytes:
    """Testing aid: the CPU backend's float32 values (little-endian bytes) of GGUF blocks of
    ggml type id `ggml_type` (the dequantization `dtype="float32"` applies at load)."""

def quantize_activations(x: bytes, block_len: int) -> tuple[bytes, bytes, bytes]:
    """Testing aid: the 8-bit quantization the quantized matmuls apply to one activation row of
    little-endian f32 `x` (`block_len` 32 for Q8_0/Q8_1, 256 for Q8_K): (i8 quants, f32 block
    scales, i32 sums of every 16 quants), each as little-endian bytes."""

class StepOutput:
    """What one request gained in one engine step."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finish_reason: str | None  # "stop" | "length" | "abort"
    stop_reason: int | str | None
    num_cached_tokens: int
    num_prompt_tokens: int
    # one entry per new token: (token_id, logprob, rank, text, [(token_id, logprob, text), ...] top
    # alternatives best first); texts keep special tokens and are None with detokenize=False
    new_logprobs: list[tuple[int, float, int | None, str | None, list[tuple[int, float, str | None]]]] | None
    # prompt logprobs new since the last output, from prompt position 1 on, in the same shape
    new_prompt_logprobs: list[tuple[int, float, int | None, str | None, list[tuple[int, float, str | None]]]] | None

class Tokenizer:
    """The model's tokenizer (from GGUF metadata or tokenizer.json)."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    chat_template_renders_tools: bool
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str: ...

class ReadLora:
    """A LoRA adapter read off the engine loop (`Engine.read_lora`), consumed by the first request given it."""

class Engine:
    """The Rust engine: owns the model, the KV cache, the scheduler and the tokenizer."""

    def __init__(
        self,
        model_path: str,
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
        speculative_config: str | None = None,
    ) -> None: ...
    tokenizer: Tokenizer
    max_model_len: int
    num_blocks: int
    block_size: int
    model_name: str
    eos_token_ids: list[int]
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int | None = None,
        fork_of: str | None = None,
        lora: tuple[str, int, str] | None = None,
        read_lora: ReadLora | None = None,
        cache_salt: str | None = None,
    ) -> None:
        """Queues a request; `fork_of` names a sibling with the same prompt whose prompt blocks it shares;
        `lora` is its adapter's (lora_name, lora_int_id, lora_path), loaded on first use (from `read_lora`, what
        `read_lora()` returned for it, when given); `cache_salt` (non-empty) keeps its cached prefixes apart from
        those of requests with another salt or none."""
    def compile_structured(self, params: SamplingParams) -> None:
        """Compiles the structured-output constraint of `params` on the calling thread without the engine lock, into
        the cache `add_request` reads (nothing without one). Raises InvalidRequestError naming structured_outputs."""
    def read_lora(self, lora: tuple[str, int, str]) -> ReadLora | None:
        """Reads and checks the adapter on the calling thread without the engine lock; None when the engine holds
        it already. Raises ModelLoadError naming the file and key."""
    def step(self) -> list[StepOutput]:
        """Runs one scheduler step with the GIL released; a failed step raises EmberError with `request_ids`."""
    def abort(self, request_id: str) -> bool: ...
    def has_unfinished_requests(self) -> bool: ...
    def stats(self) -> dict[str, float]: ...
    def reset_prefix_cache(self) -> bool: ...
    def score(
        self,
        prompt_token_ids: list[int],
        positions: list[int] | None = None,
        lora: tuple[str, int, str] | None = None,
    ) -> list[list[float]]:
        """Logits at every position of one prompt, or at `positions` only (a prefill outside the
        scheduler; for tests and evaluation), with adapter `lora` when given."""
    def unload_lora(self, lora_int_id: int) -> bool:
        """Unloads a LoRA adapter (an error while requests use it); False when it was not loaded."""
    def loaded_loras(self) -> list[tuple[int, str, str]]:
        """(lora_int_id, lora_name, lora_path) of every loaded LoRA adapter."""
    def _inject_step_faults(self, fault: str, num_steps: int) -> None:
        """Test hook: the next `num_steps` steps that compute anything fail ("error" or "panic")."""
