"""Rotary embeddings (`ember_rope_T`, in place) against float64, both pairings:
rotate-half (pairs (i, i + rotary_dim / 2), Hugging Face) and interleaved (pairs (2i, 2i + 1),
GGUF Llama), head sizes 64 and 128, full and half rotary dims, the query and key head counts of
GQA layouts, and odd position lists (0, block edges, 4097, 131071, unsorted, repeated).

The angle is the kernel's (and the CPU backend's): the f32 product float(pos) * inv_freq[i],
reproduced exactly with numpy float32; its sine and cosine and the rotation are float64. The
tensor cannot be poisoned (in place), so every rotated element is compared, the dimensions past
the rotary ones must keep their bits, and a NaN guard tail after the tensor must stay intact."""

from __future__ import annotations

import cupy as cp
import numpy as np
import pytest

from kernel_harness import NAMES, TOL, Buffer, f32, row_threads
from kernel_reference import round_to

POSITIONS = [
    [0],
    [5, 1, 3],
    [0, 15, 16, 17, 31, 32, 33, 1000, 4095, 4096, 4097, 8191, 65535, 131071, 7, 7, 2],
    "random64",
]
#: (query heads, key heads) of GQA layouts: group 8, 3, 4 and plain MHA.
HEADS = [(8, 1), (9, 3), (32, 8), (4, 4)]


def reference(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, rotary: int, interleaved: bool) -> np.ndarray:
    """x [tokens, heads, head_dim] rotated in float64 with f32 angles."""
    angle = (positions.astype(np.float32)[:, None] * inv_freq[None, :]).astype(np.float64)  # f32 product
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = x.copy()
    half = rotary // 2
    a = np.arange(half) * 2 if interleaved else np.arange(half)
    b = a + 1 if interleaved else a + half
    x0, x1 = x[:, :, a], x[:, :, b]
    out[:, :, a] = x0 * cos - x1 * sin
    out[:, :, b] = x0 * sin + x1 * cos
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"q{h[0]}kv{h[1]}")
@pytest.mark.parametrize("partial", [False, True], ids=["full", "half_rotary"])
def test_rope(module, name, head_dim, interleaved, heads, partial):
    rng = np.random.default_rng(head_dim * 100 + heads[0] * 7 + heads[1] + 2 * interleaved + partial)
    rotary = head_dim // 2 if partial else head_dim
    base = 500_000.0 if interleaved else 10_000.0
    inv_freq = (1.0 / base ** (np.arange(0, rotary, 2) / rotary)).astype(np.float32)
    for plist in POSITIONS:
        positions = np.array(rng.integers(0, 40_000, 64) if plist == "random64" else plist, np.uint32)
        tokens = positions.size
        for num_heads in heads:  # the query tensor, then the key tensor of the same layout
            x = round_to(rng.standard_normal((tokens, num_heads, head_dim)), name)
            buf = Buffer((tokens, num_heads * head_dim), name, x)
            module.get_function(f"ember_rope_{name}")(
                (tokens,),
                (row_threads(num_heads * rotary // 2 * 8),),
                (
                    buf.arr,
                    cp.asarray(positions),
                    f32(inv_freq),
                    np.int32(num_heads),
                    np.int32(head_dim),
                    np.int32(rotary),
                    np.int32(interleaved),
                ),
            )
            got = buf.values().reshape(tokens, num_heads, head_dim)
            want = reference(x, positions, inv_freq, rotary, interleaved)
            np.testing.assert_allclose(got, want, rtol=TOL[name], atol=TOL[name])
            np.testing.assert_array_equal(got[:, :, rotary:], x[:, :, rotary:])
            buf.check_guard()
