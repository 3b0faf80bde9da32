"""The inputs of the GPU end-to-end tests, checked on the CPU so the GPU run cannot fail (or pass)
because of them: the synthetic GGUF (tests/synthetic_gguf.py) holds the default model's formats
and the same bytes from the same seed, and on it and on the tiny models of
tests/gpu/test_e2e_tiny.py the prompts are in the vocabulary and the float32 greedy choices are
separated enough for tests/greedy_agreement.py to compare at least half of the first 8 tokens."""

from __future__ import annotations

import hashlib

from ember import Engine, SamplingParams
from greedy_agreement import MIN_COMPARED, N, near_tie_step
from synthetic_gguf import PROMPTS, write_llama_gguf

from references import require
from tiny_models import write_model


def test_the_file_holds_the_default_models_formats(tmp_path):
    gguf = require("gguf")
    path = write_llama_gguf(tmp_path / "a.gguf", seed=0)
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert kinds["token_embd.weight"] == "Q8_0"
    assert "output.weight" not in kinds, "tied embeddings"
    assert {kinds[f"blk.{i}.{m}.weight"] for i in (0, 1) for m in ("attn_q", "attn_k", "ffn_down")} == {"Q4_1"}
    assert kinds["output_norm.weight"] == "F32"
    again = write_llama_gguf(tmp_path / "b.gguf", seed=0)
    other = write_llama_gguf(tmp_path / "c.gguf", seed=1)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (path, again, other)]
    assert digest[0] == digest[1] != digest[2]


def compared_steps(engine: Engine, prompts: list[list[int]]) -> list[int]:
    """Per prompt, the float32 greedy steps before the first near-tie (at most N)."""
    outs = engine.generate(prompts, SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True), use_tqdm=False)
    return [near_tie_step(engine, p, list(o.outputs[0].token_ids)) for p, o in zip(prompts, outs, strict=True)]


def test_tiny_e2e_models_are_separated(tmp_path):
    require("transformers")
    from gpu.test_e2e_tiny import MODELS
    from gpu.test_e2e_tiny import PROMPTS as TINY_PROMPTS

    for variant, sizes in MODELS:
        folder = tmp_path / variant.name
        write_model(variant, folder, sizes=sizes)
        cpu = Engine(str(folder), device="cpu", dtype="float32", kv_cache_memory_bytes=16 << 20, max_model_len=256)
        stops = compared_steps(cpu, TINY_PROMPTS)
        assert sum(stops) >= MIN_COMPARED * N * len(TINY_PROMPTS), (variant.name, stops)


def test_greedy_choices_are_well_separated(tmp_path):
    require("gguf")
    path = write_llama_gguf(tmp_path / "m.gguf", seed=0)
    cpu = Engine(str(path), device="cpu", dtype="float32", kv_cache_memory_bytes=16 << 20, max_model_len=512)
    stops = compared_steps(cpu, PROMPTS)
    assert sum(stops) >= MIN_COMPARED * N * len(PROMPTS), stops
    outs = cpu.generate(PROMPTS, SamplingParams(max_tokens=N, temperature=0.0), use_tqdm=False)
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == len(PROMPTS), "prompts lead somewhere different"
