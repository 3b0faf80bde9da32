"""LoRA adapters are read off the engine loop: the caller's thread reads and checks the PEFT folder
(`Engine.read_lora`) and the loop only copies the result to the backend; a bad adapter fails its own caller with
a ModelLoadError naming the file and key while running requests go on untouched; the LoRA counters in stats()."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from ember import AsyncEngine, Engine, LoRARequest, ModelLoadError, SamplingParams

from lora_adapters import ALL_LINEAR, SMALL_LORA_ENGINE, write_model_with_adapters
from tiny_models import VARIANTS

ENGINE_ARGS = SMALL_LORA_ENGINE
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
PROMPT = [(7 * k) % 250 + 3 for k in range(12)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, a rank-4 adapter on every projection)."""
    root = tmp_path_factory.mktemp("lora-loading")
    adapter = {"rank": 4, "alpha": 8.0, "targets": ALL_LINEAR, "seed": 5}
    write_model_with_adapters(VARIANTS[2], root, {"adapter": adapter})
    return root / "model", root / "adapter"


def _tokens(engine: Engine, lora: LoRARequest | None) -> list[int]:
    return engine.generate(PROMPT, GREEDY, lora_request=lora, use_tqdm=False)[0].outputs[0].token_ids


def test_the_loop_loads_what_the_caller_read(setup: tuple[Path, Path], tmp_path: Path) -> None:
    folder, adapter = setup
    expected = _tokens(Engine(str(folder), **ENGINE_ARGS), LoRARequest("a", 1, str(adapter)))
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    engine = Engine(str(folder), **ENGINE_ARGS)
    core = engine._core
    lora = ("a", 1, str(copy))
    read = core.read_lora(lora)
    assert read is not None
    shutil.rmtree(copy)  # the engine must not need the files any more
    core.add_request("r", PROMPT, GREEDY, lora=lora, read_lora=read)
    tokens: list[int] = []
    while core.has_unfinished_requests():
        tokens += [t for out in core.step() for t in out.new_token_ids]
    assert tokens == expected
    assert core.read_lora(lora) is None, "the engine holds it: nothing to read"
    stats = engine.stats()
    assert (stats["num_adapter_loads"], stats["num_loaded_adapters"], stats["num_active_adapters"]) == (1, 1, 0)
    assert stats["adapter_load_s"] > 0
    assert _tokens(engine, LoRARequest("a", 1, str(copy))) == expected, "served from the loaded adapter"


def test_a_bad_adapter_fails_its_caller_only(setup: tuple[Path, Path], tmp_path: Path) -> None:
    folder, adapter = setup
    good = LoRARequest("good", 1, str(adapter))
    expected_good = _tokens(Engine(str(folder), **ENGINE_ARGS), good)
    long = SamplingParams(temperature=0.0, max_tokens=120, ignore_eos=True)
    expected_base = Engine(str(folder), **ENGINE_ARGS).generate(PROMPT, long, use_tqdm=False)[0].outputs[0].token_ids
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    (bad / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "all"}')

    async def run() -> tuple[list[int], list[int], str, set[str], dict[str, float]]:
        async with AsyncEngine(str(folder), **ENGINE_ARGS) as engine:
            read_threads: set[str] = set()
            read_lora = engine._read_lora

            def recording_read(lora: tuple[str, int, str]) -> Any:
                read_threads.add(threading.current_thread().name)
                return read_lora(lora)

            engine._read_lora = recording_read
            running = engine.generate(PROMPT, long, request_id="base")
            first = await running.__anext__()
            with pytest.raises(ModelLoadError) as info:
                async for _ in engine.generate(PROMPT, GREEDY, lora_request=LoRARequest("bad", 2, str(bad))):
                    pass
            good_final = None
            async for out in engine.generate(PROMPT, GREEDY, lora_request=good):
                good_final = out
            last = first
            async for out in running:
                last = out
            assert good_final is not None
            stats = engine.stats()
            return last.outputs[0].token_ids, good_final.outputs[0].token_ids, str(info.value), read_threads, stats

    base_tokens, good_tokens, message, read_threads, stats = asyncio.run(run())
    assert "adapter_config.json" in message and "bias" in message, message
    assert base_tokens == expected_base, "the running request was disturbed"
    assert good_tokens == expected_good
    assert read_threads and "ember-engine-loop" not in read_threads
    assert (stats["num_adapter_loads"], stats["num_loaded_adapters"]) == (1, 1)
