"""Device selection: device="cpu"/"auto" run anywhere; device="cuda" without a GPU is a clear error."""

from __future__ import annotations

import os

import pytest

from ember import Engine, SamplingParams
from ember.cli import build_parser, main

KV = 64 << 20
HAS_CUDA = os.environ.get("EMBER_TEST_HAS_CUDA") == "1"  # set by scripts/gpu_run.sh


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_cuda_without_gpu_raises_a_clear_error(default_gguf):
    with pytest.raises(ValueError, match='device="cuda" but no usable CUDA device'):
        Engine(str(default_gguf), device="cuda", kv_cache_memory_bytes=KV)


def test_unknown_device_names_the_field(default_gguf):
    with pytest.raises(ValueError, match="device must be"):
        Engine(str(default_gguf), device="tpu", kv_cache_memory_bytes=KV)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cpu_and_auto_generate(default_gguf, device):
    engine = Engine(str(default_gguf), device=device, kv_cache_memory_bytes=KV, max_model_len=256)
    out = engine.generate(["The capital of France is"], SamplingParams(max_tokens=4, temperature=0.0))
    assert len(out[0].outputs[0].token_ids) == 4


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_cli_device_cuda_without_gpu_fails_clearly(default_gguf, capsys):
    status = main(["generate", "Hi", "--model", str(default_gguf), "--device", "cuda", "--max-tokens", "2"])
    assert status == 1
    assert 'device="cuda" but no usable CUDA device' in capsys.readouterr().err


def test_serve_accepts_the_device_options():
    args = build_parser().parse_args(["serve", "m.gguf", "--device", "cpu", "--dtype", "float32"])
    assert (args.device, args.dtype, args.gpu_memory_utilization) == ("cpu", "float32", 0.9)
