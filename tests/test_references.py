"""A missing reference fails a test under CI=true and only skips it elsewhere (tests/references.py)."""

from __future__ import annotations

import pytest

from references import require

MISSING = "ember_no_such_reference_package"


def test_missing_reference_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=MISSING):
        require(MISSING)


def test_missing_reference_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        require(MISSING)


def test_present_reference_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require("json").dumps([1]) == "[1]"
