"""Small random models of each supported family written with transformers, for exact comparisons.

Each variant is saved as a Hugging Face folder (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json) with a byte-level
BPE tokenizer: 256 byte tokens, a few merges, and ChatML special tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VOCAB_SIZE = 300
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"), ("r", "e")]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Variant:
    """One tiny architecture to test: family, KV heads (GQA when < 4), tied embeddings, RoPE base, and
    family-specific config fields."""

    name: str
    family: str  # a key of FAMILY_CLASSES
    num_key_value_heads: int
    tie_word_embeddings: bool
    rope_theta: float
    config: dict[str, Any] = field(default_factory=dict)


VARIANTS = [
    Variant("llama-gqa-tied-rope1e4", "llama", 2, True, 10_000.0),
    Variant("llama-mha-untied-rope5e5", "llama", 4, False, 500_000.0),
    Variant("llama-gqa-untied-rope5e5", "llama", 2, False, 500_000.0),
    Variant("qwen2-qkvbias-gqa-untied", "qwen2", 2, False, 10_000.0),
    Variant("qwen2-qkvbias-mha-tied-rope5e5", "qwen2", 4, True, 500_000.0),
]

# Window (in tokens) of the sliding-window variants: prompts in the tests run well past it.
SLIDING_WINDOW = 24

# The families added beside Llama/Qwen2, each checked in tests/test_model_families.py.
FAMILY_VARIANTS = [
    Variant("qwen3-qknorm-gqa-untied", "qwen3", 2, False, 1_000_000.0, {"head_dim": 32}),
    Variant("qwen3-qknorm-mha-tied", "qwen3", 4, True, 10_000.0, {"head_dim": 16}),
    Variant("mistral-window-gqa", "mistral", 2, False, 10_000.0, {"head_dim": 16, "sliding_window": SLIDING_WINDOW}),
    Variant(
        "qwen3-window-upper-layers",
        "qwen3",
        2,
        False,
        10_000.0,
        {"head_dim": 16, "use_sliding_window": True, "sliding_window": SLIDING_WINDOW, "max_window_layers": 1},
    ),
    # Long-rope past its original 64-token context (the long factors), and Phi-3's window.
    Variant(
        "phi3-fused-longrope",
        "phi3",
        2,
        False,
        10_000.0,
        {
            "head_dim": 16,
            "pad_token_id": None,
            "original_max_position_embeddings": 64,
            "rope_scaling": {
                "rope_type": "longrope",
                "short_factor": [1.0 + 0.15 * i for i in range(8)],
                "long_factor": [1.5 + 0.9 * i for i in range(8)],
            },
        },
    ),
    Variant(
        "phi3-fused-window", "phi3", 4, True, 10_000.0, {"head_dim": 16, "pad_token_id": None, "sliding_window": 24}
    ),
    # Soft-capping strong enough to bend these random logits; query_pre_attn_scalar unlike head_dim.
    Variant(
        "gemma2-softcap-interleaved",
        "gemma2",
        2,
        True,
        10_000.0,
        {
            "head_dim": 16,
            "num_hidden_layers": 3,
            "query_pre_attn_scalar": 24,
            "sliding_window": SLIDING_WINDOW,
            "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 3.0,
        },
    ),
    Variant(
        "gemma3-qknorm-local-rope",
        "gemma3",
        2,
        True,
        1_000_000.0,
        {
            "head_dim": 16,
            "num_hidden_layers": 3,
            "query_pre_attn_scalar": 16,
            "sliding_window": SLIDING_WINDOW,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        },
    ),
    Variant(
        "mixtral-top2-window",
        "mixtral",
        2,
        False,
        10_000.0,
        {"head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": SLIDING_WINDOW},
    ),
    # Router rows equal in pairs: every token's top 2 is a tied pair (routing ties, as transformers).
    Variant(
        "qwen3moe-tied-router-dense-layer",
        "qwen3_moe",
        2,
        True,
        10_000.0,
        {
            "head_dim": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 24,
            "mlp_only_layers": [1],
            "tie_router_pairs": True,
        },
    ),
    Variant(
        "qwen3moe-top3-normalized",
        "qwen3_moe",
        2,
        False,
        10_000.0,
        {
            "head_dim": 16,
            "num_experts": 6,
            "num_experts_per_tok": 3,
            "moe_intermediate_size": 24,
            "norm_topk_prob": True,
        },
    ),
]

# transformers' (config class, model class) names of each family.
FAMILY_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte b gets token id b)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tokenizer(folder: Path) -> int:
    """Writes tokenizer.json and tokenizer_config.json; returns the EOS id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    for left, right in MERGES:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(folder / "tokenizer.json"))
    eos_id = tokenizer.token_to_id("<|endoftext|>")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "model_max_length": 256,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return eos_id


def write_model(variant: Variant, folder: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Any:
    """Builds the variant with random float32 weights (seeded), saves it to `folder`, returns the torch model.

    `sizes` overrides the config's sizes (e.g. hidden_size, intermediate_size) for variants
    that need another head size (the CUDA attention kernels take 64 and 128)."""
    import torch
    import transformers
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    eos_id = write_tokenizer(folder)
    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=variant.num_key_value_heads,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=256,
        rope_theta=variant.rope_theta,
        tie_word_embeddings=variant.tie_word_embeddings,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=eos_id,
        # Larger than the default 0.02 so logits are well separated and greedy choices are not near-ties.
        initializer_range=0.2,
        dtype="float32",
    )
    if variant.family == "qwen2":
        common["use_sliding_window"] = False
    if "rope_parameters" in variant.config:
        del common["rope_theta"]
    common.update(variant.config)
    common.update(sizes or {})
    tie_router_pairs = common.pop("tie_router_pairs", False)
    torch.manual_seed(seed)
    config_class, model_class = (getattr(transformers, name) for name in FAMILY_CLASSES[variant.family])
    model = model_class(config_class(**common))
    if variant in FAMILY_VARIANTS:
        # transformers initializes norm weights to ones (zeros for Gemma's 1 + w), which would hide a
        # missing or misplaced norm.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.ndim == 1 and "norm" in name:
                    param.uniform_(-0.5, 1.5)
                if name.endswith("mlp.gate.weight"):  # the MoE router
                    param.normal_(0.0, 0.5)
                    if tie_router_pairs:
                        param[1::2] = param[0::2]
    model = model.float().eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_id, bos_token_id=None)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model


def assert_prefill_logits_match(engine: Any, model: Any, prompt_ids: list[int], max_rel_error: float = 1e-4) -> None:
    """Ember's logits at every prompt position within `max_rel_error` of transformers' (row-wise and max-abs)."""
    import torch

    ours = torch.tensor(engine.score(prompt_ids), dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([prompt_ids])).logits[0].float()
    assert ours.shape == ref.shape
    row_rel = ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    abs_rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert row_rel < max_rel_error and abs_rel < max_rel_error, f"row-wise {row_rel:.2e}, max-abs {abs_rel:.2e}"
