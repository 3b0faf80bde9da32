"""tests/attention_reference.py on the CPU: the paged attention reference against torch's
scaled_dot_product_attention (causal, GQA, chunked rows, a padding row), and the decode split
mirror against the same table crates/ember-cuda/src/launch.rs's tests hold the Rust one to."""

from __future__ import annotations

import numpy as np
import pytest

from attention_reference import decode_split, paged_attention, relative_l2, seqs_for_partition, split_context

from references import require

# (max_seq_len, num_seqs, num_heads, num_kv_heads, num_sms) -> (partition, splits): launch.rs's table.
SPLITS = [
    ((4097, 1, 32, 8, 132), (64, 128)),
    ((1000, 16, 32, 8, 132), (128, 8)),
    ((1000, 32, 32, 8, 132), (256, 4)),
    ((300, 64, 32, 8, 132), (512, 2)),
    ((16384, 256, 32, 8, 132), (512, 32)),
    ((1, 1, 9, 3, 132), (64, 16)),
    ((2000, 8, 64, 4, 132), (128, 16)),
]


@pytest.mark.parametrize(("args", "want"), SPLITS)
def test_decode_split_mirrors_the_host(args, want):
    assert decode_split(*args) == want


def test_every_partition_is_reachable():
    assert [split_context(n) for n in (1, 1024, 1025, 5000)] == [1024, 1024, 2048, 8192]
    for partition in (64, 128, 256, 512):
        seqs = seqs_for_partition(partition, 16, 2, 132, 900)
        assert decode_split(900, seqs, 16, 2, 132)[0] == partition


def test_reference_matches_torch_sdpa():
    torch = require("torch")
    rng = np.random.default_rng(0)
    heads, kv_heads, d = 8, 2, 16
    seq_lens, q_lens = [9, 5, 0], [4, 5, 1]  # chunked prefill, plain prefill, a padding row
    k = [rng.standard_normal((n, kv_heads, d)) for n in seq_lens]
    v = [rng.standard_normal((n, kv_heads, d)) for n in seq_lens]
    q = rng.standard_normal((sum(q_lens), heads, d))
    got = paged_attention(q, k, v, seq_lens, q_lens, d**-0.5)
    assert np.all(got[-1] == 0), "a padding row is zeros"
    row = 0
    for s in range(2):
        qs = torch.tensor(q[row : row + q_lens[s]]).transpose(0, 1)  # [heads, q, d]
        ks = torch.tensor(k[s]).repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1)
        vs = torch.tensor(v[s]).repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1)
        # Row i sees keys up to seq_len - q_len + i.
        mask = torch.arange(seq_lens[s])[None, :] <= (seq_lens[s] - q_lens[s] + torch.arange(q_lens[s]))[:, None]
        want = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(0, 1).numpy()
        assert relative_l2(got[row : row + q_lens[s]], want).max() < 1e-12
        row += q_lens[s]
