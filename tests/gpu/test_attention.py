"""Paged decode and prefill attention against a float64 reference, over dtypes, head sizes,
block sizes, odd sequence lengths and GQA ratios."""

from __future__ import annotations

import cupy as cp
import numpy as np
import pytest


def to_dev(x, name):
    if name == "f16":
        return cp.asarray(x.astype(np.float16))
    bits = (x.astype(np.float32).view(np.uint32) + 0x8000) >> 16  # round-to-nearest (ties up)
    return cp.asarray(bits.astype(np.uint16))


def from_dev(x, name):
    if name == "f16":
        return cp.asnumpy(x).astype(np.float64)
    return (cp.asnumpy(x).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def rounded(x, name):
    return from_dev(to_dev(x, name), name)


def reference(q, k, v, seq_lens, q_lens, scale):
    """q: per token [heads, d]; k/v: per sequence [len, kv_heads, d] (float64)."""
    outs, row = [], 0
    for s, (L, ql) in enumerate(zip(seq_lens, q_lens, strict=True)):
        group = q.shape[1] // k[s].shape[1]
        for i in range(ql):
            pos = L - ql + i
            kk = np.repeat(k[s][: pos + 1], group, axis=1)
            vv = np.repeat(v[s][: pos + 1], group, axis=1)
            logits = np.einsum("hd,thd->ht", q[row], kk) * scale
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            outs.append(np.einsum("ht,thd->hd", p, vv))
            row += 1
    return np.stack(outs)


def run_case(module, name, head_dim, block_size, seq_lens, q_lens, num_kv_heads, group, rng):
    num_heads = num_kv_heads * group
    num_seqs = len(seq_lens)
    max_blocks = max(-(-L // block_size) for L in seq_lens)
    num_blocks = num_seqs * max_blocks + 3
    perm = rng.permutation(num_blocks)[: num_seqs * max_blocks].reshape(num_seqs, max_blocks)
    kc = rng.standard_normal((num_blocks, block_size, num_kv_heads, head_dim))
    vc = rng.standard_normal((num_blocks, block_size, num_kv_heads, head_dim))
    kc, vc = rounded(kc, name), rounded(vc, name)
    ks = [kc[perm[s]].reshape(-1, num_kv_heads, head_dim)[: seq_lens[s]] for s in range(num_seqs)]
    vs = [vc[perm[s]].reshape(-1, num_kv_heads, head_dim)[: seq_lens[s]] for s in range(num_seqs)]
    num_tokens = sum(q_lens)
    q = rounded(rng.standard_normal((num_tokens, num_heads, head_dim)), name)
    scale = head_dim**-0.5
    want = reference(q, ks, vs, seq_lens, q_lens, scale)
    # Poisoned output: NaN everywhere, so an unwritten element fails the comparison.
    if name == "f16":
        out = cp.full((num_tokens, num_heads, head_dim), np.nan, np.float16)
    else:
        out = cp.full((num_tokens, num_heads, head_dim), 0x7FC0, np.uint16)
    args_common = (
        to_dev(kc, name),
        to_dev(vc, name),
        cp.asarray(perm.astype(np.int32)),
        cp.asarray(np.array(seq_lens, np.int32)),
    )
    suffix = f"{name}_h{head_dim}_b{block_size}"
    if all(ql == 1 for ql in q_lens):
        partition, splits = 128, -(-max(seq_lens) // 128)
        acc = cp.full((num_seqs, num_heads, splits, head_dim), np.nan, np.float32)
        mx = cp.full((num_seqs, num_heads, splits), np.nan, np.float32)
        sm = cp.full((num_seqs, num_heads, splits), np.nan, np.float32)
        kern = module.get_function(f"ember_paged_decode_attention_{suffix}")
        chunks = -(-group // 8)
        kern(
            (num_kv_heads * chunks, num_seqs, splits),
            (128,),
            (
                out,
                acc,
                mx,
                sm,
                to_dev(q, name),
                *args_common,
                np.int32(max_blocks),
                np.int32(num_heads),
                np.int32(num_kv_heads),
                np.float32(scale),
                np.int32(partition),
                np.int32(splits),
            ),
        )
        if splits > 1:
            module.get_function(f"ember_paged_decode_reduce_{name}")(
                (num_heads, num_seqs),
                (head_dim,),
                (
                    out,
                    acc,
                    mx,
                    sm,
                    args_common[3],
                    np.int32(num_heads),
                    np.int32(head_dim),
                    np.int32(partition),
                    np.int32(splits),
                ),
            )
    else:
        qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        tiles = -(-max(q_lens) // 64)
        module.get_function(f"ember_prefill_attention_{suffix}")(
            (num_seqs * tiles, num_heads),
            (128,),
            (
                out,
                to_dev(q, name),
                *args_common,
                cp.asarray(qsl),
                np.int32(max_blocks),
                np.int32(num_heads),
                np.int32(num_kv_heads),
                np.float32(scale),
                np.int32(tiles),
            ),
        )
    got = from_dev(out, name)
    tol = 2e-2 if name == "bf16" else 4e-3
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 3, 4, 8])
def test_decode(module, name, head_dim, block_size, group):
    rng = np.random.default_rng(head_dim + block_size + group)
    for seq_lens in ([1], [15, 16, 17], [1000], [4097, 3], list(rng.integers(1, 300, size=64))):
        run_case(module, name, head_dim, block_size, list(seq_lens), [1] * len(seq_lens), 2, group, rng)


@pytest.mark.parametrize("name", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 3, 4, 8])
def test_prefill_and_chunked_prefill(module, name, head_dim, block_size, group):
    rng = np.random.default_rng(7 * head_dim + block_size + group)
    # (seq_lens, q_lens): plain prefill, chunked prefill on a cached prefix, mixed batch.
    for seq_lens, q_lens in (([1], [1]), ([17], [17]), ([1000], [1000]), ([4097], [97]), ([15, 16, 65], [15, 3, 65])):
        run_case(module, name, head_dim, block_size, seq_lens, q_lens, 2, group, rng)
