"""bench/_common.py: result records written in the same second never overwrite each other."""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import _common

FIXED = dt.datetime(2026, 12, 1, 10, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every record is written "in the same second"."""

    class FrozenDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> FrozenDatetime:  # type: ignore[override]
            return FIXED  # type: ignore[return-value]

    monkeypatch.setattr(_common, "dt", types.SimpleNamespace(datetime=FrozenDatetime, timezone=dt.timezone))


@pytest.mark.usefixtures("frozen_clock")
def test_records_of_the_same_second_get_numbered_names(tmp_path: Path) -> None:
    paths = [_common.write_record(tmp_path, "run", {"n": n}, {"ember": "test"}) for n in range(3)]
    assert [p.name for p in paths] == [
        "run-20261201-100000.json",
        "run-20261201-100000-2.json",
        "run-20261201-100000-3.json",
    ]
    assert [json.loads(p.read_text())["n"] for p in paths] == [0, 1, 2]


@pytest.mark.usefixtures("frozen_clock")
def test_concurrent_writers_never_overwrite_each_other(tmp_path: Path) -> None:
    num_writers = 8
    barrier = threading.Barrier(num_writers)
    paths: list[Path] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        barrier.wait()
        path = _common.write_record(tmp_path, "same", {"writer": i}, {})
        with lock:
            paths.append(path)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(num_writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == num_writers
    assert sorted(json.loads(p.read_text())["writer"] for p in paths) == list(range(num_writers))
    assert sorted(tmp_path.iterdir()) == sorted(paths)
