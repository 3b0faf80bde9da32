"""Writes a tiny Hugging Face model as a float32 GGUF file with the `gguf` package, under llama.cpp's tensor names
and metadata keys (what llama.cpp's converter writes for the architecture), for GGUF-vs-Hugging-Face checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from synthetic_gguf import add_decoder_shape

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


# Gemma's norms after attention and around the MLP (llama.cpp's `ffn_norm` is Gemma's pre-MLP norm).
_GEMMA_NAMES = {
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def _permute_for_llama(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter reorders Llama's q/k rows for interleaved RoPE: per head, the two halves interleave."""
    rows, cols = weight.shape
    return weight.reshape(num_heads, 2, rows // num_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _add_experts(writer: Any, state: dict[str, np.ndarray], layer: int, expert_type: Any) -> None:
    """A sparse layer's router and experts as llama.cpp stacks them: `[num_experts, rows, cols]` per projection
    (transformers keeps gate and up fused, gate rows first), the experts encoded as `expert_type` (F32 when None)."""
    import gguf

    prefix = f"model.layers.{layer}.mlp."
    gate_up = state.get(prefix + "experts.gate_up_proj")
    if gate_up is None:
        return
    inter = gate_up.shape[1] // 2
    writer.add_tensor(f"blk.{layer}.ffn_gate_inp.weight", state[prefix + "gate.weight"])
    stacks = {"gate": gate_up[:, :inter], "up": gate_up[:, inter:], "down": state[prefix + "experts.down_proj"]}
    for name, stack in stacks.items():
        stack = np.ascontiguousarray(stack)
        if expert_type is not None:
            stack = gguf.quants.quantize(stack, expert_type)
        writer.add_tensor(f"blk.{layer}.ffn_{name}_exps.weight", stack, raw_dtype=expert_type)


def _add_expert_metadata(writer: Any, config: Any) -> None:
    """The expert counts llama.cpp's converter writes (Qwen3-MoE's experts sized by `expert_feed_forward_length`,
    Mixtral's by `feed_forward_length`). llama.cpp always renormalizes the top-k for both; `expert_weights_norm`
    (a llama.cpp key its converter writes for other MoE families) records a model that does not."""
    num_experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if not num_experts:
        return
    writer.add_expert_count(num_experts)
    writer.add_expert_used_count(config.num_experts_per_tok)
    if getattr(config, "moe_intermediate_size", None):
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    if getattr(config, "norm_topk_prob", True) is False:
        writer.add_expert_weights_norm(False)


def _add_rope_metadata(writer: Any, config: Any) -> None:
    """RoPE bases as llama.cpp's converter writes them: the global layers' base and linear scaling (Gemma 3's
    `full_attention` parameters), and the sliding layers' base (`rope.freq_base_swa`) when it has its own."""
    import gguf

    params = config.rope_parameters
    full = params.get("full_attention", params)
    writer.add_rope_freq_base(full["rope_theta"])
    if full.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(full["factor"])
    if "sliding_attention" in params:
        writer.add_rope_freq_base_swa(params["sliding_attention"]["rope_theta"])


def _add_gemma_metadata(writer: Any, config: Any, arch: str) -> None:
    """Gemma's soft-caps and window as llama.cpp's converter writes them, and the per-layer window flags
    (`attention.sliding_window_pattern`, which llama.cpp reads) when `layer_types` is not llama.cpp's default
    period (every 2nd layer global for Gemma 2, every 6th for Gemma 3)."""
    if arch == "gemma2" and config.attn_logit_softcapping is not None:
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    if config.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    writer.add_sliding_window(config.sliding_window)
    period = 2 if arch == "gemma2" else 6
    flags = [t == "sliding_attention" for t in config.layer_types]
    if flags != [i % period < period - 1 for i in range(len(flags))]:
        writer.add_sliding_window_pattern(flags)


def write_gguf(folder: Path, model: Any, arch: str, path: Path, expert_type: Any = None) -> None:
    """Writes `model` (saved in `folder`, with its tokenizer.json) as `path` for llama.cpp architecture `arch`,
    mixture-of-experts tensors as `expert_type` (a `gguf.GGMLQuantizationType`; float32 when None)."""
    import gguf

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    add_decoder_shape(
        writer,
        config.max_position_embeddings,
        config.hidden_size,
        config.num_hidden_layers,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
    )
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    _add_rope_metadata(writer, config)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    if getattr(config, "sliding_window", None) and arch == "phi3":
        writer.add_sliding_window(config.sliding_window)
    _add_expert_metadata(writer, config)
    gemma = arch in ("gemma2", "gemma3")
    if gemma:
        _add_gemma_metadata(writer, config, arch)
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
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]])
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_add_bos_token(False)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if gemma:
        # llama.cpp's converter stores Gemma's `(1 + w)` RMSNorm weights with the 1 added.
        state = {k: v + 1.0 if k.endswith("norm.weight") else v for k, v in state.items()}
    layer_names = _LAYER_NAMES | _GEMMA_NAMES if gemma else _LAYER_NAMES
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        for hf_name, gguf_name in layer_names.items():
            weight = state.get(f"model.layers.{i}.{hf_name}.weight")
            if weight is None:
                continue
            if arch == "llama" and hf_name in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = config.num_attention_heads if hf_name.endswith("q_proj") else config.num_key_value_heads
                weight = _permute_for_llama(weight, heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(weight))
        _add_experts(writer, state, i, expert_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
