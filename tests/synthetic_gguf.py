"""A small random Llama written as a GGUF file from a seed with the `gguf` package, in the default
model's formats: Q4_1 matrices, a tied Q8_0 embedding, f32 norms, a byte-level BPE tokenizer (the
vocabulary and merges of tests/tiny_models.py). The GPU tests write it on the GPU machine, where
the default model's 98 MB file cannot travel, so the GGUF load, the device dequantization and
CUDA graphs run on a real file there; tests/test_gpu_e2e_inputs.py checks it on the CPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiny_models import MERGES, SPECIAL_TOKENS, _bytes_to_unicode

#: Prompts (token ids) for the synthetic model: short, long, crossing a 64-row prefill tile and a block.
PROMPTS = [
    [265, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10],
    [42],
    [7, 8, 9, 10, 11, 12, 13],
    [int(x) for x in np.random.default_rng(0).integers(3, 256, 65)],
    [int(x) for x in np.random.default_rng(1).integers(3, 256, 17)],
]


@dataclass(frozen=True)
class GgufShape:
    """Sizes of the synthetic model (rows of 32-multiples, as Q4_1 and Q8_0 blocks need)."""

    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    context: int = 512
    rope_theta: float = 10_000.0


def vocabulary() -> list[str]:
    """256 byte tokens, the merged tokens, then the special tokens (EOS first)."""
    byte_chars = _bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)] + [left + right for left, right in MERGES]
    return tokens + SPECIAL_TOKENS


def add_decoder_shape(
    writer: Any, context: int, hidden: int, layers: int, feed_forward: int, heads: int, kv_heads: int
) -> None:
    """Writes a decoder's sizes into a `gguf.GGUFWriter`: context length, hidden width, layer count,
    MLP width, query heads and key/value heads."""
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)


def write_llama_gguf(path: Path, seed: int = 0, shape: GgufShape = GgufShape()) -> Path:
    """Writes the model drawn from `seed` to `path` and returns it."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = vocabulary()
    head_dim = shape.hidden // shape.heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"synthetic-llama-seed{seed}")
    add_decoder_shape(
        writer, shape.context, shape.hidden, shape.layers, shape.intermediate, shape.heads, shape.kv_heads
    )
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    normal, control = gguf.TokenType.NORMAL, gguf.TokenType.CONTROL
    writer.add_token_types([control if t in SPECIAL_TOKENS else normal for t in tokens])
    writer.add_token_merges([f"{left} {right}" for left, right in MERGES])
    writer.add_eos_token_id(tokens.index(SPECIAL_TOKENS[0]))
    writer.add_add_bos_token(False)

    def matrix(name: str, rows: int, cols: int, kind: gguf.GGMLQuantizationType, scale: float = 0.2) -> None:
        weights = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        writer.add_tensor(name, gguf.quants.quantize(weights, kind), raw_dtype=kind)

    def norm(name: str) -> None:
        writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape.hidden)).astype(np.float32))

    q4, q8 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0
    kv_rows = shape.kv_heads * head_dim
    matrix("token_embd.weight", len(tokens), shape.hidden, q8, scale=1.0)
    for i in range(shape.layers):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", shape.hidden, shape.hidden, q4)
        matrix(f"blk.{i}.attn_k.weight", kv_rows, shape.hidden, q4)
        matrix(f"blk.{i}.attn_v.weight", kv_rows, shape.hidden, q4)
        matrix(f"blk.{i}.attn_output.weight", shape.hidden, shape.hidden, q4)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", shape.intermediate, shape.hidden, q4)
        matrix(f"blk.{i}.ffn_up.weight", shape.intermediate, shape.hidden, q4)
        matrix(f"blk.{i}.ffn_down.weight", shape.hidden, shape.intermediate, q4)
    norm("output_norm.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
