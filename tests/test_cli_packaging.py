"""The command line's packaging contract: `ember --version` prints the workspace version, and
`ember serve` / `ember bench` without the `serve` extra fail with a message naming the extra."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import ember
from ember import cli


def workspace_version() -> str:
    """The version in the workspace's Cargo.toml, the one place it is written."""
    text = (Path(__file__).parent.parent / "Cargo.toml").read_text()
    match = re.search(r'^\[workspace\.package\]\n(?:.*\n)*?version = "([^"]+)"', text, re.MULTILINE)
    assert match, "no [workspace.package] version in Cargo.toml"
    return match.group(1)


def test_version_comes_from_the_workspace(capsys: pytest.CaptureFixture[str]) -> None:
    assert ember.__version__ == workspace_version()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ember {workspace_version()}"


@pytest.mark.parametrize("argv", [["serve", "model.gguf"], ["bench", "serve"]])
def test_web_commands_without_the_serve_extra_name_it(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real_find_spec(name, *a)
    )
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "missing: fastapi" in err and "pip install 'ember[serve]'" in err, err


def test_web_commands_pass_the_check_when_the_extra_is_installed() -> None:
    assert cli.missing_serve_modules() == []
