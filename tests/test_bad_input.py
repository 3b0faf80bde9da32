"""Bad input raises the right exception with a clear message, and the engine keeps working."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember import Engine, InvalidRequestError, ModelLoadError, SamplingParams

CHECK_PROMPT = "The capital of France is"
CHECK_PARAMS = SamplingParams(temperature=0.0, max_tokens=8)


@pytest.fixture(scope="module")
def reference_tokens(engine: Engine) -> list[int]:
    """Greedy tokens for CHECK_PROMPT before any bad input."""
    return engine.generate(CHECK_PROMPT, CHECK_PARAMS, use_tqdm=False)[0].outputs[0].token_ids


def _assert_still_works(engine: Engine, reference_tokens: list[int]) -> None:
    (out,) = engine.generate(CHECK_PROMPT, CHECK_PARAMS, use_tqdm=False)
    assert out.outputs[0].token_ids == reference_tokens


def test_empty_prompt_list(engine: Engine, reference_tokens: list[int]) -> None:
    with pytest.raises(InvalidRequestError, match="prompts must not be empty"):
        engine.generate([], CHECK_PARAMS)
    _assert_still_works(engine, reference_tokens)


def test_mismatched_params_list(engine: Engine, reference_tokens: list[int]) -> None:
    with pytest.raises(InvalidRequestError, match="2 entries but there are 3 prompts"):
        engine.generate(["a", "b", "c"], [CHECK_PARAMS, CHECK_PARAMS])
    _assert_still_works(engine, reference_tokens)


def test_prompt_longer_than_max_model_len(engine: Engine, reference_tokens: list[int]) -> None:
    limit = engine.max_model_len
    too_long = [engine.tokenizer.encode("hello", add_special_tokens=False)[0]] * (limit + 5)
    with pytest.raises(InvalidRequestError) as info:
        engine.generate(["a fine prompt", too_long], CHECK_PARAMS, use_tqdm=False)
    assert str(limit + 5) in str(info.value) and str(limit) in str(info.value)
    _assert_still_works(engine, reference_tokens)
    assert not engine._core.has_unfinished_requests()  # the fine prompt added first was aborted


def test_unknown_model_name() -> None:
    with pytest.raises(ModelLoadError) as info:
        Engine("no-such-model-7b")
    message = str(info.value)
    assert "no-such-model-7b" in message and "smollm2-135m-instruct" in message


def test_truncated_gguf(default_gguf: Path, tmp_path: Path, engine: Engine, reference_tokens: list[int]) -> None:
    truncated = tmp_path / "truncated.gguf"
    with default_gguf.open("rb") as src:
        truncated.write_bytes(src.read(os.path.getsize(default_gguf) // 2))
    with pytest.raises(ModelLoadError) as info:
        Engine(str(truncated), kv_cache_memory_bytes=16 << 20)
    assert "truncated.gguf" in str(info.value)
    _assert_still_works(engine, reference_tokens)


def test_random_bytes_gguf(tmp_path: Path, engine: Engine, reference_tokens: list[int]) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(1 << 16))
    with pytest.raises(ModelLoadError) as info:
        Engine(str(garbage), kv_cache_memory_bytes=16 << 20)
    assert "garbage.gguf" in str(info.value)
    _assert_still_works(engine, reference_tokens)
