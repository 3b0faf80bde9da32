"""Pieces shared by the benchmark scripts: their common options and the JSON result record."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any


def common_parser(description: str | None, threads_help: str, quick_help: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: model, threads, seed, quick, out."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GGUF file (default: the default model, SmolLM2-135M Q4_1)")
    parser.add_argument("--threads", type=int, default=2, help=threads_help)
    parser.add_argument("--seed", type=int, default=0, help="seed for the prompts (default: 0)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out", help="folder for the JSON result")
    return parser


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_record(out: Path, name: str, fields: dict[str, Any], versions: dict[str, str]) -> Path:
    """Writes `out/<name>-<date>.json` with the date, CPU, `fields` and package versions; returns the path.

    The file is created exclusively: a run finishing in the same second as another (or an older
    file of that name) gets `-2`, `-3`, ... before `.json` instead of overwriting it."""
    now = dt.datetime.now(dt.timezone.utc)
    record = {
        "date": now.isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "num_cpus": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        **fields,
        "versions": {**versions, "python": platform.python_version()},
    }
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2) + "\n"
    stem = f"{name}-{now:%Y%m%d-%H%M%S}"
    path, attempt = out / f"{stem}.json", 1
    while True:
        try:
            with path.open("x") as f:
                f.write(text)
            break
        except FileExistsError:
            attempt += 1
            path = out / f"{stem}-{attempt}.json"
    print(f"wrote {path}")
    return path
