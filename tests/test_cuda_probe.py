"""The CUDA probe against fake CUDA libraries built here with the C compiler: a missing, too old or
incomplete cuBLAS or driver is an `EmberError` naming the library and the folder searched (never a
`PanicException`), and device="auto" then warns and runs on the CPU.

Each case runs in its own process: the dynamic loader reads LD_LIBRARY_PATH once, and the probe's
answer is computed once per process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HAS_CUDA = os.environ.get("EMBER_TEST_HAS_CUDA") == "1"  # set by scripts/gpu_run.sh
pytestmark = pytest.mark.skipif(HAS_CUDA, reason="a real CUDA driver would be found before the fakes")

FAKE_DRIVER = r"""
int cuDriverGetVersion(int *version) { *version = DRIVER_VERSION; return 0; }
int cuInit(unsigned flags) { (void)flags; return 0; }
int cuDeviceGetCount(int *count) { *count = 1; return 0; }
"""

FAKE_CUBLAS = r"""
int cublasGetProperty(int type, int *value) { *value = type == 0 ? MAJOR : 0; return 0; }
int cublasCreate_v2(void **handle) { (void)handle; return 1; }
int cublasSetStream_v2(void *handle, void *stream) { (void)handle; (void)stream; return 1; }
int cublasDestroy_v2(void *handle) { (void)handle; return 1; }
#ifndef INCOMPLETE
int cublasGemmEx(void) { return 1; }
int cublasSetWorkspace_v2(void) { return 1; }
#endif
"""

FAKE_NVRTC = r"""
int nvrtcVersion(int *major, int *minor) { *major = 13; *minor = 0; return 0; }
int nvrtcCreateProgram(void) { return 1; }
int nvrtcCompileProgram(void) { return 1; }
int nvrtcGetPTX(void) { return 1; }
int nvrtcGetProgramLog(void) { return 1; }
"""

CHILD = r"""
import json, sys
from ember import Engine, SamplingParams
model, device = sys.argv[1], sys.argv[2]
try:
    engine = Engine(model, device=device, kv_cache_memory_bytes=16 << 20, max_model_len=64)
    out = engine.generate(["Hi"], SamplingParams(max_tokens=2, temperature=0.0))
    result = {"outcome": "ok", "num_tokens": len(out[0].outputs[0].token_ids)}
except BaseException as e:
    result = {"outcome": "error", "types": [c.__name__ for c in type(e).__mro__], "message": str(e)}
print("RESULT " + json.dumps(result))
"""


def compile_library(folder: Path, file_name: str, source: str, *defines: str) -> None:
    """Builds `source` into `folder/file_name` (its soname) with the C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler (cc) to build the fake CUDA libraries")
    src = folder / (file_name + ".c")
    src.write_text(source)
    flags = [f"-D{d}" for d in defines]
    cmd = [compiler, "-shared", "-fPIC", *flags, f"-Wl,-soname,{file_name}", "-o", str(folder / file_name), str(src)]
    subprocess.run(cmd, check=True)


def run_engine(model: Path, device: str, lib_dir: Path) -> tuple[dict, str]:
    """Builds an engine in a child process whose loader sees only `lib_dir`; returns its result and stderr."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib_dir), EMBER_LOG="warn")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), device], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1].removeprefix("RESULT ")), proc.stderr


def fake_cuda(folder: Path, *, driver: int = 13000, cublas: str | None = None, nvrtc: bool = False) -> Path:
    """A folder of fake CUDA libraries; `cublas` is "12", "13", "13-incomplete" or None (absent)."""
    folder.mkdir()
    compile_library(folder, "libcuda.so.1", FAKE_DRIVER, f"DRIVER_VERSION={driver}")
    if cublas is not None:
        major = cublas.split("-")[0]
        defines = [f"MAJOR={major}"] + (["INCOMPLETE"] if cublas.endswith("incomplete") else [])
        compile_library(folder, f"libcublas.so.{major}", FAKE_CUBLAS, *defines)
    if nvrtc:
        compile_library(folder, "libnvrtc.so.13", FAKE_NVRTC)
    return folder


def assert_ember_error(result: dict, *fragments: str) -> None:
    assert result["outcome"] == "error", result
    assert "EmberError" in result["types"] and "PanicException" not in result["types"], result
    for fragment in fragments:
        assert fragment in result["message"], (fragment, result["message"])


@pytest.mark.parametrize(
    ("case", "fakes", "fragments"),
    [
        ("no-cublas", {}, ["cuBLAS (libcublas.so.13) could not be loaded", "libcublas.so.13: cannot open"]),
        ("cublas-12", {"cublas": "12"}, ["cuBLAS (libcublas.so.12 from {dir}) is version 12, Ember needs version 13"]),
        ("cublas-incomplete", {"cublas": "13-incomplete"}, ["lacks cublasGemmEx, cublasSetWorkspace_v2"]),
        ("old-driver", {"driver": 12040}, ["is a driver for CUDA 12.4, Ember needs a driver for CUDA 13.0"]),
        # Every library checks out, so cudarc runs and meets a symbol the fake lacks: it panics
        # inside the device's opening, which must still reach Python as an EmberError.
        ("cudarc-panics", {"cublas": "13", "nvrtc": True}, ["failed inside cudarc", "cuDeviceGet"]),
    ],
)
def test_device_cuda_with_broken_libraries_is_a_clear_error(tiny_model_dir, tmp_path, case, fakes, fragments):
    lib_dir = fake_cuda(tmp_path / case, **fakes)
    result, _ = run_engine(tiny_model_dir, "cuda", lib_dir)
    assert_ember_error(result, *(f.format(dir=lib_dir) for f in fragments))
    if case != "cudarc-panics":
        assert f"LD_LIBRARY_PATH ({lib_dir})" in result["message"], result["message"]


def test_device_auto_warns_and_falls_back_to_the_cpu(tiny_model_dir, tmp_path):
    lib_dir = fake_cuda(tmp_path / "auto", cublas="12")
    result, stderr = run_engine(tiny_model_dir, "auto", lib_dir)
    assert result == {"outcome": "ok", "num_tokens": 2}
    assert 'device="auto": no usable CUDA device (cuBLAS (libcublas.so.12' in stderr, stderr
    assert "running on the CPU" in stderr
