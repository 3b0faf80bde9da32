"""Property tests of the Python API over arbitrary argument types (hypothesis).

Whatever a caller passes (None, bools, huge ints, NaN, bytes, lone surrogates, nested lists and
dicts), every public call either works or raises `InvalidRequestError`: never TypeError,
OverflowError, UnicodeEncodeError, PanicException or a hang; and the engine keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import AsyncEngine, Engine, InvalidRequestError, OutOfMemoryError, SamplingParams

ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)
"""Text including lone surrogates, which no UTF-8 string can hold."""

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
    | st.binary(max_size=8)
)
ANY_VALUE = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3)
    ),
    max_leaves=10,
)
"""Arbitrary Python values of the kinds a JSON body or a careless caller produces."""

QUICK = SamplingParams(max_tokens=2, temperature=0.0)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ok_or_invalid(call: Callable[[], Any]) -> None:
    """Runs `call`; InvalidRequestError is an accepted answer, any other exception fails the test."""
    with contextlib.suppress(InvalidRequestError):
        call()


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir: Path) -> Engine:
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=4 << 20)


@pytest.fixture(scope="module")
def reference(tiny_engine: Engine) -> list[int]:
    return tiny_engine.generate([[5, 6, 7]], QUICK, use_tqdm=False)[0].outputs[0].token_ids


def still_works(engine: Engine, reference: list[int]) -> None:
    assert engine.generate([[5, 6, 7]], QUICK, use_tqdm=False)[0].outputs[0].token_ids == reference
    assert not engine._core.has_unfinished_requests()


FIELDS = list(SamplingParams().to_dict())


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=ANY_VALUE)
def test_sampling_params_take_any_value(field: str, value: Any) -> None:
    ok_or_invalid(lambda: SamplingParams(**{field: value}))


@SETTINGS
@given(value=ANY_VALUE, which=st.sampled_from(["prompts", "params", "priority", "chat", "stream", "chat_stream"]))
def test_generate_and_chat_take_any_value(tiny_engine: Engine, reference: list[int], value: Any, which: str) -> None:
    engine = tiny_engine
    calls: dict[str, Callable[[], Any]] = {
        "prompts": lambda: engine.generate(value, QUICK, use_tqdm=False),
        "params": lambda: engine.generate([[1, 2]], value, use_tqdm=False),
        "priority": lambda: engine.generate([[1, 2]], QUICK, use_tqdm=False, priority=value),
        "chat": lambda: engine.chat(value, QUICK, use_tqdm=False),
        "stream": lambda: list(engine.generate_stream(value, QUICK)),
        "chat_stream": lambda: list(engine.chat_stream(value, QUICK)),
    }
    ok_or_invalid(calls[which])
    still_works(engine, reference)


@SETTINGS
@given(value=ANY_VALUE, which=st.sampled_from(["encode", "decode", "template", "abort", "score"]))
def test_tokenizer_and_engine_helpers_take_any_value(tiny_engine: Engine, value: Any, which: str) -> None:
    engine = tiny_engine
    calls: dict[str, Callable[[], Any]] = {
        "encode": lambda: engine.tokenizer.encode(value),
        "decode": lambda: engine.tokenizer.decode(value),
        "template": lambda: engine.tokenizer.apply_chat_template(value),
        "abort": lambda: engine.abort(value),
        "score": lambda: engine.score(value),
    }
    ok_or_invalid(calls[which])


ENGINE_ARGS = [
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_cache_memory_bytes",
    "block_size",
    "seed",
    "dtype",
    "num_threads",
    "enable_prefix_caching",
    "device",
    "gpu_memory_utilization",
]


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(ENGINE_ARGS), value=ANY_VALUE)
def test_engine_constructor_takes_any_value(tiny_model_dir: Path, name: str, value: Any) -> None:
    args: dict[str, Any] = {"kv_cache_memory_bytes": 4 << 20, name: value}
    if name == "kv_cache_memory_bytes" and isinstance(value, int) and not isinstance(value, bool):
        args[name] = min(value, 64 << 20)  # a valid but huge cache would take the machine's memory
    with contextlib.suppress(InvalidRequestError, OutOfMemoryError):
        Engine(str(tiny_model_dir), **args)


def test_engine_constructor_names_the_argument(tiny_model_dir: Path) -> None:
    for args, message in [
        ({"num_threads": -1}, "num_threads must be an integer in \\[1,"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens must be an integer in \\[1,"),
        ({"gpu_memory_utilization": 5}, "gpu_memory_utilization must be in \\(0, 1\\], got 5"),
        ({"seed": 2**64}, "seed must be an integer in \\[0,"),
        ({"max_num_seqs": True}, "max_num_seqs must be an integer, got bool"),
    ]:
        with pytest.raises(InvalidRequestError, match=message):
            Engine(str(tiny_model_dir), **args)
    with pytest.raises(InvalidRequestError, match="unknown engine argument 'max_seqs'"):
        AsyncEngine(str(tiny_model_dir), max_seqs=4)


@settings(max_examples=30, deadline=None)
@given(value=ANY_VALUE, which=st.sampled_from(["prompt", "params", "request_id", "priority", "chat"]))
def test_async_engine_takes_any_value(tiny_model_dir: Path, value: Any, which: str) -> None:
    async def scenario() -> None:
        async with AsyncEngine(str(tiny_model_dir), kv_cache_memory_bytes=4 << 20) as engine:
            streams = {
                "prompt": lambda: engine.generate(value, QUICK),
                "params": lambda: engine.generate([1, 2], value),
                "request_id": lambda: engine.generate([1, 2], QUICK, request_id=value),
                "priority": lambda: engine.generate([1, 2], QUICK, priority=value),
                "chat": lambda: engine.chat(value, QUICK),
            }
            try:
                async for _ in streams[which]():
                    pass
            except InvalidRequestError:
                pass
            outs = [out async for out in engine.generate([5, 6, 7], QUICK)]
            assert outs[-1].finished

    asyncio.run(scenario())
