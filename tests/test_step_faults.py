"""A failing engine step ends only that step's requests, each with a clear error, and everything keeps serving.

Steps are made to fail on demand with the engine's test hook `_core.Engine._inject_step_faults` (a device error
or a panic in the model run). A Rust panic anywhere else at the FFI boundary becomes `EmberError`, never PyO3's
`PanicException`.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from ember import AsyncEngine, EmberError, Engine, SamplingParams, _core

from server_harness import wait_idle

GREEDY = SamplingParams(temperature=0.0, max_tokens=6)


@pytest.fixture(scope="module")
def one_seq_engine(tiny_model_dir: Path) -> Engine:
    """Runs one sequence per step, so a second request waits while the first one's steps fail."""
    return Engine(str(tiny_model_dir), max_num_seqs=1, kv_cache_memory_bytes=4 << 20)


@pytest.mark.parametrize("fault", ["error", "panic"])
def test_sync_engine_fails_only_the_step_s_requests(one_seq_engine: Engine, fault: str) -> None:
    engine = one_seq_engine
    expected = engine.generate([[5, 6, 7], [8, 9]], GREEDY, use_tqdm=False)
    first = engine.generate_stream([5, 6, 7], GREEDY)
    next(first)  # the first request holds the only sequence slot
    engine._core._inject_step_faults(fault, 1)
    second = engine.generate_stream([8, 9], GREEDY)
    # Adding the second request steps the engine: that step runs only the first request, and fails.
    second_text = next(second).outputs[0].text
    with pytest.raises(EmberError, match="engine step computing this request failed") as info:
        list(first)
    assert not isinstance(info.value, _core.InvalidRequestError)
    assert second_text + "".join(out.outputs[0].text for out in second) == expected[1].outputs[0].text
    assert (
        engine.generate([[5, 6, 7]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected[0].outputs[0].token_ids
    )
    stats = engine.stats()
    assert stats["num_running"] == 0 and stats["kv_cache_usage"] == 0.0


def test_batch_generate_raises_and_the_engine_recovers(one_seq_engine: Engine) -> None:
    engine = one_seq_engine
    expected = engine.generate([[4, 4, 4]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    engine._core._inject_step_faults("error", 1)
    with pytest.raises(EmberError, match="injected step fault"):
        engine.generate([[1, 2, 3], [3, 2, 1]], GREEDY, use_tqdm=False)
    stats = engine.stats()  # the failed request ended and the other one was aborted: nothing holds blocks
    assert stats["num_running"] == stats["num_waiting"] == 0 and stats["kv_cache_usage"] == 0.0
    assert engine.generate([[4, 4, 4]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected


def test_async_engine_keeps_serving_after_a_failed_step(tiny_model_dir: Path) -> None:
    async def scenario() -> None:
        async with AsyncEngine(str(tiny_model_dir), max_num_seqs=1, kv_cache_memory_bytes=4 << 20) as engine:
            reference = [out async for out in engine.generate([8, 9], GREEDY)][-1].outputs[0].token_ids

            async def run(prompt: list[int]) -> list[int]:
                outs = [out async for out in engine.generate(prompt, GREEDY)]
                return outs[-1].outputs[0].token_ids

            # The next step that runs anything fails; it can only hold the first request (one slot).
            await engine.call(lambda core: core._inject_step_faults("panic", 1))
            first = asyncio.create_task(run([5, 6, 7]))
            await asyncio.sleep(0)  # the first request is posted before the second
            second = asyncio.create_task(run([8, 9]))
            with pytest.raises(EmberError, match="panic"):
                await first
            assert await second == reference
            assert engine.alive
            assert await run([8, 9]) == reference
            assert (await asyncio.to_thread(wait_idle, engine))["kv_cache_usage"] == 0.0

    asyncio.run(scenario())


def test_a_panic_at_the_ffi_boundary_is_an_ember_error() -> None:
    with pytest.raises(EmberError, match="internal error \\(panic\\): boom"):
        _core._raise_panic("boom")


def test_every_ffi_entry_point_runs_under_the_panic_guard() -> None:
    """Structural: each `#[pymethods]` method, `#[pyfunction]` and the module init of ember-py call `guard(`, so a
    new entry point without the guard fails here."""
    sources = sorted((Path(__file__).parent.parent / "crates" / "ember-py" / "src").glob("*.rs"))
    checked = []
    for source in sources:
        text = source.read_text()
        blocks = re.findall(r"#\[pymethods\]\s*impl[^{]*\{(.*?)\n\}", text, re.S)
        bodies = [m for block in blocks for m in re.split(r"\n\s+(?:pub )?fn ", block)[1:]]
        bodies += re.findall(r"#\[pyfunction\][^{]*?fn [^{]*\{(.*?)\n\}", text, re.S)
        bodies += re.findall(r"#\[pymodule\][^{]*?fn [^{]*\{(.*?)\n\}", text, re.S)
        for body in bodies:
            name = body.split("(", 1)[0].strip()
            assert "guard(" in body, f"{source.name}: entry point {name!r} does not run under guard()"
            checked.append(name)
    assert len(checked) >= 25, checked
