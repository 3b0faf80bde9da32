"""RoPE scalings against transformers on tiny random Llama models: linear, Llama 3, YaRN (with and without
the attention factor's mscale pair); long-rope is Phi-3's (tests/test_model_families.py), and its short factors
apply when the engine's max_model_len stays within the original context. Dynamic NTK is refused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from ember import Engine, ModelLoadError

from references import require
from tiny_models import Variant, assert_prefill_logits_match, write_model

ENGINE_ARGS: dict[str, Any] = {"dtype": "float32", "kv_cache_memory_bytes": 16 << 20}
PROMPT_IDS = [random.Random(3).randrange(3, 265) for _ in range(100)]

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.5},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "beta_fast": 16,
        "beta_slow": 2,
        "mscale": 0.9,
        "mscale_all_dim": 0.6,
    },
}


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_scaled_rope_matches_transformers(kind: str, tmp_path: Path) -> None:
    require("torch")
    require("transformers")
    variant = Variant(f"llama-{kind}", "llama", 2, False, 10_000.0, {"rope_scaling": SCALINGS[kind]})
    model = write_model(variant, tmp_path / kind)
    assert_prefill_logits_match(Engine(str(tmp_path / kind), **ENGINE_ARGS), model, PROMPT_IDS)


def test_long_rope_takes_its_short_factors_within_the_original_context(tmp_path: Path) -> None:
    require("torch")
    require("transformers")
    from tiny_models import FAMILY_VARIANTS

    (variant,) = [v for v in FAMILY_VARIANTS if v.name == "phi3-fused-longrope"]
    model = write_model(variant, tmp_path / "phi3")
    engine = Engine(str(tmp_path / "phi3"), max_model_len=64, **ENGINE_ARGS)
    assert_prefill_logits_match(engine, model, PROMPT_IDS[:64])


def test_dynamic_ntk_is_refused_with_the_reason(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dynamic"
    folder.mkdir()
    for path in tiny_model_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "dynamic", "factor": 2.0}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="dynamic"):
        Engine(str(folder), **ENGINE_ARGS)
