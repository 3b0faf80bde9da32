"""End to end on a GGUF file on the GPU: a synthetic Llama in the default model's formats (Q4_1
matrices, tied Q8_0 embedding) written here from a seed (tests/synthetic_gguf.py; the default
model's file cannot travel to the GPU machine), so the GGUF load, the device dequantization, CUDA
graphs and device sampling all run on a real file.

- Greedy tokens of device="cuda" (bf16) against the CPU backend in float32 on the same file, free
  running and teacher-forced, as tests/greedy_agreement.py says (exactly, away from float32
  near-ties; logits within a relative L2 error of 5e-2).
- CUDA graphs: captured and replayed (Engine.stats() counters), never failed, and graph decode
  gives exactly the eager path's tokens, greedy and seeded (sampled on the device). Batches of 1,
  2 and 4 sequences are captured sizes (no padding rows change a GEMM shape), and the eager path
  plans its decode split from the same context bucket as the graph, so the sums are the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import Engine, SamplingParams
from greedy_agreement import assert_greedy_agreement, assert_teacher_forced_agreement
from synthetic_gguf import PROMPTS, write_llama_gguf

MAX_TOKENS = 24
GRAPH_COUNTERS = ("num_cuda_graphs_captured", "num_cuda_graph_replays", "num_cuda_graph_failures")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "synthetic-q4_1.gguf", seed=0)


def gpu_engine(path: Path) -> Engine:
    return Engine(str(path), device="cuda", max_model_len=512, gpu_memory_utilization=0.2, max_num_seqs=8)


def test_greedy_tokens_match_the_cpu_backend(gguf_file):
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    cpu = Engine(str(gguf_file), device="cpu", dtype="float32", kv_cache_memory_bytes=16 << 20, max_model_len=512)
    gpu = gpu_engine(gguf_file)
    gpu_tokens = [list(o.outputs[0].token_ids) for o in gpu.generate(PROMPTS, params, use_tqdm=False)]
    cpu_tokens = [list(o.outputs[0].token_ids) for o in cpu.generate(PROMPTS, params, use_tqdm=False)]
    assert_greedy_agreement(cpu, PROMPTS, gpu_tokens, cpu_tokens)
    assert_teacher_forced_agreement(gpu, cpu, [p + t for p, t in zip(PROMPTS, cpu_tokens, strict=True)])


def test_cuda_graphs_are_replayed_and_match_eager(gguf_file, monkeypatch):
    greedy = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    seeded = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.9, seed=5, ignore_eos=True)
    tokens, stats = {}, {}
    for flag in ("1", "0"):
        monkeypatch.setenv("EMBER_CUDA_GRAPHS", flag)
        engine = gpu_engine(gguf_file)
        tokens[flag] = [
            [list(o.outputs[0].token_ids) for o in engine.generate(PROMPTS[:n], p, use_tqdm=False)]
            for n in (1, 2, 4)
            for p in (greedy, seeded)
        ]
        stats[flag] = {key: engine.stats()[key] for key in GRAPH_COUNTERS}
        del engine
    graphs, eager = stats["1"], stats["0"]
    assert graphs["num_cuda_graphs_captured"] >= 3, graphs  # batch sizes 1, 2 and 4
    # 6 runs of 23 decode steps; each key's first two steps are its warm-up and its capture.
    assert graphs["num_cuda_graph_replays"] >= 6 * (MAX_TOKENS - 1) - 2 * graphs["num_cuda_graphs_captured"], graphs
    assert graphs["num_cuda_graph_failures"] == 0, graphs
    assert eager == dict.fromkeys(GRAPH_COUNTERS, 0.0), eager
    assert tokens["1"] == tokens["0"]
