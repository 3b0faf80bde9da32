"""GPU kernel tests: skipped, loudly, without a CUDA device. Not collected by the default run
(pyproject's norecursedirs); run with scripts/gpu_run.sh or `pytest -o norecursedirs= tests/gpu`.

Kernels are driven through CuPy's RawModule on the fatbin that build.rs embeds
(EMBER_FATBIN=<path>), references are float64 numpy."""

from __future__ import annotations

import os

import pytest

cp = pytest.importorskip("cupy", reason="no CUDA device: cupy is not installed")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError
except Exception:
    pytest.skip("no CUDA device", allow_module_level=True)


@pytest.fixture(scope="session")
def module():
    """The kernels, loaded from EMBER_FATBIN."""
    path = os.environ.get("EMBER_FATBIN")
    if not path:
        pytest.skip("EMBER_FATBIN is not set (path of ember_kernels.fatbin)")
    return cp.RawModule(path=path)
