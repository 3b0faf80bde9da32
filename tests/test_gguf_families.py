"""GGUF variants equal the Hugging Face variants: the same random weights written with the `gguf` package under
llama.cpp's tensor names and metadata keys (Llama's q/k rows permuted as its converter does, Phi-3's fused
tensors and window) load to the same logits (float32) and greedy tokens, and the same tokenizer.

Mixtral (llama.cpp's `llama` with experts) and Qwen3-MoE store each layer's experts stacked in one tensor per
projection. Families llama.cpp has that these files cannot express yet are refused with the reason (long-rope
factors).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ember import Engine, ModelLoadError, SamplingParams
from gguf_from_hf import write_gguf

from references import require
from tiny_models import FAMILY_VARIANTS, VARIANTS, Variant, write_model

ENGINE_ARGS: dict[str, Any] = {"dtype": "float32", "max_model_len": 256, "kv_cache_memory_bytes": 16 << 20}
PROMPT_IDS = [(7 * i + 3) % 256 + 3 for i in range(70)]

# (variant name, llama.cpp architecture)
CASES = [
    ("llama-gqa-untied-rope5e5", "llama"),
    ("qwen2-qkvbias-gqa-untied", "qwen2"),
    ("qwen3-qknorm-gqa-untied", "qwen3"),
    ("qwen3-qknorm-mha-tied", "qwen3"),
    ("phi3-fused-window", "phi3"),
    # llama.cpp writes Mixtral as `llama` with experts; its `llama` has no sliding window.
    ("mixtral-top2", "llama"),
    ("qwen3moe-top3-normalized", "qwen3moe"),
    ("qwen3moe-tied-router-dense-layer", "qwen3moe"),
    ("gemma2-softcap", "gemma2"),
    ("gemma3-qknorm-local-rope", "gemma3"),
]

# Variants of tests/tiny_models.py reshaped to what llama.cpp's architecture expresses.
_MIXTRAL = next(v for v in FAMILY_VARIANTS if v.name == "mixtral-top2-window")
_GEMMA2 = next(v for v in FAMILY_VARIANTS if v.name == "gemma2-softcap-interleaved")
GGUF_VARIANTS = [
    replace(_MIXTRAL, name="mixtral-top2", config={k: v for k, v in _MIXTRAL.config.items() if k != "sliding_window"}),
    # llama.cpp scales Gemma's queries by head_dim (hidden_size / heads for the 27B models), as their configs do.
    replace(_GEMMA2, name="gemma2-softcap", config=_GEMMA2.config | {"query_pre_attn_scalar": 16}),
]


def variant_named(name: str) -> Variant:
    """The variant of tests/tiny_models.py (or of GGUF_VARIANTS) called `name`."""
    (variant,) = [v for v in VARIANTS + FAMILY_VARIANTS + GGUF_VARIANTS if v.name == name]
    return variant


@pytest.mark.parametrize(("name", "arch"), CASES, ids=[c[0] for c in CASES])
def test_gguf_equals_hugging_face(name: str, arch: str, tmp_path: Path) -> None:
    require("gguf")
    require("transformers")
    folder = tmp_path / "hf"
    model = write_model(variant_named(name), folder)
    path = tmp_path / f"{name}.gguf"
    write_gguf(folder, model, arch, path)
    hf = Engine(str(folder), **ENGINE_ARGS)
    gguf = Engine(str(path), **ENGINE_ARGS)
    ours, theirs = hf.score(PROMPT_IDS), gguf.score(PROMPT_IDS)
    worst = max(
        abs(a - b) for row_a, row_b in zip(ours, theirs, strict=True) for a, b in zip(row_a, row_b, strict=True)
    )
    scale = max(abs(v) for row in ours for v in row)
    assert worst <= 1e-5 * scale, f"max |GGUF - HF| = {worst:.2e} (logit scale {scale:.1f})"
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    (a,) = hf.generate(PROMPT_IDS, params, use_tqdm=False)
    (b,) = gguf.generate(PROMPT_IDS, params, use_tqdm=False)
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    text = "the then <|im_start|>user\nnaïve 🎉  x\r\n"
    assert gguf.tokenizer.encode(text, add_special_tokens=False) == hf.tokenizer.encode(text, add_special_tokens=False)


def test_long_rope_gguf_is_refused_with_the_reason(tmp_path: Path) -> None:
    require("gguf")
    import gguf

    variant = variant_named("phi3-fused-window")
    folder = tmp_path / "hf"
    model = write_model(variant, folder)
    path = tmp_path / "phi3.gguf"
    write_gguf(folder, model, "phi3", path)
    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(tmp_path / "long.gguf"), "phi3")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        writer.add_key_value(
            field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None
        )
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data)
    import numpy as np

    writer.add_tensor("rope_factors_long.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="long-rope factors"):
        Engine(str(tmp_path / "long.gguf"), **ENGINE_ARGS)
