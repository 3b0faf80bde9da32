"""LoRA adapters against PEFT on tiny random float32 models of several families.

Every adapter is random (`init_lora_weights=False`, so B != 0) with its own rank, alpha, target
modules and rsLoRA setting. Ember's logits with the adapter are within 1e-4 (relative) of PEFT's,
and an adapter on a GGUF base (the same weights written with the `gguf` package, Q/K rows permuted
for interleaved RoPE) gives the logits of the Hugging Face base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ember import Engine, LoRARequest
from gguf_from_hf import write_gguf

from lora_adapters import ALL_LINEAR, ATTENTION, write_adapter
from references import require
from tiny_models import FAMILY_VARIANTS, VARIANTS, Variant, assert_prefill_logits_match, write_model

MAX_REL_ERROR = 1e-4
ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 256,
    "kv_cache_memory_bytes": 8 << 20,
    "enable_lora": True,
    "max_lora_rank": 16,
}
PROMPT_IDS = [(7 * i + 3) % 260 + 3 for i in range(40)]
_VARIANTS = {v.name: v for v in [*VARIANTS, *FAMILY_VARIANTS]}

# (model variant, rank, lora_alpha, target modules, use_rslora)
CASES = [
    ("llama-gqa-untied-rope5e5", 4, 8.0, ["q_proj", "v_proj"], False),
    ("llama-gqa-untied-rope5e5", 8, 16.0, ALL_LINEAR, True),
    ("llama-mha-untied-rope5e5", 16, 7.0, ["o_proj", "down_proj", "up_proj"], False),
    ("qwen2-qkvbias-gqa-untied", 2, 4.0, ATTENTION, False),
    ("qwen3-qknorm-gqa-untied", 4, 8.0, ALL_LINEAR, False),
    ("phi3-fused-window", 4, 8.0, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], True),
    ("gemma2-softcap-interleaved", 8, 4.0, ALL_LINEAR, False),
    ("qwen3moe-top3-normalized", 4, 8.0, ATTENTION, False),
]


def _base(name: str, root: Path) -> tuple[Variant, Any, Path]:
    require("torch")
    require("transformers")
    variant = _VARIANTS[name]
    folder = root / name
    return variant, write_model(variant, folder), folder


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-r{c[1]}-{len(c[3])}mods{'-rslora' if c[4] else ''}")
def test_logits_match_peft(case: tuple[str, int, float, list[str], bool], tmp_path: Path) -> None:
    require("peft")
    name, rank, alpha, targets, rslora = case
    _, model, folder = _base(name, tmp_path)
    adapter = write_adapter(
        model, tmp_path / "adapter", rank=rank, alpha=alpha, targets=targets, seed=rank, use_rslora=rslora
    )
    engine = Engine(str(folder), **ENGINE_ARGS)
    lora = LoRARequest("a", 1, str(tmp_path / "adapter"))

    class _WithAdapter:
        def score(self, ids: list[int]) -> list[list[float]]:
            return engine.score(ids, lora_request=lora)

    assert_prefill_logits_match(_WithAdapter(), adapter, PROMPT_IDS, MAX_REL_ERROR)
    # The adapter changes the logits, and the base model stays the base model.
    assert_prefill_logits_match(engine, model, PROMPT_IDS, MAX_REL_ERROR)
    with pytest.raises(AssertionError):
        assert_prefill_logits_match(_WithAdapter(), model, PROMPT_IDS, MAX_REL_ERROR)


def test_adapter_on_gguf_base_equals_hugging_face_base(tmp_path: Path) -> None:
    """q/k adapters on a GGUF base (rows permuted for interleaved RoPE) give the Hugging Face base's logits."""
    require("peft")
    require("gguf")
    import torch

    _, model, folder = _base("llama-gqa-untied-rope5e5", tmp_path)
    gguf_path = tmp_path / "model.gguf"
    write_gguf(folder, model, "llama", gguf_path)
    write_adapter(model, tmp_path / "adapter", rank=8, alpha=16.0, targets=ALL_LINEAR, seed=3)
    lora = LoRARequest("a", 1, str(tmp_path / "adapter"))
    hf = torch.tensor(Engine(str(folder), **ENGINE_ARGS).score(PROMPT_IDS, lora_request=lora))
    gguf = torch.tensor(Engine(str(gguf_path), **ENGINE_ARGS).score(PROMPT_IDS, lora_request=lora))
    rel = ((gguf - hf).abs().max() / hf.abs().max()).item()
    assert rel < 1e-5, f"GGUF base vs Hugging Face base with the adapter: {rel:.2e}"


def test_f16_factors_off_the_exact_path_stay_close_to_peft(tmp_path: Path) -> None:
    """With an f16 KV cache (dtype="auto"), adapters are stored in f16: still close to PEFT, far closer than the
    adapter's own effect, and the float32 path keeps its 1e-4."""
    require("peft")
    _, model, folder = _base("llama-gqa-untied-rope5e5", tmp_path)
    adapter = write_adapter(model, tmp_path / "adapter", rank=16, alpha=32.0, targets=ALL_LINEAR, seed=4)
    lora = LoRARequest("a", 1, str(tmp_path / "adapter"))

    class _WithAdapter:
        def __init__(self, dtype: str) -> None:
            self.engine = Engine(str(folder), **{**ENGINE_ARGS, "dtype": dtype})

        def score(self, ids: list[int]) -> list[list[float]]:
            return self.engine.score(ids, lora_request=lora)

    assert_prefill_logits_match(_WithAdapter("float32"), adapter, PROMPT_IDS, MAX_REL_ERROR)
    f16 = _WithAdapter("auto")
    assert_prefill_logits_match(f16, adapter, PROMPT_IDS, 5e-3)
    with pytest.raises(AssertionError, match="row-wise"):
        assert_prefill_logits_match(f16, adapter, PROMPT_IDS, MAX_REL_ERROR)  # not f32 values: f16 is in use
    with pytest.raises(AssertionError):
        assert_prefill_logits_match(f16, model, PROMPT_IDS, 5e-2)  # the adapter's effect is far larger
