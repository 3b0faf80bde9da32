"""Random PEFT LoRA adapters on the tiny test models (`init_lora_weights=False`, so B != 0), saved as PEFT folders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = [*ATTENTION, "gate_proj", "up_proj", "down_proj"]
SMALL_LORA_ENGINE: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 256,
    "kv_cache_memory_bytes": 8 << 20,
    "enable_lora": True,
    "max_loras": 2,
    "max_lora_rank": 8,
}
"""Engine arguments for a tiny model with up to two rank-8 adapters at once."""


def write_model_with_adapters(variant: Any, root: Path, adapters: dict[str, dict[str, Any]]) -> Any:
    """Writes the tiny model `variant` to `root / "model"` and each named adapter (keyword arguments of
    `write_adapter`) to `root / name`; returns the torch model. Needs torch, transformers and peft (a failure
    under CI=true, a skip otherwise)."""
    from references import require
    from tiny_models import write_model

    for module_name in ("torch", "transformers", "peft"):
        require(module_name)
    model = write_model(variant, root / "model")
    for name, kwargs in adapters.items():
        write_adapter(model, root / name, **kwargs)
    return model


def write_adapter(
    model: Any,
    folder: Path,
    *,
    rank: int,
    alpha: float,
    targets: list[str],
    seed: int,
    use_rslora: bool = False,
) -> Any:
    """Wraps a copy of `model` in a seeded random LoRA adapter, saves it to `folder`, returns the PEFT model."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        use_rslora=use_rslora,
        init_lora_weights=False,
        lora_dropout=0.0,
    )
    peft_model = get_peft_model(copy.deepcopy(model), config)
    peft_model.save_pretrained(str(folder))
    return peft_model.eval()
