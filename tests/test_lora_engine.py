"""LoRA adapters in the engine: a batch mixing adapters and the base model gives each request what it gets
alone (greedy and seeded, with chunked prefill, n > 1, preemption, streaming and the async engine); the prefix
cache never shares KV across adapters but does within one; adapters load on first use into an LRU of
`max_cpu_loras`; bad adapters are clear errors and the engine keeps serving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ember import AsyncEngine, Engine, InvalidRequestError, LoRARequest, ModelLoadError, SamplingParams

from lora_adapters import ALL_LINEAR, write_adapter
from references import require
from tiny_models import FAMILY_VARIANTS, VARIANTS, write_model

ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 256,
    "kv_cache_memory_bytes": 8 << 20,
    "enable_lora": True,
    "max_loras": 4,
    "max_lora_rank": 8,
}
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(temperature=1.0, seed=11, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[LoRARequest], Any]:
    """(model folder, three adapters of ranks 2, 4 and 8 on different modules, torch model)."""
    require("torch")
    require("transformers")
    require("peft")
    root = tmp_path_factory.mktemp("lora")
    model = write_model(VARIANTS[2], root / "model")
    loras = []
    for i, (rank, targets) in enumerate([(2, ["q_proj", "v_proj"]), (4, ALL_LINEAR), (8, ["down_proj", "o_proj"])]):
        write_adapter(model, root / f"adapter{i}", rank=rank, alpha=2.0 * rank, targets=targets, seed=10 + i)
        loras.append(LoRARequest(f"adapter{i}", i + 1, str(root / f"adapter{i}")))
    return root / "model", loras, model


def _prompts() -> list[list[int]]:
    return [[(13 * i + 5 * k) % 250 + 3 for k in range(n)] for i, n in enumerate([5, 19, 40, 33])]


def _tokens(outs: list[Any]) -> list[list[int]]:
    return [c.token_ids for o in outs for c in o.outputs]


@pytest.mark.parametrize("dtype", ["float32", "auto"])  # "auto": quantized arithmetic, so 8-bit adapter factors
def test_mixed_batch_equals_each_alone(setup: tuple[Path, list[LoRARequest], Any], dtype: str) -> None:
    folder, loras, _ = setup
    prompts = _prompts()
    assignment: list[LoRARequest | None] = [loras[0], None, loras[1], loras[2]]
    engine_args = {**ENGINE_ARGS, "dtype": dtype}
    alone_engine = Engine(str(folder), enable_prefix_caching=False, **engine_args)
    alone = {
        (i, s): _tokens(alone_engine.generate(p, params, lora_request=lora, use_tqdm=False))[0]
        for i, (p, lora) in enumerate(zip(prompts, assignment, strict=True))
        for s, params in enumerate((GREEDY, SEEDED))
    }
    # Every adapter changes the tokens of the base model.
    base = [_tokens(alone_engine.generate(p, GREEDY, use_tqdm=False))[0] for p in prompts]
    assert all(alone[(i, 0)] != base[i] for i in (0, 2, 3))
    # One batch, 8-token chunks: adapters and the base model mixed in every step.
    engine = Engine(str(folder), max_num_batched_tokens=8, **engine_args)
    doubled = [p for p in prompts for _ in (0, 1)]
    outs = engine.generate(
        doubled, [GREEDY, SEEDED] * 4, lora_request=[lora for lora in assignment for _ in (0, 1)], use_tqdm=False
    )
    assert _tokens(outs) == [alone[(i, s)] for i in range(4) for s in (0, 1)]
    # n = 2 forks share the adapter's prompt blocks and produce the same greedy tokens.
    forked = engine.generate(prompts[2], SamplingParams(n=2, temperature=0.0, max_tokens=24, ignore_eos=True),
                             lora_request=loras[1], use_tqdm=False)  # fmt: skip
    assert _tokens(forked) == [alone[(2, 0)]] * 2
    # Streaming deltas add up to the same tokens.
    streamed: list[int] = []
    for delta in engine.generate_stream(prompts[3], GREEDY, lora_request=loras[2]):
        streamed += delta.outputs[0].token_ids
    assert streamed == alone[(3, 0)]


def test_preemption_keeps_each_adapter(setup: tuple[Path, list[LoRARequest], Any]) -> None:
    folder, loras, _ = setup
    prompts = _prompts()
    assignment = [loras[2], loras[0], None, loras[1]]
    reference = Engine(str(folder), **ENGINE_ARGS)
    alone = [_tokens(reference.generate(p, GREEDY, lora_request=lo, use_tqdm=False))[0]
             for p, lo in zip(prompts, assignment, strict=True)]  # fmt: skip
    # 6 blocks of 16 tokens for four sequences of up to 64 tokens: requests are preempted and recomputed.
    block_bytes = 2 * 2 * 16 * 2 * 16 * 4
    tight = Engine(
        str(folder), **{**ENGINE_ARGS, "kv_cache_memory_bytes": 6 * block_bytes, "max_num_batched_tokens": 16}
    )
    outs = tight.generate(prompts, GREEDY, lora_request=assignment, use_tqdm=False)
    assert tight.stats()["num_preemptions"] > 0
    assert _tokens(outs) == alone


def test_prefix_cache_is_per_adapter(setup: tuple[Path, list[LoRARequest], Any]) -> None:
    folder, loras, _ = setup
    prompt = [(3 * k) % 250 + 3 for k in range(70)]
    engine = Engine(str(folder), **ENGINE_ARGS)
    first = engine.generate(prompt, GREEDY, lora_request=loras[0], use_tqdm=False)[0]
    assert first.num_cached_tokens == 0
    other = engine.generate(prompt, GREEDY, lora_request=loras[1], use_tqdm=False)[0]
    assert other.num_cached_tokens == 0, "two adapters must not share KV"
    assert other.outputs[0].token_ids != first.outputs[0].token_ids
    base = engine.generate(prompt, GREEDY, use_tqdm=False)[0]
    assert base.num_cached_tokens == 0, "the base model must not reuse an adapter's KV"
    again = engine.generate(prompt, GREEDY, lora_request=loras[0], use_tqdm=False)[0]
    assert again.num_cached_tokens == 64
    assert again.outputs[0].token_ids == first.outputs[0].token_ids


def test_adapters_load_on_first_use_into_an_lru(setup: tuple[Path, list[LoRARequest], Any]) -> None:
    folder, loras, _ = setup
    engine = Engine(str(folder), **{**ENGINE_ARGS, "max_loras": 1, "max_cpu_loras": 2})
    assert engine.loaded_loras() == []
    expected = [_tokens(engine.generate([5, 6, 7], GREEDY, lora_request=lo, use_tqdm=False))[0] for lo in loras]
    assert [entry[0] for entry in engine.loaded_loras()] == [2, 3]  # adapter 1 was the least recently used
    stats = engine.stats()
    assert (stats["num_adapter_loads"], stats["num_adapter_evictions"]) == (3, 1)
    assert (stats["num_loaded_adapters"], stats["num_active_adapters"]) == (2, 0)
    assert stats["adapter_load_s"] > 0
    # Reloaded on use, same tokens; max_loras=1 runs a mixed batch one adapter at a time (the three in use
    # stay loaded beyond max_cpu_loras until they are idle).
    outs = engine.generate([[5, 6, 7]] * 3, GREEDY, lora_request=loras, use_tqdm=False)
    assert _tokens(outs) == expected
    stats = engine.stats()
    assert stats["num_preemptions"] == 0
    # Adapter 1 reloaded (evicting 2), 2 reloaded (evicting idle 3), 3 reloaded while 1 and 2 are in use.
    assert (stats["num_adapter_loads"], stats["num_adapter_evictions"], stats["num_loaded_adapters"]) == (6, 3, 3)
    assert engine.unload_lora(2) is True
    assert engine.unload_lora(2) is False
    assert engine.stats()["num_loaded_adapters"] == 2


def _write_bad_adapter(folder: Path, source: Path, edit: str) -> Path:
    """A copy of the adapter at `source` broken one way."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    if edit == "rank":
        config["r"] = 64
    elif edit == "extra-key":
        tensors["base_model.model.lm_head.weight"] = next(iter(tensors.values()))
    elif edit == "missing-b":
        tensors = {k: v for k, v in tensors.items() if "layers.1.self_attn.v_proj.lora_B" not in k}
    elif edit == "shape":
        key = next(k for k in tensors if "q_proj.lora_B" in k)
        tensors[key] = tensors[key][:-1]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        ("rank", ModelLoadError, ["adapter_config.json", '"r" is 64', "max_lora_rank (8)"]),
        ("extra-key", ModelLoadError, ["adapter_model.safetensors", "base_model.model.lm_head.weight"]),
        ("missing-b", ModelLoadError, ["adapter_model.safetensors", "layers.1.self_attn.v_proj.lora_B.weight"]),
        ("shape", ModelLoadError, ["adapter_model.safetensors", "q_proj", "lora_B [64, r]"]),
        ("no-folder", ModelLoadError, ["adapter_config.json"]),
    ],
)
def test_bad_adapters_are_clear_errors(
    setup: tuple[Path, list[LoRARequest], Any], tmp_path: Path, edit: str, error: type, words: list[str]
) -> None:
    folder, loras, _ = setup
    bad = (
        tmp_path / "missing"
        if edit == "no-folder"
        else _write_bad_adapter(tmp_path / "bad", Path(loras[0].lora_path), edit)
    )
    engine = Engine(str(folder), **ENGINE_ARGS)
    with pytest.raises(error) as info:
        engine.generate([5, 6], GREEDY, lora_request=LoRARequest("bad", 9, str(bad)), use_tqdm=False)
    assert all(w in str(info.value) for w in words), str(info.value)
    # Nothing was left behind: the engine serves the base model and good adapters.
    assert engine.loaded_loras() == []
    assert len(engine.generate([5, 6], GREEDY, lora_request=loras[0], use_tqdm=False)[0].outputs[0].token_ids) == 24


def test_request_errors(setup: tuple[Path, list[LoRARequest], Any]) -> None:
    folder, loras, _ = setup
    plain = Engine(str(folder), dtype="float32", max_model_len=256, kv_cache_memory_bytes=8 << 20)
    with pytest.raises(InvalidRequestError, match="enable_lora=True"):
        plain.generate([5], GREEDY, lora_request=loras[0], use_tqdm=False)
    engine = Engine(str(folder), **ENGINE_ARGS)
    engine.generate([5], GREEDY, lora_request=loras[0], use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="lora_int_id 1 is already used"):
        engine.generate([5], GREEDY, lora_request=LoRARequest("other", 1, loras[1].lora_path), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="lora_int_id must be an integer"):
        LoRARequest("x", 0, "p")
    with pytest.raises(InvalidRequestError, match="one per prompt"):
        engine.generate([[5], [6]], GREEDY, lora_request=[loras[0]], use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="max_cpu_loras"):
        Engine(str(folder), **{**ENGINE_ARGS, "max_loras": 3, "max_cpu_loras": 2})
    with pytest.raises(InvalidRequestError, match=r"max_lora_rank must be an integer in \[1,"):
        Engine(str(folder), **{**ENGINE_ARGS, "max_lora_rank": 0})


def test_moe_expert_adapters_are_refused(tmp_path: Path) -> None:
    """An adapter on an expert projection is refused naming the module; the engine keeps serving."""
    import numpy as np
    from safetensors.numpy import save_file

    variant = next(v for v in FAMILY_VARIANTS if v.name == "qwen3moe-top3-normalized")
    write_model(variant, tmp_path / "model")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "target_modules": ["gate_proj"]}))
    key = "base_model.model.model.layers.0.mlp.experts.1.gate_proj"
    tensors = {
        f"{key}.lora_A.weight": np.ones((2, 64), np.float32),
        f"{key}.lora_B.weight": np.ones((24, 2), np.float32),
    }
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    engine = Engine(str(tmp_path / "model"), **ENGINE_ARGS)
    with pytest.raises(ModelLoadError, match=r"layers\.0\.mlp\.experts\.1\.gate_proj.*mixture-of-experts expert"):
        engine.generate([5], GREEDY, lora_request=LoRARequest("moe", 1, str(adapter)), use_tqdm=False)
    assert len(engine.generate([5], GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 24


def test_async_engine_and_abort(setup: tuple[Path, list[LoRARequest], Any]) -> None:
    folder, loras, _ = setup
    prompt = _prompts()[1]
    expected = _tokens(Engine(str(folder), **ENGINE_ARGS).generate(prompt, GREEDY, lora_request=loras[1],
                                                                    use_tqdm=False))[0]  # fmt: skip

    async def run() -> tuple[list[int], str | None]:
        async with AsyncEngine(str(folder), **ENGINE_ARGS) as engine:
            final = None
            async for out in engine.generate(prompt, GREEDY, lora_request=loras[1]):
                final = out
            long = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
            stream = engine.generate(prompt, long, request_id="x", lora_request=loras[2])
            first = await stream.__anext__()
            assert engine.abort("x")
            last = first
            async for out in stream:
                last = out
            # The aborted request released its adapter: it can be unloaded.
            assert await engine.unload_lora(3)
            assert final is not None
            return final.outputs[0].token_ids, last.outputs[0].finish_reason

    tokens, reason = asyncio.run(run())
    assert tokens == expected
    assert reason == "abort"


def test_speculation_with_mixed_adapters_keeps_every_output(setup: tuple[Path, list[LoRARequest], Any]) -> None:
    """n-gram speculation on a batch mixing three adapters and the base model, with prefix caching and 8-token
    chunks: every request's tokens and logprobs equal those of the same batch without speculation, drafts are
    verified under each request's own adapter, and the KV cache ends empty."""
    folder, loras, _ = setup
    # Repetitive prompts, so the n-gram proposer finds matches from the first decode step.
    prompts = [[(7 * i + k % 5) % 250 + 3 for k in range(30)] for i in range(4)]
    assignment: list[LoRARequest | None] = [loras[0], None, loras[1], loras[2]]
    params = [
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.8, top_k=20, seed=5, max_tokens=24, ignore_eos=True, logprobs=2),
    ]
    speculation = {"method": "ngram", "num_speculative_tokens": 3, "max_num_seqs_to_speculate": 0}
    runs = {}
    for name, extra in (("plain", {}), ("speculative", {"speculative_config": speculation})):
        engine = Engine(str(folder), max_num_batched_tokens=8, **ENGINE_ARGS, **extra)
        outs = engine.generate(
            [p for p in prompts for _ in params],
            params * len(prompts),
            lora_request=[lora for lora in assignment for _ in params],
            use_tqdm=False,
        )
        runs[name] = [(c.token_ids, c.cumulative_logprob, c.logprobs) for o in outs for c in o.outputs]
        stats = engine.stats()
        assert stats["kv_cache_usage"] == 0.0
        if name == "speculative":
            assert stats["num_spec_proposed_tokens"] > 0
    assert runs["speculative"] == runs["plain"]
