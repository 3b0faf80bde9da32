"""Hugging Face config fields that change the math are honoured or refused, never ignored.

A sliding window applies to the layers transformers' config class says (Mistral: all; Qwen2 with
use_sliding_window: from max_window_layers on), and sequences run past it exactly as transformers;
activations other than SiLU and Llama's mlp_bias are refused; tensors the model code does not
read are named in a warning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ember import Engine, ModelLoadError, SamplingParams

from references import require
from tiny_models import VARIANTS, write_model

WINDOW = 48
MAX_POSITION_EMBEDDINGS = 256
PROMPT_IDS = [265, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 259]
ENGINE_ARGS = {"dtype": "float32", "kv_cache_memory_bytes": 16 << 20}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a Hugging Face folder (tied embeddings, GQA)."""
    require("torch")
    require("transformers")
    folder = tmp_path_factory.mktemp("tiny-llama")
    write_model(VARIANTS[0], folder)
    return folder


def _variant(source: Path, target: Path, **config: Any) -> Path:
    """A copy of the folder with `config` merged into config.json."""
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    merged = json.loads((source / "config.json").read_text()) | config
    (target / "config.json").write_text(json.dumps(merged))
    return target


def _greedy_matches_transformers(folder: Path, num_new: int) -> None:
    """Ember's greedy tokens (past the window) equal transformers' on the folder's model."""
    torch = require("torch")
    transformers = require("transformers")
    engine = Engine(str(folder), **ENGINE_ARGS)
    assert engine.max_model_len == MAX_POSITION_EMBEDDINGS
    params = SamplingParams(temperature=0.0, max_tokens=num_new, ignore_eos=True)
    (out,) = engine.generate(PROMPT_IDS, params, use_tqdm=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    assert model.config.sliding_window == WINDOW
    seq = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        for _ in range(num_new):
            seq = torch.cat([seq, model(seq).logits[0, -1].argmax().view(1, 1)], dim=1)
    assert out.outputs[0].token_ids == seq[0, len(PROMPT_IDS) :].tolist()


def test_mistral_window_runs_past_it_and_matches_transformers(llama_folder: Path, tmp_path: Path) -> None:
    folder = _variant(llama_folder, tmp_path / "mistral", architectures=["MistralForCausalLM"], model_type="mistral",
                      sliding_window=WINDOW)  # fmt: skip
    _greedy_matches_transformers(folder, 2 * WINDOW)


def test_qwen2_window_applies_only_with_use_sliding_window(llama_folder: Path, tmp_path: Path) -> None:
    off = _variant(llama_folder, tmp_path / "off", architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                   sliding_window=WINDOW, use_sliding_window=False)  # fmt: skip
    (plain,) = Engine(str(llama_folder), **ENGINE_ARGS).generate(PROMPT_IDS, SamplingParams(temperature=0.0,
        max_tokens=2 * WINDOW, ignore_eos=True), use_tqdm=False)  # fmt: skip
    (ignored,) = Engine(str(off), **ENGINE_ARGS).generate(PROMPT_IDS, SamplingParams(temperature=0.0,
        max_tokens=2 * WINDOW, ignore_eos=True), use_tqdm=False)  # fmt: skip
    assert ignored.outputs[0].token_ids == plain.outputs[0].token_ids
    # Layers from max_window_layers on use the window (here the second of two).
    on = _variant(off, tmp_path / "on", use_sliding_window=True, max_window_layers=1)
    _greedy_matches_transformers(on, 2 * WINDOW)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden_act": "gelu_pytorch_tanh"}, 'hidden_act "gelu_pytorch_tanh" is not supported'),
        ({"mlp_bias": True}, "mlp_bias true is not supported"),
    ],
)
def test_unsupported_mlp_is_refused(llama_folder: Path, tmp_path: Path, config: dict, message: str) -> None:
    folder = _variant(llama_folder, tmp_path / "variant", **config)
    with pytest.raises(ModelLoadError, match=message):
        Engine(str(folder), **ENGINE_ARGS)


def test_unused_tensors_are_named_in_a_warning(
    llama_folder: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    safetensors_torch = require("safetensors.torch")
    torch = require("torch")
    folder = _variant(llama_folder, tmp_path / "extra")
    tensors = safetensors_torch.load_file(str(folder / "model.safetensors"))
    tensors["model.layers.0.mlp.gate_proj.bias"] = torch.zeros(128)
    tensors["model.vision_tower.proj.weight"] = torch.zeros(4, 4)
    safetensors_torch.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    capfd.readouterr()
    Engine(str(folder), **ENGINE_ARGS)
    err = capfd.readouterr().err
    assert "2 tensors in the model files are not used" in err, err
    assert "model.layers.0.mlp.gate_proj.bias" in err and "model.vision_tower.proj.weight" in err
    Engine(str(llama_folder), **ENGINE_ARGS)
    assert "not used" not in capfd.readouterr().err
