"""Writes a tiny Hugging Face model as a float32 GGUF file with the `gguf` package, under llama.cpp's tensor names
and metadata keys (what llama.cpp's converter writes for the architecture), for GGUF-vs-Hugging-Face checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# Hugging Face layer tensor -> llama.cpp's, per architecture ("blk.N." + name + ".weight").
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute_for_llama(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter reorders Llama's q/k rows for interleaved RoPE: per head, the two halves interleave."""
    rows, cols = weight.shape
    return weight.reshape(num_heads, 2, rows // num_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def write_gguf(folder: Path, model: Any, arch: str, path: Path) -> None:
    """Writes `model` (saved in `folder`, with its tokenizer.json) as `path` for llama.cpp architecture `arch`."""
    import gguf

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    if getattr(config, "sliding_window", None) and arch == "phi3":
        writer.add_sliding_window(config.sliding_window)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"] | {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    special = {t["id"] for t in tokenizer["added_tokens"]}
    tokens = sorted(vocab, key=vocab.__getitem__)
    types = [gguf.TokenType.CONTROL if vocab[t] in special else gguf.TokenType.NORMAL for t in tokens]
    # The converter pads the list to the embedding's rows with unused tokens.
    num_pad = config.vocab_size - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(num_pad)]
    types += [gguf.TokenType.UNUSED] * num_pad
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]])
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_add_bos_token(False)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_NAMES.items():
            weight = state.get(f"model.layers.{i}.{hf_name}.weight")
            if weight is None:
                continue
            if arch == "llama" and hf_name in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = config.num_attention_heads if hf_name.endswith("q_proj") else config.num_key_value_heads
                weight = _permute_for_llama(weight, heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
