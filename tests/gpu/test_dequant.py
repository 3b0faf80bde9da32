"""GGUF dequantization (`ember_dequant_T`, kind 0 = Q8_0, 1 = Q4_0, 2 = Q4_1) against the numpy
dequantizer of tests/kernel_reference.py (itself checked against the `gguf` package by
tests/test_gguf_dequant_reference.py on the CPU). Random blocks in the exact ggml layouts (zero,
subnormal and large f16 scales, every quant value), 1, 3, 17 and 4097 blocks (unaligned 18- and
34-byte blocks), the host's grid and a single block; output NaN-poisoned with a guard tail.

Q8_0 and Q4_0 values d * q are exact in f32, so the output must be the float64 value rounded
once to the type, bit for bit. Q4_1's d * q + m may round in f32 first: within one spacing of
the type (plus 2^-24 |m| absolute where it cancels).

The other formats (Q5_0, Q5_1, IQ4_NL and the K-quants) are checked against the `gguf`
package's dequantizer (llama.cpp's own for Q8_K, which `gguf` lacks) on random raw blocks: the
kernels round like it in f32, so the output is its f32 value rounded once to the type."""

from __future__ import annotations

import cupy as cp
import numpy as np
import pytest

from quantized_models import reference_dequantize

from kernel_harness import NAMES, Buffer, elementwise_grid
from kernel_reference import GGML_FORMATS, KINDS, ULP, dequantize, encode, random_blocks, random_raw_blocks

#: The formats with a numpy float64 reference in kernel_reference.
NUMPY_KINDS = ["Q8_0", "Q4_0", "Q4_1"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", NUMPY_KINDS)
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


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", [k for k in KINDS if k not in NUMPY_KINDS])
@pytest.mark.parametrize("num_blocks", [1, 3, 17, 1025])
def test_dequant_gguf_formats(module, name, kind, num_blocks):
    rng = np.random.default_rng(num_blocks * 5 + KINDS[kind])
    data = random_raw_blocks(kind, num_blocks, rng)
    want = reference_dequantize(kind, data.reshape(-1)).astype(np.float64)
    num_chunks = num_blocks * GGML_FORMATS[kind][1] // 32
    out = Buffer(num_chunks * 32, name)
    module.get_function(f"ember_dequant_{name}")(
        (elementwise_grid(num_chunks),),
        (256,),
        (out.arr, cp.asarray(data.reshape(-1)), np.int64(num_chunks), np.int32(KINDS[kind])),
    )
    np.testing.assert_array_equal(out.bits(), encode(want, name))
    out.check_guard()
