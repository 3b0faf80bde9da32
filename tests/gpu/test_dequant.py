"""GGUF dequantization (`ember_dequant_T`, kind 0 = Q8_0, 1 = Q4_0, 2 = Q4_1) against the numpy
dequantizer of tests/kernel_reference.py (itself checked against the `gguf` package by
tests/test_gguf_dequant_reference.py on the CPU). Random blocks in the exact ggml layouts (zero,
subnormal and large f16 scales, every quant value), 1, 3, 17 and 4097 blocks (unaligned 18- and
34-byte blocks), the host's grid and a single block; output NaN-poisoned with a guard tail.

Q8_0 and Q4_0 values d * q are exact in f32, so the output must be the float64 value rounded
once to the type, bit for bit. Q4_1's d * q + m may round in f32 first: within one spacing of
the type (plus 2^-24 |m| absolute where it cancels)."""

from __future__ import annotations

import cupy as cp
import numpy as np
import pytest

from kernel_harness import NAMES, Buffer, elementwise_grid
from kernel_reference import KINDS, ULP, dequantize, encode, random_blocks


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("num_blocks", [1, 3, 17, 4097])
@pytest.mark.parametrize("grid", ["host", "one"])
def test_dequant(module, name, kind, num_blocks, grid):
    rng = np.random.default_rng(num_blocks * 3 + KINDS[kind])
    data = random_blocks(kind, num_blocks, rng)
    want = dequantize(kind, data.reshape(-1))
    out = Buffer(num_blocks * 32, name)
    module.get_function(f"ember_dequant_{name}")(
        (elementwise_grid(num_blocks) if grid == "host" else 1,),
        (256,),
        (out.arr, cp.asarray(data.reshape(-1)), np.int64(num_blocks), np.int32(KINDS[kind])),
    )
    if kind == "Q4_1":
        np.testing.assert_allclose(out.values(), want, rtol=ULP[name], atol=2.0**-20)
    else:
        np.testing.assert_array_equal(out.bits(), encode(want, name))
    out.check_guard()
