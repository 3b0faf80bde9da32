"""Per-request sampling parameters, with vLLM's field names and defaults.

`SamplingParams` is the Rust engine's own type (`ember._core.SamplingParams`): it is validated
once, when made, names the field and its range when a value is out of range, and is handed to
the engine as it is.
"""

from __future__ import annotations

from ember._core import SamplingParams

__all__ = ["SamplingParams"]
