"""Ember: an LLM inference engine with a Rust core and a small Python API.

>>> from ember import Engine, SamplingParams
>>> engine = Engine("smollm2-135m-instruct")
>>> outs = engine.generate(["The capital of France is"], SamplingParams(max_tokens=8, temperature=0.0))
"""

from ember._core import (
    EmberError,
    InvalidRequestError,
    ModelLoadError,
    OutOfMemoryError,
    __version__,
)
from ember.async_engine import AsyncEngine
from ember.engine import Engine
from ember.lora import LoRARequest
from ember.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from ember.sampling_params import SamplingParams, StructuredOutputsParams

__all__ = [
    "AsyncEngine",
    "CompletionOutput",
    "EmberError",
    "Engine",
    "InvalidRequestError",
    "LoRARequest",
    "Logprob",
    "ModelLoadError",
    "OutOfMemoryError",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputsParams",
    "__version__",
]
