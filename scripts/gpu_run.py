"""The GPU checks of a lent GPU machine as one prepared command that ends within `DEADLINE_S`
(called by scripts/gpu_run.sh; `--dry-run` prints the plan without running anything).

Stages, each under `timeout` (and pytest's `--timeout` per test), in their own process group:
install the carried wheel (and the `gguf` wheel when the box lacks the package) with
`python3 -m pip install --no-deps --target /tmp/site`; the kernel tests of tests/gpu with 8
workers; every end-to-end test in a process of its own (one fault cannot poison the rest);
compute-sanitizer memcheck with CuPy's pool off on the decode and prefill attention tests and
on one tiny end-to-end run with graphs off; the quick GPU benchmarks. A stage that would pass
the deadline is cut short or not run, and counts as a failure. Under $OUT: run.log (this
driver's lines and nvidia-smi), kernels.log, e2e.log, sanitizer.log, bench.log and
summary.json (scripts/gpu_results.py), at most 7 files."""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_results import StageRecord, out_files_problem, summarize

#: The whole run, in seconds (the device call's limit leaves room for a rerun).
DEADLINE_S = 450
#: Seconds kept for the summary after the last stage.
RESERVE_S = 15
SITE = "/tmp/site"
WORK = Path("/tmp/ember-gpu")
E2E_GLOB = "tests/gpu/test_e2e*.py"
PYTEST = ["python3", "-m", "pytest", "-o", "norecursedirs=", "-q", "-rs", "-p", "no:cacheprovider"]
ATTENTION = "tests/gpu/test_attention.py"
#: The tiny end-to-end test that runs under compute-sanitizer (graphs off).
SANITIZED_E2E = "tests/gpu/test_e2e_tiny.py::test_greedy_tokens_match_cpu_and_transformers[llama-gqa-h64]"


@dataclass
class Stage:
    """One command of the run: name, argv, time budget, log file under $OUT and extra env."""

    name: str
    argv: list[str]
    budget_s: int
    log: str
    env: dict[str, str] = field(default_factory=dict)
    junit: Path | None = None
    sanitizer: bool = False


def pytest_stage(
    name: str, targets: list[str], budget_s: int, log: str, *extra: str, per_test_s: int = 60, env=None
) -> Stage:
    """A pytest run with a per-test timeout and a JUnit file in WORK."""
    junit = WORK / f"{name}.xml"
    argv = [*PYTEST, f"--timeout={per_test_s}", f"--junitxml={junit}", *extra, *targets]
    return Stage(name, argv, budget_s, log, env or {}, junit)


def install_stage(wheel: str, extra_wheels: list[str]) -> Stage:
    """Installs the carried wheels into SITE, never under $OUT."""
    argv = [
        "python3",
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--target",
        SITE,
        "--upgrade",
        wheel,
        *extra_wheels,
    ]
    return Stage("install", argv, 90, "run.log")


def sanitizer_stages(sanitizer: str) -> list[Stage]:
    """Memcheck on decode and prefill attention and on one tiny end-to-end run (graphs off), with
    CuPy's memory pool off (EMBER_GPU_SANITIZE=1 in tests/gpu/conftest.py) so that an
    out-of-bounds access inside a pooled block is not hidden."""
    memcheck = [sanitizer, "--tool", "memcheck", "--error-exitcode", "3", "--print-limit", "20"]
    env = {"EMBER_GPU_SANITIZE": "1", "EMBER_CUDA_GRAPHS": "0"}
    stages = []
    for name, targets, budget in (
        ("memcheck-decode", [f"{ATTENTION}::test_decode[{p}]" for p in ("16-16-128-bf16", "3-32-64-f16")], 100),
        (
            "memcheck-prefill",
            [f"{ATTENTION}::test_prefill_and_chunked_prefill[{p}]" for p in ("4-16-128-bf16", "16-32-64-f16")],
            100,
        ),
        ("memcheck-e2e", [SANITIZED_E2E], 150),
    ):
        stage = pytest_stage(name, targets, budget, "sanitizer.log", "-x", per_test_s=budget, env=env)
        stage.argv = memcheck + stage.argv
        stage.sanitizer = True
        stages.append(stage)
    return stages


def plan(wheel: str, fatbin: str, extra_wheels: list[str], e2e_ids: list[str], sanitizer: str | None) -> list[Stage]:
    """Every stage of the run, in order (e2e_ids: one process per end-to-end test)."""
    kernels = pytest_stage("kernels", ["tests/gpu"], 150, "kernels.log", "-n", "8", f"--ignore-glob={E2E_GLOB}")
    e2e = [pytest_stage(f"e2e-{i}", [test_id], 150, "e2e.log", per_test_s=140) for i, test_id in enumerate(e2e_ids)]
    bench_out = str(WORK / "bench")
    bench = [
        Stage(
            "bench-kernels",
            ["python3", "bench/gpu_kernels.py", "--quick", "--fatbin", fatbin, "--out", bench_out],
            90,
            "bench.log",
        ),
        Stage(
            "bench-e2e",
            ["python3", "bench/gpu_e2e.py", "--quick", "--out", bench_out, "--workdir", str(WORK / "e2e-model")],
            120,
            "bench.log",
        ),
    ]
    sanitize = sanitizer_stages(sanitizer) if sanitizer else []
    return [
        install_stage(wheel, extra_wheels),
        Stage("nvidia-smi", ["nvidia-smi"], 20, "run.log"),
        kernels,
        *e2e,
        *sanitize,
        *bench,
    ]


def cuda_library_dirs() -> list[str]:
    """Folders of the pip CUDA 13 libraries (the one holding libcublas.so.13 first)."""
    roots = [*site.getsitepackages(), site.getusersitepackages(), SITE]
    dirs: list[str] = []
    for name in ("libcublas.so.13", "libcublasLt.so.13", "libnvrtc.so.13", "libcudart.so.13"):
        for root in roots:
            for hit in glob.glob(os.path.join(root, "nvidia", "**", name), recursive=True):
                if os.path.dirname(hit) not in dirs:
                    dirs.append(os.path.dirname(hit))
    return dirs


def run_env(fatbin: str, lib_dirs: list[str]) -> dict[str, str]:
    """The environment of every stage."""
    env = dict(os.environ)
    old_ld = env.get("LD_LIBRARY_PATH", "")
    env.update(
        PYTHONPATH=os.pathsep.join([SITE, "tests", env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        LD_LIBRARY_PATH=":".join([*lib_dirs, old_ld]).rstrip(":"),
        EMBER_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        EMBER_FATBIN=fatbin,
        EMBER_TEST_HAS_CUDA="1",
        EMBER_CACHE=str(WORK / "cache"),
    )
    return env


def run_stage(stage: Stage, env: dict[str, str], out: Path, deadline: float) -> StageRecord:
    """Runs `stage` under `timeout` in its own process group, appending to its log."""
    budget = int(min(stage.budget_s, deadline - time.monotonic() - RESERVE_S))
    if budget < 10:
        return StageRecord(stage.name, None, 0.0, stage.log, "not run: out of time")
    argv = ["timeout", "-k", "5", str(budget), *stage.argv]
    start = time.monotonic()
    with open(out / stage.log, "a") as log:
        log.write(f"\n==> {stage.name} ({budget} s): {shlex.join(stage.argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**env, **stage.env}, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=budget + 15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    seconds = time.monotonic() - start
    note = "timed out" if rc in (124, 137) else ""
    return StageRecord(stage.name, rc, round(seconds, 1), stage.log, note)


def collect_e2e_ids(env: dict[str, str]) -> list[str]:
    """The end-to-end test ids, collected on the box (a failed collection yields the files)."""
    files = sorted(glob.glob(E2E_GLOB))
    proc = subprocess.run([*PYTEST, "--collect-only", *files], env=env, capture_output=True, text=True, timeout=90)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    return ids or files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", help="the ember wheel built by scripts/build_gpu_wheel.sh")
    parser.add_argument("fatbin", help="ember_kernels.fatbin (beside the wheel)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + DEADLINE_S
    out = Path(os.environ.get("OUT", "gpu-out"))
    carried = Path(args.wheel).parent
    gguf_wheels = sorted(str(p) for p in carried.glob("gguf-*.whl"))
    sanitizer = "compute-sanitizer" if args.dry_run else find_sanitizer()
    if args.dry_run:
        stages = plan(args.wheel, args.fatbin, gguf_wheels, [f"<each test of {E2E_GLOB}>"], sanitizer)
        for stage in stages:
            env = " ".join(f"{k}={v}" for k, v in stage.env.items())
            print(f"{stage.name}\t{stage.budget_s}\t{stage.log}\t{env}\t{shlex.join(stage.argv)}")
        print(f"deadline\t{DEADLINE_S}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    env = run_env(args.fatbin, [])
    records = [run_stage(install_stage(args.wheel, gguf_wheels if needs_gguf(env) else []), env, out, deadline)]
    lib_dirs = cuda_library_dirs()
    env = run_env(args.fatbin, lib_dirs)
    with open(out / "run.log", "a") as log:
        found = lib_dirs or "none found (libcublas.so.13 missing)"
        log.write(f"CUDA library folders: {found}\ncompute-sanitizer: {sanitizer}\n")
    stages = plan(args.wheel, args.fatbin, [], collect_e2e_ids(env), sanitizer)[1:]
    for stage in stages:
        record = run_stage(stage, env, out, deadline)
        records.append(record)
        print(f"{record.name:<18} rc={record.rc} {record.seconds:>6.1f} s {record.note}", flush=True)
    if sanitizer is None:
        records.append(StageRecord("compute-sanitizer", None, 0.0, "sanitizer.log", "not found on this machine"))
    logs = {s.name: s for s in stages}
    sanitizer_logs = {
        r.name: (r.rc, section(out / r.log, r.name)) for r in records if r.name in logs and logs[r.name].sanitizer
    }
    junit = [
        s.junit for s in stages if s.junit is not None and any(r.name == s.name and r.rc is not None for r in records)
    ]
    result = summarize(records, junit, sanitizer_logs, WORK / "bench")
    problem = out_files_problem(out, extra=1)
    if problem:
        result["passed"] = False
        result["reasons"].append(problem)
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    for reason in result["reasons"]:
        print(f"  - {reason}")
    tests = result["tests"]
    counts = ", ".join(f"{tests[k]} {k}" for k in ("passed", "failed", "errors", "skipped"))
    verdict = "PASSED" if result["passed"] else "FAILED"
    print(f"gpu_run: {verdict} ({counts}) in {time.monotonic() - start:.0f} s")
    return 0 if result["passed"] else 1


def needs_gguf(env: dict[str, str]) -> bool:
    """True when python3 on the box cannot import the `gguf` package."""
    return subprocess.run(["python3", "-c", "import gguf"], env=env, capture_output=True).returncode != 0


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, in /usr/local/cuda or in a pip CUDA wheel, else None."""
    found = shutil.which("compute-sanitizer")
    roots = [*site.getsitepackages(), SITE]
    hits = [
        p for root in roots for p in glob.glob(os.path.join(root, "nvidia", "**", "compute-sanitizer"), recursive=True)
    ]
    candidates = [found, "/usr/local/cuda/bin/compute-sanitizer", *hits]
    return next((c for c in candidates if c and os.access(c, os.X_OK) and os.path.isfile(c)), None)


def section(log: Path, name: str) -> str:
    """The part of `log` written by stage `name`."""
    text = log.read_text(errors="replace") if log.exists() else ""
    marker = f"\n==> {name} "
    if marker not in text:
        return ""
    start = text.index(marker)
    end = text.find("\n==> ", start + len(marker))
    return text[start : end if end >= 0 else len(text)]


if __name__ == "__main__":
    sys.exit(main())
