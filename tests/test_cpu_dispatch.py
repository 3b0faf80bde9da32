"""The CPU kernel family forced by EMBER_CPU_ISA: every family this CPU can run gives the scalar
reference's tokens and logprobs bit for bit (quantized and float32 weights, a batch with n > 1 and
seeds); a family the CPU lacks, or an unknown name, is a clear error naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import EmberError, Engine, LoRARequest, SamplingParams

from lora_adapters import ALL_LINEAR, SMALL_LORA_ENGINE, write_model_with_adapters
from tiny_models import VARIANTS

ISA_ENV = "EMBER_CPU_ISA"
# The /proc/cpuinfo flags each family needs (crates/ember-cpu/src/matmul.rs, Isa::is_supported);
# on x86-64 the NEON families are refused, on AArch64 the x86 ones.
ISA_FLAGS = {
    "avx2": {"avx2", "fma", "f16c"},
    "avx512vnni": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
    "neon": {"asimd"},
    "neon-dotprod": {"asimd", "asimddp"},
}
PROMPTS = ["The capital of France is", "def fibonacci(n):"]


def cpu_flags() -> set[str]:
    """This machine's CPU feature flags (x86-64's `flags`, AArch64's `Features`)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def run(gguf: Path, dtype: str) -> list[tuple[list[int], float | None]]:
    """A greedy completion and two seeded samples (token ids, cumulative logprob) under the current ISA."""
    engine = Engine(str(gguf), dtype=dtype, num_threads=2, kv_cache_memory_bytes=64 << 20, max_model_len=256)
    params = [
        SamplingParams(max_tokens=6, temperature=0.0, logprobs=2),
        SamplingParams(max_tokens=6, temperature=0.8, n=2, seed=7, logprobs=2),
    ]
    outs = engine.generate(PROMPTS, params)
    return [(list(c.token_ids), c.cumulative_logprob) for out in outs for c in out.outputs]


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_every_supported_family_matches_scalar(default_gguf: Path, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ISA_ENV, "scalar")
    reference = run(default_gguf, dtype)
    assert len(reference) == 3 and all(len(ids) == 6 for ids, _ in reference)
    flags = cpu_flags()
    num_checked = 0
    for isa, needed in ISA_FLAGS.items():
        monkeypatch.setenv(ISA_ENV, isa)
        if needed <= flags:
            assert run(default_gguf, dtype) == reference, isa
            num_checked += 1
        else:
            with pytest.raises(EmberError, match=f"{ISA_ENV}={isa}: this CPU lacks"):
                run(default_gguf, dtype)
    print(f"{num_checked} SIMD families matched scalar on this CPU ({dtype})")


def test_unknown_family_is_an_error(default_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ISA_ENV, "sse9")
    with pytest.raises(EmberError, match=r"EMBER_CPU_ISA=\"sse9\" is not a kernel family; expected one of: scalar"):
        Engine(str(default_gguf), num_threads=1, kv_cache_memory_bytes=16 << 20, max_model_len=64)


@pytest.mark.parametrize("dtype", ["auto", "float32"])  # f16 and f32 adapter factors
def test_lora_adapters_match_scalar(tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LoRA shrink and expand follow the forced family too: a batch mixing two adapters and the base model."""
    adapters = {f"a{i}": {"rank": 8, "alpha": 16.0, "targets": ALL_LINEAR, "seed": i} for i in range(2)}
    write_model_with_adapters(VARIANTS[2], tmp_path, adapters)
    loras = [LoRARequest(name, i + 1, str(tmp_path / name)) for i, name in enumerate(adapters)]
    prompts = [[(5 * i + 3 * k) % 250 + 3 for k in range(9 + i)] for i in range(3)]
    params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=2, ignore_eos=True)

    def run() -> list[tuple[list[int], float | None]]:
        engine = Engine(str(tmp_path / "model"), **{**SMALL_LORA_ENGINE, "dtype": dtype})
        outs = engine.generate(prompts, params, lora_request=[*loras, None], use_tqdm=False)
        return [(list(o.outputs[0].token_ids), o.outputs[0].cumulative_logprob) for o in outs]

    monkeypatch.setenv(ISA_ENV, "scalar")
    reference = run()
    assert len({tuple(ids) for ids, _ in reference}) == 3
    flags = cpu_flags()
    for isa, needed in ISA_FLAGS.items():
        if needed <= flags:
            monkeypatch.setenv(ISA_ENV, isa)
            assert run() == reference, isa
