"""Embedding gather (`ember_gather_rows_T`): out[i] = table[ids[i]] bit for bit, zeros for ids
past the table (the kernel's contract; the host rejects them first). Vocab 49152 x hidden 576,
3001 x 4096 and an odd width (scalar path), rows 1, 3, 17, 64 with repeated, first and last ids;
the host's block size and one warp (the stride loop). Output NaN-poisoned with a guard tail."""

from __future__ import annotations

import cupy as cp
import numpy as np
import pytest

from kernel_harness import NAMES, Buffer, row_threads
from kernel_reference import encode

TABLES = [(49152, 576), (3001, 4096), (1000, 7)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("table_shape", TABLES, ids=lambda t: f"{t[0]}x{t[1]}")
@pytest.mark.parametrize("rows", [1, 3, 17, 64])
@pytest.mark.parametrize("threads", ["host", 32])
def test_gather_rows(module, name, table_shape, rows, threads):
    rng = np.random.default_rng(rows + table_shape[1])
    table_rows, cols = table_shape
    table = Buffer(table_shape, name, rng.standard_normal(table_shape).astype(np.float32))
    ids = rng.integers(0, table_rows, rows).astype(np.uint32)
    ids[0] = table_rows - 1
    if rows >= 3:
        ids[1], ids[2] = 0, ids[0]
    if rows >= 17:
        ids[5], ids[9] = table_rows, 0xFFFFFFFF  # out of range: zeros
    out = Buffer((rows, cols), name)
    module.get_function(f"ember_gather_rows_{name}")(
        (rows,),
        (row_threads(cols) if threads == "host" else threads,),
        (out.arr, table.arr, cp.asarray(ids), np.int32(rows), np.int32(cols), np.int32(table_rows)),
    )
    bits = table.bits()
    want = np.zeros((rows, cols), bits.dtype)
    valid = ids < table_rows
    want[valid] = bits[ids[valid]]
    assert want.dtype == encode(0.0, name).dtype
    np.testing.assert_array_equal(out.bits(), want)
    out.check_guard()
