"""Elementwise kernels against float64: SiLU-and-multiply (`ember_silu_mul_T`), the residual
and bias adds (`ember_add_T`) and the cast to f32 (`ember_to_f32_T`).

Shapes (rows x cols) over rows 1, 3, 17, 64 and cols 576, 4096 and odd ones (a total not a
multiple of the 16-byte vector takes the scalar path); the host's grid and a single block (the
grid-stride loop). Outputs NaN-poisoned with a guard tail; tolerances in kernel_harness."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_harness import NAMES, NULL, TOL, Buffer, elementwise_grid, f32
from kernel_reference import ULP, round_to

SHAPES = [(1, 576), (3, 4096), (17, 1536), (64, 576), (1, 4097), (17, 1001), (3, 7)]


def grid_for(items: int, grid: str) -> int:
    """The host's grid over `items` vector or scalar items, or one block."""
    return elementwise_grid(items) if grid == "host" else 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("grid", ["host", "one"])
def test_silu_mul(module, name, shape, grid):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    gate = round_to(rng.standard_normal(shape) * 3, name)
    up = round_to(rng.standard_normal(shape) * 3, name)
    out = Buffer(shape, name)
    n = gate.size
    g, u = Buffer(shape, name, gate), Buffer(shape, name, up)
    module.get_function(f"ember_silu_mul_{name}")(
        (grid_for(-(-n // 8), grid),), (256,), (out.arr, g.arr, u.arr, np.int64(n))
    )
    want = gate / (1.0 + np.exp(-gate)) * up
    np.testing.assert_allclose(out.values(), want, rtol=TOL[name], atol=TOL[name] * 1e-2)
    out.check_guard()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("grid", ["host", "one"])
@pytest.mark.parametrize("addend", ["tensor", "bias"])
def test_add(module, name, shape, grid, addend):
    rng = np.random.default_rng(shape[0] * 17 + shape[1])
    x0 = round_to(rng.standard_normal(shape), name)
    y = round_to(rng.standard_normal(shape), name)
    bias = np.float32(rng.standard_normal(shape[1])).astype(np.float64)
    x = Buffer(shape, name, x0)
    ys = Buffer(shape, name, y)
    n = x0.size
    args = (ys.arr, NULL) if addend == "tensor" else (NULL, f32(bias))
    module.get_function(f"ember_add_{name}")(
        (grid_for(n, grid),), (256,), (x.arr, *args, np.int64(n), np.int32(shape[1]))
    )
    want = x0 + (y if addend == "tensor" else bias[None, :])
    # One rounding of an f32 sum to the type: within one spacing of the float64 sum.
    np.testing.assert_allclose(x.values(), want, rtol=ULP[name], atol=1e-30)
    x.check_guard()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 7, 4096, 49152 * 3 + 5])
def test_to_f32(module, name, n):
    rng = np.random.default_rng(n)
    x = round_to(rng.standard_normal(n) * 8, name)
    src = Buffer(n, name, x)
    out = Buffer(n, "f32")
    module.get_function(f"ember_to_f32_{name}")((elementwise_grid(n),), (256,), (out.arr, src.arr, np.int64(n)))
    np.testing.assert_array_equal(out.values(), x)
    out.check_guard()
