"""GGUF files of the default model written by llama.cpp's own quantizer, and reference
dequantizers (the `gguf` package, llama.cpp's own) and llama.cpp's Q8_K activation quantizer, for
the K-quant tests and benchmarks
(bench/throughput.py --quant imports this module).

`quantized_gguf(source, name)` requantizes the default Q4_1 file with
`llama_cpp.llama_model_quantize` (allow_requantize) once and caches the result under
`.cache/quantized/` (or $EMBER_QUANT_CACHE). SmolLM2-135M's rows of 576 do not hold whole
256-element super-blocks, so llama.cpp falls back to 32-element formats there; together the
files below hold every K-quant llama.cpp writes and the fallbacks:

    Q2_K_pure  Q2_K, Q4_0               Q2_K    Q3_K (ffn_down), Q4_0, Q8_0
    Q4_K_M     Q4_K, Q6_K, Q5_0, Q8_0     Q5_K_M  Q5_K, Q6_K, Q5_1, Q8_0
    IQ4_NL     IQ4_NL, Q5_K, Q8_0
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

#: name -> (llama_ftype, pure): `pure` quantizes every tensor to the type (llama.cpp's Q2_K
#: mix keeps no Q2_K tensor in this model: it takes Q3_K for ffn_down).
FTYPES = {
    "Q2_K_pure": (10, True),
    "Q2_K": (10, False),
    "Q4_K_M": (15, False),
    "Q5_K_M": (17, False),
    "IQ4_NL": (25, False),
}


def cache_dir() -> Path:
    """Where quantized files are kept: $EMBER_QUANT_CACHE, else .cache/quantized in the checkout."""
    env = os.environ.get("EMBER_QUANT_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".cache" / "quantized"


def quantized_gguf(source: Path, name: str) -> Path:
    """The default model requantized by llama.cpp to `name` (a key of FTYPES), made once
    (llama-cpp-python must be installed)."""
    import llama_cpp

    ftype, pure = FTYPES[name]
    out = cache_dir() / f"{source.stem.split('.')[0]}.{name}.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.pure = pure
    params.nthread = os.cpu_count() or 1
    partial = out.with_suffix(f".partial{os.getpid()}")
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
    if status != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to {name} failed with status {status}")
    partial.replace(out)
    return out


def ggml_base() -> ctypes.CDLL:
    """llama.cpp's ggml-base library, as llama-cpp-python ships it."""
    from references import require

    llama_cpp: Any = require("llama_cpp")
    return ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))


def reference_dequantize(kind: str, data: np.ndarray) -> np.ndarray:
    """float32 values of raw blocks of `kind` ("Q4_K", ...): the `gguf` package's dequantizer,
    or llama.cpp's own for Q8_K (which `gguf` does not implement)."""
    from references import require

    if kind == "Q8_K":
        return ggml_dequantize_q8_k(data)
    gguf = require("gguf")
    from gguf.quants import dequantize

    return dequantize(np.ascontiguousarray(data, np.uint8), getattr(gguf.GGMLQuantizationType, kind)).reshape(-1)


def ggml_dequantize_q8_k(data: np.ndarray) -> np.ndarray:
    """llama.cpp's own `dequantize_row_q8_K` of raw Q8_K blocks (`uint8`)."""
    data = np.ascontiguousarray(data, np.uint8)
    out = np.zeros(data.size // 292 * 256, np.float32)
    fn = ggml_base().dequantize_row_q8_K
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(data.ctypes.data, out.ctypes.data, out.size)
    return out


def ggml_quantize_q8_k(x: np.ndarray) -> np.ndarray:
    """llama.cpp's own `quantize_row_q8_K_ref` of float32 rows (whole 256-element blocks), raw."""
    x = np.ascontiguousarray(x, np.float32).reshape(-1)
    out = np.zeros(x.size // 256 * 292, np.uint8)
    fn = ggml_base().quantize_row_q8_K_ref
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out
