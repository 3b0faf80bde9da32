"""The numpy GGUF dequantizer of tests/kernel_reference.py (the reference of the GPU dequant
kernel test, tests/gpu/test_dequant.py) against the `gguf` package's own dequantize, on random
blocks with every quant value and on blocks that `gguf` quantized itself. Runs on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_reference import BLOCK_BYTES, QK, dequantize, random_blocks
from references import require

KINDS = ["Q8_0", "Q4_0", "Q4_1"]


def gguf_type(kind: str) -> object:
    """The GGMLQuantizationType of `kind`."""
    gguf = require("gguf")
    return getattr(gguf.GGMLQuantizationType, kind)


def gguf_dequantize(kind: str, data: np.ndarray) -> np.ndarray:
    """`gguf.quants.dequantize` of raw blocks, as float64."""
    from gguf.quants import dequantize as ref

    return ref(data, gguf_type(kind)).astype(np.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_blocks", [1, 3, 17, 4097])
def test_random_blocks_match_gguf(kind: str, num_blocks: int) -> None:
    """Random blocks (zero, subnormal and large scales; full quant ranges): ours equals gguf's.

    gguf computes in float32: Q8_0 and Q4_0 products of an f16 scale and a small integer are
    exact there, so they must agree exactly; Q4_1's `d * q + m` rounds once in float32
    (relative 2^-24, absolute about 2^-24 * |m| near cancellation)."""
    rng = np.random.default_rng(num_blocks)
    data = random_blocks(kind, num_blocks, rng)
    assert data.shape == (num_blocks, BLOCK_BYTES[kind])
    ours = dequantize(kind, data.reshape(-1))
    theirs = gguf_dequantize(kind, data.reshape(-1)).reshape(-1)
    assert ours.shape == theirs.shape == (num_blocks * QK,)
    if kind == "Q4_1":
        np.testing.assert_allclose(ours, theirs, rtol=2.0**-23, atol=2.0**-20)
    else:
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_quantized_by_gguf_round_trip(kind: str) -> None:
    """Blocks written by gguf's quantizer read back as gguf reads them, and near the input
    (so the layout we build is the one ggml writes, not merely self-consistent)."""
    from gguf.quants import quantize

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4 * QK)).astype(np.float32)
    data = quantize(x, gguf_type(kind))
    assert data.shape == (3, 4 * BLOCK_BYTES[kind])
    ours = dequantize(kind, data)
    np.testing.assert_allclose(ours, gguf_dequantize(kind, data), rtol=2.0**-23, atol=2.0**-20)
    step = np.abs(x).max() / (127 if kind == "Q8_0" else 7)
    assert np.abs(ours - x).max() <= step


def test_nibble_order_and_offsets() -> None:
    """Element j < 16 is the low nibble of byte j, element j + 16 its high nibble; Q4_0 subtracts
    8, Q4_1 adds m; Q8_0 quants are signed."""
    nib = np.arange(16, dtype=np.uint8)
    qs = nib | ((15 - nib) << 4)
    q4_0 = np.concatenate([np.array([2.0], "<f2").view(np.uint8), qs])
    want = 2.0 * (np.concatenate([nib, 15 - nib]).astype(np.float64) - 8.0)
    np.testing.assert_array_equal(dequantize("Q4_0", q4_0), want)
    np.testing.assert_array_equal(gguf_dequantize("Q4_0", q4_0).reshape(-1), want)
    q4_1 = np.concatenate([np.array([0.5, -1.0], "<f2").view(np.uint8), qs])
    want = 0.5 * np.concatenate([nib, 15 - nib]).astype(np.float64) - 1.0
    np.testing.assert_array_equal(dequantize("Q4_1", q4_1), want)
    np.testing.assert_array_equal(gguf_dequantize("Q4_1", q4_1).reshape(-1), want)
    q = np.arange(-128, 128, 8, dtype=np.int8)
    q8_0 = np.concatenate([np.array([-0.25], "<f2").view(np.uint8), q.view(np.uint8)])
    np.testing.assert_array_equal(dequantize("Q8_0", q8_0), -0.25 * q.astype(np.float64))
    np.testing.assert_array_equal(gguf_dequantize("Q8_0", q8_0).reshape(-1), -0.25 * q.astype(np.float64))
