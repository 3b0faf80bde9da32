"""Per-request sampling parameters, with vLLM's field names and defaults.

`SamplingParams` is the Rust engine's own type (`ember._core.SamplingParams`): it is validated
once, when made, names the field and its range when a value is out of range, and is handed to
the engine as it is.

`StructuredOutputsParams` (vLLM's name) is what `SamplingParams(structured_outputs=...)` takes:
exactly one of a JSON schema, any JSON object, a regex, a list of choices or a Lark grammar,
enforced token by token; a constraint that does not compile raises `InvalidRequestError`
when the request is added, never unconstrained output.
"""

from __future__ import annotations

from ember._core import SamplingParams, StructuredOutputsParams

__all__ = ["SamplingParams", "StructuredOutputsParams"]
