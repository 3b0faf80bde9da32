"""The GPU run prepared on the host: scripts/gpu_run.sh's plan (dry run), the verdict logic of
scripts/gpu_results.py (a skipped GPU test fails the run, a sanitizer that refuses the device is
not a pass, at most 7 files under $OUT), and tests/gpu collected with a CuPy stand-in, so a GPU
test file that does not import or collect fails CI."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_results  # noqa: E402
import gpu_run  # noqa: E402


def dry_run() -> list[dict]:
    """The stages scripts/gpu_run.sh would run, parsed from its dry run."""
    proc = subprocess.run(
        [
            "bash",
            "scripts/gpu_run.sh",
            "--dry-run",
            ".whl/ember-0.1.0-cp310-abi3-linux_x86_64.whl",
            ".whl/ember_kernels.fatbin",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "OUT"},
    )
    stages = []
    for line in proc.stdout.splitlines():
        name, *rest = line.split("\t")
        if name == "deadline":
            assert int(rest[0]) <= 8 * 60 - 30, "the run must end well within 8 minutes"
            continue
        budget, log, env, command = rest
        stages.append({"name": name, "budget": int(budget), "log": log, "env": env, "argv": shlex.split(command)})
    return stages


def test_the_plan_follows_the_lease_rules():
    stages = dry_run()
    names = [s["name"] for s in stages]
    assert names[:3] == ["install", "nvidia-smi", "kernels"]
    assert {"memcheck-decode", "memcheck-prefill", "memcheck-e2e"} <= set(names)
    install = stages[0]["argv"]
    assert install[:4] == ["python3", "-m", "pip", "install"] and "--no-deps" in install
    assert install[install.index("--target") + 1] == "/tmp/site"
    for stage in stages:
        argv = stage["argv"]
        assert "python" not in argv and "pip" not in argv[:1], argv  # python3 only
        if "pytest" in argv:
            assert any(a.startswith("--timeout=") for a in argv), argv
            assert any(a.startswith("--junitxml=/tmp/") for a in argv), argv
        assert stage["budget"] <= 150
    kernels = next(s["argv"] for s in stages if s["name"] == "kernels")
    assert kernels[kernels.index("-n") + 1] == "8"
    assert "--ignore-glob=tests/gpu/test_e2e*.py" in kernels
    for stage in (s for s in stages if s["name"].startswith("memcheck")):
        assert stage["argv"][0] == "compute-sanitizer" and "EMBER_GPU_SANITIZE=1" in stage["env"]
        assert "EMBER_CUDA_GRAPHS=0" in stage["env"]
    logs = {s["log"] for s in stages} | {"summary.json"}
    assert len(logs) <= gpu_results.MAX_OUT_FILES, logs


def test_every_e2e_test_gets_its_own_process():
    ids = ["tests/gpu/test_e2e.py::a", "tests/gpu/test_e2e.py::b", "tests/gpu/test_e2e_tiny.py::c[x]"]
    stages = gpu_run.plan("w.whl", "k.fatbin", [], ids, None)
    e2e = [s for s in stages if s.name.startswith("e2e-")]
    assert [s.argv[-1] for s in e2e] == ids
    assert len({s.junit for s in e2e}) == len(ids)
    assert not any(s.sanitizer for s in stages), "no sanitizer found: no memcheck stage"


def junit(tmp_path: Path, name: str, cases: str) -> Path:
    path = tmp_path / name
    path.write_text(f'<testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return path


def test_a_skipped_gpu_test_fails_the_run(tmp_path):
    passed = junit(tmp_path, "a.xml", '<testcase classname="t" name="ok"/>')
    skipped = junit(tmp_path, "b.xml", '<testcase classname="t" name="s"><skipped message="no GGUF"/></testcase>')
    stage = gpu_results.StageRecord("kernels", 0, 1.0, "kernels.log")
    result = gpu_results.summarize([stage], [passed], {}, tmp_path / "bench")
    assert result["passed"], result["reasons"]
    result = gpu_results.summarize([stage], [passed, skipped], {}, tmp_path / "bench")
    assert not result["passed"]
    assert result["tests"]["skipped"] == 1 and result["reasons"] == ["skipped t::s: no GGUF"]
    missing = gpu_results.summarize([stage], [tmp_path / "none.xml"], {}, tmp_path / "bench")
    assert not missing["passed"] and "no GPU test passed" in missing["reasons"]


def test_failed_and_unrun_stages_fail_the_run(tmp_path):
    passed = junit(tmp_path, "a.xml", '<testcase classname="t" name="ok"/>')
    stages = [
        gpu_results.StageRecord("kernels", 0, 1.0, "kernels.log"),
        gpu_results.StageRecord("bench-e2e", None, 0.0, "bench.log", "not run: out of time"),
    ]
    result = gpu_results.summarize(stages, [passed], {}, tmp_path)
    assert result["reasons"] == ["stage bench-e2e: not run: out of time"]


@pytest.mark.parametrize(
    ("rc", "text", "status"),
    [
        (0, "1 passed\n========= ERROR SUMMARY: 0 errors\n", "clean"),
        (3, "========= Invalid __global__ read of size 16\n========= ERROR SUMMARY: 2 errors\n", "errors"),
        (1, "1 failed\n========= ERROR SUMMARY: 0 errors\n", "tests failed"),
        (1, "========= Error: Device not supported\n", "refused"),
        (
            0,
            "= Target application terminated before first instrumented API call\n= ERROR SUMMARY: 0 errors",
            "refused",
        ),
        (0, "1 passed\n", "refused"),
        (124, "", "timeout"),
        (None, "", "not run"),
    ],
)
def test_sanitizer_outcomes(rc, text, status):
    assert gpu_results.sanitizer_status(rc, text) == status


def test_a_refusing_sanitizer_is_reported_not_passed(tmp_path):
    passed = junit(tmp_path, "a.xml", '<testcase classname="t" name="ok"/>')
    stage = gpu_results.StageRecord("memcheck-decode", 0, 1.0, "sanitizer.log")
    result = gpu_results.summarize([stage], [passed], {"memcheck-decode": (0, "Error: Device not supported")}, tmp_path)
    assert result["sanitizers"] == {"memcheck-decode": "refused"}
    assert result["reasons"] == ["memcheck memcheck-decode: refused"]


def test_at_most_seven_files_under_out(tmp_path):
    for i in range(6):
        (tmp_path / f"log{i}.log").write_text("x")
    assert gpu_results.out_files_problem(tmp_path, extra=1) is None
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "extra.json").write_text("{}")
    problem = gpu_results.out_files_problem(tmp_path, extra=1)
    assert problem is not None and problem.startswith("8 files under $OUT, at most 7"), problem


def test_stage_logs_are_cut_per_stage(tmp_path):
    log = tmp_path / "sanitizer.log"
    log.write_text(
        "\n==> memcheck-decode (90 s): x\nERROR SUMMARY: 0 errors\n"
        "\n==> memcheck-prefill (90 s): y\nDevice not supported\n"
    )
    assert "Device not supported" not in gpu_run.section(log, "memcheck-decode")
    assert "Device not supported" in gpu_run.section(log, "memcheck-prefill")


def test_gpu_tests_collect_without_a_device():
    """Every GPU test module imports and yields tests with CuPy replaced by tests/stubs/cupy."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "stubs"), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            "norecursedirs=",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/gpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    files = {line.split("::")[0] for line in ids}
    expected = {f"tests/gpu/{p.name}" for p in (ROOT / "tests" / "gpu").glob("test_*.py")}
    assert files == expected, expected - files
    assert re.search(r"(\d+) tests collected", proc.stdout), proc.stdout[-500:]
    # The tests the memcheck stages name exist.
    for stage in gpu_run.sanitizer_stages("compute-sanitizer"):
        for target in (a for a in stage.argv if a.startswith("tests/gpu/")):
            assert target in ids, target
