"""reshape_and_cache (`ember_reshape_and_cache_T`): each token's key and value rows land in
the paged cache at slot_mapping[token] = block_table[pos // BS] * BS + pos % BS, bit for bit;
slot -1 (u32::MAX on the host: padding rows of CUDA-graph buckets) and slots past the cache are
skipped. Block sizes 16 and 32, KV widths num_kv_heads x head_dim for 1/2/3/8 heads of 64 and
128 (and an odd width: scalar path), steps of 1, 3, 17 and 64 tokens mixing a prefill chunk
with decode tokens of other sequences. The whole cache is NaN-poisoned first: every slot not
written must keep its poison, every written one must hold exactly its token's row."""

from __future__ import annotations

import cupy as cp
import numpy as np
import pytest

from kernel_harness import NAMES, Buffer, row_threads
from kernel_reference import NAN_BITS

LAYOUTS = [(1, 64), (2, 64), (3, 128), (8, 128), (3, 5)]


def step_slots(num_tokens: int, block_size: int, num_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Slots of one step: a prefill chunk of one sequence then decode tokens of others, each
    sequence with its own shuffled blocks, every slot distinct."""
    perm = rng.permutation(num_blocks)
    slots, used = [], 0
    chunk = max(num_tokens // 2, 1)
    start = int(rng.integers(0, 40))  # the chunk continues a cached prefix
    table = perm[used : used + (start + chunk) // block_size + 1]
    used += table.size
    slots += [table[p // block_size] * block_size + p % block_size for p in range(start, start + chunk)]
    while len(slots) < num_tokens:
        length = int(rng.integers(1, 3 * block_size))
        table = perm[used : used + -(-length // block_size)]
        used += table.size
        p = length - 1
        slots.append(table[p // block_size] * block_size + p % block_size)
    return np.array(slots, np.int64)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"kv{lay[0]}x{lay[1]}")
@pytest.mark.parametrize("num_tokens", [1, 3, 17, 64])
def test_reshape_and_cache(module, name, block_size, layout, num_tokens):
    rng = np.random.default_rng(num_tokens * 131 + block_size + layout[0] * 7 + layout[1])
    num_kv_heads, head_dim = layout
    width = num_kv_heads * head_dim
    num_blocks = 3 * num_tokens + 8
    num_slots = num_blocks * block_size
    slots = step_slots(num_tokens, block_size, num_blocks, rng)
    # Padding rows (slot -1) and one slot past the cache, interleaved with the real tokens.
    pad = [-1, -1, num_slots] if num_tokens >= 3 else [-1]
    slot_mapping = np.insert(slots, rng.integers(0, slots.size + 1, len(pad)), pad).astype(np.int32)
    rows = slot_mapping.size
    key = Buffer((rows, width), name, rng.standard_normal((rows, width)).astype(np.float32))
    value = Buffer((rows, width), name, rng.standard_normal((rows, width)).astype(np.float32))
    k_cache = Buffer((num_blocks, block_size, num_kv_heads, head_dim), name)
    v_cache = Buffer((num_blocks, block_size, num_kv_heads, head_dim), name)
    module.get_function(f"ember_reshape_and_cache_{name}")(
        (rows,),
        (row_threads(width),),
        (
            k_cache.arr,
            v_cache.arr,
            key.arr,
            value.arr,
            cp.asarray(slot_mapping),
            np.int32(width),
            np.int64(num_slots),
        ),
    )
    for cache, src in ((k_cache, key), (v_cache, value)):
        want = np.full((num_slots, width), NAN_BITS[name], cache.bits().dtype)
        real = (slot_mapping >= 0) & (slot_mapping < num_slots)
        want[slot_mapping[real]] = src.bits()[real]
        np.testing.assert_array_equal(cache.bits().reshape(num_slots, width), want)
        cache.check_guard()
