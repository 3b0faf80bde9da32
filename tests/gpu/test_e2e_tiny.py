"""End to end on a tiny random Llama (tests/tiny_models.py, head sizes 64 and 128, the ones
the CUDA attention kernels take): greedy tokens of `Engine(device="cuda")` (bf16) against
`Engine(device="cpu", dtype="float32")` and transformers (float32, CPU).

The CPU backend in float32 and transformers must agree on every token (the CPU tests already
hold them to that); the bf16 GPU tokens must agree with them as tests/greedy_agreement.py says
(exactly, up to a float32 near-tie, with at least half of the first 8 tokens compared). The GPU
logits of the prompts are also compared with the CPU's row by row (relative L2 error below 5e-2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember import Engine, SamplingParams
from greedy_agreement import assert_greedy_agreement

from references import require
from tiny_models import Variant, write_model

MAX_TOKENS = 24
PROMPTS = [
    [265, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 259, 257, 3, 250, 199],
    [42],
    [7, 8, 9, 10, 11, 12, 13],
    [int(x) for x in np.random.default_rng(0).integers(3, 256, 65)],  # crosses 64-row prefill tiles
    [int(x) for x in np.random.default_rng(1).integers(3, 256, 17)],  # crosses a 16-token block
]
#: (variant, sizes): GQA with head size 64, MHA with tied embeddings and head size 128.
MODELS = [
    (Variant("llama-gqa-h64", "llama", 2, False, 10_000.0), {"hidden_size": 256, "intermediate_size": 512}),
    (Variant("llama-mha-tied-h128", "llama", 4, True, 500_000.0), {"hidden_size": 512, "intermediate_size": 768}),
]


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: m[0].name)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(folder, transformers model) of one saved random model."""
    require("torch")
    require("transformers")
    variant, sizes = request.param
    folder = tmp_path_factory.mktemp(variant.name)
    return folder, write_model(variant, folder, sizes=sizes)


def engines(folder: Path) -> tuple[Engine, Engine]:
    """(GPU engine, CPU float32 engine) on the folder."""
    gpu = Engine(str(folder), device="cuda", max_model_len=256, gpu_memory_utilization=0.2, max_num_seqs=8)
    cpu = Engine(str(folder), device="cpu", dtype="float32", max_model_len=256, kv_cache_memory_bytes=16 << 20)
    return gpu, cpu


def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """transformers' greedy continuation (float32, no EOS stop)."""
    import torch

    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            seq = torch.cat([seq, model(seq).logits[0, -1].argmax().view(1, 1)], dim=1)
    return seq[0, len(prompt) :].tolist()


def test_greedy_tokens_match_cpu_and_transformers(tiny):
    folder, model = tiny
    gpu, cpu = engines(folder)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    gpu_tokens = [list(o.outputs[0].token_ids) for o in gpu.generate(PROMPTS, params, use_tqdm=False)]
    cpu_tokens = [list(o.outputs[0].token_ids) for o in cpu.generate(PROMPTS, params, use_tqdm=False)]
    for prompt, tokens in zip(PROMPTS, cpu_tokens, strict=True):
        assert tokens == hf_greedy(model, prompt, MAX_TOKENS), "CPU float32 differs from transformers"
    assert_greedy_agreement(cpu, PROMPTS, gpu_tokens, cpu_tokens)


def test_prompt_logits_close_to_cpu(tiny):
    folder, _ = tiny
    gpu, cpu = engines(folder)
    for prompt in PROMPTS:
        g = np.array(gpu.score(prompt), np.float64)
        c = np.array(cpu.score(prompt), np.float64)
        assert g.shape == c.shape
        rel = np.linalg.norm(g - c, axis=1) / np.linalg.norm(c, axis=1)
        assert rel.max() < 5e-2, (prompt, rel.max())
