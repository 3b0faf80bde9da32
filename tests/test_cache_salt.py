"""`cache_salt` (vLLM's name): requests share cached prefixes only with requests of the same salt, through
`Engine.generate` / `chat` / streams, `AsyncEngine` and the OpenAI server; salts compose with LoRA adapters and
n > 1 forks; bad salts are clear errors naming the field and the engine keeps serving. Tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember import AsyncEngine, Engine, InvalidRequestError, LoRARequest, SamplingParams, _core
from ember.server.app import ServerConfig

from lora_adapters import ALL_LINEAR, SMALL_LORA_ENGINE, write_model_with_adapters
from server_harness import running_server
from tiny_models import VARIANTS

PROMPT = [(7 * i) % 200 + 3 for i in range(50)]
"""50 tokens: three full 16-token blocks can be reused (the last token is always computed)."""
NUM_REUSABLE = 48
GREEDY = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
ENGINE_ARGS: dict[str, Any] = {"kv_cache_memory_bytes": 8 << 20, "max_model_len": 256}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Engine:
    return Engine(str(tiny_model_dir), **ENGINE_ARGS)


def cached(engine: Engine, prompt: list[int] = PROMPT, **kwargs: Any) -> int:
    """The prompt tokens one greedy request took from the prefix cache."""
    return engine.generate(prompt, GREEDY, use_tqdm=False, **kwargs)[0].num_cached_tokens


def test_only_requests_with_the_same_salt_share_prefixes(tiny: Engine) -> None:
    tiny.reset_prefix_cache()
    before = tiny.stats()["prefix_cache_hits"]
    assert cached(tiny, cache_salt="tenant-a") == 0
    assert cached(tiny, cache_salt="tenant-b") == 0, "another salt must not hit tenant-a's blocks"
    assert cached(tiny) == 0, "no salt must not hit a salted request's blocks"
    assert tiny.stats()["prefix_cache_hits"] == before
    assert cached(tiny, cache_salt="tenant-a") == NUM_REUSABLE
    assert cached(tiny, cache_salt="tenant-b") == NUM_REUSABLE
    assert cached(tiny) == NUM_REUSABLE
    assert tiny.stats()["prefix_cache_hits"] == before + 3 * NUM_REUSABLE


def test_salts_per_prompt_in_one_batch_and_in_streams(tiny: Engine) -> None:
    tiny.reset_prefix_cache()
    outs = tiny.generate([PROMPT, PROMPT], GREEDY, cache_salt=["x", "y"], use_tqdm=False)
    assert [o.num_cached_tokens for o in outs] == [0, 0]
    # The tokens do not depend on the salt, only the cache does.
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
    again = tiny.generate([PROMPT, PROMPT, PROMPT], GREEDY, cache_salt=["y", None, "x"], use_tqdm=False)
    assert [o.num_cached_tokens for o in again] == [NUM_REUSABLE, 0, NUM_REUSABLE]
    streamed = list(tiny.generate_stream(PROMPT, GREEDY, cache_salt="z"))
    assert streamed[-1].num_cached_tokens == 0
    assert list(tiny.generate_stream(PROMPT, GREEDY, cache_salt="z"))[-1].num_cached_tokens == NUM_REUSABLE


def test_chat_takes_a_salt(tiny: Engine) -> None:
    tiny.reset_prefix_cache()
    chat = [{"role": "user", "content": "word " * 40}]
    first = tiny.chat(chat, GREEDY, cache_salt="c", use_tqdm=False)[0]
    other = tiny.chat(chat, GREEDY, cache_salt="d", use_tqdm=False)[0]
    same = tiny.chat(chat, GREEDY, cache_salt="c", use_tqdm=False)[0]
    assert (first.num_cached_tokens, other.num_cached_tokens) == (0, 0)
    assert same.num_cached_tokens > 0


def test_forks_of_a_salted_request_share_its_prompt(tiny: Engine) -> None:
    tiny.reset_prefix_cache()
    forked = SamplingParams(n=3, temperature=0.8, seed=5, max_tokens=4, ignore_eos=True)
    before = tiny.stats()["num_forked_tokens"]
    out = tiny.generate(PROMPT, forked, cache_salt="f", use_tqdm=False)[0]
    assert len(out.outputs) == 3
    assert tiny.stats()["num_forked_tokens"] == before + 2 * NUM_REUSABLE
    assert cached(tiny, cache_salt="f") == NUM_REUSABLE


@pytest.mark.parametrize(
    ("salt", "needle"),
    [
        ("", "non-empty"),
        (5, "int"),
        (["a"], "1 entries but there are 2 prompts"),
        (["a", 3], "cache_salt[1]"),
        (["a", ""], "cache_salt[1]"),
    ],
)
def test_bad_salts_name_the_field(tiny: Engine, salt: Any, needle: str) -> None:
    with pytest.raises(InvalidRequestError, match="cache_salt") as info:
        tiny.generate([PROMPT, PROMPT], GREEDY, cache_salt=salt, use_tqdm=False)
    assert needle in str(info.value)
    # The tiny keeps serving.
    assert len(tiny.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 4


def test_the_binding_refuses_bad_salts_itself(tiny: Engine) -> None:
    core = tiny._core
    for salt, needle in (("", "non-empty"), (b"x", "must be a str")):
        with pytest.raises(InvalidRequestError, match=needle) as info:
            core.add_request("salt-check", PROMPT, GREEDY, None, None, None, None, salt)
        assert info.value.param == "cache_salt"
    with pytest.raises(InvalidRequestError, match="cache_salt"):
        _core.prefix_block_hashes(PROMPT, 16, None, "\ud800")


def test_router_hashes_include_the_salt() -> None:
    ids = list(range(3, 3 + 48))
    plain, a, b = (_core.prefix_block_hashes(ids, 16, None, salt) for salt in (None, "a", "b"))
    with_lora = _core.prefix_block_hashes(ids, 16, 1, "a")
    assert len({*plain, *a, *b, *with_lora, *_core.prefix_block_hashes(ids, 16, 1)}) == 15
    assert _core.prefix_block_hashes(ids, 16, None, "a") == a


def test_async_engine_takes_a_salt(tiny_model_dir: Path) -> None:
    async def run() -> list[int]:
        async with AsyncEngine(str(tiny_model_dir), **ENGINE_ARGS) as engine:
            got = []
            for salt in ("p", "q", "p"):
                last = None
                async for out in engine.generate(PROMPT, GREEDY, cache_salt=salt):
                    last = out
                assert last is not None
                got.append(last.num_cached_tokens)
            with pytest.raises(InvalidRequestError, match="cache_salt"):
                async for _ in engine.generate(PROMPT, GREEDY, cache_salt=""):
                    pass
            return got

    assert asyncio.run(run()) == [0, 0, NUM_REUSABLE]


def test_salt_and_adapter_compose(tmp_path: Path) -> None:
    """The block key carries both: the same adapter under two salts, or two adapters under one salt, never share;
    the same adapter and salt do, and the adapter's tokens do not depend on the salt."""
    adapters = {
        "a": {"rank": 4, "alpha": 8.0, "targets": ALL_LINEAR, "seed": 1},
        "b": {"rank": 2, "alpha": 2.0, "targets": ALL_LINEAR, "seed": 2},
    }
    write_model_with_adapters(VARIANTS[0], tmp_path, adapters)
    engine = Engine(str(tmp_path / "model"), **SMALL_LORA_ENGINE)
    a, b = LoRARequest("a", 1, str(tmp_path / "a")), LoRARequest("b", 2, str(tmp_path / "b"))

    def run(lora: LoRARequest | None, salt: str | None) -> tuple[int, list[int]]:
        out = engine.generate(PROMPT, GREEDY, lora_request=lora, cache_salt=salt, use_tqdm=False)[0]
        return out.num_cached_tokens, out.outputs[0].token_ids

    first = run(a, "s")
    assert first[0] == 0
    assert run(a, "t") == (0, first[1])
    assert run(b, "s")[0] == 0
    assert run(None, "s")[0] == 0
    assert run(a, None)[0] == 0
    assert run(a, "s") == (NUM_REUSABLE, first[1])
    assert run(b, "s")[0] == NUM_REUSABLE


KEY = "salt-key"


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[str]:
    engine = AsyncEngine(str(tiny_model_dir), **ENGINE_ARGS)
    with running_server(engine, ServerConfig(model_name="tiny", api_key=KEY)) as url:
        yield url


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


@pytest.mark.parametrize("salt", ["", 7, ["a"]])
@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
def test_server_refuses_bad_salts_naming_the_field(served: str, path: str, salt: Any) -> None:
    body: dict[str, Any] = {"model": "tiny", "max_tokens": 2, "cache_salt": salt}
    body.update({"prompt": PROMPT} if path == "/completions" else {"messages": [{"role": "user", "content": "hi"}]})
    r = post(served, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "cache_salt" and "cache_salt" in error["message"], error


@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
def test_server_salts_separate_prefixes(served: str, path: str) -> None:
    def cached_tokens(salt: str | None) -> int:
        body: dict[str, Any] = {"model": "tiny", "max_tokens": 2, "temperature": 0, "ignore_eos": True}
        if path == "/completions":
            body["prompt"] = [5, *PROMPT]
        else:
            body["messages"] = [{"role": "user", "content": "tell me " * 30}]
        if salt is not None:
            body["cache_salt"] = salt
        r = post(served, path, body)
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert cached_tokens("one") == 0
    assert cached_tokens("two") == 0
    assert cached_tokens("one") > 0
    assert cached_tokens("two") > 0
