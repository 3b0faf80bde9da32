"""Model argument resolution and the default model's cache, without the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import ModelLoadError
from ember.models import default_model_path, resolve_model


@pytest.fixture
def fake_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An EMBER_CACHE holding a placeholder of the default model with the right size (sparse)."""
    monkeypatch.setenv("EMBER_CACHE", str(tmp_path))
    target = default_model_path()
    target.parent.mkdir(parents=True)
    with target.open("wb") as f:
        f.truncate(98_362_432)
    return target


@pytest.mark.parametrize(
    "name", [None, "smollm2-135m-instruct", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"]
)
def test_known_names_give_the_cached_default_model(fake_cache: Path, name: str | None) -> None:
    assert resolve_model(name) == str(fake_cache)


def test_existing_paths_are_used_as_given(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(gguf) == str(gguf)
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown model 'llama-99b'.*smollm2-135m-instruct"):
        resolve_model("llama-99b")


def test_offline_without_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_CACHE", str(tmp_path))
    monkeypatch.setenv("EMBER_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="EMBER_OFFLINE=1"):
        resolve_model(None)
