"""Crafted model folders are refused with a clear ModelLoadError (never a panic, an abort or a huge allocation),
and engine options out of range are InvalidRequestErrors naming the option."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ember import Engine, InvalidRequestError, ModelLoadError, SamplingParams


def crafted(tiny_model_dir: Path, tmp_path: Path, **config_changes: Any) -> Path:
    folder = tmp_path / "crafted"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vocab_size": 266}, "the tokenizer has 268 tokens but the model's vocab_size (embedding rows) is 266"),
        ({"num_hidden_layers": 0}, "num_hidden_layers) must be at least 1, got 0"),
        ({"num_hidden_layers": 10**9}, "missing tensor layers.2.input_layernorm"),
        ({"num_hidden_layers": 2**32 - 1}, "missing tensor layers.2.input_layernorm"),
        ({"max_position_embeddings": 0}, "max_position_embeddings (context_length) must be at least 1, got 0"),
        ({"rope_theta": -1.0}, "rope_theta (rope.freq_base) must be a finite number > 0, got -1"),
        ({"rms_norm_eps": -1e-6}, "must be a finite number >= 0"),
        ({"hidden_size": 2**40, "head_dim": 16}, "embed_tokens"),
    ],
)
def test_crafted_configs_are_refused_clearly(
    tiny_model_dir: Path, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelLoadError) as info:
        Engine(str(crafted(tiny_model_dir, tmp_path, **changes)), kv_cache_memory_bytes=4 << 20)
    assert message in str(info.value)


def test_engine_options_out_of_range_name_the_option(tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidRequestError, match="max_num_batched_tokens must be an integer in \\[1,"):
        Engine(str(tiny_model_dir), max_num_batched_tokens=0)
    with pytest.raises(InvalidRequestError, match="gpu_memory_utilization must be in \\(0, 1\\], got 5"):
        Engine(str(tiny_model_dir), gpu_memory_utilization=5.0)
    with pytest.raises(InvalidRequestError, match="num_threads must be at most 1024"):
        Engine(str(tiny_model_dir), num_threads=10**6)


def test_request_ids_are_checked_against_the_smaller_vocabulary(tiny_model_dir: Path) -> None:
    """The tiny model's embedding has 300 rows but its tokenizer only 268 tokens: ids 268..299 are refused."""
    engine = Engine(str(tiny_model_dir), kv_cache_memory_bytes=4 << 20)
    quick = SamplingParams(max_tokens=1, temperature=0.0)
    engine.generate([[267]], quick, use_tqdm=False)
    for prompt, params, param in [
        ([268], quick, "prompt_token_ids"),
        ([1], SamplingParams(max_tokens=1, stop_token_ids=[280]), "stop_token_ids"),
        ([1], SamplingParams(max_tokens=1, logit_bias={299: 1.0}), "logit_bias"),
    ]:
        with pytest.raises(InvalidRequestError, match="out of range \\(vocab_size 268\\)") as info:
            engine.generate([prompt], params, use_tqdm=False)
        assert info.value.param == param
    for bad in [[True, 2], b"ab", [-5], [2**40]]:
        with pytest.raises(InvalidRequestError, match="prompt"):
            engine.generate([bad], quick, use_tqdm=False)  # type: ignore[list-item]
    with pytest.raises(InvalidRequestError, match="priority must be an integer in \\[-2147483648, 2147483647\\]"):
        engine.generate([[1]], quick, use_tqdm=False, priority=2**70)
    with pytest.raises(InvalidRequestError, match="lone surrogate"):
        engine.generate(["\ud800"], quick, use_tqdm=False)
