"""Paged decode and prefill attention against a float64 reference (tests/attention_reference.py),
over dtypes, head sizes, block sizes, odd sequence lengths and GQA groups up to 16, judged by the
relative L2 error of every (row, head) output (1e-2 for bf16, 2e-3 for f16), with peaked logits in
half of the cases so that a wrong softmax cannot hide in a near-uniform average.

Decode launches use the split the host picks (`launch::decode_split`, mirrored), and cases are
sized so that the host picks every partition (64, 128, 256, 512) on this device. Every cache slot
outside the sequences' contexts is NaN, so a read past a context poisons the result; a decode
batch carries a seq_len 0 padding row (as CUDA graphs pad), which must come out exactly zero; a
prefill launch carries q_len 1 rows beside longer ones."""

from __future__ import annotations

import cupy as cp
import numpy as np
import pytest

from attention_reference import decode_split, paged_attention, relative_l2, seqs_for_partition

from kernel_harness import num_sms

REL_L2 = {"bf16": 1e-2, "f16": 2e-3}
GROUPS = [1, 3, 4, 8, 16]
NUM_KV_HEADS = 2


def to_dev(x, name):
    if name == "f16":
        return cp.asarray(x.astype(np.float16))
    bits = x.astype(np.float32).view(np.uint32)
    nan = np.isnan(x)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    bits[nan] = 0x7FC0
    return cp.asarray(bits)


def from_dev(x, name):
    if name == "f16":
        return cp.asnumpy(x).astype(np.float64)
    return (cp.asnumpy(x).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def rounded(x, name):
    return from_dev(to_dev(x, name), name)


class Case:
    """A paged cache holding the sequences' contexts in shuffled blocks, NaN everywhere else."""

    def __init__(self, name, head_dim, block_size, seq_lens, q_lens, group, rng, peak):
        self.name, self.head_dim, self.seq_lens, self.q_lens = name, head_dim, seq_lens, q_lens
        self.num_heads = NUM_KV_HEADS * group
        self.max_blocks = max(1, max(-(-n // block_size) for n in seq_lens))
        num_seqs = len(seq_lens)
        num_blocks = num_seqs * self.max_blocks + 3
        self.tables = rng.permutation(num_blocks)[: num_seqs * self.max_blocks].reshape(num_seqs, self.max_blocks)
        shape = (num_blocks, block_size, NUM_KV_HEADS, head_dim)
        kc = np.full(shape, np.nan)
        vc = np.full(shape, np.nan)
        self.k, self.v = [], []
        for s, length in enumerate(seq_lens):
            slots = np.arange(length)
            blocks, offsets = self.tables[s][slots // block_size], slots % block_size
            kc[blocks, offsets] = rounded(rng.standard_normal((length, NUM_KV_HEADS, head_dim)), name)
            vc[blocks, offsets] = rounded(rng.standard_normal((length, NUM_KV_HEADS, head_dim)), name)
            self.k.append(kc[blocks, offsets])
            self.v.append(vc[blocks, offsets])
        self.kc, self.vc = to_dev(kc, name), to_dev(vc, name)
        # Peaked logits: a larger query makes the softmax pick few keys, so the output is O(1).
        q = rng.standard_normal((sum(q_lens), self.num_heads, head_dim)) * (4.0 if peak else 1.0)
        self.q = rounded(q, name)
        self.scale = head_dim**-0.5
        self.suffix = f"{name}_h{head_dim}_b{block_size}"

    def common_args(self):
        return (
            self.kc,
            self.vc,
            cp.asarray(self.tables.astype(np.int32)),
            cp.asarray(np.array(self.seq_lens, np.int32)),
        )

    def poisoned_out(self):
        shape = (sum(self.q_lens), self.num_heads, self.head_dim)
        if self.name == "f16":
            return cp.full(shape, np.nan, np.float16)
        return cp.full(shape, 0x7FC0, np.uint16)

    def check(self, out):
        got = from_dev(out, self.name)
        want = paged_attention(self.q, self.k, self.v, self.seq_lens, self.q_lens, self.scale)
        padding = np.repeat(np.array(self.seq_lens) == 0, self.q_lens)
        assert np.all(got[padding] == 0), "a padding row must be exactly zero"
        err = relative_l2(got[~padding], want[~padding])
        assert err.size and np.isfinite(err).all(), "NaN in the output (a read outside a context?)"
        assert err.max() < REL_L2[self.name], f"relative L2 error {err.max():.2e}"


def run_decode(module, case, num_sms_used):
    num_seqs, num_heads, head_dim = len(case.seq_lens), case.num_heads, case.head_dim
    partition, splits = decode_split(max(case.seq_lens), num_seqs, num_heads, NUM_KV_HEADS, num_sms_used)
    acc = cp.full((num_seqs, num_heads, splits, head_dim), np.nan, np.float32)
    mx = cp.full((num_seqs, num_heads, splits), np.nan, np.float32)
    sm = cp.full((num_seqs, num_heads, splits), np.nan, np.float32)
    out = case.poisoned_out()
    common = case.common_args()
    chunks = -(-(num_heads // NUM_KV_HEADS) // 8)
    module.get_function(f"ember_paged_decode_attention_{case.suffix}")(
        (NUM_KV_HEADS * chunks, num_seqs, splits),
        (128,),
        (
            *(out, acc, mx, sm, to_dev(case.q, case.name), *common, np.int32(case.max_blocks)),
            *(
                np.int32(num_heads),
                np.int32(NUM_KV_HEADS),
                np.float32(case.scale),
                np.int32(partition),
                np.int32(splits),
            ),
        ),
    )
    if splits > 1:
        module.get_function(f"ember_paged_decode_reduce_{case.name}")(
            (num_heads, num_seqs),
            (head_dim,),
            (
                out,
                acc,
                mx,
                sm,
                common[3],
                np.int32(num_heads),
                np.int32(head_dim),
                np.int32(partition),
                np.int32(splits),
            ),
        )
    case.check(out)
    return partition


def run_prefill(module, case):
    num_seqs = len(case.seq_lens)
    qsl = np.concatenate([[0], np.cumsum(case.q_lens)]).astype(np.int32)
    tiles = -(-max(case.q_lens) // 64)
    out = case.poisoned_out()
    module.get_function(f"ember_prefill_attention_{case.suffix}")(
        (num_seqs * tiles, case.num_heads),
        (128,),
        (
            *(out, to_dev(case.q, case.name), *case.common_args(), cp.asarray(qsl), np.int32(case.max_blocks)),
            *(np.int32(case.num_heads), np.int32(NUM_KV_HEADS), np.float32(case.scale), np.int32(tiles)),
        ),
    )
    case.check(out)


def decode_batches(group, rng):
    """Decode batches (context lengths) for which the host picks each partition on this device,
    each with a seq_len 0 padding row, plus odd single sequences."""
    batches = [[1], [15, 16, 17], [4097, 3], [0, 1000]]
    for partition in (64, 128, 256, 512):
        seqs = seqs_for_partition(partition, NUM_KV_HEADS * group, NUM_KV_HEADS, num_sms(), 900)
        batches.append([0, *rng.integers(1, 900, size=max(seqs, 2) - 1).tolist()])
    return batches


@pytest.mark.parametrize("name", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", GROUPS)
def test_decode(module, name, head_dim, block_size, group):
    rng = np.random.default_rng(head_dim + block_size + group)
    partitions = set()
    for i, seq_lens in enumerate(decode_batches(group, rng)):
        case = Case(name, head_dim, block_size, seq_lens, [1] * len(seq_lens), group, rng, peak=i % 2 == 1)
        partitions.add(run_decode(module, case, num_sms()))
    assert partitions >= {64, 128, 256, 512}, partitions


@pytest.mark.parametrize("name", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", GROUPS)
def test_prefill_and_chunked_prefill(module, name, head_dim, block_size, group):
    rng = np.random.default_rng(7 * head_dim + block_size + group)
    # (seq_lens, q_lens): plain prefill, chunked prefill on a cached prefix, a mixed batch, and
    # q_len 1 rows (decode-like) inside a prefill launch.
    cases = (([17], [17]), ([1000], [1000]), ([4097], [97]), ([15, 16, 65], [15, 3, 65]), ([300, 17, 64], [1, 17, 1]))
    for i, (seq_lens, q_lens) in enumerate(cases):
        run_prefill(module, Case(name, head_dim, block_size, seq_lens, q_lens, group, rng, peak=i % 2 == 0))
