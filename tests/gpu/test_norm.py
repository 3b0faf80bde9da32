"""RMSNorm, plain and fused with the residual add (`ember_add_rms_norm_T`), against float64.

Fused: residual <- round_T(residual + x), out <- round_T(residual * rsqrt(mean(residual^2) +
eps) * weight). Plain (x = null): the residual is only read. Rows 1, 3, 17, 64; hidden 576,
4096 and an odd 1001; row scales from 1e-2 to 1e2; the host's block size and 1024 threads.
Outputs are NaN-poisoned with a guard tail; tolerances in kernel_harness (TOL), the residual
within one spacing of the type (the same rounding of an exact f32 sum)."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_harness import NAMES, NULL, TOL, Buffer, f32, row_threads
from kernel_reference import ULP, round_to


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rows", [1, 3, 17, 64])
@pytest.mark.parametrize("cols", [576, 4096, 1001])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("threads", ["host", 1024])
def test_add_rms_norm(module, name, rows, cols, fused, threads):
    rng = np.random.default_rng(rows * 7919 + cols)
    eps = 1e-5 if cols != 576 else 1e-6
    scale = 10.0 ** rng.uniform(-2, 2, (rows, 1))
    res0 = round_to(rng.standard_normal((rows, cols)) * scale, name)
    x = round_to(rng.standard_normal((rows, cols)) * scale, name)
    weight = np.float32(1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float64)

    residual = Buffer((rows, cols), name, res0)
    xs = Buffer((rows, cols), name, x)
    out = Buffer((rows, cols), name)
    block = row_threads(cols) if threads == "host" else threads
    module.get_function(f"ember_add_rms_norm_{name}")(
        (rows,),
        (block,),
        (out.arr, residual.arr, xs.arr if fused else NULL, f32(weight), np.int32(cols), np.float32(eps)),
    )
    s = round_to(res0 + x, name) if fused else res0
    want = s / np.sqrt((s * s).mean(axis=1, keepdims=True) + np.float32(eps)) * weight
    np.testing.assert_allclose(out.values(), want, rtol=TOL[name], atol=TOL[name] * 1e-3)
    if fused:
        np.testing.assert_allclose(residual.values(), s, rtol=ULP[name], atol=0)
    else:
        np.testing.assert_array_equal(residual.values(), res0)
    for b in (out, residual, xs):
        b.check_guard()
