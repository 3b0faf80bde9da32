"""Shared fixtures: the default model's file, a session-wide engine on it, and one with prefix caching off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember import Engine, RequestOutput
from ember.models import resolve_model

KV_CACHE_MEMORY_BYTES = 256 << 20
MAX_MODEL_LEN = 2048


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """The default model's GGUF file: $EMBER_SMOLLM2_GGUF, else fetched into the cache."""
    env = os.environ.get("EMBER_SMOLLM2_GGUF")
    return Path(env) if env else Path(resolve_model(None))


@pytest.fixture(scope="session")
def engine(default_gguf: Path) -> Engine:
    """One engine on the default model, shared by the whole session (small KV cache)."""
    return Engine(str(default_gguf), kv_cache_memory_bytes=KV_CACHE_MEMORY_BYTES, max_model_len=MAX_MODEL_LEN)


@pytest.fixture(scope="session")
def uncached_engine(default_gguf: Path) -> Engine:
    """Like `engine` but with prefix caching off, for reference runs that must compute every prompt token
    themselves (a reference that reuses KV computed inside the run it checks proves nothing)."""
    return Engine(
        str(default_gguf),
        kv_cache_memory_bytes=KV_CACHE_MEMORY_BYTES,
        max_model_len=MAX_MODEL_LEN,
        enable_prefix_caching=False,
    )


def computed_every_prompt_token(outputs: list[RequestOutput]) -> bool:
    """True when no output took a prompt token from the prefix cache."""
    return all(o.num_cached_tokens == 0 for o in outputs)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama as a Hugging Face folder (written with transformers): loads and generates in milliseconds."""
    from tiny_models import VARIANTS, write_model

    folder = tmp_path_factory.mktemp("tiny") / VARIANTS[0].name
    write_model(VARIANTS[0], folder)
    return folder
