"""The server's LoRA adapters by name: `--lora-modules name=path`, `POST /v1/load_lora_adapter` and
`/v1/unload_lora_adapter` (vLLM's endpoints), and the request `model` field that picks one."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ember.lora import LoRARequest
from ember.server.errors import ApiError

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class LoadLoraAdapterRequest(BaseModel):
    """The body of `POST /v1/load_lora_adapter`."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str


class UnloadLoraAdapterRequest(BaseModel):
    """The body of `POST /v1/unload_lora_adapter`."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_int_id: int | None = None


def parse_lora_modules(specs: list[str]) -> dict[str, str]:
    """`name=path` items as {name: path}; raises ValueError naming a malformed or repeated one."""
    modules: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules takes name=path items, got {spec!r}")
        if name in modules:
            raise ValueError(f"--lora-modules names {name!r} twice")
        modules[name] = path
    return modules


class LoraModules:
    """Adapters the server serves, each under its own `model` name, with engine ids assigned in order."""

    def __init__(self, enabled: bool, base_name: str, modules: dict[str, str]) -> None:
        self.enabled = enabled
        self.base_name = base_name
        self._ids = itertools.count(1)
        self._by_name: dict[str, LoRARequest] = {}
        for name, path in modules.items():
            self.add(name, path)

    def resolve(self, model: str | None) -> LoRARequest | None:
        """The adapter a request's `model` names (None: the base model); 404 for an unknown name."""
        if model is None or model == self.base_name:
            return None
        lora = self._by_name.get(model)
        if lora is None:
            served = ", ".join(repr(n) for n in [self.base_name, *self._by_name])
            raise ApiError(404, f"The model '{model}' does not exist; this server serves {served}", "model")
        return lora

    def cards(self, base_card: dict[str, Any]) -> list[dict[str, Any]]:
        """The `/v1/models` entries of the adapters, each with the base model as parent."""
        return [
            {**base_card, "id": name, "root": str(lora.lora_path), "parent": self.base_name}
            for name, lora in self._by_name.items()
        ]

    def add(self, name: str, path: str) -> LoRARequest:
        """Serves the PEFT folder `path` as model `name` (loaded into the engine on first use)."""
        if not self.enabled:
            raise ApiError(400, "LoRA adapters need a server started with --enable-lora", "lora_name")
        if not name or name == self.base_name or name in self._by_name:
            raise ApiError(400, f"The model name '{name}' is empty or already served; choose another", "lora_name")
        missing = [f for f in _ADAPTER_FILES if not (Path(path) / f).is_file()]
        if missing:
            raise ApiError(400, f"The adapter folder '{path}' has no {' or '.join(missing)}", "lora_path")
        lora = LoRARequest(name, next(self._ids), path)
        self._by_name[name] = lora
        return lora

    def remove(self, name: str) -> LoRARequest:
        """Stops serving adapter `name`; 404 when it is not served."""
        lora = self._by_name.pop(name, None)
        if lora is None:
            raise ApiError(404, f"The LoRA adapter '{name}' is not loaded", "lora_name")
        return lora
