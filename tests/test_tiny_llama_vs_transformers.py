"""Exactness on small random models: Ember's float32 logits and greedy tokens equal transformers'.

Covers GQA and MHA, Qwen2's qkv bias, tied and untied embeddings, and two RoPE
bases, all loaded from Hugging Face folders (safetensors + tokenizer.json).
"""

from __future__ import annotations

from typing import Any

import pytest

from ember import Engine, SamplingParams

from references import require
from tiny_models import VARIANTS, Variant, assert_prefill_logits_match, write_model

PROMPT_IDS = [265, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 259, 257, 3, 250, 199]
NUM_GREEDY_STEPS = 20
MAX_REL_ERROR = 1e-4


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.name)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Engine]:
    """(transformers model, Ember engine) on the same saved random weights."""
    require("torch")
    require("transformers")
    variant: Variant = request.param
    folder = tmp_path_factory.mktemp(variant.name)
    model = write_model(variant, folder)
    engine = Engine(str(folder), dtype="float32", max_model_len=256, kv_cache_memory_bytes=16 << 20, max_num_seqs=8)
    return model, engine


def test_logits_match_at_every_position(tiny: tuple[Any, Engine]) -> None:
    model, engine = tiny
    assert_prefill_logits_match(engine, model, PROMPT_IDS, MAX_REL_ERROR)


def test_greedy_tokens_match(tiny: tuple[Any, Engine]) -> None:
    import torch

    model, engine = tiny
    # Greedy argmax decoding without stopping at EOS: what generate(do_sample=False) does, minus
    # EOS handling (ignore_eos=True on our side; min_new_tokens would mask EOS and change the argmax).
    seq = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        for _ in range(NUM_GREEDY_STEPS):
            next_id = model(seq).logits[0, -1].argmax().view(1, 1)
            seq = torch.cat([seq, next_id], dim=1)
    expected = seq[0, len(PROMPT_IDS) :].tolist()
    params = SamplingParams(temperature=0.0, max_tokens=NUM_GREEDY_STEPS, ignore_eos=True)
    (out,) = engine.generate(PROMPT_IDS, params, use_tqdm=False)
    assert out.outputs[0].token_ids == expected


def test_tokenizer_matches_transformers(tiny: tuple[Any, Engine]) -> None:
    from transformers import PreTrainedTokenizerFast

    _, engine = tiny
    text = "the then in <|im_start|>user\nhi there<|im_end|> naïve 🎉  x"
    ref = PreTrainedTokenizerFast.from_pretrained(engine.model_path)
    assert engine.tokenizer.encode(text, add_special_tokens=True) == ref(text).input_ids
    assert engine.tokenizer.decode(ref(text).input_ids, skip_special_tokens=False) == text
