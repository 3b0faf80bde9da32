"""The verdict of a GPU run (scripts/gpu_run.py): test counts from the JUnit files, where a skipped
GPU test counts as a failure (a test that could not run proved nothing), the compute-sanitizer
outcome of each memcheck stage (a sanitizer that refuses the device is reported as "refused",
never as a pass), the benchmark JSON records, and the check that the run left at most
`MAX_OUT_FILES` files under $OUT (what one device call can bring back)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Files the run may leave under $OUT: logs and one JSON of results.
MAX_OUT_FILES = 7
#: Lines compute-sanitizer prints when it cannot instrument the device or the process.
REFUSALS = (
    "device not supported",
    "is not supported",
    "unable to find injection library",
    "target application terminated before first instrumented api call",
    "failed to initialize",
    "internal sanitizer error",
)


@dataclass
class StageRecord:
    """One stage of the run: its name, exit status (None: not run), seconds and log file."""

    name: str
    rc: int | None
    seconds: float
    log: str
    note: str = ""


@dataclass
class TestCounts:
    """Test outcomes over all JUnit files; `problems` lists every failed, errored or skipped test."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def read_junit(paths: list[Path]) -> TestCounts:
    """Counts the test cases of the JUnit files; a missing or unreadable file is an error entry."""
    counts = TestCounts()
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            counts.errors += 1
            counts.problems.append(f"error {path.name}: no JUnit result ({type(e).__name__})")
            continue
        for case in root.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
            if outcome is None:
                counts.passed += 1
                continue
            kind = {"failure": "failed", "error": "errors", "skipped": "skipped"}[outcome.tag]
            setattr(counts, kind, getattr(counts, kind) + 1)
            message = (outcome.get("message") or "").splitlines()[0][:200] if outcome.get("message") else ""
            counts.problems.append(f"{outcome.tag} {name}: {message}")
    return counts


def sanitizer_status(rc: int | None, text: str) -> str:
    """Outcome of a compute-sanitizer stage: "clean" (0 errors and the tests passed), "errors",
    "tests failed", "timeout", "not run", or "refused" (the sanitizer did not check anything)."""
    if rc is None:
        return "not run"
    if rc in (124, 137):
        return "timeout"
    summary = re.search(r"ERROR SUMMARY: (\d+) error", text)
    if summary is not None and int(summary.group(1)) > 0:
        return "errors"
    if summary is None or any(line in text.lower() for line in REFUSALS):
        return "refused"
    return "clean" if rc == 0 else "tests failed"


def out_files_problem(out: Path, extra: int = 0) -> str | None:
    """Why `out` holds too many files (with `extra` still to be written), or None."""
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    if len(files) + extra <= MAX_OUT_FILES:
        return None
    return f"{len(files) + extra} files under $OUT, at most {MAX_OUT_FILES}: {', '.join(files)}"


def read_bench(folder: Path) -> list[dict[str, Any]]:
    """The benchmark JSON records written under `folder`."""
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append({"file": path.name, **json.loads(path.read_text())})
        except (OSError, ValueError) as e:
            records.append({"file": path.name, "error": str(e)})
    return records


def stage_problem(stage: StageRecord) -> str:
    """What went wrong with a stage that did not exit 0."""
    if stage.rc is None:
        return f"stage {stage.name}: {stage.note or 'not run'}"
    return f"stage {stage.name}: exit {stage.rc} {stage.note}".strip()


def verdict(stages: list[StageRecord], counts: TestCounts, sanitizers: dict[str, str]) -> list[str]:
    """Every reason the run is not a pass (empty: it passed)."""
    reasons = [stage_problem(s) for s in stages if s.rc != 0]
    if counts.passed == 0:
        reasons.append("no GPU test passed")
    reasons += counts.problems
    reasons += [f"memcheck {name}: {status}" for name, status in sanitizers.items() if status != "clean"]
    return reasons


def summarize(
    stages: list[StageRecord], junit: list[Path], sanitizer_logs: dict[str, tuple[int | None, str]], bench: Path
) -> dict[str, Any]:
    """The results JSON of a run."""
    counts = read_junit(junit)
    sanitizers = {name: sanitizer_status(rc, text) for name, (rc, text) in sanitizer_logs.items()}
    reasons = verdict(stages, counts, sanitizers)
    return {
        "passed": not reasons,
        "reasons": reasons,
        "tests": asdict(counts),
        "sanitizers": sanitizers,
        "stages": [asdict(s) for s in stages],
        "bench": read_bench(bench),
    }
