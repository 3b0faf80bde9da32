"""llama.cpp reads the family GGUF files of tests/test_gguf_families.py as Ember does (so the metadata keys, tensor
names and conventions Ember assumes are llama.cpp's, not only the test writer's), and mixture-of-experts files with
quantized experts run as faithfully to float32 as llama.cpp runs them (teacher-forced KL and top-1 agreement).

llama.cpp keeps its KV cache in F16, so its float32-weight logits are compared by KL, not to 1e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from composition import assert_batch_cache_and_forks_agree
from ember import Engine, SamplingParams
from gguf_from_hf import write_gguf
from logit_metrics import faithfulness
from test_gguf_families import CASES, ENGINE_ARGS, PROMPT_IDS, variant_named

from references import require
from tiny_models import write_model

# Files llama.cpp does not run as transformers does: it disables Phi-3's sliding window (a warning says so), and
# its Qwen3-MoE has experts on every layer (no dense `mlp_only_layers`).
NOT_LLAMA_CPP = {"phi3-fused-window", "qwen3moe-tied-router-dense-layer"}
LLAMA_CPP_CASES = [c for c in CASES if c[0] not in NOT_LLAMA_CPP]

# Largest mean KL(Ember || llama.cpp) on the same float32 file (measured: at most 2.4e-6, from its F16 KV cache).
MAX_KL_FLOAT32 = 1e-4


def _llama_cpp_logits(path: Path, prompt_ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every prompt position."""
    llama_cpp: Any = require("llama_cpp")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    llm.eval(prompt_ids)
    return np.asarray(llm.scores[: len(prompt_ids)], np.float32)


def _write(name: str, arch: str, tmp_path: Path, expert_type: Any = None) -> tuple[Path, Path]:
    """The variant's Hugging Face folder and its GGUF file."""
    folder = tmp_path / "hf"
    model = write_model(variant_named(name), folder)
    path = tmp_path / f"{name}.gguf"
    write_gguf(folder, model, arch, path, expert_type)
    return folder, path


@pytest.mark.parametrize(("name", "arch"), LLAMA_CPP_CASES, ids=[c[0] for c in LLAMA_CPP_CASES])
def test_llama_cpp_reads_the_file_as_ember_does(name: str, arch: str, tmp_path: Path) -> None:
    require("gguf")
    require("transformers")
    _, path = _write(name, arch, tmp_path)
    ours = np.asarray(Engine(str(path), **ENGINE_ARGS).score(PROMPT_IDS), np.float32)
    theirs = _llama_cpp_logits(path, PROMPT_IDS)
    kl, top1 = faithfulness(theirs, ours)
    assert kl < MAX_KL_FLOAT32 and top1 == 1.0, f"KL(Ember || llama.cpp) {kl:.2e}, top-1 agreement {top1:.3f}"


# (variant, llama.cpp architecture, expert encoding): Q8_0 needs rows of whole 32-element blocks, which
# Qwen3-MoE's 24-wide experts do not have (llama.cpp's quantizer falls back to F16 there too).
QUANTIZED_CASES = [("mixtral-top2", "llama", "Q8_0"), ("qwen3moe-top3-normalized", "qwen3moe", "F16")]


@pytest.mark.parametrize(("name", "arch", "kind"), QUANTIZED_CASES, ids=[f"{c[0]}-{c[2]}" for c in QUANTIZED_CASES])
def test_quantized_experts_are_as_faithful_as_llama_cpp(name: str, arch: str, kind: str, tmp_path: Path) -> None:
    gguf = require("gguf")
    require("transformers")
    folder, path = _write(name, arch, tmp_path, gguf.GGMLQuantizationType[kind])
    reader = gguf.GGUFReader(str(path))
    kinds = {t.tensor_type.name for t in reader.tensors if "_exps" in t.name}
    assert kinds == {kind}, kinds
    exact = np.asarray(Engine(str(folder), **ENGINE_ARGS).score(PROMPT_IDS), np.float32)
    ours = np.asarray(
        Engine(str(path), max_model_len=256, kv_cache_memory_bytes=16 << 20).score(PROMPT_IDS), np.float32
    )
    theirs = _llama_cpp_logits(path, PROMPT_IDS)
    kl_ours, top1_ours = faithfulness(ours, exact)
    kl_theirs, top1_theirs = faithfulness(theirs, exact)
    print(
        f"{name} {kind} experts: mean KL to float32 ember {kl_ours:.2e} llama.cpp {kl_theirs:.2e}; "
        f"top-1 ember {top1_ours:.3f} llama.cpp {top1_theirs:.3f}"
    )
    # Ember's own F16 / Q8_0 arithmetic against llama.cpp's (which adds an F16 KV cache): no worse, up to noise.
    assert kl_ours <= max(1.5 * kl_theirs, 1e-5)
    assert top1_ours >= top1_theirs - 0.05


def test_quantized_expert_file_composes_with_batching_cache_forks_and_preemption(tmp_path: Path) -> None:
    gguf = require("gguf")
    require("transformers")
    _, path = _write("mixtral-top2", "llama", tmp_path, gguf.GGMLQuantizationType.Q8_0)
    shared = PROMPT_IDS[:40]
    prompts = [shared + [(11 * i + j) % 250 + 3 for j in range(n)] for i, n in enumerate([1, 9, 33, 50])]
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=30, ignore_eos=True)
    args: dict[str, Any] = {"max_model_len": 256}
    uncached = Engine(str(path), enable_prefix_caching=False, kv_cache_memory_bytes=16 << 20, **args)
    alone = [uncached.generate(p, s, use_tqdm=False)[0].outputs[0].token_ids for p in prompts for s in (greedy, seeded)]
    # Chunked prefill (8 tokens a step), mixed greedy and seeded rows, then the shared prefix from the cache.
    engine = Engine(str(path), max_num_batched_tokens=8, kv_cache_memory_bytes=16 << 20, **args)
    assert_batch_cache_and_forks_agree(engine, prompts, alone, fork=3)
    # 8 blocks of 16 tokens (float32 K and V: 2 layers x 2 heads x 16 dims) for four ~100-token sequences.
    block_bytes = 2 * 2 * 16 * 2 * 16 * 4
    tight = Engine(str(path), kv_cache_memory_bytes=8 * block_bytes, max_num_batched_tokens=32,
                   enable_prefix_caching=False, **args)  # fmt: skip
    outs = tight.generate(prompts, greedy, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == alone[::2]
    assert tight.stats()["num_preemptions"] > 0
