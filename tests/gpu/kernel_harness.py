"""Shared helpers of the GPU kernel tests: device buffers in each element type, NaN-poisoned
outputs with a guard tail (an out-of-bounds write shows up as a changed guard), and the launch
geometry of crates/ember-cuda/src/launch.rs.

Tolerances (`TOL`, relative and absolute, against float64 references computed from the
rounded inputs): a kernel computes in f32 and rounds its output once, so a correct result is
within half a spacing of the type (bf16 2^-8 = 3.9e-3, f16 2^-11 = 4.9e-4 relative) plus f32
arithmetic error. The bounds allow about 2.5 (bf16: 1e-2) and 4 (f16: 2e-3) of those, for an
extra rounding where the kernel rounds an intermediate to the storage type (the fused residual
add) and for __expf; f32 outputs get 1e-5 (__expf is accurate to a few ulp, sums in f32)."""

from __future__ import annotations

import math

import cupy as cp
import numpy as np

from kernel_reference import BITS, NAN_BITS, decode, encode

#: Element types with kernel variants; HALF: the 16-bit ones.
NAMES = ("bf16", "f16", "f32")
HALF = ("bf16", "f16")
TOL = {"bf16": 1e-2, "f16": 2e-3, "f32": 1e-5}
#: Poisoned elements after every output.
GUARD = 256


def num_sms() -> int:
    """Streaming multiprocessors of the current device."""
    return int(cp.cuda.Device().attributes["MultiProcessorCount"])


def row_threads(cols: int) -> int:
    """`launch::row_geometry` block size: ceil(cols / 8) rounded up to a warp, in [32, 1024]."""
    return min(max(math.ceil(math.ceil(cols / 8) / 32) * 32, 32), 1024)


def elementwise_grid(n: int) -> int:
    """`launch::elementwise_geometry` grid (256 threads): ceil(n / 256), at most 8 per SM."""
    return max(min(math.ceil(n / 256), num_sms() * 8), 1)


class Buffer:
    """A device array of `shape` in element type `name`, followed by GUARD poisoned elements.

    Without `init` the body is poisoned too (NaN everywhere), so an element the kernel does not
    write fails any comparison. `arr` is what a kernel gets (a contiguous view of the body)."""

    def __init__(self, shape: tuple[int, ...] | int, name: str, init: np.ndarray | None = None) -> None:
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.name = name
        self.n = math.prod(self.shape)
        self.raw = cp.full(self.n + GUARD, NAN_BITS[name], BITS[name])
        if init is not None:
            self.raw[: self.n] = cp.asarray(encode(np.asarray(init).reshape(-1), name))
        storage = {"bf16": cp.uint16, "f16": cp.float16, "f32": cp.float32}[name]
        self.arr = self.raw[: self.n].view(storage).reshape(self.shape)

    def bits(self) -> np.ndarray:
        """Raw bits of the body, on the host."""
        return cp.asnumpy(self.raw[: self.n]).reshape(self.shape)

    def values(self) -> np.ndarray:
        """The body as float64, on the host."""
        return decode(self.bits(), self.name)

    def check_guard(self) -> None:
        """Asserts that nothing was written past the body."""
        tail = cp.asnumpy(self.raw[self.n :])
        assert np.all(tail == NAN_BITS[self.name]), "write past the end of the output"


def device(x: np.ndarray, name: str) -> cp.ndarray:
    """`x` rounded to `name` on the device (no guard)."""
    return Buffer(np.shape(x), name, x).arr


def f32(x: np.ndarray) -> cp.ndarray:
    """An f32 device copy of `x` (weights, inverse frequencies)."""
    return cp.asarray(np.asarray(x, np.float32))


#: A null pointer argument.
NULL = np.uint64(0)
