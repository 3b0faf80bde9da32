"""Importing the reference packages the correctness tests compare against.

A missing reference skips its tests with a reason, except when CI=true, where it
fails them: CI must never pass by skipping.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module_name: str) -> ModuleType:
    """Imports a reference package; skips the calling test without it (fails it when CI=true)."""
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        message = f"reference package {module_name!r} is not installed ({e}); see requirements/test.txt"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
