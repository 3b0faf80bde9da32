"""LoRA adapters through the OpenAI server: the request's `model` picks an adapter (same tokens as the Python
API), `/v1/models` lists the base model and the adapters, adapters are added and removed with vLLM's
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` behind the API key, and bad ones are 4xx naming the
field; `ember serve --enable-lora --lora-modules name=path` parses its options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from ember import AsyncEngine, Engine, LoRARequest, SamplingParams
from ember.server.app import ServerConfig

from lora_adapters import ALL_LINEAR, SMALL_LORA_ENGINE, write_model_with_adapters
from server_harness import running_server
from tiny_models import VARIANTS

KEY = "sekret"
ENGINE_ARGS = SMALL_LORA_ENGINE


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model, adapter a, adapter b)."""
    root = tmp_path_factory.mktemp("server-lora")
    a = {"rank": 4, "alpha": 8.0, "targets": ALL_LINEAR, "seed": 1}
    b = {"rank": 8, "alpha": 4.0, "targets": ["q_proj", "down_proj"], "seed": 2}
    write_model_with_adapters(VARIANTS[0], root, {"a": a, "b": b})
    return root / "model", root / "a", root / "b"


def test_model_field_picks_the_adapter(folders: tuple[Path, Path, Path]) -> None:
    model, a, b = folders
    prompt = [5, 9, 14, 20, 33]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    engine = Engine(str(model), **ENGINE_ARGS)
    expected = {
        name: engine.generate(prompt, params, lora_request=lora, use_tqdm=False)[0].outputs[0].text
        for name, lora in [("tiny", None), ("a", LoRARequest("a", 1, str(a))), ("b", LoRARequest("b", 2, str(b)))]
    }
    assert len(set(expected.values())) == 3
    config = ServerConfig(model_name="tiny", api_key=KEY, enable_lora=True, lora_modules={"a": str(a)})
    headers = {"Authorization": f"Bearer {KEY}"}
    with running_server(AsyncEngine(str(model), **ENGINE_ARGS), config) as url:
        client = httpx.Client(base_url=url, headers=headers, timeout=60)

        def complete(name: str, **extra: Any) -> httpx.Response:
            body = {"model": name, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
            return client.post("/completions", json={**body, **extra})

        def text(response: httpx.Response) -> str:
            assert response.status_code == 200, response.text
            return str(response.json()["choices"][0]["text"])

        assert [m["id"] for m in client.get("/models").json()["data"]] == ["tiny", "a"]
        assert text(complete("a")) == expected["a"]
        assert text(complete("tiny")) == expected["tiny"]
        missing = complete("b")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
        # Loading needs the key; then "b" is served and listed.
        load = {"lora_name": "b", "lora_path": str(b)}
        assert httpx.post(f"{url}/load_lora_adapter", json=load).status_code == 401
        assert client.post("/load_lora_adapter", json=load).status_code == 200
        assert text(complete("b")) == expected["b"]
        assert [m["id"] for m in client.get("/models").json()["data"]] == ["tiny", "a", "b"]
        # Streamed n=2 with an adapter: both choices give the adapter's greedy text.
        streamed = complete("b", stream=True, n=2)
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        # Bad loads and unloads are 4xx naming the field; the server keeps serving.
        again = client.post("/load_lora_adapter", json=load)
        assert again.status_code == 400 and again.json()["error"]["param"] == "lora_name"
        empty = client.post("/load_lora_adapter", json={"lora_name": "c", "lora_path": str(model)})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "lora_path"
        assert client.post("/unload_lora_adapter", json={"lora_name": "b"}).status_code == 200
        gone = client.post("/unload_lora_adapter", json={"lora_name": "b"})
        assert gone.status_code == 404 and gone.json()["error"]["param"] == "lora_name"
        assert complete("b").status_code == 404
        assert text(complete("a")) == expected["a"]


def test_serve_options(folders: tuple[Path, Path, Path]) -> None:
    import argparse

    from ember.server.cli import add_arguments
    from ember.server.lora_modules import parse_lora_modules

    model, a, b = folders
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(model), "--enable-lora", "--lora-modules", f"a={a}", f"b={b}", "--max-loras", "2"])
    assert args.enable_lora and args.max_loras == 2 and args.max_lora_rank == 16
    assert parse_lora_modules(args.lora_modules) == {"a": str(a), "b": str(b)}
    with pytest.raises(ValueError, match="name=path"):
        parse_lora_modules(["nopath"])
    with pytest.raises(ValueError, match="twice"):
        parse_lora_modules(["a=x", "a=y"])
