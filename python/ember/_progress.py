"""The "Processed prompts" progress bar of `Engine.generate`, as vLLM shows it."""

from __future__ import annotations

from types import TracebackType

from tqdm import tqdm


class PromptProgress:
    """Counts finished prompts and shows input/output token throughput."""

    def __init__(self, num_prompts: int, enabled: bool) -> None:
        self._bar = tqdm(
            total=num_prompts,
            desc="Processed prompts",
            dynamic_ncols=True,
            disable=not enabled,
            postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s",
        )
        self._num_input_tokens = 0
        self._num_output_tokens = 0

    def prompt_done(self, num_input_tokens: int, num_output_tokens: int) -> None:
        """Marks one prompt finished with its token counts."""
        self._num_input_tokens += num_input_tokens
        self._num_output_tokens += num_output_tokens
        elapsed_s = self._bar.format_dict["elapsed"] or 1e-9
        self._bar.set_postfix_str(
            f"est. speed input: {self._num_input_tokens / elapsed_s:.2f} toks/s, "
            f"output: {self._num_output_tokens / elapsed_s:.2f} toks/s",
            refresh=False,
        )
        self._bar.update(1)

    def __enter__(self) -> PromptProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.close()
