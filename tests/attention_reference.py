"""Float64 numpy reference of paged attention and the host's decode split, importable without a
GPU (tests/gpu/test_attention.py uses both; tests/test_attention_reference.py checks them on the
CPU: the reference against torch's scaled_dot_product_attention, the split against the table of
crates/ember-cuda/src/launch.rs's tests)."""

from __future__ import annotations

import math

import numpy as np

#: crates/ember-cuda/src/launch.rs: partition sizes, largest first; blocks per SM aimed for; the
#: smallest planned context; query heads per decode block.
DECODE_PARTITIONS = (512, 256, 128, 64)
DECODE_BLOCKS_PER_SM = 4
SPLIT_MIN_CONTEXT = 1024
DECODE_MAX_GROUP = 8


def head_blocks(num_heads: int, num_kv_heads: int) -> int:
    """Decode blocks per sequence: KV heads times chunks of at most 8 query heads."""
    return num_kv_heads * math.ceil(num_heads // num_kv_heads / DECODE_MAX_GROUP)


def split_context(max_seq_len: int) -> int:
    """The planned context: the longest sequence rounded up to a power of two, at least 1024."""
    return 1 << (max(max_seq_len, SPLIT_MIN_CONTEXT) - 1).bit_length()


def decode_split(max_seq_len: int, num_seqs: int, num_heads: int, num_kv_heads: int, num_sms: int) -> tuple[int, int]:
    """`launch::decode_split`: (partition_size, num_splits)."""
    context = split_context(max_seq_len)
    base = max(num_seqs, 1) * head_blocks(num_heads, num_kv_heads)
    target = DECODE_BLOCKS_PER_SM * num_sms
    partition = next((p for p in DECODE_PARTITIONS if base * -(-context // p) >= target), DECODE_PARTITIONS[-1])
    return partition, -(-context // partition)


def seqs_for_partition(partition: int, num_heads: int, num_kv_heads: int, num_sms: int, max_seq_len: int) -> int:
    """The fewest sequences of up to `max_seq_len` tokens for which the host picks `partition`."""
    for num_seqs in range(1, 4096):
        if decode_split(max_seq_len, num_seqs, num_heads, num_kv_heads, num_sms)[0] == partition:
            return num_seqs
    raise ValueError(f"no batch gives partition {partition}")


def paged_attention(
    q: np.ndarray, k: list[np.ndarray], v: list[np.ndarray], seq_lens: list[int], q_lens: list[int], scale: float
) -> np.ndarray:
    """Causal attention of each sequence's new rows over its context.

    q: [tokens, heads, d] (rows of each sequence in order); k, v: per sequence [len, kv_heads, d].
    A sequence's row i sits at position seq_len - q_len + i and sees keys 0..=position; a row of
    a seq_len 0 sequence (a padding row) is all zeros. Query head h reads KV head h // group."""
    num_heads, d = q.shape[1:]
    outs, row = [], 0
    for s, (length, q_len) in enumerate(zip(seq_lens, q_lens, strict=True)):
        rows = q[row : row + q_len]
        row += q_len
        if length == 0:
            outs.append(np.zeros((q_len, num_heads, d)))
            continue
        kv_heads = k[s].shape[1]
        grouped = rows.reshape(q_len, kv_heads, num_heads // kv_heads, d)
        logits = np.einsum("qkgd,lkd->qkgl", grouped, k[s]) * scale
        positions = length - q_len + np.arange(q_len)
        visible = np.arange(length)[None, :] <= positions[:, None]  # [q_len, length]
        logits = np.where(visible[:, None, None, :], logits, -np.inf)
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        outs.append(np.einsum("qkgl,lkd->qkgd", p, v[s]).reshape(q_len, num_heads, d))
    return np.concatenate(outs)


def relative_l2(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per (row, head): ||got - want|| / ||want|| over the head dimension."""
    return np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
