"""GPU kernel tests: skipped, loudly and with the reason, without cupy or a CUDA device. Not
collected by the default run (pyproject's norecursedirs); run with scripts/gpu_run.sh or
`pytest -o norecursedirs= tests/gpu`.

Kernels are driven through CuPy's RawModule on the fatbin that build.rs embeds
(EMBER_FATBIN=<path>); references are float64 numpy (tests/kernel_reference.py).

Under compute-sanitizer (EMBER_GPU_SANITIZE=1) CuPy's pools are off. With tests/stubs/cupy on
the path the modules are imported for collection only (tests/test_gpu_collection.py).

Without a device every test module of this folder is reported SKIPPED with the reason instead
of being imported (they import cupy at the top): a module-level skip raised while pytest loads
this conftest as an initial conftest (`pytest tests/gpu`) would abort the run instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _unavailable() -> str | None:
    """Why the GPU tests cannot run here, or None when cupy sees a CUDA device."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        return f"cupy is not installed or does not load ({type(e).__name__}: {e})"
    if getattr(cupy, "EMBER_COLLECT_STUB", False):
        return None  # tests/stubs/cupy: collection only (tests/test_gpu_collection.py)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no CUDA device ({type(e).__name__}: {e})"
    return None if count >= 1 else "no CUDA device (device count 0)"


SKIP_REASON = _unavailable()


def pytest_configure(config: pytest.Config) -> None:
    """Under compute-sanitizer (EMBER_GPU_SANITIZE=1, scripts/gpu_run.py) CuPy's memory pools are
    off, so every buffer is its own allocation and an access past its end is caught."""
    if SKIP_REASON is None and os.environ.get("EMBER_GPU_SANITIZE") == "1":
        import cupy

        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)


class _UnavailableModule(pytest.Module):
    """A test module of this folder, reported skipped (not imported) without a device."""

    def collect(self):  # type: ignore[override]
        pytest.skip(f"tests/gpu needs a CUDA device: {SKIP_REASON}")


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Replaces this folder's test modules by skipped ones when there is no device."""
    if SKIP_REASON is not None and module_path.resolve().parent == HERE:
        return _UnavailableModule.from_parent(parent, path=module_path)
    return None


def pytest_report_header(config: pytest.Config) -> str:
    """States at the top of the run whether the GPU tests run, and why not."""
    return "tests/gpu: CUDA device found" if SKIP_REASON is None else f"tests/gpu SKIPPED: {SKIP_REASON}"


@pytest.fixture(scope="session")
def module():
    """The kernels, loaded from EMBER_FATBIN."""
    import cupy as cp

    path = os.environ.get("EMBER_FATBIN")
    if not path:
        pytest.skip("EMBER_FATBIN is not set (path of ember_kernels.fatbin)")
    return cp.RawModule(path=path)
